"""Search filters through the real pipeline, against a brute-force filter over every live chunk: each
applies inside the search (k hits whenever k chunks pass), in every mode, on exact and Annoy shards,
on SQLite and PostgreSQL; bad filters are refused by name; and on the real model."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError
from sqlalchemy import select

from grace import api
from grace.core.globs import glob_regex
from grace.core.search_filter import SearchFilter, UnknownSource
from grace.resources.db.schema import chunks, documents
from grace.resources.index.fusion import DEFAULT_FUSION, FUSION_DEPTH
from grace.resources.index.vector_index import ShardedIndex
from grace.resources.wiring.dagster_resources import EmbedderResource, VectorIndexResource
from tests.helpers.documents import realdoc
from tests.helpers.fakes import HashingEmbedderResource
from tests.helpers.harness import Deployment

EVERYTHING = 100_000
JANUARY = datetime(2026, 1, 1, tzinfo=UTC)
PATTERNS = "['**/*.txt', '**/*.md', '**/*.pdf']"
NOTES_SOURCE = "  - {name: notes, path: notes, origin: notes}\n"


class AnnoyIndexResource(VectorIndexResource):
    """Every shard searched by Annoy, however small: the path a filter must widen its candidates on."""

    def get(self) -> ShardedIndex:
        return ShardedIndex(self.root, self.shards, self.trees, self.search_k, exact_max_items=0)


def _write(path, text: str, day: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    moment = (JANUARY + timedelta(days=day)).timestamp()
    os.utime(path, (moment, moment))


def _corpus(deployment: Deployment) -> None:
    root = deployment.root
    for number in range(24):
        words = "harbour cranes lift containers" if number % 3 else "the river floods the valley"
        _write(deployment.inbox / f"log-{number:02d}.txt", f"Entry {number}: {words} near dock {number}.", number)
    for number in range(6):
        _write(
            deployment.inbox / "guides" / ("deep" if number % 2 else "") / f"guide-{number}.md",
            f"# Guide {number}\n\nA harbour guide.\n\n## Linux\n\nInstall the harbour crane driver on Linux.\n\n"
            f"## Windows\n\nThe river port uses Windows for crane logs {number}.\n",
            30 + number,
        )
    (deployment.inbox / "papers").mkdir()
    (deployment.inbox / "papers" / "vicksburg.pdf").write_bytes(
        realdoc("pdf/Seige_of_Vicksburg_Sample_OCR.pdf").read_bytes()
    )
    for number in range(5):
        _write(root / "notes" / f"note-{number}.txt", f"A note on harbour cranes and the river, number {number}.", 60)


@pytest.fixture(params=["exact", "annoy"])
def deployment(request, tmp_path, store_url) -> Deployment:
    deployment = Deployment(
        tmp_path,
        store_url,
        HashingEmbedderResource(),
        shards=2,
        patterns=PATTERNS,
        max_bytes="1MB",
        max_tokens=64,
        extra_sources=NOTES_SOURCE,
    )
    if request.param == "annoy":
        settings = deployment.resources["vector_index"]
        deployment.resources["vector_index"] = AnnoyIndexResource(
            root=settings.root, shards=settings.shards, trees=settings.trees, search_k=settings.search_k
        )
    _corpus(deployment)
    deployment.sync()
    assert deployment.stats()["total"]["index_coverage"] == 1.0
    return deployment


def brute_force(deployment: Deployment, only: SearchFilter) -> set[int]:
    """The live chunks that pass only, decided from every chunk's own fields, one by one."""
    with deployment.store.engine.connect() as connection:
        rows = connection.execute(
            select(chunks.c.id, documents.c.mtime_ns)
            .join(documents, documents.c.id == chunks.c.document_id)
            .where(documents.c.status == "active")
        ).all()
    mtime_of = dict(rows)
    passing = set()
    for chunk_id, hit in deployment.store.texts.chunk_hits(list(mtime_of)).items():
        modified = datetime.fromtimestamp(mtime_of[chunk_id] / 1e9, UTC)
        checks = [
            only.source in (None, hit.source),
            only.path is None or glob_regex(only.path).match(hit.path),
            only.type is None or hit.path.lower().endswith("." + only.type),
            only.modified_after is None or modified >= only.modified_after,
            only.modified_before is None or modified < only.modified_before,
            only.page is None or (hit.first_page is not None and hit.first_page <= only.page <= hit.last_page),
            only.heading is None or only.heading.lower() in " > ".join(hit.heading).lower(),
        ]
        if all(checks):
            passing.add(chunk_id)
    return passing


FILTERS = [
    {"source": "notes"},
    {"source": "docs", "type": "md"},
    {"path": "guides/**"},
    {"path": "*.txt"},
    {"path": "guides/*.md"},
    {"type": ".PDF"},
    {"modified_after": "2026-01-20"},
    {"modified_before": "2026-01-04T00:00:00+00:00"},
    {"modified_after": "2026-01-05", "modified_before": "2026-01-09"},
    {"page": 2},
    {"heading": "linux"},
    {"heading": "WINDOWS", "path": "guides/deep/**"},
    {"path": "nothing/**"},
]


