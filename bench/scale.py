"""Curation at growing size: does the cost per sample stay flat, and does the store stay small?

A synthetic JSONL source (grey PNGs of ``--image-size`` px, one lesion box per image,
``--per-image`` questions per image; rules hallucination and the rules judge, so no model is
involved) at each of ``--sizes`` samples, each size in its own process (its own peak RSS):

- per-stage seconds per sample of the first run: each artifact's build time from its manifest
  (the stage's wall time, its shards included; Prefect's task-run listing is cut off at a few
  hundred runs, fewer than a 16k run's shards), and its CPU time (the manifest's
  ``cpu_seconds``: this process, all threads), which a busy machine does not inflate as it does
  wall time; the Prefect server's CPU (a child process) over the whole first run on its own row;
  the load average at the start and end of each size, to read the wall times against;
- files and bytes in the store and the published sets per sample (a hard link counts as a
  file: what a file system or an object store has to hold), against the input's bytes and the
  noised images' bytes;
- the peak RSS of the process running the flow, over the first run and over all three;
- an unchanged re-run, and a re-run after 10% more samples land in the source, as shares of
  the first run's wall time.

Then a projection to MIMIC-CXR (227,835 studies, one report sample each) from the largest
size's per-sample figures, on this machine's cores and on a 64-core node.

    PYTHONPATH=. .venv/bin/python bench/scale.py [--sizes 1000 4000 16000] [--per-image 8] [--image-size 384]

Runs against Prefect's ephemeral server (PREFECT_HOME in a temporary folder).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

STAGES = ("ingest", "localize", "noise", "hallucinate", "score", "assemble")
MIMIC_SAMPLES = 227_835
QUESTIONS = (
    ("Is there a pleural effusion?", "Yes", "closed"),
    ("Is the heart enlarged?", "No", "closed"),
    ("Which side is the opacity on?", "left lung", "open"),
    ("Is there a pneumothorax?", "No", "closed"),
    ("Where is the nodule?", "right upper lobe", "open"),
    ("Is the lesion in the left lung?", "Yes", "closed"),
    ("Is there cardiomegaly?", "Yes", "closed"),
    ("What is the size of the mass?", "3 cm", "open"),
)


def write_source(root: Path, samples: int, per_image: int, size: int, start: int = 0) -> None:
    """Append samples ``start .. samples - 1`` to ``root/data.jsonl``: one image (a unique grey
    PNG with a brighter square 'lesion') per ``per_image`` questions."""
    from tasks.imaging import save_array

    (root / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(start, samples):
        image = i // per_image
        path = root / "images" / f"{image:06d}.png"
        side = size // 4
        x, y = (image * 37) % (size - side), (image * 53) % (size - side)
        if not path.exists():
            rng = np.random.default_rng(image)
            yy, xx = np.mgrid[:size, :size]
            pixels = 90 + 40 * np.sin(xx / (7 + image % 5)) + 30 * np.cos(yy / 11) + rng.normal(0, 6, (size, size))
            pixels[y : y + side, x : x + side] += 50
            save_array(pixels.clip(0, 255).astype(np.uint8), path)
        question, answer, kind = QUESTIONS[i % per_image % len(QUESTIONS)]
        record = {
            "id": f"s{i}",
            "image": f"images/{path.name}",
            "question": question,
            "answer": answer,
            "answer_type": kind,
            "task": "vqa",
            "split": "train",
            "boxes": [[x, y, x + side, y + side]],
        }
        lines.append(json.dumps(record))
    with (root / "data.jsonl").open("a") as handle:
        handle.write("\n".join(lines) + "\n")


def tree_size(*roots: Path) -> tuple[int, int]:
    """(files, bytes) under ``roots``: every directory entry of a file counts as a file, each
    inode's bytes once."""
    files, inodes = 0, {}
    for root in roots:
        for dirpath, _, names in os.walk(root):
            for name in names:
                stat = os.lstat(os.path.join(dirpath, name))
                files += 1
                inodes[(stat.st_dev, stat.st_ino)] = stat.st_size
    return files, sum(inodes.values())


