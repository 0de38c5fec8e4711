"""``tscli export``: registry model -> one ONNX file following export/contract.py.

Padded (static) graphs: K is the length of the ``k_select`` input, a named dynamic dim bounded
by max_k, so one file serves every 1 <= K <= max_k. Batch is dynamic. The file is written to a
temporary name, checked (onnx.checker full check, lint, ORT-vs-PyTorch validation) and only then
renamed into place: a failed export leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import onnx
import torch

from .. import __version__
from ..errors import TscliError, UsageError
from ..files import atomic_path, check_output_file
from ..models.ats import ExportWrapper
from ..models.build import BuiltModel, build_model
from ..models.labels import label_names
from ..models.registry import get_config, parse_stages
from ..models.sampling import SCHEMES
from . import contract as C
from .functions import to_plugin_form, translation_table
from .lint import LintReport, lint_model

FORMS = ("plain", "plugin")
MODES = ("padded", "trimmed")  # see models/ats.py: static K + 1 slots, or cut to the batch max of K' + 1
MIN_OPSET = 17


@dataclass
class ExportOptions:
    model: str
    max_k: int | None = None
    output: str | None = None
    checkpoint: str | None = None
    stages: str | None = None
    scheme: str = "paper"
    opset: int = 18
    form: str = "plain"
    seed: int = 0
    validate: bool = True
    mode: str = "padded"


@dataclass
class ExportResult:
    path: Path
    metadata: dict
    lint: LintReport
    validation: object | None  # export.validate.ParityReport


def resolve_options(opts: ExportOptions):
    """Check every option against the model before any work is done."""
    cfg = get_config(opts.model)
    overrides = {}
    if opts.stages is not None:
        if cfg.family != "ats":
            raise UsageError(f"--stages applies to ATS models; {opts.model!r} is {cfg.family}")
        overrides["stages"] = parse_stages(opts.stages, cfg.depth)
    if opts.scheme not in SCHEMES:
        raise UsageError(f"unknown --sampling {opts.scheme!r}; valid: {', '.join(SCHEMES)}")
    overrides["scheme"] = opts.scheme
    if opts.form not in FORMS:
        raise UsageError(f"unknown --form {opts.form!r}; valid: {', '.join(FORMS)}")
    if opts.mode not in MODES:
        raise UsageError(f"unknown --mode {opts.mode!r}; valid: {', '.join(MODES)}")
    if opts.mode == "trimmed" and cfg.family != "ats":
        raise UsageError(f"--mode trimmed applies to ATS models; {opts.model!r} is {cfg.family}")
    check_opset(opts.opset)
    cfg = get_config(opts.model, **overrides)
    max_k = opts.max_k
    if cfg.family == "ats":
        max_k = cfg.max_k_limit if max_k is None else max_k
        if not 1 <= max_k <= cfg.max_k_limit:
            raise UsageError(f"--max-k {max_k} is out of range for {cfg.name}; valid: 1..{cfg.max_k_limit}")
    elif max_k is not None:
        raise UsageError(f"--max-k applies to ATS models; {cfg.name!r} is {cfg.family}")
    return cfg, max_k


def check_opset(opset: int) -> None:
    """Shared by every exporter: LayerNormalization needs 17; above what onnx knows nothing exports."""
    newest = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= newest:
        raise UsageError(f"--opset {opset} is out of range; valid: {MIN_OPSET}..{newest} "
                         "(17 is the first with LayerNormalization)")


def metadata_for(built: BuiltModel, max_k: int | None, opts: ExportOptions) -> dict:
    cfg = built.config
    return {
        "tool_version": __version__, "model": cfg.name, "family": cfg.family, "max_k": max_k,
        "stages": list(cfg.stages), "scheme": cfg.scheme if cfg.family == "ats" else None, "mode": opts.mode,
        "form": opts.form, "input_size": [3, cfg.img_size, cfg.img_size], "patch_size": cfg.patch_size,
        "mean": list(cfg.mean), "std": list(cfg.std), "crop_pct": cfg.crop_pct, "interpolation": cfg.interpolation,
        "num_classes": cfg.num_classes, "labels": cfg.labels, "opset": opts.opset, "weights": built.weights,
        "dense_name": cfg.dense_name, "embed_dim": cfg.embed_dim, "depth": cfg.depth, "num_heads": cfg.num_heads,
        "label_names": label_names(cfg.labels, cfg.num_classes),
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
    else:
        module, example = built.module, (images,)
        dynamic = {"x": {0: batch}}
        names = ([C.INPUT_IMAGES], [C.OUTPUT_LOGITS])
    try:
        return run_exporter(module, example, names, dynamic, opset, translation_table())
    finally:
        if cfg.family == "ats":
            built.module.configure(use_custom_op=False, execution="padded")


def run_exporter(module: torch.nn.Module, example: tuple, names: tuple[list[str], list[str]], dynamic: dict,
                 opset: int, translation: dict | None = None) -> onnx.ModelProto:
    """torch.onnx.export the way every tscli exporter calls it: dynamo, one file (no external
    data), the given dynamic dims, and quiet (the exporter prints progress and a long report,
    warns about its own internals, and logs every data-dependent size of a trimmed export)."""
    shape_log = logging.getLogger("torch.fx.experimental.symbolic_shapes")
    level = shape_log.level
    shape_log.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            prog = torch.onnx.export(
                module, example, dynamo=True, external_data=False, opset_version=opset, verbose=False,
                input_names=names[0], output_names=names[1], dynamic_shapes=dynamic,
                custom_translation_table=translation,
            )
    finally:
        shape_log.setLevel(level)
    return prog.model_proto


def stamp(model: onnx.ModelProto, meta: dict) -> onnx.ModelProto:
    """Write the contract's metadata (export/contract.py) and tscli as the producer."""
    for key, value in C.encode_metadata(meta).items():
        model.metadata_props.add(key=key, value=value)
    model.producer_name, model.producer_version = "tscli", __version__
    return model


