"""`grace search`: through the running `grace serve` when one answers (its model is loaded), else here."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

from pydantic import ValidationError

from grace.cli.tasks import positive_int
from grace.core.index_config import SEARCH_MODES
from grace.core.manifest import Manifest
from grace.core.search_filter import SearchFilter, UnknownSource
from grace.core.secrets import SecretError
from grace.resources.tasks.project_handlers import load_routed_manifest

FILTER_FLAGS = {  # SearchFilter's field -> help; each is the flag --field-name
    "source": "only this source's documents",
    "path": "only paths matching this glob within their source (** spans folders, * does not)",
    "type": "only files with this suffix, e.g. pdf or md",
    "modified_after": "only files modified at or after this ISO 8601 time or date (no offset: UTC)",
    "modified_before": "only files modified before this ISO 8601 time or date (no offset: UTC)",
    "page": "only chunks on this page of a paged document (PDF)",
    "heading": "only chunks under a heading holding this text (case does not matter)",
}


def add_search_command(commands: argparse._SubParsersAction, config_option: Callable) -> None:
    """Add `grace search QUERY [-k N] [--mode M] [filters] [--json] [--local]` to the grace command."""
    search = commands.add_parser("search", help="search everything ingested: by meaning, by terms, or both")
    search.add_argument("query", help="what to look for, in your own words")
    search.add_argument("-k", type=positive_int, default=5, help="number of results (default 5)")
    search.add_argument(
        "--mode",
        choices=SEARCH_MODES,
        help="hybrid (both, fused), dense (meaning) or lexical (terms); default: search.mode",
    )
    for field, help_text in FILTER_FLAGS.items():
        kind = int if field == "page" else str
        search.add_argument(
            "--" + field.replace("_", "-"), dest=field, metavar=field.upper(), type=kind, help=help_text
        )
    search.add_argument("--json", action="store_true", help="print JSON instead of text")
    search.add_argument("--local", action="store_true", help="search in this process, not through `grace serve`")
    config_option(search)
    search.set_defaults(handler=search_command)


def search_command(args: argparse.Namespace) -> int:
    if not args.query.strip():
        print("grace search: the query is empty; pass some words to search for", file=sys.stderr)
        return 2
    try:
        only = SearchFilter.model_validate(
            {field: getattr(args, field) for field in FILTER_FLAGS if getattr(args, field) is not None}
        )
    except ValidationError as error:
        for problem in error.errors(include_url=False):
            flag = "--" + str(problem["loc"][0]).replace("_", "-") if problem["loc"] else "the filter"
            print(f"grace search: {flag}: {problem['msg'].removeprefix('Value error, ')}", file=sys.stderr)
        return 2
    query = args.query
    if any("\ud800" <= character <= "\udfff" for character in query):  # undecodable bytes from argv (PEP 383)
        from grace.resources.index.search import repair_query

        query, _replaced = repair_query(query)
        print(
            f"grace search: the query is not valid UTF-8; searching for {query!r}, each undecodable byte "
            "replaced by U+FFFD (set a UTF-8 locale or fix the terminal's encoding)",
            file=sys.stderr,
        )
    manifest = load_routed_manifest(args.config)
    try:
        only.check_sources([source.name for source in manifest.sources])
    except UnknownSource as error:
        print(f"grace search: --source: {str(error).removeprefix('filter.source: ')}", file=sys.stderr)
        return 2
    hits = None if args.local else _warm_search(manifest, query, args.k, args.mode, only)
    if hits is None:
        from grace.resources.index.search import hit_dict
        from grace.resources.wiring.services import open_searcher

        hits = [hit_dict(hit) for hit in open_searcher(manifest).search(query, args.k, args.mode, only)]
    if args.json:
        print(json.dumps(hits, indent=1))
        return 0
    if not hits:
        filtered = " passing the filter" if not only.is_empty else ""
        print(
            f"no results{filtered} ({args.mode or manifest.search.mode} search); `grace stats` shows what is ingested"
        )
    for rank, hit in enumerate(hits, 1):
        snippet = " ".join(hit["text"].split())[:160]
        found_by = f"  [{hit['found_by']}]" if "found_by" in hit else ""
        print(f"{rank:>2}. {hit['score']:.3f}  {hit['source']}/{_place(hit)} #{hit['chunk']}{found_by}\n    {snippet}")
    return 0


def _place(hit: dict) -> str:
    """Where a hit is: e.g. "guide.pdf p. 12 · Install > Linux"."""
    place = hit["path"]
    first, last = hit.get("first_page"), hit.get("last_page")
    if first is not None:
        place += f" p. {first}" if last in (None, first) else f" pp. {first}-{last}"
    return f"{place} · {hit['heading']}" if hit.get("heading") else place


def _warm_search(manifest: Manifest, query: str, k: int, mode: str | None, only: SearchFilter) -> list[dict] | None:
    """The hits from the `grace serve` of this state dir, which has the model loaded; None if none answers."""
    from grace.http.client import ApiUnavailable, api_token, remote_search, running_server

    url = running_server(manifest)
    if url is None:
        return None
    try:
        wanted = None if only.is_empty else only.model_dump(mode="json", exclude_none=True)
        return remote_search(url, query, k, api_token(manifest), mode, wanted)
    except (ApiUnavailable, SecretError):
        return None
