"""`tscli export`: a registered model -> one checked ONNX file (ATS, dense or segmentation)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..errors import UsageError
from ..runtime.runner import describe_weights
from .common import optional_str, out, parse_rate, status, table, yes_no


def export(
    model: str = typer.Argument(..., help="Registered model name (see `tscli list`)."),
    max_k: Optional[int] = typer.Option(None, "--max-k", help="Largest K the file will accept (ATS). Default: all patches."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Output file (default: MODEL.onnx)."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="timm/DeiT state_dict (.pth/.bin/.safetensors)."),
    pretrained: Optional[str] = typer.Option(
        None, "--pretrained", metavar="[TAG]", help="ImageNet weights through timm's hub loading (safetensors only; the "
        "Hugging Face cache first): a bare --pretrained takes the DeiT weights (fb_in1k), a TAG another fitting set."),
    stages: Optional[str] = typer.Option(None, "--stages", help="ATS blocks, e.g. 3-11 (default) or 3,6,9."),
    sampling: Optional[str] = typer.Option(None, "--sampling", help="ATS picking: paper | official | topk (default: the model's; paper for ATS)."),
    opset: int = typer.Option(18, "--opset", help="ONNX opset (>= 17)."),
    form: str = typer.Option("plain", "--form", help="plain (standard ops only) | plugin (tscli.ATSSample nodes for the TensorRT plugin)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random weights when no checkpoint is given."),
    no_validate: bool = typer.Option(False, "--no-validate", help="Skip the ONNX Runtime vs PyTorch check."),
    mode: str = typer.Option("padded", "--mode", help="ATS: padded (static K+1 slots; TensorRT) | trimmed (slots cut to the batch max of K'+1; ONNX Runtime only)."),
    max_keep: Optional[int] = typer.Option(None, "--max-keep", help="DoViT capacity C: most tokens kept after a decision layer. Default: all patches."),
    input_size: Optional[str] = typer.Option(None, "--input-size", help="Segmentation input HxW, multiples of the patch, e.g. 512x1024."),
    xi: Optional[float] = typer.Option(None, "--xi", help="DoViT default threshold (0..1; a token with confidence > xi stops); changeable at load."),
    images: Optional[Path] = typer.Option(None, "--images", help="Folder of images for the post-export check (default: scikit-image's sample photos)."),
    rate: Optional[str] = typer.Option(None, "--rate", help="DynamicViT / EViT default keep rate (default 0.7, the released one); changeable at load."),
    max_rate: Optional[str] = typer.Option(None, "--max-rate", help="DynamicViT / EViT: largest rate the file accepts at load (default 1); bounds every kept count."),
    r: Optional[int] = typer.Option(None, "--r", help="ToMe: tokens merged per block (default: the model's; fixed in the file)."),
    precision: str = typer.Option("fp32", "--precision", help="fp32 | fp16 (weights and activations fp16, the sampling island fp32; for ORT-CUDA/TensorRT)."),
):
    """Export a model to one ONNX file (dynamic batch, K chosen at load time), then check it."""
    from ..tools.catalog import is_reduction_model, is_segmentation_model
    from ..tools.checked_export import ExportOptions, SegExportOptions, export_onnx, export_seg

    if precision not in ("fp32", "fp16"):
        raise UsageError(f"unknown --precision {precision!r}; valid: fp32, fp16 (int8 needs calibration images: "
                         "export fp32, then `tscli quantize FILE --calib DIR`)")
    if precision != "fp32" and (is_reduction_model(model) or is_segmentation_model(model)):
        raise UsageError(f"--precision {precision} applies to ATS, top-K, ToMe and dense models; {model!r} is not one")
    if (rate is not None or max_rate is not None) and not is_reduction_model(model):
        raise UsageError(f"--rate/--max-rate apply to DynamicViT / EViT models; {model!r} is not one")
    if is_reduction_model(model):
        if max_k is not None or stages is not None or sampling is not None or form != "plain" or mode != "padded" \
                or max_keep is not None or input_size is not None or xi is not None or r is not None or pretrained is not None:
            raise UsageError(f"{model!r} is a DynamicViT / EViT model: of the model options only --rate/--max-rate apply")
        result = _export_reduction(model, rate, max_rate, output, checkpoint, opset, seed, no_validate)
    elif is_segmentation_model(model):
        if pretrained is not None:
            raise UsageError(f"--pretrained loads ImageNet classification weights; {model!r} is a segmentation model "
                             "(its decoder has no pretrained weights here): pass a segmentation checkpoint with --checkpoint")
        if max_k is not None or stages is not None or sampling is not None or form != "plain" or mode != "padded" or r is not None:
            raise UsageError(f"--max-k/--stages/--sampling/--form/--mode apply to ATS models, --r to ToMe models; {model!r} is a segmentation model "
                             "(use --max-keep/--input-size/--xi)")
        opts = SegExportOptions(model, max_keep, input_size, xi, optional_str(output), optional_str(checkpoint), opset,
                                seed, not no_validate, optional_str(images))
        with status("exporting") as spinner:
            result = export_seg(opts, progress=lambda msg: spinner.update(msg))
        meta = result.metadata
        out.print(f"wrote {result.path} ({result.path.stat().st_size / 1e6:.1f} MB): {meta['model']} ({meta['family']}), "
                  f"input {meta['input_size'][1]}x{meta['input_size'][2]}, max_keep={meta['max_keep']}, xi={meta['xi']}, "
                  f"decisions after blocks {meta['stages'] or '-'}")
    elif precision != "fp32":
        return _export_fp16(model, precision, output, max_k, checkpoint, stages, sampling, opset, form, seed,
                            no_validate, mode, images, r, pretrained)
    else:
        if max_keep is not None or input_size is not None or xi is not None:
            raise UsageError(f"--max-keep/--input-size/--xi apply to segmentation models (dovit, seg); {model!r} is not one")
        opts = ExportOptions(model, max_k, optional_str(output), optional_str(checkpoint), stages, sampling, opset, form,
                             seed, not no_validate, mode, r, optional_str(images), pretrained)
        with status("exporting") as spinner:
            result = export_onnx(opts, progress=lambda msg: spinner.update(msg))
        meta = result.metadata
        budget = f"r={meta['r']} (per block {meta['merge_r']})" if "r" in meta else f"max_k={meta['max_k']}"
        out.print(f"wrote {result.path} ({result.path.stat().st_size / 1e6:.1f} MB): {meta['model']}, "
                  f"{budget}, stages={meta['stages'] or '-'}, scheme={meta['scheme']}, form={meta['form']}")
    out.print(f"weights: {describe_weights(result.metadata)}", markup=False, highlight=False)
    warnings = [f for f in result.lint.findings if f.level == "warning"]
    out.print(f"lint: ok ({len(warnings)} warnings)" + "".join(f"\n  {w}" for w in warnings))
    if result.validation is not None:
        print_parity(result.validation)


def _export_reduction(model, rate, max_rate, output, checkpoint, opset, seed, no_validate):
    from ..tools.checked_export import ReductionExportOptions, export_reduction

    rate_value, max_value = parse_rate(rate), parse_rate(max_rate, "--max-rate")
    opts = ReductionExportOptions(model, rate_value, 1.0 if max_value is None else max_value, optional_str(output),
                                  optional_str(checkpoint), opset, seed, not no_validate)
    with status("exporting") as spinner:
        result = export_reduction(opts, progress=lambda msg: spinner.update(msg))
    meta = result.metadata
    out.print(f"wrote {result.path} ({result.path.stat().st_size / 1e6:.1f} MB): {meta['model']} ({meta['family']}), "
              f"rate={meta['rate']:g} (load-time, up to max_rate={meta['max_rate']:g}), stages={meta['stages']}")
    return result


def _export_fp16(model, precision, output, *args) -> None:
    """fp16: the fp32 export (checked against PyTorch) into a temporary folder, then converted
    into ``output`` (checked against that fp32 file); nothing is left behind on failure."""
    import tempfile

    from ..files import check_output_file
    from ..tools.checked_export import ExportOptions, export_onnx
    from ..tools.fp16 import convert_fp16
    from .precision_cmd import print_fp16_result

    max_k, checkpoint, stages, sampling, opset, form, seed, no_validate, mode, images, r, pretrained = args
    final = check_output_file(output or f"{model}.{precision}.onnx", inputs=[checkpoint])
    with tempfile.TemporaryDirectory(prefix="tscli-export-") as tmp, status("exporting") as spinner:
        opts = ExportOptions(model, max_k, str(Path(tmp) / "fp32.onnx"), optional_str(checkpoint), stages, sampling,
                             opset, form, seed, not no_validate, mode, r, optional_str(images), pretrained)
        result = export_onnx(opts, progress=lambda msg: spinner.update(msg))
        path, meta, casts, lint, report = convert_fp16(result.path, final, optional_str(images), 8, not no_validate,
                                                       progress=lambda msg: spinner.update(msg))
    if result.validation is not None:
        print_parity(result.validation)
    print_fp16_result(path, meta, casts, lint, report)


def print_parity(report) -> None:
    """An ATS or a segmentation parity report as a table (export and `tscli parity` print it),
    then the tie band it used and every image whose kept tokens differ."""
    if report.rows and hasattr(report.rows[0], "xi"):
        _print_seg_parity(report)
    else:
        _print_ats_parity(report)
    out.print(f"tie band: {report.band_rule}", markup=False, highlight=False)
    for r in report.rows:
        where = f"K={r.k} {r.execution}" if not hasattr(r, "xi") else f"xi={r.xi:g}"
        for d in r.divergences:
            out.print(f"  {where}: {d.describe()}", markup=False, highlight=False)


def _print_ats_parity(report) -> None:
    t = table("K", "torch", "n", "max|dlogit|", "min cos", "top-1", "counts", "kept sets", "near-ties", "ok",
              title=f"parity: {report.backend} ({report.provider}) vs PyTorch, tol {report.tolerance:.0e}")
    for r in report.rows:
        checked = r.images - r.near_ties
        setting = str(r.k) if r.rate is None else f"rate {r.rate:g}"
        counts = f"{r.counts_agree}/{r.images}" if r.execution in ("padded", "trimmed", "static") else "-"  # ToMe: static
        t.add_row(setting, r.execution, str(r.images), f"{r.max_abs_diff:.1e}", f"{r.min_cosine:.6f}",
                  f"{r.top1_agree}/{checked}", counts, f"{r.sets_agree}/{checked}",
                  str(r.near_ties), yes_no(r.ok))
    out.print(t)


def _print_seg_parity(report) -> None:
    t = table("xi", "C", "images", "max|dlogit|", "argmax agree (min)", "counts", "masks", "saturated (ref)",
              "flags", "kept frac", "near-ties", "ok",
              title=f"segmentation parity: {report.backend} ({report.provider}) vs variable-length PyTorch, "
                    f"tol {report.tolerance:.0e}")
    for r in report.rows:
        t.add_row("-" if r.xi is None else f"{r.xi:g}", str(r.capacity or "-"), str(r.images), f"{r.max_abs_diff:.2e}",
                  f"{r.argmax_agree:.6f}", f"{r.counts_agree}/{r.images}", f"{r.masks_agree}/{r.images - r.near_ties}",
                  str(r.saturated), f"{r.saturated_agree}/{r.images}", f"{r.kept_fraction:.3f}", str(r.near_ties),
                  yes_no(r.ok))
    out.print(t)
