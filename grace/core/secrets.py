"""Secrets by reference: grace.yaml names where a secret lives (env:NAME or file:PATH), never its value.

A key is 32 random bytes written as base64 (standard or URL-safe). A key file must be a
regular file, not a symlink, readable by its owner only (mode 0600). Every error names
where the key was looked for, and none ever repeats what was found there.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, ValidationInfo

ENV_PREFIX = "env:"
FILE_PREFIX = "file:"
KEY_BYTES = 32
ENV_NAME_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# A key file holds 44 characters of base64 and a newline; anything much larger is not a key.
MAX_KEY_FILE_BYTES = 4096
USAGE = "use env:NAME (an environment variable) or file:PATH (a file with mode 0600, relative to grace.yaml)"


class SecretError(ValueError):
    """A secret reference is malformed, or its source is missing, unsafe or not a key."""


@dataclass(frozen=True)
class SecretRef:
    """Where a secret lives: an environment variable or a file (an absolute path once validated)."""

    kind: Literal["env", "file"]
    name: str

    @property
    def path(self) -> Path:
        return Path(self.name)

    def __str__(self) -> str:
        return f"{self.kind}:{self.name}"

    def describe(self, what: str = "key file") -> str:
        """Where the secret was looked for, in words; what names a file's kind."""
        if self.kind == "env":
            return f"environment variable {self.name} ({self})"
        return f"{what} {self.name} ({self})"


def parse_secret_ref(value: str, base_dir: Path | None = None) -> SecretRef:
    """A SecretRef from env:NAME or file:PATH; file paths become absolute against base_dir.

    Anything else is taken for a literal secret and refused, without repeating it.
    """
    if not isinstance(value, str):
        raise SecretError(f"a secret reference must be a string; {USAGE}")
    if value.startswith(ENV_PREFIX):
        name = value.removeprefix(ENV_PREFIX)
        if not ENV_NAME_PATTERN.match(name):
            raise SecretError(
                "after env: comes the name of an environment variable: letters, digits and _, not starting with a digit"
            )
        return SecretRef("env", name)
    if value.startswith(FILE_PREFIX):
        path = value.removeprefix(FILE_PREFIX)
        if not path.strip() or "\0" in path:
            raise SecretError(f"{FILE_PREFIX} needs a path, e.g. file:.grace/master.key")
        absolute = (Path(base_dir or ".") / Path(path).expanduser()).absolute()
        return SecretRef("file", os.path.normpath(absolute))
    raise SecretError(f"grace.yaml must not hold a secret value, only where it lives: {USAGE}")


def validate_secret_ref(value: str, info: ValidationInfo) -> str:
    """pydantic validator: the normalized reference; a key file that exists must be private.

    A missing file passes, so the quick start can create the default key file on first start.
    """
    base_dir = Path((info.context or {}).get("base_dir", "."))
    ref = parse_secret_ref(value, base_dir)
    if ref.kind == "file" and os.path.lexists(ref.path):
        check_key_file(ref)
    return str(ref)


SecretReference = Annotated[str, AfterValidator(validate_secret_ref)]


def check_key_file(ref: SecretRef, what: str = "key file") -> os.stat_result:
    """Refuse a secret file that is missing, a symlink, not a regular file, or readable by others."""
    try:
        status = os.lstat(ref.path)
    except FileNotFoundError:
        raise SecretError(f"no {ref.describe(what)}: the file does not exist") from None
    except OSError as error:
        raise SecretError(f"cannot read {ref.describe(what)}: {error.strerror}") from None
    _check_file_status(ref, status, what)
    return status


def read_private_file(ref: SecretRef, limit: int, what: str = "key file") -> bytes:
    """At most limit + 1 bytes of a private secret file (so the caller can tell an oversized one),
    checked before opening and again on the open file."""
    check_key_file(ref, what)
    try:
        # O_NOFOLLOW: a symlink swapped in after the check is refused, not followed.
        descriptor = os.open(ref.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as error:
        raise SecretError(f"cannot open {ref.describe(what)}: {error.strerror}") from None
    with os.fdopen(descriptor, "rb") as handle:
        _check_file_status(ref, os.fstat(handle.fileno()), what)
        return handle.read(limit + 1)


def resolve_secret(ref: SecretRef | str) -> bytes:
    """The 32-byte key that ref points to."""
    if isinstance(ref, str):
        ref = parse_secret_ref(ref)
    if ref.kind == "env":
        encoded = os.environ.get(ref.name)
        if encoded is None:
            raise SecretError(f"no key in {ref.describe()}: it is not set")
        return decode_key(encoded, ref)
    return decode_key(_read_key_file(ref), ref)


def decode_key(encoded: str | bytes, ref: SecretRef) -> bytes:
    """Base64 (standard or URL-safe, padding optional) of exactly KEY_BYTES bytes."""
    text = encoded.decode("ascii", "replace") if isinstance(encoded, bytes) else encoded
    text = "".join(text.split()).translate(str.maketrans("-_", "+/"))
    text += "=" * (-len(text) % 4)
    try:
        key = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise SecretError(f"{ref.describe()} does not hold base64; {_key_hint()}") from None
    if len(key) != KEY_BYTES:
        raise SecretError(f"{ref.describe()} holds {len(key)} bytes, not {KEY_BYTES}; {_key_hint()}")
    return key


def create_key_file(path: Path | str) -> Path:
    """Write a new random key to path with mode 0600; never overwrites (FileExistsError).

    The key is written and synced under a temporary name, then linked into place: the link
    fails if path exists, and a crash never leaves a half-written key at path.
    """
    path = Path(path)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if os.path.lexists(path):
        raise FileExistsError(f"{path} exists; Grace never overwrites a key file")
    encoded = base64.urlsafe_b64encode(secrets.token_bytes(KEY_BYTES)) + b"\n"
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(encoded)
            handle.flush()
            os.fsync(handle.fileno())
        os.link(temporary, path)
    finally:
        os.unlink(temporary)
    _sync_folder(path.parent)
    return path


def _read_key_file(ref: SecretRef) -> bytes:
    content = read_private_file(ref, MAX_KEY_FILE_BYTES)
    if len(content) > MAX_KEY_FILE_BYTES:
        raise SecretError(f"{ref.describe()} is larger than a key; {_key_hint()}")
    return content


def _check_file_status(ref: SecretRef, status: os.stat_result, what: str = "key file") -> None:
    if stat.S_ISLNK(status.st_mode):
        raise SecretError(f"{ref.describe(what)} is a symlink; point file: at the {what} itself")
    if not stat.S_ISREG(status.st_mode):
        raise SecretError(f"{ref.describe(what)} is not a regular file")
    mode = stat.S_IMODE(status.st_mode)
    if mode & 0o077:
        raise SecretError(
            f"{ref.describe(what)} has mode {mode:04o}, so others may read it; run `chmod 600 {ref.name}`"
        )


def _key_hint() -> str:
    return "a key is 32 random bytes in base64, e.g. from `head -c 32 /dev/urandom | base64`"


def _sync_folder(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