@pytest.mark.parametrize(
    "fields", FILTERS, ids=lambda fields: ",".join(f"{key}={value}" for key, value in fields.items())
)
def test_filters_apply_inside_the_search_and_match_a_brute_force_filter(deployment, fields):
    only = SearchFilter(**fields)
    allowed = brute_force(deployment, only)
    exact = deployment.index.exact_max_items > 0
    for query, k in (("harbour cranes", 5), ("river", 20)):
        dense = [hit for hit in deployment.search(query, EVERYTHING, "dense") if hit.chunk_id in allowed]
        lexical = [hit for hit in deployment.search(query, EVERYTHING, "lexical") if hit.chunk_id in allowed]
        got = {mode: deployment.search(query, k, mode, only) for mode in ("dense", "lexical", "hybrid")}
        for mode, hits in got.items():
            assert {hit.chunk_id for hit in hits} <= allowed, (mode, fields)
        assert len(got["dense"]) == min(k, len(allowed)), "k hits whenever k chunks pass"
        assert [hit.chunk_id for hit in got["lexical"]] == [hit.chunk_id for hit in lexical][:k]
        if exact:  # Annoy's candidates may differ from the exact ranking, but never in what passes
            assert [hit.chunk_id for hit in got["dense"]] == [hit.chunk_id for hit in dense][:k]
            depth = max(k, FUSION_DEPTH)
            expected = DEFAULT_FUSION.fuse(
                [(hit.chunk_id, hit.score) for hit in dense[:depth]],
                [(hit.chunk_id, hit.score) for hit in lexical[:depth]],
            )
            assert [hit.chunk_id for hit in got["hybrid"]] == [entry.chunk_id for entry in expected][:k]
        else:
            scores = [hit.score for hit in got["dense"]]
            assert scores == sorted(scores, reverse=True)


def test_filters_keep_phrases_exact(deployment):
    hits = deployment.search('"crane driver"', 10, "lexical", SearchFilter(path="guides/deep/**"))
    assert sorted(hit.path for hit in hits) == [
        "guides/deep/guide-1.md",
        "guides/deep/guide-3.md",
        "guides/deep/guide-5.md",
    ]
    assert all("crane driver" in hit.text for hit in hits)


def test_an_empty_filter_changes_nothing(deployment):
    plain = [hit.chunk_id for hit in deployment.search("harbour", 10)]
    assert [hit.chunk_id for hit in deployment.search("harbour", 10, only=SearchFilter())] == plain


@pytest.mark.parametrize(
    "fields, field, message",
    [
        ({"type": "p d f"}, "type", "is not a file suffix"),
        ({"path": "/etc/**"}, "path", "relative to the source folder"),
        ({"page": 0}, "page", "greater than or equal to 1"),
        ({"modified_after": "yesterday"}, "modified_after", "datetime"),
        ({"modified_after": "2026-02-01", "modified_before": "2026-01-01"}, None, "no file can match"),
        ({"sources": "docs"}, "sources", "Extra inputs are not permitted"),
        ({"heading": ""}, "heading", "at least 1 character"),
    ],
)
def test_a_bad_filter_is_refused_by_name(fields, field, message):
    with pytest.raises(ValidationError) as refused:
        SearchFilter(**fields)
    [problem] = refused.value.errors()
    assert (problem["loc"][0] if problem["loc"] else None) == field and message in str(refused.value)


def test_an_unknown_source_is_refused_naming_the_sources_there_are(deployment):
    with pytest.raises(UnknownSource, match="filter.source: no source named 'note'; grace.yaml names docs, notes"):
        deployment.search("harbour", 5, only=SearchFilter(source="note"))


def test_the_python_api_takes_filters_as_keywords(deployment):
    config = deployment.root / "grace.yaml"
    # lexical: the API embeds queries with grace.yaml's model, not the deployment's fake one
    hits = api.search("harbour cranes", k=3, config=config, mode="lexical", source="notes")
    assert len(hits) == 3 and {hit.source for hit in hits} == {"notes"}
    with pytest.raises(ValidationError, match="modified_before"):
        api.search("harbour", config=config, modified_before="soon")


def test_filters_on_the_real_model(tmp_path):
    deployment = Deployment(
        tmp_path, None, EmbedderResource(), shards=1, patterns=PATTERNS, max_bytes="1MB", extra_sources=NOTES_SOURCE
    )
    _corpus(deployment)
    deployment.sync()
    for mode in ("dense", "hybrid"):
        hits = deployment.search("cranes that lift cargo at the port", 3, mode, SearchFilter(source="notes"))
        assert [hit.source for hit in hits] == ["notes"] * 3, mode
        [page] = deployment.search("the siege of the city", 1, mode, SearchFilter(type="pdf", page=3))
        assert page.path == "papers/vicksburg.pdf" and page.first_page <= 3 <= page.last_page
