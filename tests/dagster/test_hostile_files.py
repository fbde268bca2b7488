"""Hostile files and folders, through real sensor ticks and real runs: links swapped in, special
files, bad names, quarantines that heal when their cause is fixed, and failed ticks that lose nothing."""

from __future__ import annotations

import contextlib
import ctypes
import os
import time
from types import SimpleNamespace

import pytest

from grace.core.manifest import SourceConfig
from grace.resources.text.extraction import read_document
from grace.resources.wiring.dagster_resources import EmbedderResource
from grace.sensors.watcher import Journal
from tests.helpers.fakes import HashingEmbedderResource
from tests.helpers.harness import Deployment, tick_until

SECRET = "the launch codes are zero zero zero zero"
BAD_NAME = b"caf\xe9.txt"  # Latin-1 bytes: not UTF-8


@pytest.fixture
def deployment(tmp_path, store_url):
    return Deployment(tmp_path, store_url, HashingEmbedderResource(), shards=2)


@pytest.fixture
def outside(tmp_path):
    """A folder next to the watched one, holding a file no search may ever return."""
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "note.txt").write_text(SECRET)
    return folder


def run(deployment, requests) -> None:
    for request in requests:
        assert deployment.ingest(int(request.partition_key)).success


def searched_texts(deployment, query: str) -> list[str]:
    return [hit.text for hit in deployment.search(query, k=10)]


def reasons(deployment) -> dict[str, str]:
    return {path: reason for _source, path, reason in deployment.store.documents.quarantined()}


def test_file_swapped_for_a_symlink_is_quarantined_never_followed(deployment, outside):
    deployment.drop("garden.txt", "codes for the garden gate")
    note = deployment.drop("note.txt", "an ordinary note")
    requests = deployment.tick()
    note.unlink()
    note.symlink_to(outside / "note.txt")  # swapped between the tick and the run
    run(deployment, requests)
    assert not any("launch" in text for text in searched_texts(deployment, "launch codes"))
    assert reasons(deployment) == {"note.txt": "is a symlink; Grace never follows links out of a watched folder"}
    deployment.sync(rebuild=False)  # the next tick sees the link itself: it stays quarantined
    assert list(reasons(deployment)) == ["note.txt"]
    assert [hit.path for hit in deployment.search("launch codes")] == ["garden.txt"]
    assert deployment.tick() == []  # settled: re-examining the quarantine requests nothing


def test_parent_folder_swapped_for_a_symlink_is_never_followed(deployment, outside, tmp_path):
    deployment.drop("sub/note.txt", "an ordinary note in a folder")
    requests = deployment.tick()
    (deployment.inbox / "sub").rename(tmp_path / "moved_away")
    (deployment.inbox / "sub").symlink_to(outside)
    run(deployment, requests)
    assert not any("launch" in text for text in searched_texts(deployment, "launch codes"))
    assert reasons(deployment)["sub/note.txt"].startswith(
        f"resolves outside the watched folder (to {outside / 'note.txt'})"
    )
    deployment.sync(rebuild=False)  # the full scan never enters a linked folder: the document is gone
    assert "sub/note.txt" not in deployment.store.ledger.documents_of("docs")
    assert searched_texts(deployment, "launch codes") == []


@pytest.mark.timeout(60)
def test_fifos_never_block_a_tick_or_a_run(deployment):
    os.mkfifo(deployment.inbox / "pipe.txt")
    swapped = deployment.drop("swapped.txt", "a file that becomes a pipe")
    requests = deployment.tick()
    swapped.unlink()
    os.mkfifo(swapped)
    run(deployment, requests)
    fifo_reason = "is a FIFO/special file; only regular files are ingested"
    assert reasons(deployment) == {"pipe.txt": fifo_reason, "swapped.txt": fifo_reason}
    deployment.sync(rebuild=False)
    assert reasons(deployment) == {"pipe.txt": fifo_reason, "swapped.txt": fifo_reason}


def test_directory_renamed_over_a_file(deployment, tmp_path):
    note = deployment.drop("note.txt", "a note that becomes a folder")
    requests = deployment.tick()
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "inner.txt").write_text("a note about walruses inside the folder")
    note.unlink()
    folder.rename(note)
    run(deployment, requests)
    assert reasons(deployment) == {"note.txt": "is a directory, not a file"}
    deployment.sync(rebuild=False)
    assert reasons(deployment) == {}
    assert [hit.path for hit in deployment.search("walruses", k=1)] == ["note.txt/inner.txt"]


