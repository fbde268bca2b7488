# Quick start: `make dev` serves Grace; `make test` runs the whole suite. Both install first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin

.PHONY: dev test lint install lock bench

dev: install
	$(BIN)/grace dev

# The lint (below); then two workers, a test file each at a time (module fixtures stay in one
# process); then, alone, the tests that disturb what the others share. All three phases always run;
# any failing fails the target.
test: install
	$(MAKE) --no-print-directory lint; lint=$$?; \
	$(BIN)/python -m pytest -n 2 --dist loadfile -m "not solo"; first=$$?; \
	$(BIN)/python -m pytest -m solo; second=$$?; \
	test $$lint -eq 0 -a $$first -eq 0 -a $$second -eq 0

# ruff (pinned in the test extra, rules in pyproject.toml): both checks always run.
lint: install
	$(BIN)/ruff check .; check=$$?; \
	$(BIN)/ruff format --check .; format=$$?; \
	test $$check -eq 0 -a $$format -eq 0

install: $(VENV)/.installed

# Exactly the versions in requirements.lock, each checked against its hash; then Grace itself,
# editable. `uv pip check` fails when pyproject.toml asks for something the lock lacks: run `make lock`.
# uv installs the 1.7 GB in about 20 s where pip takes over 2 minutes; it is given the local wheels
# pip is configured with (find-links), where the lock's CPU build of torch lies, since it does not
# read pip's configuration. Both indexes are searched for each pin, and the hash picks the file.
UV := uv==0.9.30
FIND_LINKS := $(foreach links,$(shell $(PYTHON) -m pip config get global.find-links 2>/dev/null),--find-links $(links))
UV_PIP := $(BIN)/uv pip --quiet
$(VENV)/.installed: pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check $(UV)
	$(UV_PIP) install --python $(BIN)/python --require-hashes --index-strategy unsafe-best-match $(FIND_LINKS) \
		-r requirements.lock
	$(UV_PIP) install --python $(BIN)/python --no-deps -e .
	$(UV_PIP) check --python $(BIN)/python
	touch $@

# Regenerate requirements.lock after changing a dependency in pyproject.toml, and commit both.
# pip-compile (pip-tools, in a throwaway venv) resolves with pip, so it takes the CPU build of torch
# that lies on this machine's disk and hashes that very file; uv and poetry don't look there.
# Pins already in the lock stay unless pyproject.toml rules them out; to move one on:
# `make lock LOCK_ARGS='--upgrade-package NAME'` (or `LOCK_ARGS=--upgrade` for all).
PIP_TOOLS := pip-tools==7.7.0
LOCK_ARGS ?=
lock:
	tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	$(PYTHON) -m venv "$$tmp" && \
	"$$tmp/bin/pip" install --quiet --disable-pip-version-check $(PIP_TOOLS) && \
	CUSTOM_COMPILE_COMMAND='make lock' "$$tmp/bin/pip-compile" --quiet --generate-hashes --allow-unsafe \
		--no-strip-extras --extra test --no-emit-index-url --no-emit-find-links $(LOCK_ARGS) \
		--output-file requirements.lock pyproject.toml

bench: install
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/embed_quality.py
	$(BIN)/python bench/freshness.py
	$(BIN)/python bench/cli.py
	$(BIN)/python bench/sync.py
	$(BIN)/python bench/scale.py
	$(BIN)/python bench/routing.py
	$(BIN)/python bench/keys.py
