"""watchdog observers that journal which paths changed, so a sensor tick costs O(changes).

One observer per watched folder per process. The journal lives in memory: a process that
starts a watcher (a new or restarted code server) begins with a full reconcile scan, so
events from before it existed are never needed.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from grace.core.globs import excluded_folder, wanted
from grace.core.manifest import SourceConfig
from grace.core.process_caches import FOLDER_WATCHERS
from grace.sensors.scan import Dirty

JOURNAL_LIMIT = 100_000  # past this many dirty paths a full scan is cheaper than the journal
IGNORED_EVENTS = {"opened", "closed_no_write"}
# A folder's "modified" event only says its entries changed, and those entries have events
# of their own; listing the folder for it would make every new file cost a folder scan.
IGNORED_FOLDER_EVENTS = {"modified", "closed", "opened", "closed_no_write"}
log = logging.getLogger(__name__)


class Journal(FileSystemEventHandler):
    """Records the paths that watchdog reports, relative to the folder; thread-safe.

    A tick drains the journal and gives the batch back if it fails before its scan commits,
    so no event is lost to a failed tick.
    """

    def __init__(self, source: SourceConfig):
        self.root = source.path
        self.source = source  # its patterns and exclude globs say which paths are worth recording
        self._dirty = Dirty()
        self._overflowed = False
        self._lock = threading.Lock()
        self.changed = threading.Event()  # set after every event worth a look; the pusher waits on it

    def on_any_event(self, event: FileSystemEvent) -> None:
        ignored = IGNORED_FOLDER_EVENTS if event.is_directory else IGNORED_EVENTS
        if event.event_type in ignored:
            return
        paths = [event.src_path, getattr(event, "dest_path", "")]
        with self._lock:
            for path in filter(None, paths):
                self._record(os.fsdecode(path), event.is_directory)
        self.changed.set()

    def _record(self, path: str, is_directory: bool) -> None:
        try:
            relative = Path(path).relative_to(self.root).as_posix()
        except ValueError:
            return
        if relative == ".":
            self._overflowed = True  # the folder itself moved or vanished: rescan everything
        elif is_directory:
            if not self._in_excluded_folder(relative):
                self._dirty.folders.add(relative)
        elif wanted(relative, self.source):
            self._dirty.files.add(relative)
        if len(self._dirty) > JOURNAL_LIMIT:
            self._overflowed = True

    def _in_excluded_folder(self, relative_folder: str) -> bool:
        parts = relative_folder.split("/")
        exclude = self.source.exclude
        return any(excluded_folder("/".join(parts[:depth]), exclude) for depth in range(1, len(parts) + 1))

    def drain(self) -> Dirty | None:
        """What changed since the last drain, or None if only a full scan can tell."""
        with self._lock:
            dirty, overflowed = self._dirty, self._overflowed
            self._dirty, self._overflowed = Dirty(), False
        return None if overflowed else dirty

    def give_back(self, batch: Dirty | None) -> None:
        """Take back a drained batch whose tick failed; None (a full scan) makes the next drain None too."""
        with self._lock:
            if batch is None:
                self._overflowed = True
            else:
                self._dirty.files |= batch.files
                self._dirty.folders |= batch.folders
            if len(self._dirty) > JOURNAL_LIMIT:
                self._overflowed = True


class FolderWatcher:
    """A running watchdog observer over one source folder."""

    def __init__(self, source: SourceConfig):
        # Never created here: a folder that vanished must stay missing, so the scan holds its deletes.
        self.root = source.path
        self.root_inode = os.stat(source.path).st_ino
        self.journal = Journal(source)
        # Held while a batch is drained and recorded, by the sensor's tick and by the pusher alike.
        self.lock = threading.Lock()
        self.observer = Observer()
        self.observer.schedule(self.journal, str(source.path), recursive=True)
        self.observer.daemon = True
        self.observer.start()

    @property
    def alive(self) -> bool:
        """Running, over the folder now at the source's path: one renamed away takes its watch along."""
        try:
            same_root = os.stat(self.root).st_ino == self.root_inode
        except OSError:
            same_root = False
        return same_root and self.observer.is_alive()

    def stop(self) -> None:
        self.observer.stop()
        self.observer.join(timeout=5)


def watcher_for(source: SourceConfig) -> tuple[FolderWatcher | None, bool]:
    """(this process's watcher for the source (FOLDER_WATCHERS), whether it was started just now).

    (None, True) when no observer can run (an inotify limit, say) or the folder is missing: the caller
    scans the whole folder.
    """
    key = (source.name, source.path)
    with FOLDER_WATCHERS.lock:
        watcher = FOLDER_WATCHERS.get(key)
        if watcher is not None and watcher.alive:
            return watcher, False
        if watcher is not None:  # its folder was renamed away or removed, or its observer died
            watcher.stop()
            FOLDER_WATCHERS.pop(key)
        if not source.path.is_dir():  # the scan of the whole folder says why, and holds its deletes
            return None, True
        try:
            watcher = FolderWatcher(source)
        except OSError as error:
            log.warning("cannot watch %s (%s); scanning the whole folder every tick", source.path, error)
            FOLDER_WATCHERS.pop(key)
            return None, True
        return FOLDER_WATCHERS.put(key, watcher), True


def stop_watchers() -> None:
    """Stop every observer of this process (shutdown, benches); tests reset every cache instead."""
    FOLDER_WATCHERS.clear()
