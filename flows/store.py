"""`mmedpo store`: maintain an artifact store - pack a store of the previous layout (`migrate`),
list or delete the item rows and blobs no artifact uses any more (`gc`)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_cli(commands: argparse._SubParsersAction) -> None:
    store = commands.add_parser("store", help="maintain an artifact store").add_subparsers(
        dest="store_command", required=True
    )
    migrate = store.add_parser("migrate", help="pack an item cache written by the previous layout (docs/scale.md)")
    migrate.add_argument("--root", required=True, type=Path, help="the store (run config's `store`)")
    migrate.set_defaults(handler=cmd_store_migrate)
    gc = store.add_parser(
        "gc", help="item rows and blobs no artifact uses any more: list them, or --delete (docs/store.md)"
    )
    gc.add_argument("--root", required=True, type=Path, help="the store (run config's `store`)")
    gc.add_argument("--delete", action="store_true", help="delete them (default: a dry run that lists them)")
    gc.add_argument(
        "--min-age-minutes", type=float, default=60.0, help="never collect files younger than this (default: 60)"
    )
    gc.set_defaults(handler=cmd_store_gc)


def cmd_store_migrate(args: argparse.Namespace) -> int:
    from tasks.store.migrate import migrate

    packed = migrate(args.root)
    for stage, count in packed.items():
        print(f"{stage}: {count} items packed")
    print(f"{args.root}: in the packed layout" + ("" if packed else " already"))
    return 0


def cmd_store_gc(args: argparse.Namespace) -> int:
    from tasks.store.gc import collect

    garbage = collect(args.root, delete=args.delete, min_age_s=60 * args.min_age_minutes)
    for path, size in garbage.rows + garbage.blobs:
        print(f"{'deleted' if args.delete else 'unused'}: {path.relative_to(args.root)} ({size} bytes)")
    for stage in garbage.kept_stages:
        print(f"kept: every {stage} item row (an artifact of it predates recorded item rows)")
    done = "deleted" if args.delete else "can be deleted (run again with --delete)"
    print(
        f"{args.root}: {len(garbage.rows)} rows files and {len(garbage.blobs)} blobs, "
        f"{garbage.bytes / 1e6:.1f} MB, {done}"
    )
    return 0
