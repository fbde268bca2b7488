"""Search quality on real text nobody here wrote: a known-item evaluation of dense, lexical and hybrid search.

    .venv/bin/python bench/quality.py [--pages 1000] [--backend onnx-int8|torch] [--json]

The corpus is this machine's manual pages (sections 1 and 8, /usr/share/man/man1 and man8, as
Debian packages install them), rendered to text by groff. Each page's NAME line ("ls - list
directory contents") is cut from the indexed text, and its summary ("list directory contents") is
the query; the page is the one right answer. Up to --pages pages of each section are taken evenly
from its sorted list (every n-th; not the Google Cloud SDK's 15,000 generated `gcloud` pages, or
one package would be most of the corpus), keeping those of 1 to 40 KB; nothing is tuned to single
queries. Search asks for 30 chunks and ranks the documents by their first chunk, so one page's
chunks do not crowd out the others.

Prints, for `dense`, `lexical` and `hybrid` (grace.yaml's default fusion): `mrr_at_10` (mean of
1/rank of the page in the first 10, else 0) and `hit_at_1`; and `hybrid_rrf`, hybrid with classic
reciprocal rank fusion (equal weights), for comparison. The paraphrase set is the queries that
share no term with their page (after stop words): lexical search cannot find them, so they show
what hybrid does where dense is strong. With --json, one object on the last line holds those
figures, `hybrid_beats_both`, and `paraphrase_not_worse` (hybrid's paraphrase MRR at least dense's).
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from grace.resources.embedding.onnx_model import model_cache_root  # noqa: E402
from grace.resources.index.fusion import Fusion  # noqa: E402
from grace.resources.index.search import Searcher  # noqa: E402
from grace.resources.text.terms import terms  # noqa: E402
from grace.resources.wiring.dagster_resources import EmbedderResource  # noqa: E402
from tests.helpers.harness import Deployment  # noqa: E402

MAN_SECTIONS = (Path("/usr/share/man/man1"), Path("/usr/share/man/man8"))
MODES = ("dense", "lexical", "hybrid")
CLASSIC_RRF = Fusion("rrf", dense_weight=0.5)
MIN_BYTES, MAX_BYTES = 1_000, 40_000
# Google Cloud SDK's 15,000 generated pages: left out, or one package would be most of the corpus.
GENERATED = "gcloud"
CHUNKS_ASKED = 30
# The NAME section's one line: "name[, name...] \- summary", as groff renders it.
NAME_LINE = re.compile(r"^NAME\n\s+(?P<names>[^\n]+?)\s+[-\u2010\u2212]\s+(?P<summary>[^\n]+)\n", re.MULTILINE)


def render(page: Path) -> str | None:
    """The page as plain text (groff, no overstrike or colour), or None when groff cannot render it."""
    source = gzip.decompress(page.read_bytes()) if page.suffix == ".gz" else page.read_bytes()
    if source.startswith(b".so "):  # an alias of another page
        return None
    done = subprocess.run(
        # One long line per paragraph and no hyphenation, so the NAME line is never cut in two.
        ["groff", "-t", "-man", "-Tutf8", "-P-cbou", "-rLL=1000n", "-rHY=0"],
        input=source,
        capture_output=True,
        timeout=30,
        check=False,
    )
    return done.stdout.decode("utf-8", "replace") if done.returncode == 0 else None


def known_items(pages: int) -> list[tuple[str, str, str]]:
    """(file name, query, text without its NAME line) for up to pages manual pages of each section, taken evenly."""
    items: list[tuple[str, str, str]] = []
    seen_queries: set[str] = set()
    for section in MAN_SECTIONS:
        items += section_items(section, pages, seen_queries)
    return items


def section_items(section: Path, pages: int, seen_queries: set[str]) -> list[tuple[str, str, str]]:
    candidates = sorted(page for page in section.iterdir() if not page.name.startswith(GENERATED))
    step = max(1, len(candidates) // (pages * 3))  # a third renders to a usable page, give or take
    items: list[tuple[str, str, str]] = []
    for page in candidates[::step]:
        text = render(page)
        if text is None:
            continue
        match = NAME_LINE.search(text)
        if match is None:
            continue
        query = " ".join(match.group("summary").split())
        body = text[: match.start()] + text[match.end() :]
        if not (MIN_BYTES <= len(body.encode()) <= MAX_BYTES) or query.casefold() in seen_queries:
            continue
        seen_queries.add(query.casefold())
        name = page.name.removesuffix(".gz").replace("/", "_") + ".txt"
        items.append((name, query, body))
        if len(items) == pages:
            break
    return items


def first_rank(searcher: Searcher, query: str, mode: str, path: str) -> int | None:
    """The 1-based rank of path among the documents of the query's hits, in the first 10; None if absent."""
    ranked: list[str] = []
    for hit in searcher.search(query, CHUNKS_ASKED, mode):
        if hit.path not in ranked:
            ranked.append(hit.path)
    return ranked.index(path) + 1 if path in ranked[:10] else None


