"""The typer app: every command registered, and the one place errors become exit codes.

Every TscliError becomes one line on stderr and its exit code; tracebacks only with --debug (the
exit codes stay the same with it: see main).
Heavy packages (torch, timm, onnx) are imported inside the commands that need them, so `run`
and `inspect` work on a deploy host that has only the runtime installed.
"""

from __future__ import annotations

import signal
import sys
import traceback

import typer
from typer import (
    _click as typer_click,  # typer's bundled click: its exceptions are these
)

from ..errors import TscliError, first_line
from . import (
    check_cmd,
    compare_cmd,
    data_cmd,
    device_cmd,
    export_cmd,
    precision_cmd,
    run_cmd,
    serve_cmd,
    speed_cmd,
    stats_cmd,
)
from .common import complete_optional_values, err

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Export token-sampling ViTs (ATS, DoViT) to ONNX / TensorRT and run them with a per-device K.")
_state = {"debug": False}


@app.callback()
def _main(debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors.")):
    _state["debug"] = debug


app.command("list")(data_cmd.list_cmd)
app.command()(export_cmd.export)
app.command()(check_cmd.inspect)
app.command()(run_cmd.run)
app.command()(check_cmd.parity)
app.command()(speed_cmd.bench)
app.command()(device_cmd.build)
app.command()(device_cmd.doctor)
app.command()(device_cmd.selftest)
app.command("digits")(data_cmd.digits_cmd)
app.command("train-digits")(data_cmd.train_digits_cmd)
app.command()(speed_cmd.tune)
app.command()(compare_cmd.compare)
app.command()(stats_cmd.stats)
app.command("triton-repo")(serve_cmd.triton_repo)
app.command()(serve_cmd.serve)
app.command()(serve_cmd.loadtest)
app.command()(precision_cmd.quantize)
app.command()(precision_cmd.convert)


def _on_sigterm(signum, frame):
    """SIGTERM ends a command the way Ctrl-C does: every temporary file is removed on the way out
    (files.atomic_path cleans up on any exception); the exit code says which signal it was."""
    _state["signal"] = signum
    raise KeyboardInterrupt


def _exit(code: int, message: str | None = None) -> None:
    if message:
        err.print(message, markup=False, highlight=False, soft_wrap=True)
    sys.exit(code)


def main() -> None:
    """Run the app. Exit codes: 0 ok, 1 a check failed (or a TscliError that is not the user's
    input), 2 bad usage or input, 3 an internal error (a bug), 130 Ctrl-C, 143 SIGTERM."""
    signal.signal(signal.SIGTERM, _on_sigterm)
    command = typer.main.get_command(app)
    try:
        # standalone_mode=False: errors come back here to be printed as one line. typer turns
        # Ctrl-C into Exit(130) and hands every Exit back as the return value.
        code = command.main(args=complete_optional_values(sys.argv[1:]), standalone_mode=False)
    except typer_click.exceptions.ClickException as exc:  # usage: click's usual message, exit 2
        exc.show()
        _exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        code = 130
    except TscliError as exc:
        _debug_traceback()
        _exit(exc.exit_code, f"error: {exc}")
    except OSError as exc:  # the disk or the OS refused (full disk, read-only folder, ...)
        _debug_traceback()
        where = f" {exc.filename!r}" if exc.filename else ""
        _exit(1, f"error: cannot complete the operation on{where}: {exc.strerror or first_line(exc)}")
    except Exception as exc:  # a bug: still one line unless --debug
        _debug_traceback()
        _exit(3, f"internal error: {type(exc).__name__}: {first_line(exc)} (rerun with --debug for the traceback)")
    if code == 130:
        sig = _state.get("signal")
        if sig is not None:
            _exit(128 + int(sig), "terminated")
        _exit(130, "aborted")
    _exit(code if isinstance(code, int) else 0)


def _debug_traceback() -> None:
    """With --debug, the traceback goes to stderr first; the exit code stays the same."""
    if _state["debug"]:
        traceback.print_exc()
