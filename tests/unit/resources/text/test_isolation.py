"""The reader worker process: a crash, a time-out or a parser error costs one file, and the worker
is started again for the next; read_document picks the reader by suffix and says why it cannot."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from bench.pdfs import many_page_pdf
from grace.resources.text.extraction import read_document
from grace.resources.text.isolation import ReaderWorker
from grace.resources.text.readers.base import ReadLimits, Unreadable
from tests.helpers.documents import process_alive, realdoc

LIMITS = ReadLimits(max_text_chars=50_000_000, max_pages=100_000)
TEXT_PDF = "pdf/GeoBase_NHNC1_Data_Model_UML_EN.pdf"  # 19 pages with a text layer


def test_a_pdf_is_read_in_the_worker_and_the_worker_is_reused():
    data = realdoc(TEXT_PDF).read_bytes()
    with ReaderWorker() as worker:
        first = worker.extract(data, "geobase.pdf", LIMITS)
        pid = worker.pid
        second = worker.extract(data, "geobase.pdf", LIMITS)
        assert worker.pid == pid != os.getpid(), "one worker process, not this one"
    assert first == second and first.sections[0].first_page == 1
    assert worker.pid is None, "leaving the block stops the worker"


def test_a_reader_past_its_time_limit_is_stopped_and_the_next_file_reads(tmp_path):
    slow = many_page_pdf(realdoc(TEXT_PDF), 600, tmp_path / "slow.pdf").read_bytes()
    with ReaderWorker() as worker:
        worker.extract(realdoc(TEXT_PDF).read_bytes(), "geobase.pdf", LIMITS)  # started and warm
        stuck_pid = worker.pid
        with pytest.raises(Unreadable, match=r"reading it took over 0.01 s \(sources\[\].read_seconds\)"):
            worker.extract(slow, "slow.pdf", LIMITS, seconds=0.01)
        assert not process_alive(stuck_pid), "the stuck worker was killed, not left running"
        assert worker.extract(realdoc(TEXT_PDF).read_bytes(), "geobase.pdf", LIMITS).sections
        assert worker.pid != stuck_pid


def test_a_worker_that_dies_mid_file_quarantines_that_file_only(tmp_path):
    """No real file here crashes PDFium, so the crash is a SIGSEGV sent to the worker mid-read."""
    big = many_page_pdf(realdoc(TEXT_PDF), 3000, tmp_path / "big.pdf").read_bytes()
    outcome: list = []
    with ReaderWorker() as worker:
        worker.extract(realdoc(TEXT_PDF).read_bytes(), "geobase.pdf", LIMITS)
        victim = worker.pid

        def read_big() -> None:
            try:
                outcome.append(worker.extract(big, "big.pdf", LIMITS))
            except Unreadable as error:
                outcome.append(error)

        reading = threading.Thread(target=read_big)
        reading.start()
        time.sleep(0.3)
        os.kill(victim, signal.SIGSEGV)
        reading.join(timeout=60)
        assert not reading.is_alive()
        [error] = outcome
        assert isinstance(error, Unreadable), f"the read finished before the kill ({error!r}); make the PDF larger"
        assert str(error).startswith("crashed the reader process (signal SIGSEGV)")
        assert worker.extract(realdoc(TEXT_PDF).read_bytes(), "geobase.pdf", LIMITS).sections, "a new worker reads on"


def test_read_document_reads_each_format_and_names_what_it_cannot(tmp_path):
    for relative, name in ((TEXT_PDF, "geobase.pdf"), ("docx/test.docx", "test.docx")):
        (tmp_path / name).write_bytes(realdoc(relative).read_bytes())
    html = "libffi8_html_The-Basics.html"
    (tmp_path / html).write_bytes(realdoc(f"html/{html}").read_bytes())
    (tmp_path / "slides.pptx").write_bytes(b"PK\x03\x04 not really")
    (tmp_path / "empty.pdf").write_bytes(b"")
    with ReaderWorker() as worker:
        results = {
            name: read_document(tmp_path, name, 20_000_000, worker=worker) for name in sorted(os.listdir(tmp_path))
        }
    for name in ("geobase.pdf", "test.docx", html):
        assert results[name].problem is None and results[name].text.strip(), name
        assert len(results[name].content_hash) == 64
    assert results["slides.pptx"].problem.startswith("no reader for .pptx files; Grace reads ")
    assert results["empty.pdf"].problem == "empty file; add text to it"
    assert read_document(tmp_path, "gone.pdf", 1000) is None


def test_without_a_worker_read_document_starts_one_for_the_file(tmp_path):
    (tmp_path / "geobase.pdf").write_bytes(realdoc(TEXT_PDF).read_bytes())
    result = read_document(tmp_path, "geobase.pdf", 20_000_000)
    assert result.problem is None and result.document.sections[0].first_page == 1


def test_a_pdf_over_max_pages_is_quarantined_with_the_setting_to_raise(tmp_path):
    many_page_pdf(realdoc(TEXT_PDF), 12, tmp_path / "many.pdf")
    assert read_document(tmp_path, "many.pdf", 20_000_000, max_pages=12).problem is None
    problem = read_document(tmp_path, "many.pdf", 20_000_000, max_pages=11).problem
    assert "12 pages" in problem and "max_pages" in problem
