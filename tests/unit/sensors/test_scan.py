"""Folder scanning: glob semantics, files recorded unread, renames, deletions, hostile names, time budgets."""

from __future__ import annotations

import hashlib
import os

import pytest
from watchdog.events import DirCreatedEvent, FileCreatedEvent, FileModifiedEvent

from grace.core.globs import glob_regex
from grace.core.manifest import SourceConfig
from grace.resources.text.extraction import read_document
from grace.resources.text.reading import unread_marker
from grace.sensors import scan
from grace.sensors.scan import Dirty, list_files, reconcile
from grace.sensors.watcher import Journal
from tests.helpers.harness import encrypting_store


@pytest.mark.parametrize(
    ("pattern", "path", "expected"),
    [
        ("**/*.txt", "a.txt", True),
        ("**/*.txt", "x/y/a.txt", True),
        ("*.txt", "x/a.txt", False),
        ("*.md", "notes.md", True),
        ("docs/**", "docs/a/b.bin", True),
        ("note?.md", "note1.md", True),
        ("note?.md", "note10.md", False),
        ("[ab].txt", "b.txt", True),
        ("[!ab].txt", "b.txt", False),
        ("*.txt", "a.txt.bak", False),
        ("a+b(1).txt", "a+b(1).txt", True),
    ],
)
def test_glob_semantics(pattern, path, expected):
    assert bool(glob_regex(pattern).match(path)) is expected


@pytest.fixture
def source(tmp_path):
    return SourceConfig(name="docs", path=tmp_path / "inbox", patterns=["**/*.txt"], max_bytes=100)


@pytest.fixture
def store(store_url):
    """Every scan test that records into a store runs on SQLite and on PostgreSQL."""
    opened = encrypting_store(store_url)
    yield opened
    opened.dispose()


@pytest.fixture
def hashed(monkeypatch) -> list[str]:
    """The paths the scan hashes, in order."""
    seen: list[str] = []
    real_content_hash = scan.content_hash
    monkeypatch.setattr(
        scan,
        "content_hash",
        lambda root, relative, limit: seen.append(relative) or real_content_hash(root, relative, limit),
    )
    return seen


def scan_source(store, source, dirty: Dirty | None = None):
    return reconcile(store, source, 1, dirty)


def write(source, relative: str, content: bytes) -> None:
    path = source.path / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)


def read_pending(store, source) -> None:
    """The documents step, as far as the disk hashes go: every pending file is read and recorded."""
    reads = store.documents.recording_reads()
    for row in store.documents.documents_to_read(0, 1):
        result = read_document(source.path, row.path, int(source.max_bytes))
        if result.problem:
            reads.quarantine(row, result.content_hash, result.stamp, result.problem)
        else:
            reads.activate(row, result.content_hash, result.stamp, result.text)
    reads.flush()


def unread(source, relative: str) -> str:
    stat = (source.path / relative).stat()
    return unread_marker(stat.st_size, stat.st_mtime_ns)


def test_symlinks_are_listed_but_never_followed(source, store, tmp_path, hashed):
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.txt").write_text("secret")
    (tmp_path / "outside" / "deep.txt").write_text("deep secret")
    write(source, "inside.txt", b"ok")
    os.symlink(tmp_path / "outside", source.path / "link")
    os.symlink(tmp_path / "outside" / "secret.txt", source.path / "secret.txt")
    assert set(list_files(source.path, source.patterns)) == {"inside.txt", "secret.txt"}  # nothing under link/
    assert sorted(o.path for o in scan_source(store, source).changed) == ["inside.txt", "secret.txt"]
    assert hashed == []  # a scan opens no file it need not
    read_pending(store, source)
    recorded = {path: row.disk_hash for path, row in store.ledger.documents_of("docs").items()}
    assert recorded["secret.txt"].startswith("refused:symlink:")  # the target was never read
    assert recorded["inside.txt"] == hashlib.sha256(b"ok").hexdigest()


def test_missing_folder_lists_nothing(tmp_path):
    assert list_files(tmp_path / "absent", ["**/*"]) == {}


