"""`tscli quantize` and `tscli convert`: INT8 (QDQ) and fp16 files with the sampling island in
float32, and the decision statistics that `parity` prints for them."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from ..errors import UsageError
from .common import JsonFlag, err, optional_str, out, print_json, status, table


def quantize(
    file: Path = typer.Argument(..., help="Exported fp32 .onnx file (ATS or dense)."),
    calib: Path = typer.Option(..., "--calib", help="Folder of calibration images (searched recursively)."),
    n: int = typer.Option(256, "--n", help="Calibration images (the first N of the folder, sorted)."),
    method: str = typer.Option("minmax", "--method", help="Calibration: minmax | entropy | percentile."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Output file (default: FILE.int8.onnx)."),
    target: str = typer.Option("cpu", "--target", help="cpu (uint8 activations: fastest in ONNX Runtime on VNNI CPUs) "
                                                        "| tensorrt (int8 activations, zero points 0: explicit quantization)."),
    batch: int = typer.Option(8, "--batch", help="Images per calibration run."),
    check_n: int = typer.Option(16, "--check-n", help="Calibration images of the check against the fp32 file."),
    as_json: JsonFlag = False,
):
    """Static INT8 in QDQ form, calibrated on your images; the sampling island stays fp32."""
    from ..tools.quantize import QuantizeOptions, check_options
    from ..tools.quantize import quantize as run_quantize

    opts = QuantizeOptions(str(file), str(calib), n, method, optional_str(output), target, batch, check_n)
    check_options(opts)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err, transient=True, disable=not err.is_terminal) as bar:
        task = bar.add_task("calibrating", total=None)
        result = run_quantize(opts, on_batch=lambda done, total: bar.update(task, completed=done, total=total),
                              progress=lambda msg: bar.update(task, description=msg))
    if as_json:
        return print_json({"file": str(result.path), "metadata": result.metadata,
                           "check": result.check.to_dict() if result.check else None})
    q = result.metadata["quantization"]
    out.print(f"wrote {result.path} ({result.path.stat().st_size / 1e6:.1f} MB): int8 QDQ for {q['target']}, "
              f"{q['quantized_nodes']} {'/'.join(q['op_types'])} nodes quantized (activations "
              f"{', '.join(q['activation_types'])}, weights {', '.join(q['weight_types'])} per channel), "
              f"calibrated on {q['images']} images ({q['method']}, K {q['calibration_ks']})", highlight=False)
    out.print(f"kept fp32: the sampling island ({len(result.island)} nodes, listed in the metadata), "
              f"{q['float_matmuls']} attention MatMuls and every quantized node's output; "
              f"lint: ok ({len(result.lint_warnings)} warnings)", highlight=False)
    if result.check is not None:
        print_precision_parity(result.check)


def convert(
    file: Path = typer.Argument(..., help="Exported fp32 .onnx file (ATS or dense)."),
    precision: str = typer.Option("fp16", "--precision", help="fp16 (int8 needs calibration: `tscli quantize`)."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Output file (default: FILE.fp16.onnx)."),
    images: Optional[Path] = typer.Option(None, "--images", help="Images of the check (default: scikit-image samples)."),
    n: int = typer.Option(8, "--n", help="Images of the check against the fp32 file."),
    no_validate: bool = typer.Option(False, "--no-validate", help="Skip the check against the fp32 file."),
    as_json: JsonFlag = False,
):
    """fp16 weights and activations (for ORT-CUDA and TensorRT) with the sampling island in fp32."""
    from ..tools.fp16 import convert_fp16

    if precision != "fp16":
        raise UsageError(f"--precision {precision!r}: convert writes fp16; for int8 run `tscli quantize FILE --calib DIR` "
                         "(INT8 needs calibration images)")
    with status("converting") as spinner:
        path, meta, casts, lint, report = convert_fp16(file, optional_str(output), optional_str(images), n,
                                                       not no_validate, progress=lambda msg: spinner.update(msg))
    if as_json:
        return print_json({"file": str(path), "casts": casts, "metadata": meta,
                           "check": report.to_dict() if report else None})
    print_fp16_result(path, meta, casts, lint, report)


def print_fp16_result(path: Path, meta: dict, casts: int, lint, report) -> None:
    out.print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB): fp16, sampling island {len(meta['island'])} nodes "
              f"in fp32, {casts} Casts at the region boundaries; inputs and outputs stay float32", highlight=False)
    warnings = [f for f in lint.findings if f.level == "warning"]
    out.print(f"lint: ok ({len(warnings)} warnings)")
    if report is not None:
        print_precision_parity(report)


def print_precision_parity(report) -> None:
    """Decision statistics per K and reference (tools/precision_parity.py)."""
    t = table("K", "vs", "n", "kept-set Jaccard (mean per stage)", "min", "changed", "in band", "top-1 agree",
              "accuracy (ref)", "max|dlogit| unchanged", title=f"{report.precision} decisions: {report.file} "
                                                               f"({report.provider})")
    for r in report.rows:
        jac = " ".join(f"{v:.3f}" for v in r.jaccard_mean) or "-"
        acc = "-" if r.accuracy is None else f"{r.accuracy:.4f} ({r.reference_accuracy:.4f})"
        t.add_row(str(r.k), r.reference, str(r.images), jac, f"{min(r.jaccard_min):.3f}" if r.jaccard_min else "-",
                  f"{r.changed} ({r.changed_share:.1%})", "-" if r.changed_in_band is None else str(r.changed_in_band),
                  f"{r.top1_agree}/{r.images} ({r.agreement:.2%})", acc,
                  "-" if r.changed == r.images else f"{r.unchanged_max_abs_diff:.1e} (mean {r.unchanged_mean_abs_diff:.1e})")
    out.print(t)
    out.print(f"tie band ({report.precision}): {report.band_rule}; 'in band': images whose kept sets first changed "
              "inside it", markup=False, highlight=False)
    problem = report.failure()
    if problem:
        out.print(f"[red]check failed:[/] {problem}", highlight=False)
