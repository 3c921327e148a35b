"""The `mmedpo` command: parse, load the run config, call a flow or a stage function."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from tasks.config import ConfigError, EvaluateConfig, IngestConfig, RunConfig, SourceConfig, TrainConfig, load_run_config
from flows.evaluate import add_cli as evaluate_cli
from flows.experiment import add_cli as experiment_cli
from flows.train import add_cli as train_cli
from tasks.ingest import READERS, ingest_to_file
from tasks.ingest.records import IngestError

DATA = Path("data")


def cmd_ingest(args: argparse.Namespace) -> int:
    source = SourceConfig(format=args.format, root=args.root.resolve(), name=args.name, splits=args.split)
    counts = ingest_to_file(source, IngestConfig(sources=[source]), args.out.resolve())
    print(f"wrote {args.out} ({int(counts['kept'])} rows) and {args.out.with_suffix('.rejects.parquet')} ({int(counts['rejected'])} rows)")
    for name, value in sorted(counts.items()):
        if "." in name and value:
            print(f"  {name}: {int(value)}")
    return 0


def cmd_demo_data(args: argparse.Namespace) -> int:
    from tasks.demo_data import build_demo_data

    path = build_demo_data(args.out.resolve())
    print(f"demo data: {path}")
    return 0


def cmd_curate(args: argparse.Namespace) -> int:
    from flows.curate import curate

    manifests = curate(load_run_config(args.config))
    print_manifests(manifests)
    return 0


def cmd_sets_list(args: argparse.Namespace) -> int:
    from tasks.sets import list_sets

    sets = list_sets(args.root)
    if not sets:
        print(f"no preference sets under {args.root}")
        return 0
    print(f"{'name':<20}{'version':<18}{'created':<27}{'pairs':>7}{'text':>7}{'visual':>8}")
    for manifest in sets:
        counts = manifest.counts
        print(f"{Path(manifest.path).parent.name:<20}{manifest.key:<18}{manifest.created:<27}"
              f"{counts.get('pairs', 0):>7g}{counts.get('pairs.text', 0):>7g}{counts.get('pairs.visual', 0):>8g}")
    return 0


def cmd_sets_show(args: argparse.Namespace) -> int:
    from tasks.sets import resolve_set

    folder = resolve_set(args.root, args.ref)
    print(f"{folder}\n")
    print((folder / "CARD.md").read_text())
    manifest = (folder / "manifest.json").read_text()
    print("## manifest.json\n")
    print(manifest)
    return 0


def demo_config(samples: Path) -> RunConfig:
    """The demo's run config: the sample set, offline defaults for every curation stage, and a
    short CPU training run of a tiny random-weight LLaVA (the real model is a config away)."""
    source = SourceConfig(format="jsonl", root=(samples / "demo.jsonl").resolve(), name="demo")
    return RunConfig(
        name="demo",
        store=(DATA / "artifacts").resolve(),
        sets=(DATA / "preference_sets").resolve(),
        ingest=IngestConfig(sources=[source]),
        train=TrainConfig(
            lora_r=8, lora_alpha=16, learning_rate=5e-4, epochs=2, batch_size=2, gradient_accumulation=1,
            max_length=256, gradient_checkpointing=False, logging_steps=1, save_steps=1000,
        ),
        evaluate=EvaluateConfig(max_new_tokens=8, report_max_new_tokens=24),
    )


def cmd_demo(args: argparse.Namespace) -> int:
    from flows.evaluate import comparison_text
    from flows.pipeline import pipeline
    from tasks.demo_data import build_demo_data

    samples = DATA / "samples"
    build_demo_data(samples)
    config = demo_config(samples)
    config_path = samples / "demo-run.yaml"
    config_path.write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    result = pipeline(config)
    print("\n== curation")
    print_manifests(result.curated)
    assembled = result.curated["assemble"]
    print(f"\n== preference set {config.name}@{assembled.key}: {config.sets / config.name / assembled.key}")
    print(f"   pairs: {assembled.counts['pairs']:g} (text {assembled.counts.get('pairs.text', 0):g}, visual {assembled.counts.get('pairs.visual', 0):g})")
    print(f"\n== training (tiny random-weight LLaVA on CPU): {result.train.path}")
    print(f"\n== evaluation on the test split (base vs trained)\n{comparison_text(result.evaluation.comparison)}")
    print(f"\nrun config: {config_path}   (mmedpo curate|train|evaluate --config {config_path})")
    print("inspect: mmedpo sets show demo")
    return 0


def print_manifests(manifests: dict, max_counters: int = 6) -> None:
    for stage, manifest in manifests.items():
        counters = [f"{k}={v:g}" for k, v in manifest.counts.items() if "." not in k][:max_counters]
        print(f"{stage:<12} {manifest.path}  ({', '.join(counters)})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmedpo", description="MMedPO curation, training and evaluation")
    commands = parser.add_subparsers(dest="command", required=True)

    ingest = commands.add_parser("ingest", help="read one data set in its distributed format into Parquet")
    ingest.add_argument("--format", required=True, choices=sorted(READERS))
    ingest.add_argument("--root", required=True, type=Path, help="the data set's folder (jsonl: file or folder)")
    ingest.add_argument("--out", required=True, type=Path, help="FILE.parquet (rejects go to FILE.rejects.parquet)")
    ingest.add_argument("--split", action="append", help="keep only this split (repeatable)")
    ingest.add_argument("--name", help="data set name recorded per sample")
    ingest.set_defaults(handler=cmd_ingest)

    demo_data = commands.add_parser("demo-data", help="build the small real-image sample set")
    demo_data.add_argument("--out", type=Path, default=DATA / "samples")
    demo_data.set_defaults(handler=cmd_demo_data)

    curate = commands.add_parser("curate", help="run the curation flow")
    curate.add_argument("--config", required=True, type=Path, help="run config YAML")
    curate.set_defaults(handler=cmd_curate)

    sets = commands.add_parser("sets", help="list or show preference sets").add_subparsers(dest="sets_command", required=True)
    sets_list = sets.add_parser("list", help="every published set version")
    sets_list.add_argument("--root", type=Path, default=DATA / "preference_sets")
    sets_list.set_defaults(handler=cmd_sets_list)
    sets_show = sets.add_parser("show", help="a set's data card and manifest")
    sets_show.add_argument("ref", help="NAME (newest version) or NAME@VERSION")
    sets_show.add_argument("--root", type=Path, default=DATA / "preference_sets")
    sets_show.set_defaults(handler=cmd_sets_show)

    train_cli(commands)
    evaluate_cli(commands)
    experiment_cli(commands)

    demo = commands.add_parser("demo", help="build the sample data and run the whole pipeline on CPU")
    demo.set_defaults(handler=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (ConfigError, IngestError, FileNotFoundError) as exc:
        print(f"mmedpo: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
