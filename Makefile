# The two commands of the README:  `make demo` (main job)  and  `make test` (test suite).
# Both create .venv if needed and install the locked stack once; a second call reuses it
# (the install is stamped with the hash of requirements.lock and pyproject.toml).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.east-install-stamp
LOCK_HASH := $(shell cat requirements.lock pyproject.toml | sha256sum | cut -c1-16)
CORES ?= all
PYTEST_ARGS ?=

.PHONY: install demo test test-slow lint format bench lock clean-results

install:
	@if [ "$$(cat $(STAMP) 2>/dev/null)" = "$(LOCK_HASH)" ]; then \
		echo "east: environment $(VENV) is up to date"; \
	else \
		set -e; \
		test -x $(BIN)/python || $(PYTHON) -m venv $(VENV); \
		$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.lock; \
		$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e .; \
		echo "$(LOCK_HASH)" > $(STAMP); \
		echo "east: installed the locked stack into $(VENV)"; \
	fi

demo: install
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/snakemake --cores $(CORES)
	@echo "east: report written to $(abspath reports/index.html)"

test: install
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest $(PYTEST_ARGS)

test-slow: install
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/snakefmt --check Snakefile workflow
	$(BIN)/snakemake --lint

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .
	$(BIN)/snakefmt Snakefile workflow

bench: install
	$(BIN)/east bench

# Re-resolve the locked versions (run by maintainers, then commit requirements.lock).
lock:
	$(BIN)/python -m pip freeze --exclude-editable | grep -v '^east' > requirements.lock