def scores(ranks: list[int | None]) -> dict:
    if not ranks:
        return {"mrr_at_10": None, "hit_at_1": None}
    return {
        "mrr_at_10": round(sum(1 / rank for rank in ranks if rank) / len(ranks), 4),
        "hit_at_1": round(sum(rank == 1 for rank in ranks) / len(ranks), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pages", type=int, default=1000, help="manual pages of each section at most (default 1000)")
    parser.add_argument("--backend", choices=["onnx-int8", "torch"], default="onnx-int8")
    parser.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    args = parser.parse_args()
    if args.pages < 10:
        parser.error("--pages: at least 10")
    logging.disable(logging.INFO)
    items = known_items(args.pages)
    print(f"{len(items)} manual pages from {', '.join(map(str, MAN_SECTIONS))}", flush=True)
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        # The built int8 model is kept where `make dev` keeps it, so a second run does not build it again.
        embedder = EmbedderResource(backend=args.backend, cache_root=str(model_cache_root(Path(".grace").resolve())))
        deployment = Deployment(root, None, embedder, shards=2, max_bytes="1MB", embedding_backend=args.backend)
        for name, _query, body in items:
            deployment.drop(name, body)
        started = time.perf_counter()
        deployment.sync()
        print(f"ingested in {time.perf_counter() - started:.0f} s", flush=True)
        searcher = Searcher(deployment.store, deployment.index, deployment.embedder)
        ranks = {mode: [first_rank(searcher, query, mode, name) for name, query, _body in items] for mode in MODES}
        classic = Searcher(deployment.store, deployment.index, deployment.embedder, fusion=CLASSIC_RRF)
        ranks["hybrid_rrf"] = [first_rank(classic, query, "hybrid", name) for name, query, _body in items]
        paraphrases = [i for i, (_name, query, body) in enumerate(items) if not set(terms(query)) & set(terms(body))]
        deployment.store.dispose()
    result = {
        "corpus": f"{' and '.join(map(str, MAN_SECTIONS))} (groff-rendered, NAME line cut)",
        "documents": len(items),
        "queries": len(items),
        "backend": args.backend,
        **{mode: scores(ranks[mode]) for mode in (*MODES, "hybrid_rrf")},
        "paraphrase": {
            "queries": len(paraphrases),
            **{mode: scores([ranks[mode][i] for i in paraphrases]) for mode in ("dense", "hybrid", "hybrid_rrf")},
        },
    }
    hybrid, dense, lexical = (result[mode]["mrr_at_10"] for mode in ("hybrid", "dense", "lexical"))
    result["hybrid_beats_both"] = hybrid > dense and hybrid > lexical
    para = result["paraphrase"]
    result["paraphrase_not_worse"] = bool(paraphrases) and para["hybrid"]["mrr_at_10"] >= para["dense"]["mrr_at_10"]
    for mode in (*MODES, "hybrid_rrf"):
        print(f"{mode:>8}: MRR@10 {result[mode]['mrr_at_10']:.3f}, hit@1 {result[mode]['hit_at_1']:.3f}")
    print(f"paraphrases ({len(paraphrases)}): dense {para['dense']}, hybrid {para['hybrid']}")
    print(json.dumps(result) if args.json else json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
