"""Secrets by reference: grace.yaml says where a key lives (env: or file:), never what it is."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

from grace.core.secrets import (
    SecretError,
    SecretRef,
    SecretReference,
    create_key_file,
    parse_secret_ref,
    resolve_secret,
)

KEY = bytes(range(32))


class KeysSection(BaseModel):
    """How the manifest's keys section will use the reference type."""

    kek: SecretReference


def private_key_file(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    path.chmod(0o600)
    return path


def test_env_reference_resolves_standard_and_urlsafe_base64(monkeypatch):
    tricky = b"\xfb\xff" * 16  # encodes to + and / in standard base64, - and _ in URL-safe
    monkeypatch.setenv("GRACE_TEST_KEK", base64.b64encode(tricky).decode())
    assert resolve_secret("env:GRACE_TEST_KEK") == tricky
    monkeypatch.setenv("GRACE_TEST_KEK", base64.urlsafe_b64encode(tricky).decode().rstrip("="))
    assert resolve_secret(SecretRef("env", "GRACE_TEST_KEK")) == tricky


def test_file_reference_resolves_relative_to_the_manifest_folder(tmp_path):
    private_key_file(tmp_path / "master.key", base64.b64encode(KEY) + b"\n")
    ref = parse_secret_ref("file:master.key", base_dir=tmp_path)
    assert ref.path == tmp_path / "master.key"
    assert resolve_secret(ref) == KEY
    validated = KeysSection.model_validate({"kek": "file:master.key"}, context={"base_dir": str(tmp_path)})
    assert validated.kek == f"file:{tmp_path / 'master.key'}"


@pytest.mark.parametrize(
    "literal",
    [base64.b64encode(KEY).decode(), "hunter2", "ENV:NAME", "vault:secret/kek", "", "environment:X"],
)
def test_a_literal_secret_is_rejected_without_being_repeated(literal):
    with pytest.raises(ValidationError) as rejected:
        KeysSection.model_validate({"kek": literal})
    message = rejected.value.errors()[0]["msg"]
    assert "env:NAME" in message and "file:PATH" in message
    if literal:
        assert literal not in message


@pytest.mark.parametrize("reference", ["env:", "env:1ABC", "env:A-B", "env:has space", "file:", "file:   "])
def test_a_malformed_reference_is_rejected(reference):
    with pytest.raises(SecretError):
        parse_secret_ref(reference)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_a_key_file_others_may_read_is_rejected_with_a_chmod_hint(tmp_path, mode):
    path = private_key_file(tmp_path / "master.key", base64.b64encode(KEY))
    path.chmod(mode)
    with pytest.raises(SecretError) as refused:
        resolve_secret(f"file:{path}")
    message = str(refused.value)
    assert str(path) in message and f"{mode:04o}" in message and f"chmod 600 {path}" in message
    with pytest.raises(ValidationError) as invalid:
        KeysSection.model_validate({"kek": f"file:{path}"})
    assert f"chmod 600 {path}" in invalid.value.errors()[0]["msg"]


def test_a_missing_key_file_passes_validation_but_does_not_resolve(tmp_path):
    """The quick start creates the default key file on first start, after `grace validate`."""
    path = tmp_path / "state" / "master.key"
    assert KeysSection.model_validate({"kek": f"file:{path}"}).kek == f"file:{path}"
    with pytest.raises(SecretError) as missing:
        resolve_secret(f"file:{path}")
    assert f"key file {path}" in str(missing.value) and "does not exist" in str(missing.value)


def test_a_missing_environment_variable_is_named(monkeypatch):
    monkeypatch.delenv("GRACE_TEST_ABSENT", raising=False)
    with pytest.raises(SecretError) as missing:
        resolve_secret("env:GRACE_TEST_ABSENT")
    assert "environment variable GRACE_TEST_ABSENT" in str(missing.value) and "not set" in str(missing.value)


def test_a_symlinked_key_file_is_rejected_even_when_its_target_is_private(tmp_path):
    target = private_key_file(tmp_path / "real.key", base64.b64encode(KEY))
    link = tmp_path / "master.key"
    link.symlink_to(target)
    with pytest.raises(SecretError) as refused:
        resolve_secret(f"file:{link}")
    assert "symlink" in str(refused.value) and str(link) in str(refused.value)
    with pytest.raises(ValidationError):
        KeysSection.model_validate({"kek": f"file:{link}"})


def test_a_folder_or_fifo_is_not_a_key_file(tmp_path):
    folder = tmp_path / "folder.key"
    folder.mkdir(mode=0o700)
    fifo = tmp_path / "fifo.key"
    os.mkfifo(fifo, 0o600)
    for path in (folder, fifo):
        with pytest.raises(SecretError, match="not a regular file"):
            resolve_secret(f"file:{path}")


@pytest.mark.parametrize(
    "content, problem",
    [
        (b"not base64 at all!", "does not hold base64"),
        (base64.b64encode(KEY[:16]), "holds 16 bytes, not 32"),
        (base64.b64encode(KEY + b"x"), "holds 33 bytes, not 32"),
        (b"", "holds 0 bytes, not 32"),
        (b"\xff\xfe" * 30, "does not hold base64"),
        (b"A" * 5000, "larger than a key"),
    ],
)
def test_a_key_file_that_does_not_hold_a_key_is_rejected_without_echoing_it(tmp_path, content, problem):
    path = private_key_file(tmp_path / "master.key", content)
    with pytest.raises(SecretError) as refused:
        resolve_secret(f"file:{path}")
    message = str(refused.value)
    assert problem in message and str(path) in message
    if len(content) > 4:
        assert content.decode("latin-1")[:12] not in message


def test_a_bad_key_in_the_environment_is_rejected_without_echoing_it(monkeypatch):
    monkeypatch.setenv("GRACE_TEST_KEK", "correct-horse-battery")
    with pytest.raises(SecretError) as refused:
        resolve_secret("env:GRACE_TEST_KEK")
    assert "GRACE_TEST_KEK" in str(refused.value) and "correct-horse" not in str(refused.value)


def test_create_key_file_writes_a_private_random_key_and_never_overwrites(tmp_path):
    path = tmp_path / "state" / "master.key"
    assert create_key_file(path) == path
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    key = resolve_secret(f"file:{path}")
    assert len(key) == 32
    before = path.read_bytes()
    with pytest.raises(FileExistsError):
        create_key_file(path)
    assert path.read_bytes() == before
    assert sorted(entry.name for entry in path.parent.iterdir()) == ["master.key"]  # no temporary left behind
    other = create_key_file(tmp_path / "other.key")
    assert resolve_secret(f"file:{other}") != key


def test_create_key_file_is_private_whatever_the_umask(tmp_path):
    previous = os.umask(0)
    try:
        path = create_key_file(tmp_path / "master.key")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_create_key_file_refuses_to_write_through_a_dangling_symlink(tmp_path):
    outside = tmp_path / "elsewhere.key"
    link = tmp_path / "master.key"
    link.symlink_to(outside)
    with pytest.raises(FileExistsError):
        create_key_file(link)
    assert not outside.exists()
