"""What README.md, CONTRIBUTING.md and docs/*.md show works: their grace.yaml examples validate,
the commands, imports, modules and files they name exist, their links and anchors resolve, the
README stays short and the grace.yaml reference matches the schema.

The pages are parsed, not copied: rewriting a block or adding one, or a page, keeps these tests
meaningful. The checkers at the end are shown failing on broken input, so none passes by
construction.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import re
import shlex
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from grace.cli.main import _parser, main
from grace.core.manifest import Manifest, load_manifest, parse_manifest

REPOSITORY = Path(__file__).resolve().parents[3]
README_PATH = REPOSITORY / "README.md"
README = README_PATH.read_text(encoding="utf-8")
PAGES = {
    path.relative_to(REPOSITORY).as_posix(): path.read_text(encoding="utf-8")
    for path in [README_PATH, REPOSITORY / "CONTRIBUTING.md", *sorted((REPOSITORY / "docs").glob("*.md"))]
}
README_MAX_LINES = 200
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`([^`\n]+(?:\n[^`\n]+)?)`")
LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(([^)\s]+)\)")
TOP_FOLDERS = ("grace", "resources", "pipelines", "sensors", "tests", "bench", "docs", "handlers")
TOP_FILES = {"README.md", "CONTRIBUTING.md", "Makefile", "pyproject.toml", "grace.yaml", "workspace.yaml"}
GRACE_COMMAND = re.compile(r"^(?:\$ )?(?:\.venv/bin/)?grace(?= |$)")


def fenced_blocks(text: str, language: str | None = None) -> list[tuple[int, str]]:
    """(line number, body) of every ```language block (every block, for None)."""
    return [
        (text.count("\n", 0, match.start()) + 1, match.group(2))
        for match in FENCE.finditer(text)
        if language is None or match.group(1) == language
    ]


def prose(text: str) -> str:
    """The text without its fenced blocks (each kept as an empty line, so line numbers hold)."""
    return FENCE.sub(lambda match: "\n" * match.group(0).count("\n"), text)


def looks_like_a_manifest(body: str) -> bool:
    """A YAML mapping whose top-level keys include a Grace manifest section."""
    try:
        data = yaml.safe_load(body)
    except yaml.YAMLError:
        return True  # broken YAML in a grace.yaml example is a docs bug too: let the schema say so
    return isinstance(data, dict) and bool(set(data) & set(Manifest.model_fields))


def section(title: str, text: str = README) -> str:
    """The text under a `## title` heading, up to the next level-2 heading."""
    match = re.search(rf"^## {re.escape(title)}\s*$(.*?)(?=^## |\Z)", text, re.MULTILINE | re.DOTALL)
    assert match, f"README.md has no '## {title}' section; update {__file__} if it was renamed"
    return match.group(1)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every heading anchor of a page, duplicates numbered as GitHub numbers them."""
    found: dict[str, int] = {}
    result = set()
    for heading in re.findall(r"^#{1,6} +(.+?) *#*$", prose(text), re.MULTILINE):
        base = slug(heading)
        count = found.get(base, 0)
        found[base] = count + 1
        result.add(base if count == 0 else f"{base}-{count}")
    return result


def broken_links(page: str, text: str, root: Path = REPOSITORY) -> list[str]:
    """Links of a page whose file, or whose #anchor in that file, does not exist."""
    problems = []
    folder = (root / page).parent
    for target in LINK.findall(prose(text)):
        if re.match(r"^[a-z]+:", target):
            continue  # http(s):, mailto:
        path_part, _, anchor = target.partition("#")
        file = (folder / path_part).resolve() if path_part else root / page
        if path_part and not file.exists():
            problems.append(f"{page}: link to {target}: {path_part} does not exist")
            continue
        if anchor and file.suffix == ".md":
            target_text = file.read_text(encoding="utf-8") if path_part else text
            if anchor not in anchors(target_text):
                problems.append(f"{page}: link to {target}: {file.name} has no heading with anchor #{anchor}")
    return problems


