"""Folder scanning: glob semantics, hashing only what changed, renames, deletions, hostile names."""

from __future__ import annotations

import hashlib
import os

import pytest
from watchdog.events import DirCreatedEvent, FileCreatedEvent, FileModifiedEvent

from grace.core.globs import glob_regex
from grace.core.manifest import SourceConfig
from grace.resources.store import Store
from grace.sensors.scan import Dirty, list_files
from grace.sensors.scan import reconcile as scan_source
from grace.sensors.watcher import Journal


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
    opened = Store(store_url)
    yield opened
    opened.dispose()


def write(source, relative: str, content: bytes) -> None:
    path = source.path / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)


def test_symlinks_are_listed_but_never_followed(source, store, tmp_path):
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.txt").write_text("secret")
    (tmp_path / "outside" / "deep.txt").write_text("deep secret")
    write(source, "inside.txt", b"ok")
    os.symlink(tmp_path / "outside", source.path / "link")
    os.symlink(tmp_path / "outside" / "secret.txt", source.path / "secret.txt")
    assert set(list_files(source.path, source.patterns)) == {"inside.txt", "secret.txt"}  # nothing under link/
    recorded = {o.path: o.disk_hash for o in scan_source(store, source).changed}
    assert recorded["secret.txt"].startswith("refused:symlink:")  # the target was never hashed
    assert recorded["inside.txt"] == hashlib.sha256(b"ok").hexdigest()


def test_missing_folder_lists_nothing(tmp_path):
    assert list_files(tmp_path / "absent", ["**/*"]) == {}


def test_changes_touches_moves_and_deletes(source, store):
    write(source, "a.txt", b"alpha")
    write(source, "sub/b.txt", b"beta")
    assert [o.path for o in scan_source(store, source).changed] == ["a.txt", "sub/b.txt"]
    assert scan_source(store, source).empty  # nothing changed: nothing hashed, nothing recorded
    os.utime(source.path / "a.txt", ns=(1, 1))
    touched = scan_source(store, source)
    assert [o.path for o in touched.touched] == ["a.txt"] and not touched.changed
    (source.path / "sub" / "b.txt").rename(source.path / "c.txt")
    moved = scan_source(store, source)
    assert moved.moved == [("sub/b.txt", "c.txt")] and not moved.changed and not moved.deleted
    (source.path / "a.txt").unlink()
    assert scan_source(store, source).deleted == ["a.txt"]
    assert set(store.documents_of("docs")) == {"c.txt"}


def test_oversize_files_are_not_hashed(source, store):
    write(source, "big.txt", b"x" * 500)
    [big] = scan_source(store, source).changed
    assert big.disk_hash.startswith("oversize:500:")


def test_hostile_file_names(source, store):
    names = ["spa ce.txt", "ünï.txt", "new\nline.txt", "semi;colon'quote.txt", "-dash.txt"]
    for name in names:
        write(source, name, name.encode())
    assert sorted(o.path for o in scan_source(store, source).changed) == sorted(names)


def test_default_excludes_skip_hidden_lock_and_backup_files(source, store):
    for name in ["keep.txt", ".hidden.txt", ".#lock.txt", "~$report.txt", "draft.txt~", "sub/.DS_Store.txt",
                 ".git/notes.txt", "sub/.cache/deep/x.txt", "sub/ok.txt"]:
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


def test_marker_rows_are_looked_at_again_without_a_stat_change(source, store):
    write(source, "big.txt", b"x" * 500)
    [big] = scan_source(store, source).changed
    assert big.disk_hash.startswith("oversize:")
    assert scan_source(store, source).empty  # still too big: the same marker, nothing recorded
    raised = source.model_copy(update={"max_bytes": 1000})
    [healed] = scan_source(store, raised).changed  # same size and mtime, but max_bytes was raised
    assert healed.disk_hash == hashlib.sha256(b"x" * 500).hexdigest()


def test_badly_named_files_are_quarantined_and_never_stop_the_scan(source, store):
    write(source, "good.txt", b"fine")
    bad = os.fsencode(source.path) + b"/caf\xe9.txt"
    with open(bad, "wb") as handle:
        handle.write(b"latin-1 name")
    assert [o.path for o in scan_source(store, source).changed] == ["good.txt"]
    [(source_name, path, reason)] = store.quarantined()
    assert (source_name, path) == ("docs", "caf\\xe9.txt")
    assert reason == "file name is not valid UTF-8: caf\\xe9.txt; rename it"
    assert scan_source(store, source).empty and len(store.quarantined()) == 1  # not recorded twice
    os.unlink(bad)
    assert scan_source(store, source).deleted == ["caf\\xe9.txt"]


def test_journal_applies_the_same_excludes(source):
    journal = Journal(source.path, source.patterns, source.exclude)
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
