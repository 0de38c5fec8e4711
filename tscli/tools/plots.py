"""What every picture tscli draws shares (token maps, stats, tune): matplotlib on the Agg backend,
and files written to a temporary name and renamed into place (files.atomic_path), so an
interrupted run never leaves half a PNG or JSON."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import UsageError, require
from ..files import atomic_path, check_writable_folder

INSTALL_HINT = "pip install matplotlib (or tscli[plots])"


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed), or a one-line MissingDependency."""
    matplotlib = require("matplotlib", INSTALL_HINT)
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path, dpi: int | None = None) -> Path:
    """Write ``fig`` as PNG to ``path`` (temp file + rename) and close it."""
    plt = pyplot()
    try:
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=dpi, format="png")
    finally:
        plt.close(fig)
    return Path(path)


def write_json(path: str | Path, data) -> Path:
    with atomic_path(path, suffix=".json") as tmp:
        tmp.write_text(json.dumps(data, indent=1))
    return Path(path)


def output_folder(folder: str | Path, option: str) -> Path:
    """A folder the pictures go into: created if missing, refused if it is a file or read-only."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{option} {str(folder)!r} is a file; give a folder (it is created if missing)")
    folder.mkdir(parents=True, exist_ok=True)
    return check_writable_folder(folder, option)
