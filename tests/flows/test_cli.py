"""The `mmedpo` command: every command is added the one way, a function that adds its subcommand
and sets its handler."""

import argparse

from flows import cli


def leaves(parser: argparse.ArgumentParser, prefix: str = "") -> dict[str, argparse.ArgumentParser]:
    """Every runnable (sub)command by its full name."""
    found = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found |= leaves(sub, f"{prefix}{name} ")
    return found or {prefix.strip(): parser}


def test_every_command_has_a_handler_and_the_product_commands_are_all_there():
    commands = leaves(cli.build_parser())
    product = {
        "ingest", "demo-data", "curate", "sets list", "sets show", "config show", "models smollm2",
        "sft", "train", "evaluate", "iterate", "explain", "demo",
    }  # fmt: skip
    assert product <= set(commands)
    assert all(callable(parser.get_default("handler")) for parser in commands.values())


def test_the_commands_without_a_flow_are_added_like_the_flows_own():
    parser = argparse.ArgumentParser(prog="t")
    sub = parser.add_subparsers(dest="command", required=True)
    cli.add_curate(sub)
    args = parser.parse_args(["curate", "--config", "run.yaml"])
    assert args.handler is cli.cmd_curate
    assert str(args.config) == "run.yaml"
