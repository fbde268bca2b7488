"""What README.md shows works: its grace.yaml examples validate, and its quick-start commands exist.

The README is parsed, not copied: rewriting a block or adding one keeps this test meaningful.
"""

from __future__ import annotations

import importlib
import re
import shutil
from pathlib import Path

import pytest
import yaml

from grace.cli import main
from grace.core.manifest import Manifest, load_manifest, parse_manifest

REPOSITORY = Path(__file__).resolve().parents[1]
README = (REPOSITORY / "README.md").read_text(encoding="utf-8")
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)


def fenced_blocks(text: str, language: str) -> list[tuple[int, str]]:
    """(line number, body) of every ```language block."""
    return [
        (text.count("\n", 0, match.start()) + 1, match.group(2))
        for match in FENCE.finditer(text)
        if match.group(1) == language
    ]


def looks_like_a_manifest(body: str) -> bool:
    """A YAML mapping whose top-level keys include a Grace manifest section."""
    try:
        data = yaml.safe_load(body)
    except yaml.YAMLError:
        return True  # broken YAML in a grace.yaml example is a README bug too: let the schema say so
    return isinstance(data, dict) and bool(set(data) & set(Manifest.model_fields))


def section(title: str) -> str:
    """The README text under a `## title` heading, up to the next level-2 heading."""
    match = re.search(rf"^## {re.escape(title)}\s*$(.*?)(?=^## |\Z)", README, re.MULTILINE | re.DOTALL)
    assert match, f"README.md has no '## {title}' section; update tests/test_readme.py if it was renamed"
    return match.group(1)


MANIFEST_BLOCKS = [(line, body) for line, body in fenced_blocks(README, "yaml") if looks_like_a_manifest(body)]


def test_the_readme_shows_at_least_one_manifest():
    assert MANIFEST_BLOCKS, "README.md has no ```yaml block with grace.yaml sections"


@pytest.mark.parametrize(("line", "body"), MANIFEST_BLOCKS, ids=[f"README.md:{line}" for line, _ in MANIFEST_BLOCKS])
def test_every_manifest_in_the_readme_validates(tmp_path, line, body):
    shutil.copytree(REPOSITORY / "handlers", tmp_path / "handlers")  # the examples are of this project
    manifest = parse_manifest(body, f"README.md block at line {line}", tmp_path)
    assert manifest.sources, "a manifest example without sources watches nothing"


def test_the_shipped_grace_yaml_validates():
    manifest = load_manifest(REPOSITORY / "grace.yaml")
    assert manifest.sources


def quick_start_commands() -> list[str]:
    lines = [line for _line, body in fenced_blocks(section("Quick start"), "sh") for line in body.splitlines()]
    return [line.split("#", 1)[0].strip() for line in lines if line.split("#", 1)[0].strip()]


def test_quick_start_make_targets_exist_and_ci_runs_make_test():
    targets = set(re.findall(r"^([\w.-]+):", (REPOSITORY / "Makefile").read_text(), re.MULTILINE))
    named = {command.split()[1] for command in quick_start_commands() if command.startswith("make ")}
    assert {"dev", "test"} <= named, f"the quick start should name `make dev` and `make test`, it names {named}"
    assert named <= targets, f"Makefile lacks targets {named - targets}"
    ci = (REPOSITORY / ".ci" / "run").read_text()
    assert re.search(r"^\s*(exec\s+)?make test\s*$", ci, re.MULTILINE), ".ci/run must run `make test`"


def test_quick_start_grace_subcommands_exist(capsys):
    subcommands = {
        command.split()[1] for command in quick_start_commands() if re.match(r"(\.venv/bin/)?grace ", command)
    }
    assert subcommands, "the quick start names no grace command"
    for subcommand in sorted(subcommands):
        with pytest.raises(SystemExit) as exited:
            main([subcommand, "--help"])
        assert exited.value.code == 0, f"`grace {subcommand}` named in the README does not exist"
    capsys.readouterr()


def test_quick_start_python_imports_exist():
    imports = re.findall(r"`from ([\w.]+) import ([\w, ]+)`", section("Quick start"))
    assert imports, "the quick start shows no Python import"
    for module, names in imports:
        loaded = importlib.import_module(module)
        for name in (name.strip() for name in names.split(",")):
            assert hasattr(loaded, name), f"README names {module}.{name}, which does not exist"


def test_the_readme_shows_the_shipped_grace_yaml_whole():
    shown = README[README.index("## grace.yaml") :]
    shown = shown[shown.index("```yaml\n") + len("```yaml\n") :]
    shipped = (REPOSITORY / "grace.yaml").read_text(encoding="utf-8")
    assert shown[: shown.index("```")] == shipped[shipped.index("state_dir:") :], "copy grace.yaml into the README"
