"""Subcommands of the `rearm` CLI. Each module exposes `register(subparsers)` that adds its parser
and sets `handler` to a function taking the parsed arguments and returning an exit code."""

from rearm.commands import analyze, coldstart, config, data, graphs, plan, run, serve, study

COMMANDS = [
    data.register,
    graphs.register,
    plan.register,
    run.register,
    study.register,
    analyze.register,
    coldstart.register,
    config.register,
    serve.register,
]