def test_file_that_grows_past_max_bytes_after_the_tick_is_quarantined(deployment):
    grower = deployment.drop("grow.txt", "small at first")
    requests = deployment.tick()
    grower.write_text("grown " * 400)  # 2,400 bytes against max_bytes 1KB
    run(deployment, requests)
    assert reasons(deployment)["grow.txt"].startswith("2400 bytes is over the source's max_bytes (1000)")
    assert searched_texts(deployment, "grown") == []


def test_reader_stops_at_max_bytes_even_when_the_size_it_was_told_is_small(tmp_path, monkeypatch):
    (tmp_path / "grows.txt").write_bytes(b"y" * 50_000)
    real_fstat, real_read, read_sizes = os.fstat, os.read, []

    def fstat_before_growth(descriptor):
        seen = real_fstat(descriptor)
        return SimpleNamespace(st_mode=seen.st_mode, st_size=10, st_mtime_ns=seen.st_mtime_ns)

    def counting_read(descriptor, size):
        block = real_read(descriptor, size)
        read_sizes.append(len(block))
        return block

    monkeypatch.setattr(os, "fstat", fstat_before_growth)
    monkeypatch.setattr(os, "read", counting_read)
    result = read_document(tmp_path, "grows.txt", max_bytes=1000)
    monkeypatch.undo()
    assert result.text is None and "over the source's max_bytes (1000)" in result.problem
    assert result.content_hash.startswith("oversize:")
    assert sum(read_sizes) == 1001


def test_without_proc_a_linked_parent_is_still_refused(tmp_path, outside, monkeypatch):
    (tmp_path / "inbox").mkdir()
    (tmp_path / "inbox" / "sub").symlink_to(outside)
    real_readlink = os.readlink

    def no_proc(path, *args, **kwargs):
        if str(path).startswith("/proc/"):
            raise FileNotFoundError(path)
        return real_readlink(path, *args, **kwargs)

    monkeypatch.setattr(os, "readlink", no_proc)
    result = read_document(tmp_path / "inbox", "sub/note.txt", max_bytes=1000)
    assert result.text is None and result.problem.startswith("resolves outside the watched folder")


def test_a_watched_folder_that_is_a_link_is_read_but_never_left(tmp_path, outside):
    (tmp_path / "real" / "sub").mkdir(parents=True)
    (tmp_path / "real" / "note.txt").write_text("a note about wrens")
    (tmp_path / "real" / "away").symlink_to(outside)
    (tmp_path / "inbox").symlink_to(tmp_path / "real")
    assert read_document(tmp_path / "inbox", "note.txt", max_bytes=1000).text == "a note about wrens"
    assert read_document(tmp_path / "inbox", "sub/../note.txt", max_bytes=1000).text == "a note about wrens"
    escaped = read_document(tmp_path / "inbox", "away/note.txt", max_bytes=1000)
    assert escaped.text is None and escaped.problem.startswith("resolves outside the watched folder")


def write_bad_name(folder, content: bytes) -> bytes:
    path = os.fsencode(folder) + b"/" + BAD_NAME
    with open(path, "wb") as handle:
        handle.write(content)
    return path


BAD_REASON = "file name is not valid UTF-8: caf\\xe9.txt; rename it"


def test_badly_named_file_never_stops_a_full_scan(deployment):
    write_bad_name(deployment.inbox, b"a note with a Latin-1 name")
    deployment.drop("good.txt", "a note about herons")
    deployment.sync(rebuild=False)
    assert [hit.path for hit in deployment.search("herons", k=1)] == ["good.txt"]
    assert reasons(deployment) == {"caf\\xe9.txt": BAD_REASON}
    assert deployment.tick() == []  # recorded once, then left alone


def test_badly_named_file_never_stops_an_event_tick(tmp_path, store_url):
    deployment = Deployment(tmp_path, store_url, HashingEmbedderResource(), shards=2, events=True)
    assert deployment.tick() == []  # startup: a full scan of the empty folder
    write_bad_name(deployment.inbox, b"a note with a Latin-1 name")
    deployment.drop("good.txt", "a note about herons")
    requests = tick_until(deployment, lambda _requests: "good.txt" in deployment.store.ledger.documents_of("docs"))
    run(deployment, requests)
    assert [hit.path for hit in deployment.search("herons", k=1)] == ["good.txt"]
    assert reasons(deployment) == {"caf\\xe9.txt": BAD_REASON}


CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 1, 2


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


