"""``tscli export`` for segmentation models (DoViT and dense SETR) and their parity check.

DoViT graph (DESIGN.md section 4): capacity C (``--max-keep``) bounds every shape; the threshold
xi is a scalar graph input whose default (an initializer of the same name) is the export value,
so each device can choose it at load time. Outputs: seg_logits, kept_counts per decision layer,
kept_masks, saturated. The file is written to a temporary name, checked (onnx.checker full check,
lint, ONNX Runtime vs the variable-length PyTorch reference) and only then renamed into place.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from .. import __version__
from ..errors import TscliError, UsageError
from ..models.build import BuiltModel, build_from_metadata, build_model
from ..models.dovit import PaddedExport, SegConfig, parse_hw
from ..models.registry import get_config
from ..files import check_output_file
from . import contract as C
from .lint import LintReport
from .onnx_export import check_opset, optimize_graph, run_exporter, stamp, write_checked
from .validate import LOGIT_ATOL, NEAR_TIE, ParityReport

SEG_FAMILIES = ("dovit", "seg")


@dataclass
class SegExportOptions:
    model: str
    max_keep: int | None = None
    input_size: str | None = None
    xi: float | None = None
    output: str | None = None
    checkpoint: str | None = None
    opset: int = 18
    seed: int = 0
    validate: bool = True


@dataclass
class SegExportResult:
    path: Path
    metadata: dict
    lint: LintReport
    validation: "SegParityReport | None"


def is_seg_model(name: str) -> bool:
    return get_config(name).family in SEG_FAMILIES


def resolve(opts: SegExportOptions) -> tuple[SegConfig, tuple[int, int], int | None, float | None]:
    """Check every option against the model before any work: -> (cfg, (H, W), C, xi)."""
    cfg = get_config(opts.model)
    if cfg.family not in SEG_FAMILIES:
        raise UsageError(f"{opts.model!r} is {cfg.family}, not a segmentation model ({', '.join(SEG_FAMILIES)})")
    check_opset(opts.opset)
    hw = parse_hw(opts.input_size, cfg.patch_size) if opts.input_size else tuple(cfg.img_hw)
    tokens = (hw[0] // cfg.patch_size) * (hw[1] // cfg.patch_size)
    if cfg.family == "seg":
        if opts.max_keep is not None or opts.xi is not None:
            raise UsageError(f"--max-keep/--xi apply to DoViT models; {cfg.name!r} is a dense segmentation model")
        return cfg, hw, None, None
    cap = tokens if opts.max_keep is None else opts.max_keep
    if not 1 <= cap <= tokens:
        raise UsageError(f"--max-keep {cap} is out of range for {cfg.name} at {hw[0]}x{hw[1]}; valid: 1..{tokens} (patch tokens)")
    return cfg, hw, cap, C.check_xi(cfg.xi if opts.xi is None else opts.xi)


def metadata_for(built: BuiltModel, hw, cap, xi, opset: int) -> dict:
    cfg = built.config
    p = cfg.patch_size
    return {
        "tool_version": __version__, "model": cfg.name, "family": cfg.family, "max_k": None, "max_keep": cap,
        "xi": xi, "merge": cfg.merge if cfg.family == "dovit" else None, "stages": list(cfg.stages),
        "scheme": None, "mode": "padded", "form": "plain", "input_size": [3, hw[0], hw[1]], "grid": [hw[0] // p, hw[1] // p],
        "patch_size": p, "mean": list(cfg.mean), "std": list(cfg.std), "crop_pct": cfg.crop_pct,
        "interpolation": cfg.interpolation, "num_classes": cfg.num_classes, "labels": cfg.labels,
        "label_names": list(cfg.label_names) or None, "opset": opset, "weights": built.weights,
        "dense_name": cfg.dense_name, "embed_dim": cfg.embed_dim, "depth": cfg.depth, "num_heads": cfg.num_heads,
    }


def _torch_export(built: BuiltModel, hw, cap, xi, opset: int) -> onnx.ModelProto:
    images = torch.randn(2, 3, *hw)
    batch = torch.export.Dim(C.DIM_BATCH, min=1, max=4096)
    if built.config.family == "dovit":
        module = PaddedExport(built.module, cap).eval()
        example = (images, torch.tensor(xi, dtype=torch.float32))
        dynamic = {"images": {0: batch}, "xi": {}}
        names = ([C.INPUT_IMAGES, C.INPUT_XI], [C.OUTPUT_SEG, C.OUTPUT_COUNTS, C.OUTPUT_KEEP_MASKS, C.OUTPUT_SATURATED])
    else:
        module, example = built.module, (images,)
        dynamic = {"images": {0: batch}}
        names = ([C.INPUT_IMAGES], [C.OUTPUT_SEG])
    with torch.no_grad():
        model = optimize_graph(run_exporter(module, example, names, dynamic, opset))
    if built.config.family == "dovit":
        # After optimisation: the optimiser would constant-fold an initializer-backed input.
        add_input_default(model, C.INPUT_XI, np.float32(xi))
    return model


def add_input_default(model: onnx.ModelProto, name: str, value: np.ndarray) -> None:
    """Give graph input ``name`` a default: an initializer of the same name (ONNX IR >= 4). ONNX
    Runtime lets a feed override it. TensorRT's parser treats such an input as a constant, so
    `tscli build` drops the default before parsing (runtime/trt/build.parser_input)."""
    if not any(i.name == name for i in model.graph.input):
        raise TscliError(f"exported graph has no input {name!r}")
    model.graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))


def export_seg(opts: SegExportOptions, progress: Callable[[str], None] = lambda msg: None) -> SegExportResult:
    cfg, hw, cap, xi = resolve(opts)
    out = check_output_file(opts.output or f"{cfg.name}.onnx")
    progress(f"building {cfg.name} ({'checkpoint' if opts.checkpoint else 'random weights'}) at {hw[0]}x{hw[1]}")
    built = build_model(cfg, checkpoint=opts.checkpoint, seed=opts.seed)
    built.module.resize_input(hw)
    progress("tracing and converting to ONNX")
    model = _torch_export(built, hw, cap, xi, opts.opset)
    meta = metadata_for(built, hw, cap, xi, opts.opset)
    stamp(model, meta)
    validate = None
    if opts.validate:
        from ..runtime import load

        def validate(tmp: str):
            progress("validating ONNX Runtime against the variable-length PyTorch reference")
            images = np.random.default_rng(opts.seed).standard_normal((2, 3, *hw)).astype(np.float32)
            return seg_parity(lambda xi_: load(tmp, xi=xi_), built, images, default_xis(built, images, meta))

    lint, report = write_checked(model, out, validate, progress)
    return SegExportResult(out, meta, lint, report)


# -- parity -----------------------------------------------------------------------------------


@dataclass
class SegParityRow:
    xi: float | None
    capacity: int | None
    images: int
    max_abs_diff: float
    argmax_agree: float  # fraction of pixels whose argmax class agrees
    counts_agree: int
    masks_agree: int
    saturated_agree: int
    saturated: int  # images whose capacity saturated (reference)
    kept_fraction: float  # mean over images of kept tokens after the last decision / patches
    near_ties: int
    ok: bool


class SegParityReport(ParityReport):
    """Same report as ATS parity (ok, to_dict, raise_if_failed); rows are SegParityRows."""

    def describe_failure(self, r: SegParityRow) -> str:
        return (f"segmentation parity failed at xi={r.xi} C={r.capacity}: max|logit diff| {r.max_abs_diff:.2e} "
                f"(tol {self.tolerance:.0e}), masks equal {r.masks_agree}/{r.images - r.near_ties}, "
                f"counts equal {r.counts_agree}/{r.images}, saturated flags equal {r.saturated_agree}/{r.images}")


def rebuild(meta: dict, checkpoint: str | None = None) -> BuiltModel:
    """The PyTorch model a segmentation file came from, at the file's input size."""
    built = build_from_metadata(meta, checkpoint)
    built.module.resize_input(tuple(meta["input_size"][1:]))
    return built


