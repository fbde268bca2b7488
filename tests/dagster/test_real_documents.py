"""Real PDFs, Word files and HTML pages (../shared/realdocs) dropped into a watched folder: every
one ends searchable or quarantined with the reason that fits it, on SQLite and on PostgreSQL,
and a phrase of a real document finds it first on the real model."""

from __future__ import annotations

import re
import shutil

import pytest

from grace.cli.main import main
from grace.resources.text.chunking import Chunker
from grace.resources.text.extraction import read_document
from grace.resources.text.readers.base import HEADING_SEPARATOR
from grace.resources.wiring.dagster_resources import EmbedderResource
from tests.helpers.documents import QUARANTINED, every_realdoc, realdoc
from tests.helpers.fakes import HashingEmbedderResource
from tests.helpers.harness import Deployment

ALL_FORMATS = "['**/*.txt', '**/*.md', '**/*.pdf', '**/*.docx', '**/*.html', '**/*.htm']"


def deployment_of(root, store_url, embedder, names: list[str]) -> Deployment:
    deployment = Deployment(root, store_url, embedder, max_bytes="20MB", patterns=ALL_FORMATS)
    for name in names:
        target = deployment.inbox / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(realdoc(name), target)
    deployment.sync()
    return deployment


def test_every_real_document_is_searchable_or_quarantined_with_its_reason(tmp_path, store_url):
    names = every_realdoc()
    assert len(names) > 60, "the real documents are missing from ../shared/realdocs"
    deployment = deployment_of(tmp_path, store_url, HashingEmbedderResource(), names)
    quarantined = {path: reason for _source, path, reason in deployment.store.documents.quarantined()}
    assert set(quarantined) == set(QUARANTINED), quarantined
    for path, reason in QUARANTINED.items():
        assert quarantined[path] == reason, path
    searchable = {hit.path for query in ("the data", "a function", "page") for hit in deployment.search(query, k=500)}
    stats = deployment.stats()["total"]
    assert stats["documents_active"] == len(names) - len(QUARANTINED), stats
    assert searchable and searchable <= set(names) - set(QUARANTINED), "no quarantined file is ever a hit"


REAL_QUERIES = {
    "National Hydro Network of Canada data model": "pdf/GeoBase_NHNC1_Data_Model_UML_EN.pdf",
    "the siege of Vicksburg": "pdf/Seige_of_Vicksburg_Sample_OCR.pdf",
}


@pytest.fixture(scope="module")
def real_embedder():
    return EmbedderResource()


def test_a_phrase_of_a_real_pdf_finds_it_first_on_the_real_model(tmp_path, store_url, real_embedder, capsys):
    names = [*REAL_QUERIES.values(), "pdf/attachment.pdf", "docx/test.docx", "html/libffi8_html_The-Basics.html"]
    deployment = deployment_of(tmp_path, store_url, real_embedder, names)
    assert deployment.store.documents.quarantined() == []
    for query, expected in REAL_QUERIES.items():
        [first, *_rest] = deployment.search(query, k=3)
        assert first.path == expected, (query, [hit.path for hit in deployment.search(query, k=3)])
    for query, (path, heading, page) in PLACES.items():
        [first, *_rest] = deployment.search(query, k=3)
        assert (first.path, first.heading) == (path, heading), (query, first)
        assert page is None and first.first_page is None or first.first_page <= page <= first.last_page, first
    config = str(deployment.root / "grace.yaml")
    for query, shown in CLI_PLACES.items():
        assert main(["search", query, "-k", "1", "--local", "-c", config]) == 0
        assert re.search(shown, capsys.readouterr().out), shown


# How `grace search` shows where a hit is.
CLI_PLACES = {
    "We are doing all we can to expedite the glorious victory": r"Seige_of_Vicksburg_Sample_OCR\.pdf pp?\. [0-9-]*4",
    "libffi assumes that you have a pointer to the function": r"libffi8_html_The-Basics\.html · 2\.1 The Basics #",
}


# A phrase, the file it is in, the heading it sits under there and its page.
PLACES = {
    "We are doing all we can to expedite the glorious victory": ("pdf/Seige_of_Vicksburg_Sample_OCR.pdf", "", 4),
    "libffi assumes that you have a pointer to the function you wish to call": (
        "html/libffi8_html_The-Basics.html",
        "2.1 The Basics",
        None,
    ),
    "python-docx was here too": ("docx/test.docx", "python-docx was here!", None),
}


def test_every_searchable_real_document_is_found_by_a_passage_of_it_with_its_place(tmp_path, store_url):
    """A chunk-long passage of each file, as its reader and the chunker make it, finds that file at
    rank 1 with the heading and pages of that passage: the place survives the store and search."""
    names = [name for name in every_realdoc() if name not in QUARANTINED]
    deployment = deployment_of(tmp_path, store_url, HashingEmbedderResource(), names)
    chunker = Chunker(deployment.embedder.tokenizer_file)
    for name in names:
        pieces = chunker.split_document(read_document(realdoc(name).parent, realdoc(name).name, 20 << 20).document)
        passage = pieces[len(pieces) // 2]
        hits = deployment.search(passage.text, k=10, mode="dense")
        same_text = [hit for hit in hits if hit.text == passage.text]
        place = (name, HEADING_SEPARATOR.join(passage.heading), passage.first_page, passage.last_page)
        assert same_text and hits[0].text == passage.text, name
        assert place in {(hit.path, hit.heading, hit.first_page, hit.last_page) for hit in same_text}, name
