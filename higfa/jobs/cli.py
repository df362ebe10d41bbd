"""The `higfa` command. Each sub-command lives in its own module exposing `register(subparsers)`;
the module list below is the only place a new command is added."""

from __future__ import annotations

import argparse
import importlib
import sys

COMMAND_MODULES: list[str] = ["higfa.jobs.augment", "higfa.jobs.classifiers", "higfa.jobs.evaluate", "higfa.world.demo", "higfa.world.train"]  # each module's register() adds its sub-commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="higfa", description="HiGFA: hierarchically guided fine-grained "
                                     "augmentation with diffusion models")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("\ninterrupted: finished outputs are kept; rerun the same command to resume", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError) as e:
        print(f"higfa {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