def named_paths(text: str) -> list[str]:
    """Repository files and folders a page names in `code`, in prose and in ```sh blocks."""
    tokens = [token for span in INLINE_CODE.findall(prose(text)) for token in span.split()]
    tokens += [token for _line, body in fenced_blocks(text, "sh") for token in body.split()]
    paths = []
    for token in tokens:
        token = token.strip("[](),;:'\"")
        if any(mark in token for mark in "<>*{}…$=") or token.startswith(("/", ".", "~")):
            continue
        top = token.split("/", 1)[0]
        is_path = "/" in token and (token.endswith("/") or re.search(r"\.\w+(::\w+)?$", token))
        if token in TOP_FILES or (top in TOP_FOLDERS and is_path) or re.fullmatch(r"[\w-]+\.py", token):
            paths.append(token)
    return paths


def python_file_names(root: Path = REPOSITORY) -> set[str]:
    """The name of every Python file of the project, in any folder."""
    return {path.name for top in TOP_FOLDERS for path in (root / top).rglob("*.py")}


def missing_paths(paths: list[str], root: Path = REPOSITORY) -> list[str]:
    """Why named paths are not in the repository. A bare `name.py` (a table's row names its folder)
    must be some project file of that name."""
    problems = []
    known_names = python_file_names(root)
    for named in paths:
        if "/" not in named and named.endswith(".py"):
            if named not in known_names:
                problems.append(f"no project file is named {named}")
            continue
        path, _, test_name = named.partition("::")
        if not (root / path).exists():
            problems.append(f"{path} does not exist")
        elif test_name and not re.search(rf"^def {re.escape(test_name)}\(", (root / path).read_text(), re.MULTILINE):
            problems.append(f"{path} has no test {test_name}")
    return problems


def code_block_commands(text: str) -> list[tuple[int, str]]:
    """(line, command) for every `grace …` line of a ```sh block, and every `$ grace …` line of a transcript."""
    commands = []
    for start, body in fenced_blocks(text):
        for offset, line in enumerate(body.splitlines(), start=1):
            if GRACE_COMMAND.match(line) and (line.startswith("$ ") or _block_language(text, start) == "sh"):
                commands.append((start + offset, line.removeprefix("$ ")))
    return commands


def _block_language(text: str, line: int) -> str:
    return text.splitlines()[line - 1].removeprefix("```").strip()


def command_problem(command: str) -> str | None:
    """Why the `grace` command line would not parse (None if it parses); nothing is run."""
    argv = shlex.split(command, comments=True)[1:]
    parser = _parser()
    try:
        parser.parse_args(argv)
    except SystemExit as exited:
        return None if exited.code == 0 else f"`{command}` does not parse (exit {exited.code})"
    return None


def prose_commands(text: str) -> list[str]:
    """`grace …` as a page names it in running text, e.g. `grace keys rotate [--force]`."""
    return [span for span in INLINE_CODE.findall(prose(text)) if GRACE_COMMAND.match(span.replace("\n", " "))]


def prose_command_problem(command: str) -> str | None:
    """Why a command named in prose names a subcommand or option that does not exist (None if all exist)."""
    tokens = [token.strip("[]") for token in command.replace("\n", " ").split()[1:]]
    parser = _parser()
    for token in tokens:
        subcommands = _subcommands(parser)
        if not subcommands or token.startswith("-"):
            break
        if token not in subcommands:
            return f"`{command}`: there is no subcommand {token!r} (there are: {', '.join(sorted(subcommands))})"
        parser = subcommands[token]
    for token in tokens:
        for option in re.findall(r"^(--?[a-z][\w-]*)", token):
            if option not in parser._option_string_actions:
                return f"`{command}`: {parser.prog} has no option {option}"
    return None


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def python_imports(text: str) -> list[tuple[str, list[str]]]:
    """(module, names) of every `from X import a, b` in `code` and every such line of a ```python block."""
    spans = [span.replace("\n", " ") for span in INLINE_CODE.findall(prose(text))]
    spans += [line for _line, body in fenced_blocks(text, "python") for line in body.splitlines()]
    found = []
    for span in spans:
        match = re.fullmatch(r"\s*from ([\w.]+) import ([\w, ]+)\s*", span)
        if match:
            found.append((match.group(1), [name.strip() for name in match.group(2).split(",") if name.strip()]))
    return found


