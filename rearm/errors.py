"""Exception types. Every user-facing failure is one of these, with a one-line message that names
the file (or option), the field and the problem; the CLI turns them into exit code 2."""


class RearmError(Exception):
    """Base class of every error rearm raises on purpose."""


class DataError(RearmError, ValueError):
    """An input data set is missing, unreadable or invalid."""


class ConfigError(RearmError, ValueError):
    """A configuration key, value or preset is unknown or has the wrong type."""


class RunError(RearmError):
    """A run directory or saved model bundle is missing or inconsistent."""


class StoppedError(RunError):
    """A run stopped by a signal before it had a model to save; `exit_code` is the shell's
    128 + signal number (130 for SIGINT, 143 for SIGTERM), not the 2 of bad input."""

    def __init__(self, message: str, signal_name: str | None = None) -> None:
        super().__init__(message)
        self.exit_code = stop_exit_code(signal_name)


def stop_exit_code(signal_name: str | None) -> int:
    """128 + the signal's number, as a shell reports a process the signal ended."""
    import signal

    try:
        return 128 + int(signal.Signals[signal_name or "SIGINT"])
    except KeyError:
        return 130


class UnknownUserError(RearmError, KeyError):
    """A user id asked for in `recommend` is not in the model's id map."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class UnknownItemError(RearmError, KeyError):
    """An item id asked for (an exclusion, a similar-items query, a new user's items) is not in
    the model's id map."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class ColdStartError(RunError):
    """A model cannot represent new items (no feature path), or new items' features do not fit
    the model they are added to."""
