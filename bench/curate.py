"""The whole curation flow (rules backends, annotation localizer) on the sample data replicated
to 1,000 samples: wall time per stage for a first run, an unchanged re-run (goal: under 10% of
the first), a run after touching every source file, a run after copying the data root's files
afresh (new times and inodes, same bytes) and a run after changing only the judge config.

    .venv/bin/python bench/curate.py [--rows 1000] [--per-image 3]

Runs against Prefect's ephemeral server (PREFECT_HOME is pointed at a temporary folder).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


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


def touch_all(root: Path) -> None:
    """What a sync that rewrites times does: every file's mtime moves, no byte changes."""
    now = time.time_ns()
    for path in root.rglob("*"):
        if path.is_file():
            os.utime(path, ns=(now, now))


def copy_afresh(root: Path) -> None:
    """What a plain cp or an object-store download does: every file is a new one (new inode and
    times) with the same bytes, at the same path."""
    fresh = root.with_name(root.name + ".fresh")
    shutil.copytree(root, fresh)
    shutil.rmtree(root)
    fresh.rename(root)


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
        root = jsonl.parent
        runs = (
            ("first run", config, None),
            ("unchanged re-run", config, None),
            ("touched sources", config, lambda: touch_all(root)),
            ("files copied afresh", config, lambda: copy_afresh(root)),
            ("judge changed", judged, None),
        )
        results = {}
        for label, run_config, before in runs:
            if before is not None:
                before()
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
    header = f"{'stage':<14}" + "".join(f"{label:>22}" for label in results)
    print(header)
    from flows.dag import CURATION

    for stage in (step.name for step in CURATION):
        print(f"{stage:<14}" + "".join(f"{seconds.get(stage, 0.0):>21.2f}s" for _, seconds, _ in results.values()))
    print(f"{'flow (wall)':<14}" + "".join(f"{wall:>21.2f}s" for wall, _, _ in results.values()))
    print(f"{'vs first run':<14}" + "".join(f"{wall / first_wall:>21.1%} " for wall, _, _ in results.values()))
    versions = {label: manifests["assemble"].digest for label, (_, _, manifests) in results.items()}
    print(f"{'set version':<14}" + "".join(f"{version:>22}" for version in versions.values()))


if __name__ == "__main__":
    main()