def test_changes_moves_and_deletes_are_found_by_size_and_mtime(source, store, hashed):
    write(source, "a.txt", b"alpha")
    write(source, "sub/b.txt", b"beta")
    found = scan_source(store, source)
    assert [(o.path, o.disk_hash) for o in found.changed] == [
        ("a.txt", unread(source, "a.txt")),
        ("sub/b.txt", unread(source, "sub/b.txt")),
    ]
    assert scan_source(store, source).empty  # nothing changed: nothing recorded
    os.utime(source.path / "a.txt", ns=(1, 1))
    touched = scan_source(store, source)  # only the run that reads it can tell a touch from an edit
    assert [o.disk_hash for o in touched.changed] == [unread_marker(5, 1)] and not touched.touched
    (source.path / "sub" / "b.txt").rename(source.path / "c.txt")
    moved = scan_source(store, source)  # never read, so the same size and mtime tell
    assert moved.moved == [("sub/b.txt", "c.txt")] and not moved.changed and not moved.deleted
    (source.path / "a.txt").unlink()
    assert scan_source(store, source).deleted == ["a.txt"]
    assert set(store.ledger.documents_of("docs")) == {"c.txt"}
    assert hashed == []


def test_a_rename_of_a_read_file_is_told_by_its_content(source, store, hashed):
    write(source, "old.txt", b"same words")
    write(source, "gone.txt", b"other text")
    scan_source(store, source)
    read_pending(store, source)
    kept_id = store.ledger.documents_of("docs")["old.txt"].id
    (source.path / "old.txt").rename(source.path / "new.txt")
    os.utime(source.path / "new.txt", ns=(7, 7))  # as a copy and delete would leave it
    (source.path / "gone.txt").unlink()
    write(source, "lookalike.txt", b"alike text")  # the size of gone.txt, other content
    found = scan_source(store, source)
    assert found.moved == [("old.txt", "new.txt")] and found.deleted == ["gone.txt"]
    assert [o.path for o in found.changed] == ["lookalike.txt"]
    assert sorted(hashed) == ["lookalike.txt", "new.txt"]  # new paths of a vanished document's size only
    assert store.ledger.documents_of("docs")["new.txt"].id == kept_id


def test_out_of_time_a_scan_withholds_the_deletions_a_rename_may_explain(source, store, hashed, monkeypatch):
    for name in ["a.txt", "b.txt", "c.txt"]:
        write(source, name, name.encode() * 3)
    write(source, "odd.txt", b"another size")
    scan_source(store, source)
    read_pending(store, source)
    for name in ["a.txt", "b.txt", "c.txt"]:
        (source.path / name).rename(source.path / f"moved-{name}")
    (source.path / "odd.txt").unlink()
    monkeypatch.setattr(scan, "SCAN_BUDGET_SECONDS", 0)
    first = scan_source(store, source)  # hashes one file, at least, whatever the budget
    assert not first.finished and first.moved == [("a.txt", "moved-a.txt")] and first.deleted == ["odd.txt"]
    second = scan_source(store, source)
    assert not second.finished and second.moved == [("b.txt", "moved-b.txt")] and not second.deleted
    third = scan_source(store, source)
    assert third.finished and third.moved == [("c.txt", "moved-c.txt")]
    assert hashed == ["moved-a.txt", "moved-b.txt", "moved-c.txt"]
    assert set(store.ledger.documents_of("docs")) == {"moved-a.txt", "moved-b.txt", "moved-c.txt"}


def test_out_of_time_a_scan_records_a_batch_and_leaves_the_rest(source, store, monkeypatch):
    for n in range(10):
        write(source, f"n{n}.txt", b"text")
    monkeypatch.setattr(scan, "SCAN_BUDGET_SECONDS", 0)
    monkeypatch.setattr(scan, "RECORD_BATCH", 4)
    recorded = [scan_source(store, source) for _ in range(3)]
    assert [[o.path for o in part.changed] for part in recorded] == [
        ["n0.txt", "n1.txt", "n2.txt", "n3.txt"],
        ["n4.txt", "n5.txt", "n6.txt", "n7.txt"],
        ["n8.txt", "n9.txt"],
    ]
    assert [part.finished for part in recorded] == [False, False, True]
    assert len(store.ledger.documents_of("docs")) == 10 and scan_source(store, source).empty


