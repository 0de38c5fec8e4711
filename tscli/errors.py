"""One exception hierarchy. The CLI turns every TscliError into one line on stderr and its exit code.

Messages name the bad value and what would be valid, so the line alone tells the user the fix.
"""


class TscliError(Exception):
    """Base class: anything the user can fix (bad input, missing package, failed check)."""

    exit_code = 2


class UsageError(TscliError):
    """A bad argument value: unknown model, K out of range, malformed list."""


class ModelFileError(TscliError):
    """A missing, corrupt or non-tscli ONNX / engine file."""


class CheckpointError(TscliError):
    """A checkpoint that cannot be read or does not fit the architecture."""


class InputError(TscliError):
    """Bad runtime input: missing image file, wrong array shape or dtype."""


class MissingDependency(TscliError):
    """An optional package is not installed; the message says what to install."""


class CheckFailed(TscliError):
    """A parity/validation check ran and failed (numbers beyond tolerance)."""

    exit_code = 1


def require(module: str, install_hint: str):
    """Import an optional heavy module lazily; a missing one is a one-line fix, not a traceback."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - depends on the host
        raise MissingDependency(f"'{module}' is not importable ({exc}); install it with: {install_hint}") from None


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first non-empty line of an exception's message (its type name when it has none),
    cut to ``limit`` characters: what a one-line error quotes from a library's exception."""
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return line[:limit]
