"""ATS export: registry model -> one ONNX file following the graph contract (tscli/contract.py).

Padded (static) graphs: K is the length of the ``k_select`` input, a named dynamic dim bounded
by max_k, so one file serves every 1 <= K <= max_k. Batch is dynamic. The same function exports
the top-K baseline (ATS with scheme ``topk``), the dense baselines (family ``dense``: images ->
logits) and ToMe (family ``tome``: images -> logits, merge_slots; r fixed here, ``--r``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import onnx
import torch

from .. import __version__
from .. import contract as C
from ..errors import UsageError
from ..files import check_output_file
from ..models.ats import ExportWrapper
from ..models.catalog import get_config
from ..models.factory import BuiltModel, build_model
from ..models.labels import label_names
from ..models.pretrained import resolve as resolve_pretrained
from ..models.registry import parse_stages
from ..models.tome import ToMeExportWrapper
from .exporter import bound_check, check_opset, check_seed, run_exporter, stamp, write_checked
from .lint import LintReport
from .plugin_form import to_plugin_form, translation_table

FORMS = ("plain", "plugin")
MODES = ("padded", "trimmed")  # see models/ats.py: static K + 1 slots, or cut to the batch max of K' + 1


@dataclass
class ExportOptions:
    model: str
    max_k: int | None = None
    output: str | None = None
    checkpoint: str | None = None
    stages: str | None = None
    scheme: str | None = None  # None: the variant's own (paper for ATS, topk for the top-K variants)
    opset: int = 18
    form: str = "plain"
    seed: int = 0
    validate: bool = True
    mode: str = "padded"
    r: int | None = None  # ToMe: tokens merged per block (None: the variant's own)
    validate_images: str | None = None  # folder of images for the post-export check (default: samples)
    pretrained: str | None = None  # --pretrained TAG: timm's hub weights (models/pretrained.py); "default" = the first


@dataclass
class ExportResult:
    path: Path
    metadata: dict
    lint: LintReport
    validation: object | None  # the validator's report (tools/parity.ParityReport)


def resolve_options(opts: ExportOptions):
    """Check every option against the model before any work is done."""
    cfg = get_config(opts.model)
    overrides = {}
    if opts.stages is not None:
        if cfg.family != "ats":
            raise UsageError(f"--stages applies to ATS models; {opts.model!r} is {cfg.family}")
        overrides["stages"] = parse_stages(opts.stages, cfg.depth)
    if opts.scheme is not None:
        if opts.scheme not in C.PICK_RULES:
            raise UsageError(f"unknown --sampling {opts.scheme!r}; valid: {', '.join(C.PICK_RULES)}")
        overrides["scheme"] = opts.scheme
    if opts.form not in FORMS:
        raise UsageError(f"unknown --form {opts.form!r}; valid: {', '.join(FORMS)}")
    if opts.form == "plugin" and (cfg.family == C.FAMILY_TOME or overrides.get("scheme", cfg.scheme) == C.TOPK):
        raise UsageError(f"--form plugin holds the ATS sampling op (schemes {', '.join(C.SCHEMES)}); "
                         f"{opts.model!r} exports in the plain form only")
    overrides.update(_resolve_r(cfg, opts.r))
    if opts.mode not in MODES:
        raise UsageError(f"unknown --mode {opts.mode!r}; valid: {', '.join(MODES)}")
    if opts.mode == "trimmed" and cfg.family != "ats":
        raise UsageError(f"--mode trimmed applies to ATS models; {opts.model!r} is {cfg.family}")
    check_opset(opts.opset)
    check_seed(opts.seed)
    cfg = get_config(opts.model, **overrides)
    if opts.pretrained is not None:  # a bad tag or a model without hub weights is known before the slow part
        if opts.checkpoint:
            raise UsageError("give either --checkpoint or --pretrained, not both")
        resolve_pretrained(cfg, opts.pretrained)
    max_k = opts.max_k
    if cfg.family == "ats":
        max_k = cfg.max_k_limit if max_k is None else max_k
        if not 1 <= max_k <= cfg.max_k_limit:
            raise UsageError(f"--max-k {max_k} is out of range for {cfg.name}; valid: 1..{cfg.max_k_limit}")
    elif max_k is not None:
        raise UsageError(f"--max-k applies to ATS models; {cfg.name!r} is {cfg.family}")
    return cfg, max_k


def _resolve_r(cfg, r: int | None) -> dict:
    """ToMe's r: 1..(T - 1) // 2 (ToMe merges at most half of the tokens besides CLS)."""
    if cfg.family != C.FAMILY_TOME:
        if r is not None:
            raise UsageError(f"--r applies to ToMe models; {cfg.name!r} is {cfg.family}")
        return {}
    r = cfg.r if r is None else r
    top = cfg.num_patches // 2
    if isinstance(r, bool) or not isinstance(r, int) or not 1 <= r <= top:
        raise UsageError(f"--r {r!r} is out of range for {cfg.name}; valid: 1..{top} (tokens merged per block)")
    return {"r": r}


