"""The `mmedpo` command: parse, load the run config, call a flow or a stage function."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from tasks.config import ConfigError, IngestConfig, RunConfig, SourceConfig, load_run_config
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


def demo_config(samples: Path) -> RunConfig:
    """The demo's run config: the sample set, offline defaults for every stage."""
    source = SourceConfig(format="jsonl", root=(samples / "demo.jsonl").resolve(), name="demo")
    return RunConfig(name="demo", store=(DATA / "artifacts").resolve(), ingest=IngestConfig(sources=[source]))


def cmd_demo(args: argparse.Namespace) -> int:
    from flows.curate import curate
    from tasks.demo_data import build_demo_data

    samples = DATA / "samples"
    build_demo_data(samples)
    config = demo_config(samples)
    config_path = samples / "demo-run.yaml"
    config_path.write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    manifests = curate(config)
    print_manifests(manifests)
    print(f"\nrun config (re-run with `mmedpo curate --config {config_path}`): {config_path}")
    return 0


def print_manifests(manifests: dict) -> None:
    for stage, manifest in manifests.items():
        counts = ", ".join(f"{k}={v:g}" for k, v in manifest.counts.items() if "." not in k)
        print(f"{stage:<12} {manifest.path}  ({counts})")


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

    demo = commands.add_parser("demo", help="build the sample data and run the whole pipeline on CPU")
    demo.set_defaults(handler=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (ConfigError, IngestError) as exc:
        print(f"mmedpo: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