def default_xis(built: BuiltModel, images: np.ndarray, meta: dict) -> list[float | None]:
    """xi values that exercise every path: the export value, 1.0 (nothing stops) and the median
    first-decision confidence on these images (about half the tokens stop, whatever the weights)."""
    if built.config.family != "dovit":
        return [None]
    model = built.module
    with torch.no_grad():
        x = model.embed(torch.from_numpy(images))
        for blk in model.blocks[: model.decisions[0] + 1]:
            x = blk(x)
        median = float(model.confidence(0, x).median())
    return sorted({float(meta["xi"]), 1.0, round(median, 6)}, reverse=True)


def _reference(built: BuiltModel, images: np.ndarray, xi: float | None, cap: int | None):
    with torch.no_grad():
        x = torch.from_numpy(images)
        if xi is None:
            return built.module(x).numpy(), None
        return None, built.module.forward_reference(x, xi, cap)


def compare_seg(built: BuiltModel, got: dict, images: np.ndarray, xi: float | None, cap: int | None,
                tol: float = LOGIT_ATOL) -> SegParityRow:
    dense_logits, ref = _reference(built, images, xi, cap)
    logits_r = dense_logits if ref is None else ref.logits.numpy()
    logits_g = got[C.OUTPUT_SEG]
    n = len(images)
    diffs, agree, counts_ok, masks_ok, sat_ok, near, kept = [], [], 0, 0, 0, 0, []
    for i in range(n):
        same = True
        if ref is not None:
            same = bool(np.array_equal(ref.kept_masks[i].numpy(), got[C.OUTPUT_KEEP_MASKS][i]))
            counts_ok += int(np.array_equal(ref.kept_counts[i].numpy(), got[C.OUTPUT_COUNTS][i]))
            sat_ok += int(bool(ref.saturated[i]) == bool(got[C.OUTPUT_SATURATED][i]))
            kept.append(float(ref.kept_counts[i, -1]) / ref.kept_masks.shape[-1])
            if not same and float(ref.margin[i]) < NEAR_TIE:
                near += 1  # a decision within float noise of xi / of the capacity boundary
                continue
        masks_ok += int(same)
        a, b = logits_r[i].astype(np.float64), logits_g[i].astype(np.float64)
        diffs.append(float(np.abs(a - b).max()))
        agree.append(float((a.argmax(0) == b.argmax(0)).mean()))
    checked = n - near
    max_diff = max(diffs) if diffs else 0.0
    flags_ok = ref is None or (counts_ok >= checked and sat_ok == n)
    ok = max_diff <= tol and masks_ok == checked and flags_ok
    sat = int(ref.saturated.sum()) if ref is not None else 0
    return SegParityRow(xi, cap, n, max_diff, min(agree) if agree else 1.0, counts_ok if ref is not None else n,
                        masks_ok, sat_ok if ref is not None else n, sat, float(np.mean(kept)) if kept else 1.0, near, ok)


