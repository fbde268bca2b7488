"""The task inbox: every bad input lands in rejected/ with its reason, good files become received tasks,
and an intake killed at any point (a real SIGKILL) loses nothing and takes nothing twice."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from grace.core.manifest import load_manifest
from grace.resources.store.store import Store
from grace.resources.store.taskbook import RECEIVED
from grace.resources.tasks.inbox import ENVELOPE_BYTES, TaskInbox

REPO = Path(__file__).resolve().parents[4]
SEED_INTENT = {"intent_id": "test_intent", "goal": "Test goal", "domain": "test", "sla_ms": 30000, "priority": "normal"}
SEARCH = {"type": "search", "origin": "cli", "payload": {"query": "cats"}}


def manifest_yaml(store_url: str) -> str:
    return (
        f"state_dir: state\nstore: {store_url}\n"
        "sources:\n  - {name: docs, path: inbox, patterns: ['**/*.md']}\n"
        "routing:\n  max_payload_bytes: 200\n  origins: {intent: 12}\n"
        "  routes: {test: search, search: search, ingest: ingest, reindex: reindex, boom: boom}\n"
    )


# A hostile project handler: its payload validator raises something pydantic does not catch.
BOOM_HANDLER = """
from pydantic import BaseModel, field_validator
from grace.core.handler_api import handler

class BoomPayload(BaseModel):
    fuse: str = ""

    @field_validator("fuse")
    @classmethod
    def _explode(cls, value):
        if value == "lit":
            raise RuntimeError("the validator blew up")
        return value

@handler("boom", payload=BoomPayload)
def boom(payload, context):
    return {}
"""


@pytest.fixture
def setup(tmp_path, store_url):
    (tmp_path / "handlers").mkdir()
    (tmp_path / "handlers" / "boom.py").write_text(BOOM_HANDLER)
    (tmp_path / "grace.yaml").write_text(manifest_yaml(store_url))
    manifest = load_manifest(tmp_path / "grace.yaml")
    store = Store(store_url)
    yield manifest, store, TaskInbox(manifest, store.tasks)
    store.dispose()


def drop(folder: Path, name: str, content, age: float = 5.0) -> Path:
    """Write a task file as if it had been written `age` seconds ago (settled unless age is 0)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    data = content if isinstance(content, bytes) else (content if isinstance(content, str) else json.dumps(content))
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    stamp = time.time() - age
    os.utime(path, (stamp, stamp))
    return path


def explanation(inbox_folder: Path, name: str) -> dict:
    return json.loads((inbox_folder / "rejected" / f"{name}.error.json").read_text())


BAD_FILES = {
    "malformed.json": ('{"type": "search", "origin": "cli",', "(json)", "malformed JSON at line 1"),
    "missing_field.json": ({"origin": "cli", "payload": {}}, "type", "is required"),
    "wrong_field.json": ({**SEARCH, "sla_ms": "soon"}, "sla_ms", "valid integer"),
    "unknown_field.json": ({**SEARCH, "colour": "red"}, "colour", "not a known field"),
    "unknown_type.json": ({**SEARCH, "type": "teleport"}, "type", "unknown task type 'teleport'"),
    "too_big.json": ({**SEARCH, "payload": {"query": "x" * 300}}, "payload", "over the cap of 200"),
    "priority_high.json": ({**SEARCH, "priority": 101}, "priority", "101 is out of range"),
    "priority_name.json": ({**SEARCH, "priority": "urgent"}, "priority", "'urgent' is not a priority"),
    "sla_zero.json": ({**SEARCH, "sla_ms": 0}, "sla_ms", "greater than or equal to 1"),
    "sla_huge.json": ({**SEARCH, "sla_ms": 10**12}, "sla_ms", "less than or equal to"),
    "dotdot.json": (
        {"type": "ingest", "origin": "cli", "payload": {"title": "t", "content": "c", "path": "../x.md"}},
        "payload.path",
        "outside the watched roots",
    ),
    "etc_passwd.json": (
        {"type": "ingest", "origin": "cli", "payload": {"title": "t", "content": "c", "path": "/etc/passwd"}},
        "payload.path",
        "outside the watched roots",
    ),
    "array.json": ("[1, 2]", "(top level)", "a JSON object, not list"),
    "latin1.json": (b'{"type": "search", "origin": "caf\xe9"}', "(file)", "not UTF-8"),
    "notes.txt": (SEARCH, "(file)", "task files end in .json"),
    "hostile_handler.json": (
        {"type": "boom", "origin": "cli", "payload": {"fuse": "lit"}},
        "(file)",
        "RuntimeError: the validator blew up",
    ),
}


