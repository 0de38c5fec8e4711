"""The typer app: every command registered, and the one place errors become exit codes.

Every TscliError becomes one line on stderr and its exit code; tracebacks only with --debug.
Heavy packages (torch, timm, onnx) are imported inside the commands that need them, so `run`
and `inspect` work on a deploy host that has only the runtime installed.
"""

from __future__ import annotations

import sys

import typer

from ..errors import TscliError, first_line
from . import check_cmd, compare_cmd, data_cmd, device_cmd, export_cmd, run_cmd, speed_cmd
from .common import err

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


def main() -> None:
    import click

    command = typer.main.get_command(app)
    try:
        command.main(standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except (click.exceptions.Abort, KeyboardInterrupt):
        err.print("aborted")
        sys.exit(130)
    except TscliError as exc:
        if _state["debug"]:
            raise
        err.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except Exception as exc:  # a bug: still one line unless --debug
        if _state["debug"]:
            raise
        err.print(f"internal error: {type(exc).__name__}: {first_line(exc)} (rerun with --debug for the traceback)",
                  markup=False, highlight=False, soft_wrap=True)
        sys.exit(3)
