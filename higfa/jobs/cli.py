"""The `higfa` command. Each sub-command lives in its own module exposing `register(subparsers)`;
the module list below is the only place a new command is added.

Exit codes: 0 done; 1 nothing could be produced (or a merge with missing items); 2 a user error
(one line naming the option or file; `--debug` shows the traceback); 130 Ctrl-C; 143 SIGTERM.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# each module's register() adds its sub-commands
COMMAND_MODULES: list[str] = ["higfa.jobs.augment", "higfa.jobs.classifiers", "higfa.jobs.check_classifier",
                              "higfa.jobs.tuning", "higfa.jobs.evaluate", "higfa.world.demo", "higfa.world.train"]
USER_ERRORS = (ValueError, FileNotFoundError, PermissionError, NotADirectoryError, IsADirectoryError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="higfa", description="HiGFA: hierarchically guided fine-grained "
                                     "augmentation with diffusion models")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .distributed import Terminated

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
    except Terminated:
        print("\nterminated (SIGTERM): finished outputs are kept; rerun the same command to resume", file=sys.stderr)
        return 143
    except USER_ERRORS as e:
        if args.debug:
            raise
        print(f"higfa {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
