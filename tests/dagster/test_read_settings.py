"""What a file was read with is part of its stamp: a new reader version, or a changed max_bytes or
max_pages, reads the files it affects again, and search answers from the old chunks meanwhile."""

from __future__ import annotations

from dagster import AssetSelection, materialize
from sqlalchemy import select

from bench.pdfs import many_page_pdf
from grace.resources.db.schema import documents
from grace.resources.text.readers.markdown import MarkdownReader
from tests.helpers.documents import realdoc
from tests.helpers.fakes import HashingEmbedderResource
from tests.helpers.harness import Deployment

PELICANS = "Pelicans nest on the old pier every spring, and the harbour master counts them. " * 40  # ~3.3 KB
HERONS = "A small note on herons standing still in the shallows."
PDF_PATTERNS = "['**/*.txt', '**/*.md', '**/*.pdf']"


def deployment(root, store_url, **options) -> Deployment:
    """A deployment of root's grace.yaml as these options write it: a user's edit, and the reload after it."""
    return Deployment(root, store_url, HashingEmbedderResource(), shards=1, **options)


def found(deployment: Deployment, query: str) -> set[str]:
    return {hit.path for hit in deployment.search(query, k=5)}


def reasons(deployment: Deployment) -> dict[str, str]:
    return {path: reason for _source, path, reason in deployment.store.documents.quarantined()}


def stamps(deployment: Deployment) -> dict[str, str]:
    with deployment.store.engine.connect() as connection:
        return dict(connection.execute(select(documents.c.path, documents.c.read_settings)).all())


def test_lowering_max_bytes_quarantines_a_file_grown_too_large_and_raising_it_brings_it_back(tmp_path, store_url):
    first = deployment(tmp_path, store_url, max_bytes="1MB")
    first.drop("pelicans.txt", PELICANS)
    first.drop("herons.txt", HERONS)
    first.sync()
    assert found(first, "pelicans nest on the old pier") >= {"pelicans.txt"}

    lowered = deployment(tmp_path, store_url, max_bytes="1KB")
    lowered.sync()
    assert list(reasons(lowered)) == ["pelicans.txt"]
    assert "over the source's max_bytes (1000)" in reasons(lowered)["pelicans.txt"]
    assert "pelicans.txt" not in found(lowered, "pelicans nest on the old pier")
    assert found(lowered, HERONS) >= {"herons.txt"}

    raised = deployment(tmp_path, store_url, max_bytes="1MB")
    raised.sync()
    assert reasons(raised) == {} and found(raised, "pelicans nest on the old pier") >= {"pelicans.txt"}


def test_raising_max_pages_reads_a_long_pdf_it_refused(tmp_path, store_url):
    tight = deployment(tmp_path, store_url, max_bytes="20MB", patterns=PDF_PATTERNS, max_pages=10)
    many_page_pdf(realdoc("pdf/Seige_of_Vicksburg_Sample_OCR.pdf"), 24, tight.inbox / "long.pdf")
    tight.drop("herons.txt", HERONS)
    tight.sync()
    assert "over the source's max_pages (10)" in reasons(tight)["long.pdf"]
    text_stamp = stamps(tight)["herons.txt"]

    loose = deployment(tmp_path, store_url, max_bytes="20MB", patterns=PDF_PATTERNS, max_pages=100)
    loose.sync()
    assert reasons(loose) == {}
    [hit] = loose.search("We are doing all we can to expedite the glorious victory", k=1)
    assert hit.path == "long.pdf" and hit.first_page is not None
    assert stamps(loose)["herons.txt"] == text_stamp  # max_pages is nothing to a text file: not read again


def test_a_new_reader_version_reads_its_files_again_without_blanking_search(tmp_path, store_url, monkeypatch):
    first = deployment(tmp_path, store_url)
    first.drop("notes.md", f"# Birds\n\n{HERONS}\n")
    first.drop("herons.txt", HERONS + " Also egrets.")
    first.sync()
    chunk_ids = {hit.path: hit.chunk_id for hit in first.search(HERONS, k=5)}
    assert stamps(first)["notes.md"].startswith("MarkdownReader/1;")

    monkeypatch.setattr(MarkdownReader, "version", "2")
    upgraded = deployment(tmp_path, store_url)
    [request] = upgraded.tick()
    # The documents step alone: the file is read again, and its old chunks answer meanwhile.
    documents_only = materialize(
        upgraded.defs.assets,
        selection=AssetSelection.assets("documents"),
        partition_key=request.partition_key,
        resources=upgraded.resources,
        instance=upgraded.instance,
    )
    assert documents_only.success
    assert stamps(upgraded)["notes.md"].startswith("MarkdownReader/2;")
    assert found(upgraded, HERONS) == {"notes.md", "herons.txt"}
    upgraded.sync()
    after = {hit.path: hit for hit in upgraded.search(HERONS, k=5)}
    assert after["notes.md"].heading == "Birds"
    assert after["herons.txt"].chunk_id == chunk_ids["herons.txt"]  # the text reader did not change
    assert stamps(upgraded)["herons.txt"].startswith("PlainTextReader/1;")


def test_a_file_the_scan_refused_asks_for_no_run_once_recorded(tmp_path, store_url):
    """A name that is not UTF-8 is quarantined by the scan, before any reader: no reader setting applies
    to it, and it never counts as read with other settings, which would ask for a run every tick."""
    quiet = deployment(tmp_path, store_url)
    quiet.drop("herons.txt", HERONS)
    (quiet.inbox / b"caf\xe9.txt".decode("utf-8", "surrogateescape")).write_text("a note")
    quiet.sync()
    assert any("not valid UTF-8" in reason for reason in reasons(quiet).values())
    assert quiet.tick() == [] and quiet.tick() == []
