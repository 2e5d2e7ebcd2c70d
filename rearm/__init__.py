"""rearm: REARM and graph-based multi-modal recommenders, faithful and fast."""

__version__ = "0.1.0"
