"""Studies: grids of runs (a base configuration x axes or variants x models x data sets x seeds),
run in parallel and resumably through the same `train_run` as `rearm train`, and reported as
tables with multi-seed statistics and significance, and plots. See README, section Studies."""

from rearm.studies.engine import cell_complete, run_study
from rearm.studies.report import build_report, write_report
from rearm.studies.spec import StudySpec, expand_cells, read_spec, spec_from_dict
from rearm.studies.templates import TEMPLATE_NAMES, get_template, template_yaml

__all__ = [
    "StudySpec",
    "TEMPLATE_NAMES",
    "build_report",
    "cell_complete",
    "expand_cells",
    "get_template",
    "read_spec",
    "run_study",
    "spec_from_dict",
    "template_yaml",
    "write_report",
]
