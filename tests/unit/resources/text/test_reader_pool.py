"""The reader pool: files parse in several workers at once and land as they finish, a crash or a
time-out costs its own file only, and read_documents hands back every file once with its tag."""

from __future__ import annotations

import os
import signal
import time

import pytest

from bench.pdfs import many_page_pdf
from grace.resources.text.extraction import FileToRead, read_document, read_documents
from grace.resources.text.isolation import ReaderPool
from grace.resources.text.readers.base import ExtractedDocument, ReadLimits, Unreadable
from tests.helpers.documents import QUARANTINED, process_alive, realdoc

LIMITS = ReadLimits(max_text_chars=50_000_000, max_pages=100_000)
TEXT_PDF = "pdf/GeoBase_NHNC1_Data_Model_UML_EN.pdf"  # 19 pages with a text layer
SHORT_PDF = "pdf/pdflatex-outline.pdf"


def test_a_long_pdf_holds_up_no_other_file(tmp_path):
    """The long one is handed over first; the short one, parsed beside it, lands first."""
    long = many_page_pdf(realdoc(TEXT_PDF), 3000, tmp_path / "long.pdf").read_bytes()
    with ReaderPool(2) as pool:
        pool.submit("long", long, "long.pdf", LIMITS, 120)
        pool.submit("short", realdoc(SHORT_PDF).read_bytes(), "short.pdf", LIMITS, 120)
        assert pool.full and pool.in_flight == 2
        with pytest.raises(RuntimeError, match="every reader worker has a file"):
            pool.submit("third", b"%PDF", "third.pdf", LIMITS, 120)
        first, second = pool.landed(), pool.landed()
    assert [first[0], second[0]] == ["short", "long"]
    assert isinstance(second[1], ExtractedDocument) and second[1].sections[-1].last_page == 3000
    with pytest.raises(RuntimeError, match="no file is in flight"):
        pool.landed()


def test_a_crash_in_one_worker_costs_its_file_and_the_other_lands(tmp_path):
    big = many_page_pdf(realdoc(TEXT_PDF), 3000, tmp_path / "big.pdf").read_bytes()
    with ReaderPool(2) as pool:
        pool.submit("big", big, "big.pdf", LIMITS, 120)
        pool.submit("fine", realdoc(TEXT_PDF).read_bytes(), "fine.pdf", LIMITS, 120)
        victim = pool._workers[0].pid
        assert pool.landed()[0] == "fine", "the short file lands while the long one parses"
        os.kill(victim, signal.SIGKILL)
        tag, outcome = pool.landed()
        assert tag == "big" and isinstance(outcome, Unreadable), f"the read finished before the kill: {outcome!r}"
        assert str(outcome).startswith("crashed the reader process (signal SIGKILL)")
        pool.submit("after", realdoc(TEXT_PDF).read_bytes(), "after.pdf", LIMITS, 120)
        tag, outcome = pool.landed()
        assert tag == "after" and isinstance(outcome, ExtractedDocument), "a new worker reads on"


def test_a_file_out_of_time_is_stopped_and_the_pool_reads_on(tmp_path):
    slow = many_page_pdf(realdoc(TEXT_PDF), 600, tmp_path / "slow.pdf").read_bytes()
    with ReaderPool(2) as pool:
        pool.submit("slow", slow, "slow.pdf", LIMITS, 0.01)
        pool.submit("fine", realdoc(TEXT_PDF).read_bytes(), "fine.pdf", LIMITS, 120)
        landed = dict(pool.landed() for _ in range(2))
    assert isinstance(landed["fine"], ExtractedDocument)
    assert isinstance(landed["slow"], Unreadable)
    assert str(landed["slow"]).startswith("reading it took over 0.01 s (sources[].read_seconds)")


def test_read_documents_hands_back_every_file_once_as_read_document_would(tmp_path):
    names = {
        TEXT_PDF: "geobase.pdf",
        SHORT_PDF: "outline.pdf",
        "pdf/encrypted-file.pdf": "locked.pdf",
        "docx/test.docx": "test.docx",
        "html/libffi8_html_The-Basics.html": "basics.html",
    }
    for relative, name in names.items():
        (tmp_path / name).write_bytes(realdoc(relative).read_bytes())
    (tmp_path / "note.md").write_text("# Wrens\n\nSmall birds.\n", encoding="utf-8")
    (tmp_path / "slides.pptx").write_bytes(b"PK\x03\x04 not really")
    files = sorted(os.listdir(tmp_path)) + ["gone.pdf"]
    with ReaderPool(2) as pool:
        results = list(read_documents(pool, ((name, FileToRead(tmp_path, name, 20_000_000)) for name in files)))
        assert pool.in_flight == 0
    assert sorted(tag for tag, _ in results) == sorted(files), "each file once, none dropped"
    by_name = dict(results)
    assert by_name["gone.pdf"] is None
    assert by_name["locked.pdf"].problem == QUARANTINED["pdf/encrypted-file.pdf"]
    for name in files[:-1]:
        alone = read_document(tmp_path, name, 20_000_000)
        assert by_name[name] == alone, f"{name} reads the same in the pool as alone"


def test_a_pool_started_for_files_is_ready_before_the_first_one():
    with ReaderPool(2) as pool:
        pool.start(1)
        started = [worker.pid for worker in pool._workers]
        assert started[0] is not None and started[1] is None, "one file starts one worker"
        pool.start(5)
        assert all(worker.pid for worker in pool._workers), "never more than the pool's size"
        pids = [worker.pid for worker in pool._workers]
    deadline = time.monotonic() + 10
    while any(process_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(process_alive(pid) for pid in pids), "leaving the block stops every worker"