def optimize_graph(model: onnx.ModelProto) -> onnx.ModelProto:
    """Constant folding, dead-code and redundant Shape/Cast/Expand removal (onnxscript's optimizer).

    Used by the DoViT and benchmark-graph exporters on graphs they post-process after the
    exporter's own optimisation pass (the ATS plain form needs no second pass: measured, it
    removes nothing there).
    """
    import onnxscript.optimizer

    with contextlib.redirect_stdout(io.StringIO()):
        return onnxscript.optimizer.optimize(model)


def write_checked(model: onnx.ModelProto, out: Path, validate: Callable[[str], object] | None = None,
                  progress: Callable[[str], None] = lambda msg: None) -> tuple[LintReport, object | None]:
    """Save beside ``out`` under a temporary name, run the full checker, the lint and
    ``validate(tmp_path)`` (a report with ``raise_if_failed``), then rename into place. Any failure
    leaves nothing on disk. Every exporter ends here."""
    with atomic_path(out) as tmp:
        onnx.save(model, str(tmp))
        progress("checking (onnx.checker full check, lint)")
        onnx.checker.check_model(str(tmp), full_check=True)
        lint = lint_model(onnx.load(str(tmp)))
        if not lint.ok:
            raise TscliError(f"exported graph failed the lint: {lint.first_error()}")
        report = validate(str(tmp)) if validate else None
        if report is not None:
            report.raise_if_failed()
    return lint, report


def export_onnx(opts: ExportOptions, progress: Callable[[str], None] = lambda msg: None) -> ExportResult:
    cfg, max_k = resolve_options(opts)
    out = check_output_file(opts.output or f"{cfg.name}.onnx")
    progress(f"building {cfg.name} ({'checkpoint' if opts.checkpoint else 'random weights'})")
    built = build_model(cfg, checkpoint=opts.checkpoint, seed=opts.seed)
    progress("tracing and converting to ONNX")
    model = _torch_export(built, max_k, opts.opset, opts.mode, opts.form)
    if cfg.family == "ats" and opts.form == "plugin":
        model = to_plugin_form(model, cfg.scheme, opts.opset)
    meta = metadata_for(built, max_k, opts)
    stamp(model, meta)
    validate = None
    if opts.validate and cfg.family == "ats":
        from .validate import validate_export

        def validate(tmp: str):
            progress("validating ONNX Runtime against PyTorch")
            return validate_export(tmp, built, meta)

    lint, report = write_checked(model, out, validate, progress)
    return ExportResult(out, meta, lint, report)