def children_cpu() -> float:
    """CPU seconds of this process's child processes (the ephemeral Prefect server), the running
    ones read from /proc, the finished ones from getrusage."""
    tick = os.sysconf("SC_CLK_TCK")
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # not a process, or gone meanwhile
        parents[int(entry.name)] = int(fields[1])
        times[int(entry.name)] = (int(fields[11]) + int(fields[12])) / tick
    mine, grew = {os.getpid()}, True
    while grew:
        found = {pid for pid, parent in parents.items() if parent in mine} - mine
        grew, mine = bool(found), mine | found
    finished = resource.getrusage(resource.RUSAGE_CHILDREN)
    return sum(times[pid] for pid in mine - {os.getpid()}) + finished.ru_utime + finished.ru_stime


def noised_bytes(manifest) -> int:
    from tasks import catalog

    paths = {r["noised_path"] for r in catalog.rows(manifest, catalog.NOISED) if r["status"] == "ok"}
    return sum(manifest.file(path).stat().st_size for path in paths)


def child(samples: int, per_image: int, size: int) -> dict:
    """One size, in this process: first run, unchanged re-run, +10% re-run."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        # Before Prefect is imported: it reads its settings once. A busy machine starts its server slowly.
        os.environ["PREFECT_HOME"] = str(work / "prefect")
        os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
        os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
        from flows.curate import curate
        from tasks.config import IngestConfig, RunConfig, SourceConfig

        source = work / "source"
        write_source(source, samples, per_image, size)
        config = RunConfig(
            name="scale",
            store=work / "store",
            sets=work / "sets",
            ingest=IngestConfig(sources=[SourceConfig(format="jsonl", root=source / "data.jsonl")]),
        )
        result: dict = {"samples": samples, "input_bytes": tree_size(source)[1], "load": [os.getloadavg()[0]]}
        walls, cpus = {}, {}
        for label in ("first", "unchanged", "plus10"):
            if label == "plus10":
                write_source(source, samples + samples // 10, per_image, size, start=samples)
            started, cpu_started, server_started = time.perf_counter(), time.process_time(), children_cpu()
            state = curate(config, return_state=True)
            walls[label] = time.perf_counter() - started
            cpus[label] = time.process_time() - cpu_started
            manifests = state.result()
            if label == "first":
                result["server_cpu"] = children_cpu() - server_started
                result["stage_seconds"] = {stage: manifests[stage].seconds for stage in STAGES}
                result["stage_cpu"] = {stage: manifests[stage].cpu_seconds or 0.0 for stage in STAGES}
                result["files"], result["bytes"] = tree_size(config.store, config.sets)
                result["noised_bytes"] = noised_bytes(manifests["noise"])
                result["pairs"] = manifests["assemble"].counts["pairs.built"]
                result["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            if label == "plus10":
                result["plus10_noise_work"] = manifests["noise"].work
                result["plus10_stage_cpu"] = {stage: manifests[stage].cpu_seconds or 0.0 for stage in STAGES}
        result["walls"], result["cpus"] = walls, cpus
        # The re-runs hold more samples than the first run (the +10% one: 1.1x): the process's peak
        # over all three runs, beside the first run's.
        result["rss_all_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        result["load"].append(os.getloadavg()[0])
    return result


def run_size(samples: int, per_image: int, size: int) -> dict:
    command = [sys.executable, __file__, "--child", str(samples), "--per-image", str(per_image)]
    done = subprocess.run([*command, "--image-size", str(size)], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{samples} samples failed:\n{done.stderr[-3000:]}")
    print(done.stdout.strip().splitlines()[-1], file=sys.stderr, flush=True)  # kept if a later size is stopped
    return json.loads(done.stdout.strip().splitlines()[-1])


def report(results: list[dict], per_image: int, size: int) -> None:
    base = results[0]
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}")
    print(f"source: {size}x{size} grey PNGs, one box, {per_image} questions per image; rules only\n")
    columns = [f"{r['samples']:,} samples" for r in results] + [f"{results[-1]['samples']:,} / {base['samples']:,}"]
    print(f"{'':<34}" + "".join(f"{c:>18}" for c in columns))

    def line(label: str, values: list[float], fmt: str, ratio: bool = True) -> None:
        cells = [format(v, fmt) for v in values] + ([f"{values[-1] / values[0]:.2f}x"] if ratio else [""])
        print(f"{label:<34}" + "".join(f"{c:>18}" for c in cells))

    for stage in STAGES:
        per_sample = [1000 * r["stage_seconds"].get(stage, 0.0) / r["samples"] for r in results]
        line(f"{stage} ms/sample", per_sample, ".3f")
        line(f"{stage} CPU ms/sample", [1000 * r["stage_cpu"][stage] / r["samples"] for r in results], ".3f")
    line("Prefect server CPU ms/sample", [1000 * r["server_cpu"] / r["samples"] for r in results], ".3f")
    line("first run wall s", [r["walls"]["first"] for r in results], ".1f", ratio=False)
    line("first run CPU s (flow process)", [r["cpus"]["first"] for r in results], ".1f", ratio=False)
    line("files / sample (store + sets)", [r["files"] / r["samples"] for r in results], ".3f")
    line("store bytes / input bytes", [r["bytes"] / r["input_bytes"] for r in results], ".3f")
    line(
        "store / (2 x input + noised)",
        [r["bytes"] / (2 * r["input_bytes"] + r["noised_bytes"]) for r in results],
        ".3f",
    )
    line("peak RSS MB", [r["rss_mb"] for r in results], ".0f")
    line("peak RSS MB, with the re-runs", [r["rss_all_mb"] for r in results], ".0f")
    line("unchanged re-run / first", [r["walls"]["unchanged"] / r["walls"]["first"] for r in results], ".1%", False)
    line("+10% re-run / first", [r["walls"]["plus10"] / r["walls"]["first"] for r in results], ".1%", False)
    line("unchanged re-run / first, CPU", [r["cpus"]["unchanged"] / r["cpus"]["first"] for r in results], ".1%", False)
    line("+10% re-run / first, CPU", [r["cpus"]["plus10"] / r["cpus"]["first"] for r in results], ".1%", False)
    loads = [f"{r['load'][0]:.1f} -> {r['load'][1]:.1f}" for r in results]
    print(f"{'load average, start -> end':<34}" + "".join(f"{cell:>18}" for cell in loads))
    print(
        "\n+10% re-run, noise items computed / reused: "
        + ", ".join(
            f"{r['plus10_noise_work'].get('computed', 0):g}/{r['plus10_noise_work'].get('reused', 0):g}"
            for r in results
        )
    )

    print(
        "+10% re-run, CPU s by stage (first run's in brackets): "
        + "; ".join(
            f"{r['samples']:,}: "
            + ", ".join(f"{stage} {r['plus10_stage_cpu'][stage]:.2f} ({r['stage_cpu'][stage]:.2f})" for stage in STAGES)
            for r in results
        )
    )

    last = results[-1]
    seconds = sum(last["stage_seconds"].get(stage, 0.0) for stage in STAGES) / last["samples"]
    cores = os.cpu_count() or 1
    print(f"\nMIMIC-CXR projection ({MIMIC_SAMPLES:,} report samples) from the {last['samples']:,}-sample run,")
    print("linear in samples (the per-sample rows above) and in shard workers (one per core):")
    for label, workers in ((f"this machine ({cores} cores)", cores), ("a 64-core node", 64)):
        print(f"  {label}: ~{seconds * MIMIC_SAMPLES * cores / workers / 3600:.2f} h of stage time")
    print(
        f"  store: ~{last['files'] / last['samples'] * MIMIC_SAMPLES:,.0f} files, "
        f"~{last['bytes'] / last['samples'] * MIMIC_SAMPLES / 1e9:.1f} GB at this image size"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 4000, 16000])
    parser.add_argument("--per-image", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=384)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.per_image, args.image_size)))
        return
    results = [run_size(n, args.per_image, args.image_size) for n in args.sizes]
    report(results, args.per_image, args.image_size)


if __name__ == "__main__":
    main()
