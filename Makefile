# Two commands do all set-up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PORT   ?= 8888

.PHONY: install run test test-fast test-sqlite test-postgres lint bench bench-quick clean

$(STAMP): requirements.txt requirements-dev.txt bench/requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements-dev.txt -r bench/requirements.txt
	touch $(STAMP)

install: $(STAMP)

## Serve on :$(PORT) with SQLite and the demo users (password "demo").
run: install
	$(BIN)/python server.py --demo --port $(PORT) --db-url sqlite:///notifications.db

## The whole suite, over SQLite and over PostgreSQL (CI sets CI=true: a
## missing dependency, PostgreSQL included, fails instead of skipping).
## The two passes run side by side (one per core; every test uses its own
## ports, Redis and schema), each printing its output when it is done.
test: install
	$(MAKE) --no-print-directory -j2 --output-sync=target test-sqlite test-postgres

test-sqlite: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

## The quick loop while working: SQLite only, without the tests marked
## slow or scale (pytest.ini); under a minute.  `make test` runs them all.
test-fast: install
	NOTIFY_TEST_DB=sqlite $(BIN)/python -m pytest -m "not slow and not scale" $(PYTEST_ARGS)

## Each server under test gets a fresh schema in NOTIFY_TEST_PG_URL (default
## postgresql://postgres@127.0.0.1:5432/test); outside CI the pass is skipped
## when that database does not answer.
test-postgres: install
	NOTIFY_TEST_DB=postgresql $(BIN)/python -m pytest $(PYTEST_ARGS)

## Ruff's checks over all the Python (tests and bench included), its format
## check over the product (the formatter owns only its layout) and mypy over
## the product (the files in pyproject.toml); settings in pyproject.toml.
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check core handlers models server.py
	$(BIN)/mypy

## Benchmarks (see docs/PERFORMANCE.md): every scenario against the server
## and the floor, a table against the targets, JSON and a chart in
## bench/results/.  The full plan takes several minutes; --quick under 3.
bench: install
	bench/run $(BENCH_ARGS)

bench-quick: install
	bench/run --quick $(BENCH_ARGS)

clean:
	rm -rf $(VENV) notifications.db notifications.db-wal notifications.db-shm