def test_hostile_file_names(source, store):
    names = ["spa ce.txt", "ünï.txt", "new\nline.txt", "semi;colon'quote.txt", "-dash.txt"]
    for name in names:
        write(source, name, name.encode())
    assert sorted(o.path for o in scan_source(store, source).changed) == sorted(names)


def test_default_excludes_skip_hidden_lock_and_backup_files(source, store):
    for name in [
        "keep.txt",
        ".hidden.txt",
        ".#lock.txt",
        "~$report.txt",
        "draft.txt~",
        "sub/.DS_Store.txt",
        ".git/notes.txt",
        "sub/.cache/deep/x.txt",
        "sub/ok.txt",
    ]:
        write(source, name, b"text")
    assert sorted(o.path for o in scan_source(store, source).changed) == ["keep.txt", "sub/ok.txt"]


def test_excluded_folders_are_not_entered(source, monkeypatch):
    write(source, ".git/objects/a.txt", b"x")
    write(source, "notes/a.txt", b"x")
    entered = []
    real_scandir = os.scandir
    monkeypatch.setattr(os, "scandir", lambda folder: entered.append(str(folder)) or real_scandir(folder))
    assert set(list_files(source.path, source.patterns, exclude=source.exclude)) == {"notes/a.txt"}
    assert not any(".git" in folder for folder in entered)


def test_empty_exclude_ingests_everything(source, store):
    everything = source.model_copy(update={"exclude": []})
    write(source, ".hidden.txt", b"text")
    write(source, "backup.txt~", b"text")
    assert [o.path for o in scan_source(store, everything).changed] == [".hidden.txt"]  # patterns still apply


def test_marker_rows_are_looked_at_again_without_a_stat_change(source, store, hashed):
    write(source, "big.txt", b"x" * 500)
    scan_source(store, source)
    read_pending(store, source)
    assert store.ledger.documents_of("docs")["big.txt"].disk_hash.startswith("oversize:500:")
    hashed.clear()
    assert scan_source(store, source).empty  # still too big: the same marker, nothing recorded
    assert hashed == ["big.txt"]
    raised = source.model_copy(update={"max_bytes": 1000})
    [healed] = scan_source(store, raised).changed  # same size and mtime, but max_bytes was raised
    assert healed.disk_hash == hashlib.sha256(b"x" * 500).hexdigest()


def test_badly_named_files_are_quarantined_and_never_stop_the_scan(source, store):
    write(source, "good.txt", b"fine")
    bad = os.fsencode(source.path) + b"/caf\xe9.txt"
    with open(bad, "wb") as handle:
        handle.write(b"latin-1 name")
    assert [o.path for o in scan_source(store, source).changed] == ["good.txt"]
    [(source_name, path, reason)] = store.documents.quarantined()
    assert (source_name, path) == ("docs", "caf\\xe9.txt")
    assert reason == "file name is not valid UTF-8: caf\\xe9.txt; rename it"
    assert scan_source(store, source).empty and len(store.documents.quarantined()) == 1  # not recorded twice
    os.unlink(bad)
    assert scan_source(store, source).deleted == ["caf\\xe9.txt"]


def test_journal_applies_the_same_excludes(source):
    journal = Journal(source)
    at = lambda relative: str(source.path / relative)  # noqa: E731
    for event in [
        FileCreatedEvent(at("a.txt")),
        FileCreatedEvent(at(".#a.txt")),
        FileModifiedEvent(at("a.txt~")),
        FileCreatedEvent(at(".git/objects/x.txt")),
        DirCreatedEvent(at(".git/objects/ab")),
        DirCreatedEvent(at("notes")),
    ]:
        journal.on_any_event(event)
    assert journal.drain() == Dirty(files={"a.txt"}, folders={"notes"})
