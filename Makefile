# quotarelay: every target creates .venv and installs on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_WORKERS ?= 2

.PHONY: up test lint bench stress fuzz clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy quota relay tools bench tests/rigs

# bench/install_tools.sh: ssh, sshd, socat, prometheus and chromium for the tests (root + apt-get).
# Two test processes per run even on 2 cores: most tests wait on sockets and child processes.
test: lint
	sh bench/install_tools.sh
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS)

# The suite on 4 parallel workers on any number of cores: load that flushes out races.
stress: $(STAMP)
	$(BIN)/python -m pytest -q -n 4 -p no:cacheprovider

# The billing API against its OpenAPI document: schemathesis, every check, the three token
# kinds, at least 5,000 cases (make test runs a short pass of the same test).
fuzz: $(STAMP)
	QUOTARELAY_FUZZ_EXAMPLES=100 QUOTARELAY_FUZZ_SECONDS=120 QUOTARELAY_FUZZ_CASES=5000 \
		$(BIN)/python -m pytest -q -s -p no:cacheprovider -o timeout=900 \
		tests/billing/test_schemathesis.py

up: $(STAMP)
	$(BIN)/quotarelay up

# Under 15 minutes on 2 cores; writes bench/results.json and bench/RESULTS.md.
# BENCH_ARGS="--quick" for a ~1 minute run, "--only throughput" for one section.
BENCH_ARGS ?=
bench: $(STAMP)
	sh bench/install_tools.sh
	$(BIN)/python -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
