"""`rearm study run | report | templates | template`: the paper's experiments as commands."""

from __future__ import annotations

import argparse
import dataclasses
import signal
import sys
from pathlib import Path

from rearm.errors import ConfigError


def register(subparsers: argparse._SubParsersAction) -> None:
    study = subparsers.add_parser(
        "study",
        help="run and report studies (grids of runs over seeds, with statistics and plots)",
        description="Studies: a base configuration crossed with axes or variants, models, data "
        "sets and seeds; each cell an ordinary run directory. See README, section Studies.",
    )
    commands = study.add_subparsers(dest="study_command", metavar="SUBCOMMAND")
    commands.required = True

    run = commands.add_parser(
        "run",
        help="run (or resume) a study from a spec file or a template",
        description="Expand SPEC (a YAML file or a template name) into runs under "
        "OUT/runs/ and record OUT/study.json. Complete runs with the same resolved "
        "configuration and data are skipped, so the same command resumes a study.",
    )
    run.add_argument("spec", help="spec YAML file, or a template name (rearm study templates)")
    run.add_argument("--out", required=True, help="study directory")
    run.add_argument(
        "--data", action="append", help="data set path (repeat for several); replaces the spec's"
    )
    run.add_argument("--preset", help="published settings (applied to the models that have it)")
    run.add_argument("--seeds", help="a count (3 = 2025..2027) or a list 2025,2026")
    run.add_argument("--epochs", type=int, help="most epochs per run (training.epochs)")
    run.add_argument("--patience", type=int, help="early stop patience (training.patience)")
    run.add_argument("--protocol", choices=["standard", "reference"], help="evaluation protocol")
    run.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one key in every run (as in rearm train)",
    )
    run.add_argument(
        "--jobs",
        type=int,
        help="runs at once (default: 4 per GPU, 2 on the CPU; see rearm.studies.engine)",
    )
    run.add_argument("--threads", type=int, help="threads per run (default: cores // jobs)")
    run.add_argument("--device", help="auto, cpu or cuda[:N] for every run (default auto)")
    run.add_argument("--devices", help="comma-separated devices spread over the jobs")
    run.add_argument(
        "--executor",
        choices=["local", "ray"],
        default="local",
        help="local worker processes, or Ray tasks (pip install 'rearm[ray]')",
    )
    run.add_argument("--address", help="Ray cluster address (default: a local Ray instance)")
    run.add_argument("--dry-run", action="store_true", help="list the runs, run nothing")
    run.add_argument("--quiet", action="store_true", help="no progress lines")
    run.set_defaults(handler=_run)

    report = commands.add_parser(
        "report",
        help="tables (md, csv, latex, json) and PNG plots of a study",
        description="Mean ± std over seeds, relative change and Wilcoxon signed-rank + Holm "
        "against the reference row; sweeps mark the row chosen by mean valid Recall@20. "
        "Writes report.{md,csv,tex,json} and PNGs into --out (default STUDY_DIR/report) and "
        "prints the table in --format.",
    )
    report.add_argument("study_dir")
    report.add_argument("--format", choices=["md", "csv", "latex", "json"], default="md")
    report.add_argument("--reference", help="row to compare against (default: full / first)")
    report.add_argument("--out", help="folder for the table files and plots")
    report.add_argument("--no-plots", action="store_true", help="tables only")
    report.set_defaults(handler=_report)

    templates = commands.add_parser("templates", help="list the study templates")
    templates.set_defaults(handler=_templates)
    template = commands.add_parser(
        "template", help="print a template as an editable spec (rearm study template NAME > f)"
    )
    template.add_argument("name")
    template.set_defaults(handler=_template)


def load_spec(text: str):
    """A spec file path, or a template name."""
    from rearm.studies.spec import read_spec, spec_from_dict
    from rearm.studies.templates import TEMPLATE_NAMES, get_template

    if Path(text).is_file() or text.endswith((".yaml", ".yml")):
        return read_spec(text)
    if text in TEMPLATE_NAMES:
        return spec_from_dict(get_template(text), f"template {text}")
    get_template(text)  # raises, naming the templates
    raise ConfigError(f"{text}: not a spec file or a template")  # unreachable


def _run(args: argparse.Namespace) -> int:
    from rearm.studies.engine import run_study
    from rearm.studies.spec import parse_seeds_option

    spec = load_spec(args.spec)
    changes: dict = {}
    if args.data:
        changes["data"] = tuple(args.data)
    if args.preset:
        changes["preset"] = args.preset
    if args.seeds:
        changes["seeds"] = parse_seeds_option(args.seeds)
    if args.protocol:
        changes["protocol"] = args.protocol
    training = dict(spec.training)
    for name in ("epochs", "patience"):
        if getattr(args, name) is not None:
            training[name] = getattr(args, name)
    changes["training"] = training
    changes["overrides"] = tuple(spec.overrides) + tuple(args.overrides)
    spec = dataclasses.replace(spec, **changes)
    if args.device and args.devices:
        raise ConfigError("give --device or --devices, not both")
    devices = None
    if args.devices:
        devices = [d.strip() for d in args.devices.split(",") if d.strip()]
        if not devices:
            raise ConfigError("--devices: give at least one device")
    elif args.device:
        devices = [args.device]
    if args.address and args.executor != "ray":
        raise ConfigError("--address needs --executor ray")

    def line(text: str) -> None:
        if not args.quiet:
            print(text, file=sys.stderr, flush=True)

    _stop_on_signals()
    result = run_study(
        spec,
        args.out,
        jobs=args.jobs,
        threads=args.threads,
        devices=devices,
        executor=args.executor,
        address=args.address,
        dry_run=args.dry_run,
        line=line,
        where=_spec_name(args.spec),
    )
    if args.dry_run:
        return 0
    return 0 if result["status"] == "complete" else 1


def _spec_name(text: str) -> str:
    """How errors name the spec: its file, or the template."""
    if Path(text).is_file() or text.endswith((".yaml", ".yml")):
        return text
    return f"template {text}"


def _stop_on_signals() -> None:
    """SIGTERM (and SIGINT, even where the shell started us with it ignored) stop a study as
    Ctrl-C does: the running cells are stopped and recorded, and the study can be resumed."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, interrupt)


def _report(args: argparse.Namespace) -> int:
    from rearm.studies.report import FORMATS, build_report, write_report

    report = build_report(args.study_dir, reference=args.reference)
    out = Path(args.out) if args.out else Path(args.study_dir) / "report"
    written = write_report(report, out)
    if not args.no_plots:
        try:
            from rearm.studies.plots import plot_report

            written += plot_report(report, out)
        except ConfigError as error:
            print(f"rearm: plots skipped: {error}", file=sys.stderr)
    print(FORMATS[args.format](report))
    print(f"wrote {', '.join(p.name for p in written)} -> {out}", file=sys.stderr)
    return 0


def _templates(args: argparse.Namespace) -> int:
    from rearm.studies.templates import describe_templates

    for name, description in describe_templates():
        print(f"{name:<13} {description}")
    return 0


def _template(args: argparse.Namespace) -> int:
    from rearm.studies.templates import template_yaml

    print(template_yaml(args.name), end="")
    return 0
