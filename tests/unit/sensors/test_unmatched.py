"""Nothing is silent: the full scan counts the files that match no pattern by suffix, the store keeps a
bounded count per source, and the words say which suffixes have a reader. On SQLite and PostgreSQL."""

from __future__ import annotations

import json
import os

import pytest
from sqlalchemy import select

from grace.core.manifest import SourceConfig
from grace.resources.db.schema import store_settings
from grace.resources.store.not_read import NOT_READ, NOT_READ_SUFFIXES, OTHER_SUFFIXES, describe_not_read
from grace.sensors.scan import Dirty, file_suffix, reconcile
from tests.helpers.harness import encrypting_store


@pytest.fixture
def source(tmp_path):
    return SourceConfig(name="docs", path=tmp_path / "inbox", patterns=["**/*.txt"])


@pytest.fixture
def store(store_url):
    opened = encrypting_store(store_url)
    yield opened
    opened.dispose()


def write(root, relative: str | bytes, content: bytes = b"x") -> None:
    path = os.path.join(os.fsencode(root), os.fsencode(relative))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as file:
        file.write(content)


def stored_value(store) -> str:
    with store.engine.connect() as connection:
        return connection.execute(select(store_settings.c.value).where(store_settings.c.name == NOT_READ)).scalar_one()


def test_the_full_scan_counts_unmatched_files_by_lower_cased_suffix_and_skips_excluded_ones(source, store):
    for name in ["a.txt", "deck.pptx", "Deck2.PPTX", "sub/deep/old.pptx", "sheet.xlsx", "Report.PDF", "Makefile"]:
        write(source.path, name)
    for excluded in [".hidden.pptx", ".git/config", ".git/packed.pack", "~$lock.docx", "backup.pptx~"]:
        write(source.path, excluded)
    found = reconcile(store, source, 1)
    assert [file.path for file in found.changed] == ["a.txt"]
    assert store.ledger.not_read() == {"docs": {".pptx": 3, ".xlsx": 1, ".pdf": 1, "(no suffix)": 1}}
    # .pdf has a reader: a pattern is missing (globs are case-sensitive, so **/*.pdf misses Report.PDF too).
    assert describe_not_read(store.ledger.not_read()) == {
        "docs": "3 .pptx, 1 without a suffix, 1 .xlsx (no reader); 1 .pdf (not in patterns)"
    }


def test_each_full_scan_replaces_the_counts_and_event_ticks_leave_them(source, store):
    for name in ["a.txt", "deck.pptx", "sheet.xlsx"]:
        write(source.path, name)
    reconcile(store, source, 1)
    write(source.path, "new.pptx")
    reconcile(store, source, 1, Dirty(files={"new.pptx"}, folders={""}))  # an event tick lists nothing unmatched
    assert store.ledger.not_read() == {"docs": {".pptx": 1, ".xlsx": 1}}

    (source.path / "deck.pptx").unlink()
    (source.path / "sheet.xlsx").rename(source.path / "sheet.txt")
    reconcile(store, source, 1)
    assert store.ledger.not_read() == {"docs": {".pptx": 1}}, "a removed or renamed file stops being counted"
    (source.path / "new.pptx").unlink()
    reconcile(store, source, 1)
    assert store.ledger.not_read() == {} and describe_not_read({}) == {}


def test_a_dotfile_is_the_users_exclude_or_a_file_without_a_suffix(tmp_path, store):
    default = SourceConfig(name="docs", path=tmp_path / "inbox", patterns=["**/*.txt"])
    for name in [".bashrc", ".hidden.pptx", "a.txt"]:
        write(default.path, name)
    reconcile(store, default, 1)
    assert store.ledger.not_read() == {}, "the default excludes hide dotfiles, so they are not counted"
    everything = SourceConfig(name="docs", path=default.path, patterns=["**/*.txt"], exclude=[])
    reconcile(store, everything, 1)
    assert store.ledger.not_read() == {"docs": {"(no suffix)": 1, ".pptx": 1}}  # ".bashrc" has no suffix


def test_weird_names_are_counted_under_printable_suffixes(source, store):
    write(source.path, "a.txt")
    write(source.path, b"caf\xe9.pptx")  # a non-UTF-8 name with an ordinary suffix
    write(source.path, b"data.\xff\xfe")  # a non-UTF-8 suffix
    write(source.path, "colour.\x1b[31m")  # a suffix that would colour a terminal
    write(source.path, "tab.\tx")
    write(source.path, b"caf\xe9.txt")  # matches: quarantined for its name (sensors/scan.py), not counted
    found = reconcile(store, source, 1)
    assert sorted(file.path for file in found.changed) == ["a.txt"]
    assert store.ledger.documents_of("docs")["caf\\xe9.txt"].status == "quarantined"
    counts = store.ledger.not_read()["docs"]
    assert counts == {".pptx": 1, ".\\xff\\xfe": 1, ".\\u001b[31m": 1, ".\\u0009x": 1}
    described = describe_not_read(store.ledger.not_read())["docs"]
    assert described.isprintable() and described.encode("utf-8")  # safe to print and to store as JSON
    assert file_suffix("Archive.TAR.GZ") == ".gz" and file_suffix("README") == "(no suffix)"


def test_a_folder_of_many_suffixes_keeps_twenty_and_an_other_count(source, store):
    write(source.path, "a.txt")
    for n in range(30):
        write(source.path, f"slide{n}.pptx")
    for n in range(300):
        write(source.path, f"junk{n}.r{n:04d}")  # 300 distinct suffixes of one file each
    reconcile(store, source, 1)
    counts = store.ledger.not_read()["docs"]
    assert len(counts) == NOT_READ_SUFFIXES + 1 and counts[".pptx"] == 30
    assert counts[OTHER_SUFFIXES] == 300 - (NOT_READ_SUFFIXES - 1)
    assert sum(counts.values()) == 330, "capped, but every file is still counted"
    assert describe_not_read(store.ledger.not_read())["docs"].endswith("; 281 with other suffixes")
    reconcile(store, source, 1)
    assert store.ledger.not_read()["docs"] == counts, "ties are broken by name: the same folder keeps the same 20"

    store.ledger.record_not_read("docs", {f".{n:x}": 1 for n in range(1_000_000)})  # a hostile million
    assert len(stored_value(store)) < 600 and store.ledger.not_read()["docs"][OTHER_SUFFIXES] == 1_000_000 - 20


def test_sources_keep_their_own_counts_and_a_removed_source_loses_them(source, store):
    store.ledger.record_not_read("docs", {".pptx": 2})
    store.ledger.record_not_read("notes", {".key": 1, ".pdf": 4})
    store.ledger.record_not_read("docs", {".xlsx": 1})  # replaces docs' counts, leaves notes' alone
    assert store.ledger.not_read() == {"docs": {".xlsx": 1}, "notes": {".pdf": 4, ".key": 1}}
    assert describe_not_read(store.ledger.not_read()) == {
        "docs": "1 .xlsx (no reader)",
        "notes": "1 .key (no reader); 4 .pdf (not in patterns)",
    }
    store.ledger.retire_other_sources(["docs"])  # notes left grace.yaml
    assert json.loads(stored_value(store)) == {"docs": {".xlsx": 1}}
