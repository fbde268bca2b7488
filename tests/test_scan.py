"""Folder scanning: glob semantics, hashing only what changed, renames, deletions, hostile names."""

from __future__ import annotations

import os

import pytest

from grace.core.manifest import SourceConfig
from grace.resources.store import Store
from grace.sensors.scan import glob_regex, list_files
from grace.sensors.scan import reconcile as scan_source


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
def store(tmp_path):
    return Store(f"sqlite:///{tmp_path / 'grace.db'}")


def write(source, relative: str, content: bytes) -> None:
    path = source.path / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)


def test_symlinks_are_not_followed_out_of_the_folder(source, tmp_path):
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.txt").write_text("secret")
    write(source, "inside.txt", b"ok")
    os.symlink(tmp_path / "outside", source.path / "link")
    os.symlink(tmp_path / "outside" / "secret.txt", source.path / "secret.txt")
    assert set(list_files(source.path, source.patterns)) == {"inside.txt"}


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
