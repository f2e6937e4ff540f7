# quotarelay: every target creates .venv and installs on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RUN_STAMP := $(VENV)/.runtime
ARGS ?=
TEST_WORKERS ?= 2

.PHONY: up test lint bench stress fuzz clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP) $(RUN_STAMP)

# `make up` installs only what running needs (no test, lint or bench tools), showing
# pip's progress; `make test` or `make lint` add the rest to the same venv later.
$(RUN_STAMP): pyproject.toml
	@echo "==> [1/3] creating $(VENV) with $(PY)"
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@echo "==> [2/3] installing quotarelay and what it needs to run (no test tools)"
	$(BIN)/python -m pip install --disable-pip-version-check --progress-bar on -e .
	@touch $(RUN_STAMP)

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

# `make up ARGS="--ssh-port 2200 --dir var/demo2"` passes ARGS to `quotarelay up`.
up: $(RUN_STAMP)
	@echo "==> [3/3] starting the billing API, a relay and a demo service: quotarelay up $(ARGS)"
	@$(BIN)/quotarelay up $(ARGS)

# Under 15 minutes on 2 cores; writes bench/results.json and bench/RESULTS.md.
# BENCH_ARGS="--quick" for a ~1 minute run, "--only throughput" for one section.
BENCH_ARGS ?=
bench: $(STAMP)
	sh bench/install_tools.sh
	$(BIN)/python -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
