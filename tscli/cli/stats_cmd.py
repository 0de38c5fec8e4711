"""`tscli stats`: the tokens a file keeps over a folder of images (K' per stage, GFLOPs per image)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .common import Batch, JsonFlag, Threads, out, print_json, status, table


def stats(
    file: Path = typer.Argument(..., help="Exported ATS or DoViT .onnx file."),
    data: Path = typer.Option(..., "--data", help="Folder of images (sub-folders included, e.g. an ImageFolder)."),
    k: Optional[int] = typer.Option(None, "--k", help="ATS: points per stage (1..max_k). Default: max_k."),
    xi: Optional[float] = typer.Option(None, "--xi", help="DoViT threshold 0..1. Default: the file's export value."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Use at most N images (the first N, sorted)."),
    batch: Batch = 16,
    threads: Threads = None,
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Markdown report (.md); its .png and .json go beside it. "
                                          "Default: FILE-stem.stats-kK.md next to the file."),
    as_json: JsonFlag = False,
):
    """K' per stage over a folder (histograms, as in the ATS paper's figure 6), GFLOPs per image and the means."""
    from ..tools.stats import stats as run_stats

    with status("counting kept tokens") as spinner:
        report = run_stats(file, data, k, xi, limit, batch, threads, output, progress=lambda m: spinner.update(m))
    if as_json:
        return print_json(report)
    what = f"K={report['k']}" if report["k"] is not None else f"xi={report['xi']}"
    t = table("stage", "block", "mean", "median", "p10-p90", "min-max",
              title=f"{report['model']} at {what}: {report['unit']} over {report['images']} images")
    for s in report["stages"]:
        t.add_row(str(s["stage"]), str(s["block"]), f"{s['mean']:.1f}", f"{s['median']:.0f}", f"{s['p10']:.0f}-{s['p90']:.0f}",
                  f"{s['min']:.0f}-{s['max']:.0f}")
    out.print(t)
    g, m = report["gflops"], report["gmacs"]
    out.print(f"GFLOPs per image on its own kept tokens: mean {g['mean']:.4g} (GMACs, papers' \"GFLOPs\": {m['mean']:.4g}), "
              f"p10-p90 {g['p10']:.4g}-{g['p90']:.4g}; padded graph {g['padded']:.4g}, dense {g['dense']:.4g}",
              markup=False, highlight=False)
    if report["saturated"]:
        out.print(f"{report['saturated']} of {report['images']} images hit the capacity C={report['capacity']}: raise --max-keep")
    if report["random_weights"]:
        out.print(f"note: weights {report['weights']}", markup=False, highlight=False)
    out.print(f"report -> {report['markdown']}, plot -> {report['plot']}, data -> {report['json']}", markup=False,
              highlight=False)
