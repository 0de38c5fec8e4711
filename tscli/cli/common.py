"""What every command shares: the consoles, a progress spinner, option types and their parsers.

Options that several commands take (--k, --plugins, --json, --threads) are declared once here as
annotated types, so their spelling, help and parsing cannot drift apart between commands.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, List, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from ..errors import UsageError

# Piped output (CI logs, files) gets a wide console instead of rich's 80-column default.
out = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 160)

JsonFlag = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
Threads = Annotated[Optional[int], typer.Option("--threads", help="ONNX Runtime intra-op threads.")]
KList = Annotated[Optional[List[str]], typer.Option(
    "--k", help="K values (points per ATS stage), repeat or comma list. Default: max_k and max_k/2.")]
Plugins = Annotated[Optional[Path], typer.Option(
    "--plugins", help="Plugin-form FILE: the op library it runs with. ort: tscli's ONNX Runtime op library "
                      "(`python -m tscli.plugins.ort_ops` builds it); trt: libtscli_plugins.so.")]
Checkpoint = Annotated[Optional[Path], typer.Option(
    "--checkpoint", help="The checkpoint the file was exported from (to rebuild the PyTorch model).")]
Backend = Annotated[str, typer.Option("--backend", help="ort | trt (FILE is an engine) | ort-cuda | ort-trt.")]
Batch = Annotated[int, typer.Option("--batch", help="Images per inference (memory stays bounded whatever the number of images).")]
RateList = Annotated[Optional[List[str]], typer.Option(
    "--rate", help="DynamicViT / EViT keep rates (0 < rate <= the file's max_rate), repeat or comma list. "
                   "Default: the file's rate (and 0.5 for parity).")]


# Options whose value may be left out: a bare `--pretrained` means `--pretrained default`. typer
# has no optional-value options, so main() completes a bare one before parsing (a value must then
# follow the model name, or be given as --pretrained=TAG).
OPTIONAL_VALUES = {"--pretrained": "default"}


def complete_optional_values(argv: list[str]) -> list[str]:
    """argv with the default value inserted after every bare optional-value option."""
    done = []
    for i, arg in enumerate(argv):
        done.append(arg)
        if arg in OPTIONAL_VALUES and (i + 1 == len(argv) or argv[i + 1].startswith("-")):
            done.append(OPTIONAL_VALUES[arg])
    return done


def status(message: str):
    """A spinner on stderr while a slow step runs; its text follows the library's progress."""
    return err.status(message, spinner="dots")


def progress_bar(items: list, description: str, size: int):
    """Yield ``items`` in chunks of ``size`` with a progress bar on stderr (gone when done; none
    when stderr is not a terminal, where a bar would only leave blank lines in logs)."""
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err, transient=True, disable=not err.is_terminal) as bar:
        task = bar.add_task(description, total=len(items))
        for lo in range(0, len(items), size):
            chunk = items[lo:lo + size]
            yield chunk
            bar.advance(task, len(chunk))


def positive(value: int, option: str) -> int:
    if value < 1:
        raise UsageError(f"{option} {value} is invalid; give a number >= 1")
    return value


def print_json(data) -> None:
    """Colourised on a terminal; plain text otherwise (rich's highlighting of a large report, e.g.
    the kept positions of hundreds of images, costs hundreds of MB and nothing to a pipe)."""
    text = json.dumps(data, indent=2)
    if out.is_terminal:
        out.print_json(text)
    else:
        sys.stdout.write(text + "\n")


def yes_no(ok: bool) -> str:
    return "[green]yes[/]" if ok else "[red]NO[/]"


def table(*columns: str, title: str | None = None) -> Table:
    return Table(*columns, title=title)


def _parts(values: Optional[List[str]]) -> list[str]:
    return [p.strip() for v in values or [] for p in str(v).split(",") if p.strip()]


def parse_k_list(values: Optional[List[str]], option: str = "--k") -> list[int] | None:
    """Repeated and/or comma-separated K values -> ints (range checks belong to the file)."""
    ks = []
    for part in _parts(values):
        try:
            ks.append(int(part))
        except ValueError:
            raise UsageError(f"bad {option} {part!r}; give integers like {option} 48 {option} 96 or {option} 48,96") from None
    return ks or None


def parse_k_value(value: str | None) -> int | str | None:
    """One --k: an integer or 'auto' (K from this device's profile)."""
    if value is None or value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        raise UsageError(f"bad --k {value!r}; give an integer in 1..max_k or 'auto'") from None


def parse_floats(values: Optional[List[str]], option: str) -> list[float] | None:
    try:
        return [float(p) for p in _parts(values)] or None
    except ValueError:
        raise UsageError(f"bad {option} {values!r}; give numbers like {option} 0.985 {option} 1.0 or {option} 0.9,1.0") from None


def parse_rate(value: str | None, option: str = "--rate") -> float | None:
    """One --rate as a float (range checks belong to the file: contract.check_rate)."""
    rates = parse_floats([value], option) if value is not None else None
    if rates is not None and len(rates) != 1:
        raise UsageError(f"bad {option} {value!r}; give one number like {option} 0.7")
    return rates[0] if rates else None


def print_caveat(runner) -> None:
    """DynamicViT at a rate its predictors were not trained for: say so on stderr."""
    if getattr(runner, "caveat", None):
        err.print(runner.caveat, markup=False, highlight=False, soft_wrap=True)


def parse_ints(text: str, option: str) -> list[int]:
    try:
        return [int(p) for p in _parts([text])]
    except ValueError:
        raise UsageError(f"bad {option} {text!r}; give integers like 48,96") from None


def optional_str(path: Optional[Path]) -> str | None:
    return str(path) if path is not None else None