def metadata_for(built: BuiltModel, max_k: int | None, opts: ExportOptions) -> dict:
    cfg = built.config
    tome = {}
    if cfg.family == C.FAMILY_TOME:  # the r of each block after ToMe's clamp, and proportional attention
        tome = {"r": cfg.r, "merge_r": list(built.module.schedule), "prop_attn": bool(built.module.blocks[0].prop_attn)}
    return tome | {
        "tool_version": __version__, "model": cfg.name, "family": cfg.family, "max_k": max_k,
        "stages": list(cfg.stages), "scheme": cfg.scheme if cfg.family == "ats" else None, "mode": opts.mode,
        "form": opts.form, "input_size": [3, cfg.img_size, cfg.img_size], "patch_size": cfg.patch_size,
        "mean": list(cfg.mean), "std": list(cfg.std), "crop_pct": cfg.crop_pct, "interpolation": cfg.interpolation,
        "num_classes": cfg.num_classes, "labels": cfg.labels, "opset": opts.opset, "weights": built.weights,
        "dense_name": cfg.dense_name, "embed_dim": cfg.embed_dim, "depth": cfg.depth, "num_heads": cfg.num_heads,
        "label_names": label_names(cfg.labels, cfg.num_classes), "pretrained": built.pretrained,
    }


def _torch_export(built: BuiltModel, max_k: int | None, opset: int, mode: str = "padded",
                  form: str = "plain") -> onnx.ModelProto:
    cfg = built.config
    images = torch.randn(2, 3, cfg.img_size, cfg.img_size)
    batch = torch.export.Dim(C.DIM_BATCH, min=1, max=4096)
    if cfg.family == "ats":
        # plugin form: each sampling step becomes one tscli.ATSSample node. plain form: the
        # sampling tensor code is traced like the rest, so the exporter shares what every stage
        # computes alike (index ranges, tie-break masks, the K points) instead of repeating it.
        # trimmed: the exporter turns the batch max of K' + 1 into a data-dependent slice length.
        module = ExportWrapper(built.module.configure(use_custom_op=form == "plugin", execution=mode)).eval()
        example = (images, torch.zeros(min(max_k, 4) if max_k > 1 else 1))
        k_dim = torch.export.Dim(C.DIM_K, min=1, max=max_k) if max_k > 1 else None
        dynamic = {"images": {0: batch}, "k_select": {0: k_dim} if k_dim else {}}
        names = ([C.INPUT_IMAGES, C.INPUT_K], [C.OUTPUT_LOGITS, C.OUTPUT_COUNTS, C.OUTPUT_POSITIONS])
    elif cfg.family == C.FAMILY_TOME:
        module, example = ToMeExportWrapper(built.module).eval(), (images,)
        dynamic = {"images": {0: batch}}
        names = ([C.INPUT_IMAGES], [C.OUTPUT_LOGITS, C.OUTPUT_MERGE_SLOTS])
    else:
        module, example = built.module, (images,)
        dynamic = {"x": {0: batch}}
        names = ([C.INPUT_IMAGES], [C.OUTPUT_LOGITS])
    try:
        return run_exporter(module, example, names, dynamic, opset, translation_table())
    finally:
        if cfg.family == "ats":
            built.module.configure(use_custom_op=False, execution="padded")


def export_ats(opts: ExportOptions, validate: Callable[[str, BuiltModel, dict], object] | None = None,
               progress: Callable[[str], None] = lambda msg: None) -> ExportResult:
    """Export ``opts.model``. ``validate(tmp_path, built, meta)``, when given and the options ask
    for validation, checks the written file before it is renamed into place (tools/ passes the
    ONNX Runtime vs PyTorch comparison)."""
    cfg, max_k = resolve_options(opts)
    out = check_output_file(opts.output or f"{cfg.name}.onnx", inputs=[opts.checkpoint])
    source = "checkpoint" if opts.checkpoint else "pretrained weights" if opts.pretrained is not None else "random weights"
    progress(f"building {cfg.name} ({source})")
    built = build_model(cfg, checkpoint=opts.checkpoint, seed=opts.seed, pretrained=opts.pretrained)
    progress("tracing and converting to ONNX")
    model = _torch_export(built, max_k, opts.opset, opts.mode, opts.form)
    if cfg.family == C.FAMILY_ATS and opts.form == "plugin":
        model = to_plugin_form(model, cfg.scheme, opts.opset)
    meta = metadata_for(built, max_k, opts)
    stamp(model, meta)
    check = bound_check(validate, opts.validate, built, meta, progress)
    lint, report = write_checked(model, out, check, progress)
    return ExportResult(out, meta, lint, report)
