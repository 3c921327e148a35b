"""Flow `sft`: ingest -> supervised fine-tuning. `mmedpo sft --config FILE.yaml`.

Runs when a run config has an ``sft:`` section: on its own, or as the step of `pipeline`
before `train`. The ingest stage is the curation flow's own, so after a curation run it is a
cache hit.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from prefect import flow

from flows.dag import CURATION, SFT
from tasks.config import ConfigError, RunConfig, load_run_config
from tasks.sft import model_dir
from tasks.store import Manifest


@flow(name="sft", flow_run_name="sft-{config.name}")
def sft_flow(config: RunConfig, ingest: Manifest | None = None) -> Manifest:
    """The sft artifact of ``config.sft`` on ``ingest`` (or on the config's sources, ingested)."""
    if config.sft is None:
        raise ConfigError("the run config has no sft: section")
    if ingest is None:
        ingest = CURATION[0].run(config, {})
    return SFT.run(config, {"ingest": ingest})


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("sft", help="supervised fine-tuning before DPO (the run config's sft: section)")
    parser.add_argument("--config", required=True, type=Path, help="run config YAML with an sft: section")
    parser.set_defaults(handler=run_cli)


def run_cli(args: argparse.Namespace) -> int:
    config = load_run_config(args.config)
    if config.sft is None:
        raise ConfigError(
            f"{args.config}: sft: the run config has no sft section (mmedpo config show --defaults lists its fields)"
        )
    manifest = sft_flow(config)
    print(f"sft artifact: {manifest.path}\ncheckpoint:   {model_dir(manifest)}")
    return 0
