# `make demo` and `make test` work on a fresh clone: both build .venv when it is missing.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# The demo keeps Prefect's database and results inside the checkout unless the user points
# PREFECT_HOME elsewhere (e.g. at the profile that names their Prefect server).
export PREFECT_HOME ?= $(CURDIR)/data/prefect
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false

.PHONY: demo test bench venv clean-artifacts

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/mmedpo demo

test: $(STAMP)
	$(BIN)/pytest -q

# Every speed benchmark in turn (bench/README.md); each prints its table. Minutes on a CPU
# machine, most of it SAM's image encoder (bench/noise.py) and the two trainers (bench/train.py).
# Named, not globbed: bench/ may hold scripts that are not speed benchmarks.
BENCHES := $(wildcard $(addprefix bench/,ingest.py noise.py hallucinate.py train.py curate.py))
bench: $(STAMP)
	@for script in $(BENCHES); do echo "== $$script"; PYTHONPATH=. $(BIN)/python $$script || exit 1; done

clean-artifacts:
	rm -rf data/artifacts data/preference_sets data/samples data/prefect
