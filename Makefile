# sealtrail: everything a fresh machine (Python >= 3.11, Java 17, Maven) needs, from this file.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PYTEST_ARGS ?=
# Two test processes, each with its own broker and store; a file's tests stay on one process
# (module fixtures). Most of the suite waits on brokers and child processes, not on the CPU.
PYTEST_PARALLEL ?= -n 2 --dist loadfile

.PHONY: setup demo demo-quick test test-unit test-integration test-faults bench bench-tiny lint stop clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "sealtrail needs Python >= 3.11; set PYTHON=/path/to/python3.11")'
	@command -v java >/dev/null || { echo "Java 17+ is needed to run the local Kafka broker; install it (e.g. apt-get install openjdk-17-jre-headless)"; exit 2; }
	@command -v mvn >/dev/null || { echo "Maven is needed to fetch the Kafka broker from Maven Central; install it (e.g. apt-get install maven)"; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/python -m sealtrail.demo $(DEMO_ARGS)

demo-quick: setup
	$(BIN)/python -m sealtrail.demo --quick --stop $(DEMO_ARGS)

# The long fault tests (marked slow) run in `make test-faults`; their short versions run here.
test: setup
	@command -v go >/dev/null || { echo "Go >= 1.26 is needed to build the real Kubernetes audit client the tests drive (tests/tools/auditclient); install it"; exit 2; }
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_PARALLEL) $(PYTEST_ARGS)

test-unit: setup
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -m "not slow" tests/unit $(PYTEST_ARGS)

test-integration: setup
	$(BIN)/python -m pytest -m "not slow" tests/integration $(PYTEST_ARGS)

test-faults: setup
	SEALTRAIL_FAULTS=long $(BIN)/python -m pytest -m slow tests/integration $(PYTEST_ARGS)

bench: setup
	$(BIN)/python -m bench $(BENCH_ARGS)

bench-tiny: setup
	$(BIN)/python -m bench --tiny $(BENCH_ARGS)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

stop:
	-$(BIN)/sealtrail stack down

clean: stop
	rm -rf $(VENV) .sealtrail
