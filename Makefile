# Swapline developer commands. `make help` lists them.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.DEFAULT_GOAL := help

.PHONY: help install run test test-fast test-chaos bench bench-quick bench-search bench-sources lint typecheck clean

help: ## List targets with one-line descriptions
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "} {printf "  %-14s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --require-hashes -r requirements.lock && $(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

install: $(STAMP) ## Create .venv (if missing) and install Swapline with test extras

# HA=1 (or SWAPLINE_DEV_HA=1): Redis as a primary, a replica and three Sentinels (README, High availability).
run: $(STAMP) ## Start Redis, workers, API and Flower; load the sample corpus; print URLs (HA=1: Redis with Sentinel)
	$(PY) -m webapp.devstack $(if $(filter 1 yes true,$(HA)),--ha)

# pytest-xdist workers. Much of the integration time is spent waiting on real processes (startup,
# polls) rather than computing, hence more workers than cores. Each worker is a session with its own
# redis-server; `loadfile` keeps a module's tests (and its module fixtures: the real model's corpus, a
# shared stack) on one worker, files in collection order, where tests marked slow come first
# (tests/conftest.py). The chaos tests mostly wait out 60 s leases, each with its own Redis and
# processes: four at a time, an idle worker taking queued tests from a busy one (`worksteal`). `make
# test` runs them beside the rest, not after it: waiting, they leave the cores to the rest (their
# output follows the rest's; either session failing fails the target). sh starts a background job with
# Ctrl-C ignored, which its pytest and xdist workers would inherit and so never tear down their Redis
# and worker processes: INTERRUPTIBLE gives pytest Python's own Ctrl-C handler back first.
export INTERRUPTIBLE := import signal, sys, pytest; signal.signal(signal.SIGINT, signal.default_int_handler); sys.exit(pytest.main(sys.argv[1:]))
TEST_WORKERS  ?= 3
CHAOS_WORKERS ?= 4
CHAOS := -n $(CHAOS_WORKERS) --dist worksteal -m chaos

test: $(STAMP) ## The whole suite in parallel (unit, integration, real model, browser) with the chaos tests beside it (~9 min)
	@log=$$(mktemp); $(PY) -c "$$INTERRUPTIBLE" $(CHAOS) -p no:cacheprovider > $$log 2>&1 & chaos=$$!; \
	trap 'kill -INT $$chaos 2>/dev/null' INT TERM; \
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder -m "not chaos"; rest=$$?; \
	wait $$chaos; faults=$$?; echo "--- the chaos tests, run beside the rest ---"; cat $$log; rm -f $$log; \
	test $$rest -eq 0 -a $$faults -eq 0

test-fast: $(STAMP) ## Unit tests only (fakeredis, hashing embedder; < 1 min): no redis-server, worker, model or browser
	$(PY) -m pytest -n 2 -m "not integration and not model and not browser and not chaos"

test-chaos: $(STAMP) ## Only the chaos tests (faults injected into real processes at default timeouts), in parallel
	$(PY) -m pytest $(CHAOS)

bench: $(STAMP) ## Every benchmark at full size (1M vectors; long): bench/results.json, BENCHMARKS.md, bench/latency.png
	$(PY) -m tests.bench

bench-quick: $(STAMP) ## The same table at smaller sizes in under 5 minutes (bench/results-quick.json; BENCHMARKS.md untouched)
	$(PY) -m tests.bench --quick

bench-search: $(STAMP) ## hits@5 and latency of vector, keyword and hybrid search on the sample, real model
	$(PY) -m tests.bench.search_modes

bench-sources: $(STAMP) ## A whole repository as a source with the real model: 1 vs 2 workers, unchanged run, watch, compaction
	$(PY) -m tests.bench.sources

lint: $(STAMP) ## Check style and common mistakes with ruff (config in pyproject.toml)
	$(VENV)/bin/ruff check .

typecheck: $(STAMP) ## Type-check shared/ and webapp/ with mypy (config in pyproject.toml)
	$(VENV)/bin/mypy

clean: ## Remove local data and caches (not .venv)
	rm -rf var .pytest_cache

# The lock: every dependency and test tool pinned with its hashes, for Python 3.11 on linux x86_64.
.PHONY: lock
lock: ## Regenerate requirements.lock from pyproject.toml (keeps existing pins; UPGRADE=1 takes the newest)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet pip-tools
	$(VENV)/bin/pip-compile --quiet --generate-hashes --extra test --allow-unsafe --strip-extras \
	    --no-emit-index-url --no-emit-find-links $(if $(UPGRADE),--upgrade) -o requirements.lock pyproject.toml
