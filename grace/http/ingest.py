"""Where POST /api/knowledge/ingest writes: a file in the ingest source's folder, which Grace then ingests
like any dropped file (there is no second pipeline), and how an id finds that file again."""

from __future__ import annotations

import os
import re
import secrets
import unicodedata
from pathlib import Path

from grace.core.globs import wanted
from grace.core.manifest import Manifest, SourceConfig
from grace.http.io import ApiError

SUBFOLDER = "api"  # inside the source's folder; a source whose patterns reject it gets the folder itself
EXTENSIONS = (".md", ".txt")
SLUG_CHARACTERS = 60
ID_PATTERN = re.compile(r"^[0-9a-f]{16}$")


class ServeRefused(Exception):
    """grace.yaml does not let `grace serve` start; the message says what to set."""


def new_id() -> str:
    return secrets.token_hex(8)


def slug(title: str) -> str:
    """Lowercase ASCII letters, digits and single dashes from the title, at most SLUG_CHARACTERS; "untitled" if none.

    Nothing of the title but [a-z0-9-] reaches the file name, so no title can name a path.
    """
    ascii_title = unicodedata.normalize("NFKD", title).encode("ascii", "ignore").decode().lower()
    return re.sub(r"[^a-z0-9]+", "-", ascii_title).strip("-")[:SLUG_CHARACTERS].strip("-") or "untitled"


class IngestTarget:
    """The source, folder and extension that the API's files go to; chosen once, at start."""

    def __init__(self, manifest: Manifest):
        self.manifest = manifest
        self.source: SourceConfig | None = _ingest_source(manifest)
        self.folder, self.extension = "", ""
        if self.source is not None:
            self.folder, self.extension = _placement(self.source, manifest.api.ingest_source is not None)

    def write(self, content: str, title: str) -> tuple[str, str, int]:
        """Write content as a new file, atomically and exclusively: (id, path relative to the source folder, bytes)."""
        from grace.resources.tasks.builtin_handlers import IngestRefused, write_inside

        source = self._source()
        _check_text(content)
        data = content.encode("utf-8")
        if len(data) > source.max_bytes:
            raise ApiError(
                422,
                f"content is {len(data)} bytes of UTF-8, over source '{source.name}' max_bytes "
                f"({int(source.max_bytes)}): it would be quarantined; split it, or raise max_bytes in grace.yaml",
                "content",
            )
        identity = new_id()
        relative = "/".join(filter(None, [self.folder, f"{slug(title)}-{identity}{self.extension}"]))
        try:
            write_inside(source.path, relative, data, self.manifest.state_dir)
        except IngestRefused as refused:
            raise ApiError(503, f"could not write {source.name}/{relative}: {refused}") from None
        return identity, relative, len(data)

    def on_disk(self, identity: str) -> str | None:
        """The relative path of the API's file with this id, if it is in the folder now."""
        source = self._source()
        endings = tuple(f"-{identity}{extension}" for extension in EXTENSIONS)
        try:
            with os.scandir(Path(source.path, self.folder)) as entries:
                for entry in entries:
                    if entry.name.endswith(endings) and entry.is_file(follow_symlinks=False):
                        return "/".join(filter(None, [self.folder, entry.name]))
        except FileNotFoundError:
            pass
        return None

    def _source(self) -> SourceConfig:
        if self.source is None:
            raise ApiError(503, "grace.yaml has no sources, so there is no folder to ingest into; add a source")
        return self.source


def _ingest_source(manifest: Manifest) -> SourceConfig | None:
    name = manifest.api.ingest_source
    if name is None:
        return manifest.sources[0] if manifest.sources else None
    return next(source for source in manifest.sources if source.name == name)  # the manifest checked the name


def _placement(source: SourceConfig, named: bool) -> tuple[str, str]:
    """(folder, extension) of the API's files: api/ and .md if the source's patterns take them, else the
    nearest that they take; ServeRefused if they take neither .md nor .txt."""
    for folder in (SUBFOLDER, ""):
        for extension in EXTENSIONS:
            sample = "/".join(filter(None, [folder, f"untitled-{'0' * 16}{extension}"]))
            if wanted(sample, source):
                return folder, extension
    where = "api.ingest_source" if named else "the first source (api.ingest_source unset)"
    raise ServeRefused(
        f"grace serve: {where} is '{source.name}', whose sources[].patterns {source.patterns} "
        f"(exclude {source.exclude}) take neither .md nor .txt files, so POST /api/knowledge/ingest could "
        "write nothing it ingests; add '**/*.md' to its patterns, or set api.ingest_source to another source"
    )


def _check_text(content: str) -> None:
    """422 for content that the documents step would quarantine (blank, or binary by its NUL)."""
    if not content.strip():
        raise ApiError(422, "content is empty or only whitespace; send the text to ingest", "content")
    if "\x00" in content:
        raise ApiError(422, "content holds a NUL character, so it would be taken for binary; send text", "content")
