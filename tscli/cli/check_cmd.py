"""`tscli parity` and `tscli inspect`: is this file right, and what is in it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from .. import contract as C
from ..errors import UsageError
from .common import (
    Backend,
    Checkpoint,
    JsonFlag,
    KList,
    Plugins,
    RateList,
    Threads,
    optional_str,
    out,
    parse_floats,
    parse_k_list,
    print_caveat,
    print_json,
    status,
    table,
)
from .export_cmd import print_parity


def parity(
    file: Path = typer.Argument(..., help="Exported .onnx file."),
    checkpoint: Checkpoint = None,
    images: Optional[Path] = typer.Option(None, "--images", help="Folder of images (default: scikit-image samples)."),
    n: int = typer.Option(8, "--n", help="Number of images (plus 2 random inputs)."),
    k: KList = None,
    threads: Threads = None,
    as_json: JsonFlag = False,
    backend: Backend = "ort",
    xi: Optional[List[str]] = typer.Option(None, "--xi", help="DoViT thresholds to check (repeat or comma list). "
                                           "Default: the export value, 1.0 and the median first-decision confidence."),
    plugins: Plugins = None,
    rate: RateList = None,
    reference: Optional[Path] = typer.Option(None, "--reference", help="fp16/int8 files: the fp32 file to compare with too."),
    min_agreement: Optional[float] = typer.Option(None, "--min-agreement", help="fp16/int8 files: fail (exit 1) below "
                                                                              "this top-1 agreement (0..1)."),
):
    """Compare ONNX Runtime with the PyTorch model the file was exported from (fp16/int8 files:
    decision statistics per K against PyTorch and, with --reference, the fp32 file)."""
    from ..runtime import load
    from ..tools.parity import parity_for_file
    from ..tools.reduction_parity import parity_for_file as reduction_parity_for_file
    from ..tools.seg_parity import seg_parity_for_file

    probe = load(file, backend=backend, threads=threads, plugins=plugins)
    if probe.meta.get("precision", "fp32") != "fp32":
        return _precision_parity(file, probe.meta, reference, min_agreement, checkpoint, images, n, k, threads, as_json)
    if reference is not None or min_agreement is not None:
        raise UsageError("--reference/--min-agreement apply to fp16 and int8 files; this file is fp32")
    if C.is_reduction(probe.meta):
        if k or plugins or xi:
            raise UsageError("--k/--plugins/--xi do not apply to DynamicViT / EViT files (use --rate)")
        with status("running parity"):
            report = reduction_parity_for_file(file, checkpoint, images, n, parse_floats(rate, "--rate"), threads,
                                               backend, probe, on_runner=print_caveat)
        return _finish(report, as_json, print_parity)
    if rate:
        raise UsageError("--rate applies to DynamicViT / EViT files")
    seg = C.is_segmentation(probe.meta)
    if seg and (k or plugins):
        raise UsageError("--k/--plugins apply to ATS files; this is a segmentation file (use --xi)")
    if xi and not seg:
        raise UsageError("--xi applies to DoViT segmentation files")
    with status("running parity"):
        if seg:
            report = seg_parity_for_file(file, checkpoint, images, n, parse_floats(xi, "--xi"), threads)
        else:
            report = parity_for_file(file, checkpoint, images, n, parse_k_list(k), threads, backend, plugins, probe)
    _finish(report, as_json, print_parity)


def _finish(report, as_json: bool, show) -> None:
    """Print a parity report (JSON or ``show``'s table); a failed check exits 1."""
    print_json(report.to_dict()) if as_json else show(report)
    if not report.ok:
        raise typer.Exit(1)


def _precision_parity(file, meta, reference, min_agreement, checkpoint, images, n, k, threads, as_json) -> None:
    from ..tools.precision_parity import precision_parity
    from .precision_cmd import print_precision_parity

    with status(f"comparing the {meta['precision']} file's decisions") as spinner:
        report = precision_parity(file, reference, images, n, parse_k_list(k), threads, optional_str(checkpoint),
                                  min_agreement, progress=lambda msg: spinner.update(msg))
    _finish(report, as_json, print_precision_parity)


def inspect(file: Path = typer.Argument(..., help="Exported .onnx file."), as_json: JsonFlag = False):
    """Show a file's metadata, inputs/outputs, operator histogram and lint result."""
    from ..tools.inspect import inspect_file

    info = inspect_file(file)
    if as_json:
        return print_json(info)
    meta_table = table("metadata", "value", title=str(file))
    order = {key: i for i, key in enumerate(C.META_KEYS + C.PRECISION_META_KEYS + C.SEG_META_KEYS)}
    for key, value in sorted(info["metadata"].items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])):
        if key == "island":  # hundreds of node names: the count says enough here (--json lists them)
            meta_table.add_row(key, f"{len(value)} nodes kept float32 (the sampling island)")
        elif key != "label_names":
            meta_table.add_row(key, json.dumps(value))
    out.print(meta_table)
    io = table("kind", "name", "type", "shape")
    for kind in ("inputs", "outputs"):
        for t in info[kind]:
            io.add_row(kind[:-1], t["name"], t["type"], str(t["shape"]))
    out.print(io)
    if info.get("gflops"):
        flops = table("graph", "GFLOPs (1 MAC = 2 FLOPs)", 'GMACs (papers\' "GFLOPs")',
                      title="analytic cost per image (linear layers + attention matmuls)")
        for graph, value in info["gflops"].items():
            flops.add_row(graph + (" (padded upper bound)" if graph.startswith(("K=", "C=")) else ""), f"{value:.3f}",
                          f"{info['gmacs'][graph]:.3f}")
        out.print(flops)
    if "ops" in info:
        out.print("operators: " + ", ".join(f"{op} {n}" for op, n in info["ops"].items()))
        lint = info["lint"]
        out.print(f"lint: {'ok' if lint['ok'] else 'FAILED'}" + "".join(f"\n  {f}" for f in lint["findings"]))
    if info["metadata"].get("form") == "plugin":
        out.print("plugin form: TensorRT runs tscli.ATSSample as a plugin; ONNX Runtime runs it natively with "
                  "--plugins LIB (`python -m tscli.plugins.ort_ops` builds LIB), else its standard-op body")
