"""``tscli export`` for segmentation models (DoViT and dense SETR).

DoViT graph (docs/design.md, DoViT): capacity C (``--max-keep``) bounds every shape; the threshold
xi is a scalar graph input whose default (an initializer of the same name) is the export value,
so each device can choose it at load time. Outputs: seg_logits, kept_counts per decision layer,
kept_masks, saturated. The file is written to a temporary name, checked (onnx.checker full check,
lint, and the post-export check the caller passes: tools/ compares ONNX Runtime with the
variable-length PyTorch reference) and only then renamed into place.
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
from .. import contract as C
from ..errors import TscliError, UsageError
from ..files import check_output_file, sha256_file
from ..models.catalog import get_config
from ..models.dovit import PaddedExport
from ..models.factory import BuiltModel, build_model
from ..models.registry import SegConfig, parse_hw
from .exporter import bound_check, check_opset, check_seed, optimize_graph, run_exporter, stamp, write_checked
from .lint import LintReport


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
    validate_images: str | None = None  # folder of images for the post-export check (default: samples)


@dataclass
class SegExportResult:
    path: Path
    metadata: dict
    lint: LintReport
    validation: object | None  # the validator's report (tools/seg_parity.SegParityReport)


def is_seg_model(name: str) -> bool:
    return get_config(name).family in C.SEG_FAMILIES


def resolve(opts: SegExportOptions) -> tuple[SegConfig, tuple[int, int], int | None, float | None]:
    """Check every option against the model before any work: -> (cfg, (H, W), C, xi)."""
    cfg = get_config(opts.model)
    if cfg.family not in C.SEG_FAMILIES:
        raise UsageError(f"{opts.model!r} is {cfg.family}, not a segmentation model ({', '.join(C.SEG_FAMILIES)})")
    check_opset(opts.opset)
    check_seed(opts.seed)
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
    `tscli build` drops the default before parsing (tools/build_plan.parser_model)."""
    if not any(i.name == name for i in model.graph.input):
        raise TscliError(f"exported graph has no input {name!r}")
    model.graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))


def export_seg(opts: SegExportOptions, validate: Callable[[str, BuiltModel, dict], object] | None = None,
               progress: Callable[[str], None] = lambda msg: None) -> SegExportResult:
    """Export ``opts.model``; ``validate(tmp_path, built, meta)`` as in ats_export.export_ats."""
    cfg, hw, cap, xi = resolve(opts)
    out = check_output_file(opts.output or f"{cfg.name}.onnx", inputs=[opts.checkpoint])
    progress(f"building {cfg.name} ({'checkpoint' if opts.checkpoint else 'random weights'}) at {hw[0]}x{hw[1]}")
    built = build_model(cfg, checkpoint=opts.checkpoint, seed=opts.seed)
    built.module.resize_input(hw)
    progress("tracing and converting to ONNX")
    model = _torch_export(built, hw, cap, xi, opts.opset)
    meta = metadata_for(built, hw, cap, xi, opts.opset)
    stamp(model, meta)
    check = bound_check(validate, opts.validate, built, meta, progress, "the variable-length PyTorch reference")
    lint, report = write_checked(model, out, check, progress)
    return SegExportResult(out, meta, lint, report)


def export_dense_baseline(meta: dict, path: str | Path, checkpoint: str | None = None) -> Path:
    """The dense SETR model with the same weights and input size as a DoViT file (for bench)."""
    weights = str(meta.get("weights", ""))
    opts = SegExportOptions(meta.get("dense_name") or "", input_size=f"{meta['input_size'][1]}x{meta['input_size'][2]}",
                            output=str(path), opset=int(meta.get("opset", 18)), validate=False)
    seed = C.random_seed(weights)
    if seed is not None:
        opts.seed = seed
    elif not checkpoint:
        raise UsageError("this file was exported from a checkpoint; pass it with --checkpoint (or give --baseline FILE)")
    elif not Path(checkpoint).is_file():
        raise UsageError(f"--checkpoint {checkpoint!r} does not exist")
    elif "sha256:" + sha256_file(checkpoint) != weights:
        raise UsageError(f"checkpoint {checkpoint!r} is not the one this file was exported from")
    else:
        opts.checkpoint = checkpoint
    return export_seg(opts).path
