"""`tscli list`, `tscli digits` and `tscli train-digits`: the model registry and offline data."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..errors import UsageError
from .common import err, out, status, table


def list_cmd(family: Optional[str] = typer.Option(None, help="Only this family (ats, dense, dovit, seg, dynamicvit, evit).")):
    """List the registered model variants."""
    from ..tools.catalog import model_rows

    rows = model_rows(family)
    t = table("model", "family", "dim/depth/heads", "input", "stages", "description")
    for row in rows:
        t.add_row(*row.values())
    out.print(t)


def digits_cmd(
    folder: Path = typer.Argument(..., help="New folder for the ImageFolder (train/ and val/ inside)."),
    size: int = typer.Option(32, "--size", help="Image side in pixels (the digits model takes 32)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the train/val split."),
):
    """Write scikit-learn's digits as a labelled ImageFolder (real data that installs offline)."""
    from ..data.digits import write_imagefolder

    counts = write_imagefolder(folder, size=size, seed=seed)
    out.print(f"wrote {folder}: {counts['train']} train, {counts['val']} val images in 10 class folders")


def train_digits_cmd(
    output: Path = typer.Option(..., "-o", "--output", help="Checkpoint to write (.safetensors)."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Training epochs (default 12 for ats: 171 s on 2 idle CPU cores; 8 for dynamicvit)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the split, the init and the batches."),
    method: str = typer.Option("ats", "--method", help="ats (the digits ViT, ATS in the loop) | dynamicvit (its predictors, distilled from the dense model)."),
    teacher: Optional[Path] = typer.Option(None, "--teacher", help="dynamicvit: the digits checkpoint to distil from (default: trained first)."),
):
    """Train the small digits ViT on the CPU; export it with `tscli export digits_ats --checkpoint FILE`."""
    from ..tools.train_digits import train_digits

    if method not in ("ats", "dynamicvit"):
        raise UsageError(f"unknown --method {method!r}; valid: ats, dynamicvit")
    if epochs is not None and epochs < 1:
        raise UsageError(f"--epochs {epochs} is invalid; give at least 1")
    if method == "dynamicvit":
        return _train_dynamicvit(output, epochs or 8, seed, teacher)
    if teacher is not None:
        raise UsageError("--teacher applies to --method dynamicvit")
    epochs = epochs or 12

    def epoch_line(e: dict) -> None:  # one line per epoch stays on screen; the spinner follows the steps
        err.print(f"epoch {e['epoch']}/{e['epochs']}: loss {e['loss']:.3f}, val top-1 {e['val_top1']:.3f} "
                  f"({e['seconds']:.0f} s)", markup=False, highlight=False)

    with status("training") as spinner:
        r = train_digits(output, epochs=epochs, seed=seed, progress=lambda msg: spinner.update(msg), on_epoch=epoch_line)
    out.print(f"wrote {r.path}: {r.epochs} epochs in {r.seconds:.0f} s, train top-1 {r.train_accuracy:.3f}, "
              f"val top-1 {r.val_accuracy:.3f} at K=max_k, {r.val_accuracy_k8:.3f} at K=8 (digits_ats, held-out split)")


def _train_dynamicvit(output: Path, epochs: int, seed: int, teacher: Optional[Path]) -> None:
    from ..tools.train_dynamicvit import train_dynamicvit_digits

    with status("training") as spinner:
        r = train_dynamicvit_digits(output, teacher, epochs=epochs, seed=seed, progress=lambda msg: spinner.update(msg))
    out.print(f"wrote {r.path}: digits_dynamicvit, {r.epochs} epochs in {r.seconds:.0f} s; held-out top-1: dense teacher "
              f"{r.val_dense:.3f}, DynamicViT at rate {r.rate:g} (kept {' '.join(map(str, r.counts))}) {r.val_dynamicvit:.3f} "
              f"(untrained predictors: {r.val_untrained:.3f}); export with `tscli export digits_dynamicvit --checkpoint {r.path}`")
