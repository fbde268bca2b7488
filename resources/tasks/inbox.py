"""The task inbox: JSON files dropped in routing.inbox become received tasks in the store, or land in
rejected/ beside an .error.json that says why.

A file is never lost and never taken twice, even by a process killed at any instant: it is first
renamed into .claimed/ under a fresh claim id, then accepted with that claim in the store, and only
then deleted. The next intake finishes whatever a killed one left in .claimed/: a claim the store
already holds is deleted, any other is processed again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.exc import DBAPIError

from grace.core.failpoints import failpoint
from grace.core.manifest import Manifest
from grace.core.task_model import Task, TaskRejected
from grace.resources.db.schema import utc_now
from grace.resources.store.taskbook import DuplicateTask, TaskBook
from grace.resources.tasks.project_handlers import accept_task_json
from grace.resources.text.reading import Refused, open_inside

# A file modified this recently may still be being written: it waits for a later tick.
SETTLE_SECONDS = 1.0
# Room for the JSON around a payload at the cap; anything larger is refused unread.
ENVELOPE_BYTES = 64 * 1024
# Bounds one tick's work (one store write per file); the rest waits for the next tick.
MAX_FILES_PER_INTAKE = 1000
CLAIMED_FOLDER = ".claimed"
REJECTED_FOLDER = "rejected"
SUBMITTED_VIA = "inbox"
CLAIMED_NAME = re.compile(r"(?P<claim>[0-9a-f]{32})__(?P<name>.+)", re.DOTALL)  # a name may hold a newline
READ_BLOCK_BYTES = 1 << 20
# File names are at most 255 bytes; a claim adds 34, a rejected copy "-N" and ".error.json".
MAX_NAME_BYTES = 200


@dataclass
class IntakeResult:
    accepted: list[str] = field(default_factory=list)  # task ids
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (file name, reason)
    deferred: list[tuple[str, str]] = field(default_factory=list)  # (file name, why it waits for the next intake)


class TaskInbox:
    """Takes the task files of one manifest's inbox folder into one TaskBook."""

    def __init__(self, manifest: Manifest, book: TaskBook):
        self.manifest = manifest
        self.book = book
        self.folder = Path(manifest.routing.inbox)
        self.claimed = self.folder / CLAIMED_FOLDER
        self.rejected = self.folder / REJECTED_FOLDER
        self.read_cap = int(manifest.routing.max_payload_bytes) + ENVELOPE_BYTES

    def intake(self) -> IntakeResult:
        """Finish what a killed intake left claimed, then take every settled file of the folder."""
        for folder in (self.folder, self.claimed, self.rejected):
            folder.mkdir(parents=True, exist_ok=True)
        result = IntakeResult()
        for claimed_name in sorted(entry.name for entry in os.scandir(self.claimed) if not entry.name.startswith(".")):
            self._guarded(self._settle, claimed_name, result)
        for name in self._settled_files()[:MAX_FILES_PER_INTAKE]:
            self._guarded(self._take, name, result)
        return result

    def _guarded(self, step: Callable[[str, IntakeResult], None], name: str, result: IntakeResult) -> None:
        """One file's step; whatever stops it stops no other file, and leaves the file where it is."""
        try:
            step(name, result)
        except DBAPIError:
            raise  # the store, not the file, is at fault: the tick fails and the file stays for the next one
        except Exception as error:  # e.g. rejected/ not writable: the file is kept, not lost, and tried again
            result.deferred.append((printable(name), f"{type(error).__name__}: {error}"))

    def _take(self, name: str, result: IntakeResult) -> None:
        claimed_name = f"{uuid.uuid4().hex}__{short_name(name)}"
        try:
            os.rename(self.folder / name, self.claimed / claimed_name)
        except FileNotFoundError:  # deleted by its writer since the scan
            return
        failpoint("inbox.after_claim")
        self._settle(claimed_name, result)

    def _settled_files(self) -> list[str]:
        """Top-level entries that are not folders or hidden, unmodified for SETTLE_SECONDS, oldest first.

        Links, FIFOs and devices are included (to be rejected as themselves); nothing is followed or opened.
        """
        settled_before = time.time() - SETTLE_SECONDS
        found = []
        for entry in os.scandir(self.folder):
            if entry.name.startswith(".") or entry.is_dir(follow_symlinks=False):
                continue  # editors' temp files, rejected/, .claimed/ and the user's own subfolders
            try:
                seen = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if seen.st_mtime <= settled_before:
                found.append((seen.st_mtime, entry.name))
        return [name for _mtime, name in sorted(found)]

    def _settle(self, claimed_name: str, result: IntakeResult) -> None:
        """Accept or reject one claimed file; only an unreachable store or an unwritable rejected/ leaves it claimed."""
        match = CLAIMED_NAME.fullmatch(claimed_name)
        if match is None:  # not named by Grace: claim it properly first
            fresh = f"{uuid.uuid4().hex}__{short_name(claimed_name)}"
            os.rename(self.claimed / claimed_name, self.claimed / fresh)
            match = CLAIMED_NAME.fullmatch(fresh)
        claim, name = match["claim"], match["name"]
        path = self.claimed / match.string
        try:
            if self.book.task_of_claim(claim) is not None:  # accepted by an intake killed before the delete
                path.unlink(missing_ok=True)
                return
            task = self._read_task(match.string, name, claim)
            if task is None:
                return
            self.book.add(task, SUBMITTED_VIA, claim=claim)
            failpoint("inbox.after_accept")
            path.unlink(missing_ok=True)
            result.accepted.append(task.task_id)
        except DuplicateTask as duplicate:
            if self.book.task_of_claim(claim) is not None:  # a concurrent intake accepted this very file
                path.unlink(missing_ok=True)
                return
            self._reject(path, name, duplicate, result)
        except TaskRejected as rejected:
            self._reject(path, name, rejected, result)
        except DBAPIError:
            raise  # the store, not the file, is at fault: the file stays claimed for the next intake
        except Exception as error:  # whatever it is, it is this file's problem and no other's
            self._reject(path, name, TaskRejected([("(file)", f"{type(error).__name__}: {error}")]), result)

    def _read_task(self, claimed_name: str, name: str, claim: str) -> Task | None:
        """The validated task of a claimed file (its id is the claim when it gives none); None if it is gone."""
        if not name.endswith(".json"):
            raise TaskRejected([("(file)", "task files end in .json; rename it to end in .json")])
        data = self._read_capped(claimed_name)
        if data is None:
            return None
        task = accept_task_json(data, self.manifest)
        given = json.loads(data)
        if given.get("task_id") is None and given.get("intent_id") is None:
            # The claim is unique already, and it ties the task to the file it came from.
            task = dataclasses.replace(task, task_id=claim)
        return task

    def _read_capped(self, claimed_name: str) -> bytes | None:
        """The file's bytes, read without following links or opening FIFOs; TaskRejected past the read cap."""
        try:
            opened = open_inside(self.claimed, claimed_name)
        except Refused as refused:
            raise TaskRejected([("(file)", refused.problem)]) from None
        if opened is None:
            return None
        descriptor, status = opened
        try:
            too_large = TaskRejected(
                [
                    (
                        "(file)",
                        f"is over {self.read_cap} bytes (routing.max_payload_bytes plus {ENVELOPE_BYTES} for the "
                        "task around it); send a smaller payload or a reference to the data",
                    )
                ]
            )
            if status.st_size > self.read_cap:
                raise too_large
            blocks, total = [], 0
            while block := os.read(descriptor, min(READ_BLOCK_BYTES, self.read_cap + 1 - total)):
                blocks.append(block)
                total += len(block)
                if total > self.read_cap:  # it grew after its size was checked
                    raise too_large
            return b"".join(blocks)
        finally:
            os.close(descriptor)

    def _reject(self, path: Path, name: str, rejected: TaskRejected, result: IntakeResult) -> None:
        """Move the claimed entry (a link or FIFO as itself) to rejected/, explained by <name>.error.json."""
        target = self._free_rejected_name(name)
        explanation = {"file": printable(name), "rejected_at": utc_now().isoformat(), **rejected.as_dict()}
        # The explanation is written first: a kill before the move leaves the file claimed and an
        # explanation without its file, and the next intake rejects the file again beside a new one.
        temporary = self.rejected / f".{target}.{uuid.uuid4().hex}.tmp"
        temporary.write_text(
            json.dumps(explanation, indent=2, ensure_ascii=False) + "\n", encoding="utf-8", errors="backslashreplace"
        )
        os.replace(temporary, self.rejected / f"{target}.error.json")
        os.rename(path, self.rejected / target)
        result.rejected.append((printable(name), str(rejected)))

    def _free_rejected_name(self, name: str) -> str:
        """name, or name with -1, -2... before its extension when rejected/ already holds one."""
        stem, dot, extension = name.rpartition(".") if "." in name.lstrip(".") else (name, "", "")
        candidate, number = name, 0
        while _exists(self.rejected / candidate) or _exists(self.rejected / f"{candidate}.error.json"):
            number += 1
            candidate = f"{stem}-{number}{dot}{extension}"
        return candidate


def short_name(name: str) -> str:
    """name, or for a name too long to prefix with a claim, its start, a digest and its extension."""
    encoded = os.fsencode(name)
    if len(encoded) <= MAX_NAME_BYTES:
        return name
    extension = ".json" if name.endswith(".json") else ""
    start = os.fsdecode(encoded[: MAX_NAME_BYTES // 2])
    return f"{start}~{hashlib.sha256(encoded).hexdigest()[:8]}{extension}"


def printable(name: str) -> str:
    """A file name as text, with bytes that are not UTF-8 shown as \\xNN."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def _exists(path: Path) -> bool:
    """Whether anything is at path, a dangling link included."""
    try:
        os.lstat(path)
    except FileNotFoundError:
        return False
    return True
