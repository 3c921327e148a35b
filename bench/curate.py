"""The whole curation flow (rules backends, annotation localizer) on the sample data replicated
to 1,000 samples: wall time per stage for a first run, an unchanged re-run (goal: under 10% of
the first) and a run after changing only the judge config.

    .venv/bin/python bench/curate.py [--rows 1000] [--per-image 3]

Runs against Prefect's ephemeral server (PREFECT_HOME is pointed at a temporary folder).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

STAGES = ("ingest", "localize", "noise", "hallucinate", "score", "assemble")


def stage_seconds(flow_run_id) -> dict[str, float]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    seconds: dict[str, float] = {}
    for run in runs:
        stage = run.name.rsplit("-", 1)[0]
        if run.start_time and run.end_time:
            seconds[stage] = seconds.get(stage, 0.0) + (run.end_time - run.start_time).total_seconds()
        else:  # cached tasks never start: they cost their state lookup only
            seconds.setdefault(stage, 0.0)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--per-image", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        os.environ["PREFECT_HOME"] = str(work / "prefect")
        os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
        from replicate import replicate_demo

        from flows.curate import curate
        from tasks.config import IngestConfig, JudgeConfig, RunConfig, ScoreConfig, SourceConfig

        jsonl, files = replicate_demo(work, args.rows, args.per_image)
        config = RunConfig(
            name="bench",
            store=work / "store",
            sets=work / "sets",
            ingest=IngestConfig(sources=[SourceConfig(format="jsonl", root=jsonl)]),
        )
        judged = config.model_copy(update={"score": ScoreConfig(judges=[JudgeConfig(name="rules-2")])})
        results = {}
        for label, run_config in (("first run", config), ("unchanged re-run", config), ("judge changed", judged)):
            started = time.perf_counter()
            state = curate(run_config, return_state=True)
            wall = time.perf_counter() - started
            manifests = state.result()
            results[label] = (wall, stage_seconds(state.state_details.flow_run_id), manifests)

    first_wall = results["first run"][0]
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}")
    print(
        f"{args.rows} samples, {len(files)} image files, pairs: "
        f"{results['first run'][2]['assemble'].counts['pairs.built']:g}\n"
    )
    header = f"{'stage':<14}" + "".join(f"{label:>20}" for label in results)
    print(header)
    for stage in STAGES:
        print(f"{stage:<14}" + "".join(f"{seconds.get(stage, 0.0):>19.2f}s" for _, seconds, _ in results.values()))
    print(f"{'flow (wall)':<14}" + "".join(f"{wall:>19.2f}s" for wall, _, _ in results.values()))
    print(f"{'vs first run':<14}" + "".join(f"{wall / first_wall:>19.1%} " for wall, _, _ in results.values()))


if __name__ == "__main__":
    main()
