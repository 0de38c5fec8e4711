"""`tscli compare`: token-reduction methods side by side on this device."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from .common import Checkpoint, JsonFlag, Threads, out, parse_ints, print_json, status, table


def compare(
    files: List[Path] = typer.Argument(..., help="Exported models with the same weights (ATS, top-K, ToMe, dense, ...)."),
    data: Optional[Path] = typer.Option(None, "--data", help="Images: an ImageFolder (top-1 accuracy) or a plain folder "
                                        "(agreement with dense). Default: the scikit-image samples."),
    k: Optional[List[str]] = typer.Option(None, "--k", help="K for files with a K (ATS, top-K): 99,48 for all, or "
                                          "FILE=99,48 for one (repeatable). Default: max_k and max_k/2."),
    rate: Optional[List[str]] = typer.Option(None, "--rate", help="Keep rate for files with a rate: 0.7,0.5 for all, or "
                                             "FILE=0.7 for one (repeatable)."),
    batch: str = typer.Option("1,8", "--batch", help="Batch sizes of the latency measurement, comma list."),
    threads: Threads = None,
    runs: int = typer.Option(10, "--runs", help="Interleaved latency rounds; medians are over these."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Use at most N images for accuracy/agreement."),
    output: Path = typer.Option(Path("compare.md"), "-o", "--output", help="Markdown table; the PNG goes beside it."),
    checkpoint: Checkpoint = None,
    as_json: JsonFlag = False,
):
    """Compare methods on one device: GFLOPs, latency and speed-up over dense, accuracy or agreement."""
    from ..files import check_output_file
    from ..tools.compare import compare as run_compare
    from ..tools.compare_report import quality_label, write_outputs

    check_output_file(output)
    with status("comparing") as spinner:
        report = run_compare(files, {"k": k, "rate": rate}, data, parse_ints(batch, "--batch"), threads, runs,
                             limit=limit, checkpoint=str(checkpoint) if checkpoint else None,
                             progress=lambda msg: spinner.update(msg))
    write_outputs(report, output)
    if as_json:
        return print_json(report)
    top1 = report["quality"] == "top1"
    columns = ["method", "budget", "GFLOPs"] + (["top-1"] if top1 else []) + ["agreement"]
    for b in report["batches"]:
        columns += [f"ms @{b}", f"speed-up @{b}"]
    t = table(*columns, title=f"compare {report['model']} ({report['weights']}): ort {report['provider']}, "
                              f"threads={report['threads'] or 'default'}, {quality_label(report)} on {report['images']} "
                              f"images, median of {report['runs']} interleaved runs")
    for r in report["rows"]:
        cells = [r["method"], r["point"] or "-", f"{r['gflops']:.3f}"]
        cells += ([f"{r['accuracy']:.4f}"] if top1 else []) + [f"{r['agreement']:.4f}"]
        for b in report["batches"]:
            lat = r["latency"][str(b)]
            cells += [f"{lat['median_ms']:.2f}", f"{lat['speedup_vs_dense']:.2f}x"]
        t.add_row(*cells)
    out.print(t, width=max(out.width, 120))
    out.print(f"table -> {report['markdown']}, plot -> {report['plot'] or 'skipped (pip install matplotlib)'}")
