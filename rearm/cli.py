"""The `rearm` command. Each subcommand lives in a module under rearm/commands; this file only
assembles the parser and turns rearm's own errors, and the file system's, into a one-line message
and exit code 2."""

from __future__ import annotations

import argparse
import os
import sys

from rearm import __version__
from rearm.errors import RearmError


def build_parser() -> argparse.ArgumentParser:
    from rearm.commands import COMMANDS

    parser = argparse.ArgumentParser(
        prog="rearm",
        description="Train, evaluate, compare and use graph-based multi-modal recommenders.",
    )
    parser.add_argument("--version", action="version", version=f"rearm {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for register in COMMANDS:
        register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except RearmError as error:
        print(f"rearm: error: {error}", file=sys.stderr)
        return getattr(error, "exit_code", 2)  # StoppedError: 128 + the signal's number
    except KeyboardInterrupt:
        print("rearm: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader of our output went away (`rearm ... | head`): stop quietly, like other
        # Unix tools, and keep Python from failing again while flushing stdout at exit
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except OSError as error:
        # a refusal of the file system that the command did not word itself (a file where a
        # folder should be, no permission, a read-only or full disk): one line naming the path
        where = f"{error.filename}: " if error.filename else ""
        print(f"rearm: error: {where}{error.strerror or error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
