"""`grace submit` and friends from a test: a routed manifest and a CLI call that captures its output."""

from __future__ import annotations

from grace.cli.main import main

PAYLOAD_CAP = 400


def manifest_text(store_url: str) -> str:
    return (
        f"state_dir: state\nstore: {store_url}\n"
        "sources:\n  - {name: docs, path: inbox/docs, patterns: ['**/*.md', '**/*.txt']}\n"
        "index: {shards: 2, trees: 10}\n"
        f"routing:\n  max_payload_bytes: {PAYLOAD_CAP}\n  origins: {{intent: 12, ingest: 8}}\n  default_quota: 3\n"
        "  routes: {ingest: ingest, search: search, reindex: reindex, echo: echo, test: search}\n"
        "  inbox: inbox/tasks\n"
    )


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err
