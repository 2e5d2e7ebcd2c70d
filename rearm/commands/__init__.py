"""Subcommands of the `rearm` CLI. Each module exposes `register(subparsers)` that adds its parser
and sets `handler` to a function taking the parsed arguments and returning an exit code."""

from rearm.commands import config, data, graphs, run

COMMANDS = [data.register, graphs.register, run.register, config.register]