def test_every_bad_input_is_rejected_with_its_reason_and_never_blocks_the_good_ones(setup):
    manifest, store, inbox = setup
    folder = manifest.routing.inbox
    for number, (name, (content, _field, _message)) in enumerate(BAD_FILES.items()):
        drop(folder, name, content, age=30 - number)
        drop(folder, f"good_{number:02d}.json", {**SEARCH, "task_id": f"good-{number}"}, age=30 - number)

    result = inbox.intake()

    assert sorted(result.accepted) == sorted(f"good-{number}" for number in range(len(BAD_FILES)))
    assert sorted(name for name, _reason in result.rejected) == sorted(BAD_FILES)
    reasons = dict(result.rejected)
    for name, (content, field, message) in BAD_FILES.items():
        assert message in reasons[name], (name, reasons[name])
        kept = folder / "rejected" / name
        assert kept.read_bytes() == drop(folder.parent / "copy", name, content).read_bytes(), "moved, unchanged"
        explained = explanation(folder, name)
        assert explained["file"] == name and explained["rejected_at"].endswith("+00:00")
        assert any(e["field"].startswith(field) and message in e["message"] for e in explained["errors"]), explained
    assert sorted(os.listdir(folder)) == [".claimed", "rejected"], "no file left behind"
    assert os.listdir(folder / ".claimed") == []
    assert store.tasks.counts_by_status() == {RECEIVED: len(BAD_FILES)}
    record = store.tasks.get("good-0")
    assert (record.submitted_via, record.origin, record.handler) == ("inbox", "cli", "search")


def test_a_duplicate_task_id_rejects_the_later_file_and_keeps_the_first(setup):
    manifest, store, inbox = setup
    folder = manifest.routing.inbox
    drop(folder, "first.json", {**SEARCH, "task_id": "same"}, age=20)
    drop(folder, "second.json", {**SEARCH, "task_id": "same", "payload": {"query": "dogs"}}, age=10)

    result = inbox.intake()

    assert result.accepted == ["same"]
    assert [name for name, _ in result.rejected] == ["second.json"]
    assert json.loads(store.tasks.get("same").payload) == {"query": "cats"}
    assert explanation(folder, "second.json")["errors"][0]["field"] == "task_id"

    drop(folder, "second.json", {**SEARCH, "task_id": "same"})  # sent again: rejected again, kept apart
    assert [name for name, _ in inbox.intake().rejected] == ["second.json"]
    assert (folder / "rejected" / "second-1.json").exists()
    assert explanation(folder, "second-1.json")["file"] == "second.json"
    assert (folder / "rejected" / "second.json").exists(), "the first rejection is kept"


def test_the_seed_intent_is_a_task_of_origin_intent_typed_by_its_domain(setup):
    manifest, store, inbox = setup
    drop(manifest.routing.inbox, "intent.json", SEED_INTENT)

    assert inbox.intake().accepted == ["test_intent"]

    task = store.tasks.get("test_intent")
    assert (task.origin, task.type, task.handler, task.sla_ms, task.priority) == ("intent", "test", "search", 30000, 0)