def seg_parity(runner_factory, built: BuiltModel, images: np.ndarray, xis: list[float | None],
               tol: float = LOGIT_ATOL) -> SegParityReport:
    """runner_factory(xi) -> Runner; one row per xi (None = dense model)."""
    report = None
    for xi in xis:
        runner = runner_factory(xi)
        if report is None:
            report = SegParityReport(runner.backend_name, runner.provider, tol)
        cap = runner.meta.get("max_keep")
        report.rows.append(compare_seg(built, runner.infer(images), images, xi, cap, tol))
    return report


def seg_parity_for_file(path: Path, checkpoint: Path | None, images: Path | None, n: int, xis: list[float] | None,
                        threads: int | None) -> SegParityReport:
    """`tscli parity FILE` for a segmentation file: real images (scikit-image samples by default) + noise."""
    from ..runtime import load
    from .parity_cmd import parity_inputs

    probe = load(path, threads=threads)
    meta = probe.meta
    if meta["family"] == "seg" and xis:
        raise UsageError("--xi applies to DoViT files; this one is a dense segmentation model")
    for xi in xis or []:
        C.check_xi(xi)
    built = rebuild(meta, str(checkpoint) if checkpoint else None)
    x = parity_inputs(meta, images, n)
    xis = xis or default_xis(built, x, meta)
    return seg_parity(lambda xi: load(path, xi=xi, threads=threads), built, x, xis)


def export_dense_baseline(meta: dict, path: str | Path, checkpoint: str | None = None) -> Path:
    """The dense SETR model with the same weights and input size as a DoViT file (for bench)."""
    from ..models.checkpoints import file_sha256

    weights = str(meta.get("weights", ""))
    opts = SegExportOptions(meta.get("dense_name") or "", input_size=f"{meta['input_size'][1]}x{meta['input_size'][2]}",
                            output=str(path), opset=int(meta.get("opset", 18)), validate=False)
    if weights.startswith("random(seed="):
        opts.seed = int(weights[len("random(seed="):-1])
    elif not checkpoint:
        raise UsageError("this file was exported from a checkpoint; pass it with --checkpoint (or give --baseline FILE)")
    elif not Path(checkpoint).is_file():
        raise UsageError(f"--checkpoint {checkpoint!r} does not exist")
    elif "sha256:" + file_sha256(checkpoint) != weights:
        raise UsageError(f"checkpoint {checkpoint!r} is not the one this file was exported from")
    else:
        opts.checkpoint = checkpoint
    return export_seg(opts).path