def dotted_names(text: str) -> list[str]:
    """`grace.some.module.name` references in `code`, grace.yaml aside."""
    spans = INLINE_CODE.findall(prose(text))
    return [span for span in spans if re.fullmatch(r"grace(\.\w+)+", span) and span != "grace.yaml"]


def unresolved(dotted: str) -> str | None:
    """Why a dotted name does not resolve to a module or an attribute of one (None if it does)."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            target = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            if not hasattr(target, name):
                return f"{dotted}: {'.'.join(parts[:cut])} has no {name}"
            target = getattr(target, name)
        return None
    return f"{dotted}: no such module"


def reference_generator():
    """docs/make_reference.py, loaded as a module."""
    spec = importlib.util.spec_from_file_location("make_reference", REPOSITORY / "docs" / "make_reference.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


MANIFEST_BLOCKS = [
    (page, line, body)
    for page, text in PAGES.items()
    for line, body in fenced_blocks(text, "yaml")
    if looks_like_a_manifest(body)
]
COMMANDS = [(page, line, command) for page, text in PAGES.items() for line, command in code_block_commands(text)]


def test_the_readme_is_short():
    lines = README.count("\n")
    assert lines <= README_MAX_LINES, (
        f"README.md has {lines} lines; move detail into docs/ (at most {README_MAX_LINES})"
    )


def test_the_readme_links_every_docs_page_and_the_latest_figures():
    linked = {target.partition("#")[0] for target in LINK.findall(README)}
    pages = {page for page in PAGES if page.startswith("docs/")}
    assert pages <= linked, f"README.md does not link {sorted(pages - linked)}"
    assert "docs/performance.md#latest-figures" in LINK.findall(README), "README.md must link the latest figures"


def test_the_pages_show_at_least_one_manifest():
    assert MANIFEST_BLOCKS, "no page has a ```yaml block with grace.yaml sections"


@pytest.mark.parametrize(
    ("page", "line", "body"), MANIFEST_BLOCKS, ids=[f"{page}:{line}" for page, line, _ in MANIFEST_BLOCKS]
)
def test_every_manifest_in_the_pages_validates(tmp_path, page, line, body):
    shutil.copytree(REPOSITORY / "handlers", tmp_path / "handlers")  # the examples are of this project
    manifest = parse_manifest(body, f"{page} block at line {line}", tmp_path)
    assert manifest.sources, "a manifest example without sources watches nothing"


def test_the_shipped_grace_yaml_validates():
    manifest = load_manifest(REPOSITORY / "grace.yaml")
    assert manifest.sources


def test_one_page_shows_the_shipped_grace_yaml_whole():
    shipped = (REPOSITORY / "grace.yaml").read_text(encoding="utf-8")
    shown = [page for page, _line, body in MANIFEST_BLOCKS if body == shipped]
    assert shown, f"no page shows grace.yaml whole: run `{reference_generator().COMMAND}`"


def test_the_routing_page_shows_handlers_echo_whole():
    shipped = (REPOSITORY / "handlers" / "echo.py").read_text(encoding="utf-8")
    assert shipped in [body for _line, body in fenced_blocks(PAGES["docs/routing.md"], "python")], (
        "docs/routing.md must show handlers/echo.py as it is: copy it into its ```python block"
    )


def test_the_grace_yaml_reference_is_up_to_date():
    generator = reference_generator()
    page = generator.PAGE.read_text(encoding="utf-8")
    assert generator.render(page) == page, (
        f"docs/grace-yaml.md is out of date with the schema in grace/core/: run `{generator.COMMAND}`"
    )


def test_every_grace_yaml_field_has_a_description():
    undescribed = [
        f"{section.path or '(top level)'}.{row.field}"
        for section in reference_generator().sections()
        for row in section.rows
        if not row.description.strip()
    ]
    assert not undescribed, f"give these fields a description= in grace/core/: {undescribed}"


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


@pytest.mark.parametrize(("page", "line", "command"), COMMANDS, ids=[f"{page}:{line}" for page, line, _ in COMMANDS])
def test_every_grace_command_in_a_code_block_parses(capsys, page, line, command):
    problem = command_problem(command)
    capsys.readouterr()
    assert problem is None, f"{page}:{line}: {problem}"


@pytest.mark.parametrize("page", sorted(PAGES))
def test_every_grace_command_named_in_prose_exists(page):
    problems = [problem for command in prose_commands(PAGES[page]) if (problem := prose_command_problem(command))]
    assert not problems, f"{page}: " + "; ".join(problems)


@pytest.mark.parametrize("page", sorted(PAGES))
def test_every_python_import_shown_exists(page):
    for module, names in python_imports(PAGES[page]):
        loaded = importlib.import_module(module)
        missing = [name for name in names if not hasattr(loaded, name)]
        assert not missing, f"{page} shows `from {module} import …` of {missing}, which {module} lacks"


@pytest.mark.parametrize("page", sorted(PAGES))
def test_every_grace_module_named_resolves(page):
    problems = [problem for name in dotted_names(PAGES[page]) if (problem := unresolved(name))]
    assert not problems, f"{page}: " + "; ".join(problems)


@pytest.mark.parametrize("page", sorted(PAGES))
def test_every_file_named_exists(page):
    problems = missing_paths(named_paths(PAGES[page]))
    assert not problems, f"{page} names files that are not in the repository: " + "; ".join(problems)


@pytest.mark.parametrize("page", sorted(PAGES))
def test_every_link_resolves(page):
    problems = broken_links(page, PAGES[page])
    assert not problems, "\n".join(problems)


# The checkers above, shown failing on broken input.


def test_the_checkers_catch_a_broken_link_and_a_missing_anchor():
    text = "# Title\n\n[a](missing.md) [b](#nowhere) [c](#title) [d](docs/architecture.md#layers)\n"
    problems = broken_links("README.md", text)
    assert len(problems) == 2 and "missing.md" in problems[0] and "#nowhere" in problems[1]
    assert broken_links("README.md", "```\n# not a heading\n```\n[x](#not-a-heading)\n")


def test_the_checkers_catch_a_missing_file_and_a_missing_test():
    text = "see `resources/nowhere.py`, `gone.py`, `grace/origin` (a tag) and\n"
    text += "```sh\n.venv/bin/python bench/gone.py\n```\n"
    assert named_paths(text) == ["resources/nowhere.py", "gone.py", "bench/gone.py"]
    named = ["resources/nowhere.py", "gone.py", "tests/unit/docs/test_readme.py::test_that_is_not_there"]
    assert missing_paths(named) == [
        "resources/nowhere.py does not exist",
        "no project file is named gone.py",
        "tests/unit/docs/test_readme.py has no test test_that_is_not_there",
    ]
    assert missing_paths(["tests/unit/docs/test_readme.py::test_the_readme_is_short"]) == []


def test_the_checkers_catch_commands_that_do_not_exist(capsys):
    assert command_problem("grace serach whales") is not None
    assert command_problem("grace search whales --colour") is not None
    assert command_problem('grace search "whales" -k 5 --json') is None
    capsys.readouterr()
    assert prose_command_problem("grace keys rotate [--forcefully]") is not None
    assert prose_command_problem("grace keys spin") is not None
    assert prose_command_problem("grace keys rotate [--force]") is None
    text = "```sh\n.venv/bin/grace stats\ncurl x\n```\n```\n$ grace keys status\ngrace: not a command\n```\n"
    assert [command for _line, command in code_block_commands(text)] == [".venv/bin/grace stats", "grace keys status"]


def test_the_checkers_catch_imports_and_modules_that_do_not_exist():
    assert python_imports("`from grace.api import search,\nstats`") == [("grace.api", ["search", "stats"])]
    assert unresolved("grace.deploy.launcher.NoSuchLauncher") is not None
    assert unresolved("grace.no_such_module") is not None
    assert unresolved("grace.deploy.launcher") is None


def test_the_reference_check_catches_a_stale_page():
    generator = reference_generator()
    page = generator.PAGE.read_text(encoding="utf-8")
    stale = page.replace("| `shards` |", "| `shard_count` |", 1)
    assert stale != page and generator.render(stale) != stale
    assert generator.render(stale) == generator.render(page)
