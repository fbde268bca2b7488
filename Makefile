# Quick start: `make dev` serves Grace; `make test` runs the whole suite. Both install first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin

.PHONY: dev test install bench

dev: install
	$(BIN)/grace dev

# Two workers, a test file each at a time (module fixtures stay in one process); then, alone, the
# tests that disturb what the others share. Both phases always run; either failing fails the target.
test: install
	$(BIN)/python -m pytest -n 2 --dist loadfile -m "not solo"; first=$$?; \
	$(BIN)/python -m pytest -m solo; second=$$?; \
	test $$first -eq 0 -a $$second -eq 0

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

bench: install
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/embed_quality.py
	$(BIN)/python bench/freshness.py
	$(BIN)/python bench/cli.py
	$(BIN)/python bench/sync.py
	$(BIN)/python bench/scale.py
	$(BIN)/python bench/routing.py
	$(BIN)/python bench/keys.py
