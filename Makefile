# maskforge: the two commands a user runs are `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Prefect runs on its ephemeral local API: keep its database inside the project, offline and patient on 2 cores.
export PREFECT_HOME ?= $(CURDIR)/.prefect
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 180
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export DO_NOT_TRACK ?= 1

.PHONY: install demo test test-chain docs-check format ui-check serve clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e '.[test]'
	touch $(STAMP)

# The demo runs on the trained toy models shipped in models/toy and models/checkpoints (see docs/generation.md).
demo: $(STAMP)
	$(BIN)/maskforge generate configs/demo.yaml --out runs

# Style, layers and the docs site's strict build first (seconds), then the suite: TEST_WORKERS pytest-xdist processes,
# whole files to each (a file's session fixtures and per-process compile caches stay together), one torch thread per
# worker, the longest files first (tests/conftest.py: LONGEST_FIRST; xdist's default reorder, by test count, ran
# them last, one alone for minutes).
TEST_WORKERS ?= 2
test: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(MAKE) --no-print-directory docs-check
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder -m "not chain"

# The nightly chain end to end (tests/test_chain.py: a real Prefect server, deployments with their triggers, a worker,
# two generation rounds each triggering an evaluation): about 2 minutes, so outside `make test`'s 10; CI runs both.
test-chain: $(STAMP)
	$(BIN)/python -m pytest -q -m chain tests/test_chain.py

# The docs site (mkdocs.yml), built strictly into a temporary folder that is removed after: a broken link or anchor,
# or a config model the generated reference cannot render, fails. Not --quiet: it hides the warnings --strict counts.
docs-check: $(STAMP)
	@site=$$(mktemp -d) && NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir "$$site"; \
	rc=$$?; rm -rf "$$site"; exit $$rc

# Rewrite the tree in the project's style (ruff format, import order and fixable lint).
format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Browser check of the Prefect UI (not in `make test`: server start and a demo run take minutes on 2 cores).
ui-check: $(STAMP)
	$(BIN)/python tests/ui_check.py --out ui-check

# Local Prefect server with every deployment and a worker; Ctrl-C stops them.
serve: $(STAMP)
	$(BIN)/maskforge serve

clean:
	rm -rf $(VENV) .prefect runs .models
