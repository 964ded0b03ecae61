# Two commands do all set-up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PORT   ?= 8888

.PHONY: install run test bench bench-quick clean

$(STAMP): requirements.txt requirements-dev.txt bench/requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements-dev.txt -r bench/requirements.txt
	touch $(STAMP)

install: $(STAMP)

## Serve on :$(PORT) with SQLite and the demo users (password "demo").
run: install
	$(BIN)/python server.py --demo --port $(PORT) --db-url sqlite:///notifications.db

## The whole suite (CI sets CI=true: a missing dependency fails instead of skipping).
test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

## Benchmarks (see docs/PERFORMANCE.md).
bench: install
	bash bench/run_core.sh

bench-quick: install
	bash bench/run_core.sh --quick

clean:
	rm -rf $(VENV) notifications.db notifications.db-wal notifications.db-shm