@contextlib.contextmanager
def file_permissions_apply_to_root():
    """Root reads mode-000 files; without CAP_DAC_* in its effective set it cannot.

    Capabilities are per thread and stay permitted, so this thread gets them back afterwards.
    """
    if os.geteuid() != 0:
        yield
        return
    libc = ctypes.CDLL(None, use_errno=True)
    header, data = _CapHeader(0x20080522, 0), (_CapData * 2)()  # _LINUX_CAPABILITY_VERSION_3
    assert libc.capget(ctypes.byref(header), data) == 0, os.strerror(ctypes.get_errno())
    saved = data[0].effective
    data[0].effective &= ~((1 << CAP_DAC_OVERRIDE) | (1 << CAP_DAC_READ_SEARCH))
    assert libc.capset(ctypes.byref(header), data) == 0, os.strerror(ctypes.get_errno())
    try:
        yield
    finally:
        data[0].effective = saved
        assert libc.capset(ctypes.byref(header), data) == 0, os.strerror(ctypes.get_errno())


@pytest.mark.parametrize("events", [True, False], ids=["attrib event", "full scan"])
def test_chmod_fix_heals_the_quarantine(tmp_path, store_url, events):
    deployment = Deployment(tmp_path, store_url, HashingEmbedderResource(), shards=2, events=events)
    assert deployment.tick() == []  # startup scan; with events, the watcher runs from now on
    locked = deployment.drop("locked.txt", "a note about otters")
    locked.chmod(0)
    with file_permissions_apply_to_root():
        run(deployment, tick_until(deployment, bool))
        assert reasons(deployment) == {"locked.txt": "cannot be read (Permission denied); check its permissions"}
    locked.chmod(0o644)  # neither size nor mtime changes: only the marker says to look again
    run(deployment, tick_until(deployment, bool))
    assert reasons(deployment) == {}
    assert [hit.path for hit in deployment.search("otters", k=1)] == ["locked.txt"]


def test_raising_max_bytes_in_grace_yaml_heals_the_quarantine(tmp_path, store_url):
    small = Deployment(tmp_path, store_url, HashingEmbedderResource(), shards=2, max_bytes="1KB")
    small.drop("big.txt", "a long note about lighthouses " * 60)
    small.sync(rebuild=False)
    assert reasons(small)["big.txt"].startswith("1800 bytes is over the source's max_bytes (1000)")
    raised = Deployment(tmp_path, store_url, HashingEmbedderResource(), shards=2, max_bytes="1MB")
    raised.sync(rebuild=False)  # a new code location starts with a full scan
    assert reasons(raised) == {}
    assert [hit.path for hit in raised.search("lighthouses", k=1)] == ["big.txt"]


class InjectedCommitFailure(Exception):
    pass


def test_a_failed_commit_loses_no_watchdog_event(tmp_path, store_url, monkeypatch):
    deployment = Deployment(tmp_path, store_url, HashingEmbedderResource(), shards=2, events=True)
    assert deployment.tick() == []
    store, failures = deployment.store, []
    real_record_scan = store.ledger.record_scan

    def record_scan_failing_once(*args, **kwargs):
        if not failures:
            failures.append(args)
            raise InjectedCommitFailure("the database went away mid-commit")
        return real_record_scan(*args, **kwargs)

    monkeypatch.setattr(store.ledger, "record_scan", record_scan_failing_once)
    deployment.drop("new.txt", "a note about puffins")
    deadline = time.monotonic() + 15
    while not failures and time.monotonic() < deadline:
        with contextlib.suppress(InjectedCommitFailure):
            deployment.tick()
        time.sleep(0.2)
    assert [[observed.path for observed in changed] for _source, changed, *_rest in failures] == [["new.txt"]]
    requests = deployment.tick()  # no new event arrives: only the batch given back can tell
    assert "new.txt" in store.ledger.documents_of("docs") and requests
    run(deployment, requests)
    assert [hit.path for hit in deployment.search("puffins", k=1)] == ["new.txt"]


def test_journal_takes_back_a_failed_batch(tmp_path):
    journal = Journal(SourceConfig(name="docs", path=tmp_path, patterns=["**/*.txt"], exclude=[]))
    journal.give_back(journal.drain())
    assert journal.drain().files == set()
    journal.give_back(None)  # a failed full scan: the next tick must scan fully again
    assert journal.drain() is None


def test_hidden_and_linked_files_never_reach_search_on_the_real_model(tmp_path, store_url, outside):
    deployment = Deployment(tmp_path, store_url, EmbedderResource(), shards=2)
    deployment.drop("garden.txt", "Prune the roses in early spring and water the tomatoes every evening.")
    deployment.drop(".secrets/plans.txt", SECRET)
    deployment.drop("~$draft.txt", SECRET)
    note = deployment.drop("note.txt", "Minutes of the weekly staff meeting.")
    requests = deployment.tick()
    note.unlink()
    note.symlink_to(outside / "note.txt")
    run(deployment, requests)
    hits = deployment.search("nuclear missile launch codes", k=5)
    assert [hit.path for hit in hits] == ["garden.txt"]
    assert not any("launch" in hit.text for hit in hits)