def test_a_task_without_id_takes_its_claim_as_id(setup):
    manifest, store, inbox = setup
    drop(manifest.routing.inbox, "anonymous.json", SEARCH)

    [task_id] = inbox.intake().accepted

    record = store.tasks.get(task_id)
    assert record.claim == task_id and len(task_id) == 32
    assert store.tasks.task_of_claim(task_id) == task_id


def test_hidden_files_subfolders_and_half_written_files_are_left_alone(setup):
    manifest, store, inbox = setup
    folder = manifest.routing.inbox
    drop(folder, ".editor.swp", "not json")
    drop(folder / "drafts", "later.json", SEARCH)
    fresh = drop(folder, "fresh.json", {**SEARCH, "task_id": "fresh"}, age=0)

    assert inbox.intake().accepted == []

    assert (folder / ".editor.swp").exists() and (folder / "drafts" / "later.json").exists() and fresh.exists()
    stamp = time.time() - 2
    os.utime(fresh, (stamp, stamp))
    assert inbox.intake().accepted == ["fresh"]
    assert not fresh.exists() and (folder / ".editor.swp").exists()


def test_links_and_fifos_are_rejected_as_themselves_never_followed_or_opened(setup, tmp_path):
    manifest, store, inbox = setup
    folder = manifest.routing.inbox
    folder.mkdir(parents=True)
    outside = drop(tmp_path / "elsewhere", "valid.json", {**SEARCH, "task_id": "via-link"})
    (folder / "link.json").symlink_to(outside)
    (folder / "dangling.json").symlink_to(tmp_path / "nowhere.json")
    os.mkfifo(folder / "pipe.json")  # opening it would block this test forever
    for name in ("link.json", "dangling.json", "pipe.json"):
        stamp = time.time() - 5
        os.utime(folder / name, (stamp, stamp), follow_symlinks=False)

    result = inbox.intake()

    assert result.accepted == [] and store.tasks.get("via-link") is None
    reasons = dict(result.rejected)
    assert "symlink" in reasons["link.json"] and "symlink" in reasons["dangling.json"]
    assert "FIFO" in reasons["pipe.json"]
    rejected = folder / "rejected"
    assert os.readlink(rejected / "link.json") == str(outside), "the link itself was moved"
    assert outside.exists() and json.loads(outside.read_text())["task_id"] == "via-link", "its target untouched"
    assert stat.S_ISFIFO(os.lstat(rejected / "pipe.json").st_mode)
    assert explanation(folder, "dangling.json")["errors"][0]["field"] == "(file)"


def test_an_oversized_file_is_rejected_without_being_read(setup):
    manifest, store, inbox = setup
    huge = drop(manifest.routing.inbox, "huge.json", b"{")
    with open(huge, "r+b") as handle:
        handle.truncate(8 << 30)  # 8 GiB, sparse: reading it whole would take minutes and the memory
    stamp = time.time() - 5
    os.utime(huge, (stamp, stamp))
    just_over = drop(manifest.routing.inbox, "just_over.json", b" " * (200 + ENVELOPE_BYTES + 1))

    started = time.monotonic()
    result = inbox.intake()

    assert time.monotonic() - started < 5
    reasons = dict(result.rejected)
    assert f"is over {200 + ENVELOPE_BYTES} bytes" in reasons["huge.json"]
    assert f"is over {200 + ENVELOPE_BYTES} bytes" in reasons[just_over.name]
    assert (manifest.routing.inbox / "rejected" / "huge.json").stat().st_size == 8 << 30


CRASH_SCRIPT = """
import sys
from grace.core.manifest import load_manifest
from grace.resources.tasks.inbox import TaskInbox
from grace.resources.store.store import Store

manifest = load_manifest(sys.argv[1])
TaskInbox(manifest, Store(manifest.store_url).tasks).intake()
"""


