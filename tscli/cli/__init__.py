"""tscli command line: one module per command group over the library (tools/ and runtime/).

    app.py          the typer app, command registration, errors -> exit codes
    common.py       consoles, shared option types, list parsers
    export_cmd.py   export            check_cmd.py   parity, inspect
    run_cmd.py      run               speed_cmd.py   bench, tune
    device_cmd.py   build, doctor, selftest
    data_cmd.py     list, digits, train-digits
    serve_cmd.py    triton-repo, serve, loadtest
"""

from .app import app, main

__all__ = ["app", "main"]