@pytest.mark.parametrize("point", ["inbox.after_claim", "inbox.after_accept"])
def test_an_intake_killed_at_any_point_loses_nothing_and_duplicates_nothing(setup, tmp_path, point):
    manifest, store, inbox = setup
    folder = manifest.routing.inbox
    drop(folder, "named.json", {**SEARCH, "task_id": "named"}, age=20)
    drop(folder, "anonymous.json", SEARCH, age=10)

    killed = subprocess.run(
        [sys.executable, "-c", CRASH_SCRIPT, str(tmp_path / "grace.yaml")],
        env={**os.environ, "GRACE_FAILPOINT": point},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert killed.returncode == -9, killed.stderr
    claimed = os.listdir(folder / ".claimed")
    assert len(claimed) == 1 and claimed[0].endswith("__named.json"), "died holding its first claim"
    assert store.tasks.counts_by_status() == ({RECEIVED: 1} if point == "inbox.after_accept" else {})

    result = inbox.intake()

    accepted_now = {"inbox.after_claim": 2, "inbox.after_accept": 1}[point]
    assert len(result.accepted) == accepted_now and result.rejected == []
    assert store.tasks.counts_by_status() == {RECEIVED: 2}, "each file became exactly one task"
    assert store.tasks.get("named") is not None
    assert os.listdir(folder / ".claimed") == [] and os.listdir(folder / "rejected") == []
    assert sorted(os.listdir(folder)) == [".claimed", "rejected"]
    assert inbox.intake().accepted == [] and store.tasks.counts_by_status() == {RECEIVED: 2}


def test_a_file_dropped_into_claimed_by_hand_is_claimed_properly(setup):
    manifest, store, inbox = setup
    drop(manifest.routing.inbox / ".claimed", "stray.json", {**SEARCH, "task_id": "stray"})

    assert inbox.intake().accepted == ["stray"]
    assert store.tasks.get("stray").claim is not None
    assert os.listdir(manifest.routing.inbox / ".claimed") == []


def test_hostile_file_names_are_taken_in_like_any_other(setup):
    manifest, store, inbox = setup
    folder = manifest.routing.inbox
    long_name = "n" * 240 + ".json"  # too long to carry a claim prefix as it is
    drop(folder, long_name, {**SEARCH, "task_id": "long"}, age=30)
    drop(folder, "line\nbreak.json", {**SEARCH, "task_id": "newline"}, age=20)
    raw = os.fsencode(folder) + b"/caf\xe9.json"  # not UTF-8
    with open(raw, "wb") as handle:
        handle.write(b"{broken")
    os.utime(raw, (time.time() - 10, time.time() - 10))

    result = inbox.intake()

    assert sorted(result.accepted) == ["long", "newline"] and result.deferred == []
    assert [name for name, _ in result.rejected] == ["caf\\xe9.json"]
    assert explanation(folder, "caf\udce9.json")["file"] == "caf\\xe9.json"
    assert sorted(os.listdir(folder)) == [".claimed", "rejected"] and os.listdir(folder / ".claimed") == []


def test_a_rejection_that_cannot_be_written_keeps_the_file_and_blocks_no_other(setup):
    manifest, store, inbox = setup
    folder = manifest.routing.inbox
    drop(folder, "bad.json", "{", age=20)
    drop(folder, "good.json", {**SEARCH, "task_id": "good"}, age=10)
    (folder / "rejected").mkdir(parents=True)
    (folder / "rejected").chmod(0o500)
    if os.access(folder / "rejected", os.W_OK):
        (folder / "rejected").chmod(0o700)
        pytest.skip("running as root: permissions do not stop writes")
    try:
        result = inbox.intake()
    finally:
        (folder / "rejected").chmod(0o700)

    assert result.accepted == ["good"]
    assert [name for name, _ in result.deferred] == ["bad.json"]
    [kept] = os.listdir(folder / ".claimed")
    assert kept.endswith("__bad.json"), "kept, to be tried again"

    again = inbox.intake()
    assert [name for name, _ in again.rejected] == ["bad.json"] and again.deferred == []
    assert os.listdir(folder / ".claimed") == []
