"""DynamicViT / EViT export: one ONNX file whose keep rate is chosen at load time.

Each reduction stage s has an input ``keep_s`` (contract.keep_input) whose length K_s is the
number of patch tokens the stage keeps; K_s is a named dynamic dim bounded by the count at the
export's ``max_rate``, so every shape in the graph is bounded and TensorRT can build profiles for
it. The graph computes on exactly the kept tokens (every image keeps the same number), so there
is no padding. The runner turns a rate into the K_s (contract.check_rate). The dense baseline
``tscli bench`` times it against comes from export/reference_graphs.py, like every family's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import onnx
import torch

from .. import contract as C
from ..errors import UsageError
from ..files import check_output_file
from ..models.catalog import get_config
from ..models.factory import BuiltModel, build_model
from ..models.reduction import ReductionExportWrapper
from .ats_export import ExportResult, metadata_for
from .exporter import bound_check, check_opset, run_exporter, stamp, write_checked

MODE = "static"  # every image keeps the same K_s tokens: no padding slots, unlike ATS's "padded"


@dataclass
class ReductionExportOptions:
    model: str
    rate: float | None = None  # default keep rate of the file (None: the variant's, 0.7)
    max_rate: float = 1.0  # largest rate the file accepts at load; bounds every K_s
    output: str | None = None
    checkpoint: str | None = None
    opset: int = 18
    seed: int = 0
    validate: bool = True
    form: str = "plain"
    mode: str = MODE


def resolve_options(opts: ReductionExportOptions):
    cfg = get_config(opts.model)
    if cfg.family not in C.REDUCTION_FAMILIES:
        raise UsageError(f"{opts.model!r} is {cfg.family}, not a token-reduction model ({', '.join(C.REDUCTION_FAMILIES)})")
    check_opset(opts.opset)
    if not 0.0 < float(opts.max_rate) <= 1.0:
        raise UsageError(f"--max-rate {opts.max_rate!r} is out of range; valid: 0 < max_rate <= 1")
    rate = cfg.rate if opts.rate is None else opts.rate
    meta = reduction_fields(cfg, rate, opts.max_rate)
    # the default rate must itself be loadable: in range and keeping (EViT: dropping) a token per stage
    meta["rate"], _ = C.check_rate(rate, meta)
    return cfg, meta


def reduction_fields(cfg, rate: float, max_rate: float) -> dict:
    return {"rate": float(rate), "max_rate": float(max_rate), "num_patches": cfg.num_patches,
            "family": cfg.family, "stages": list(cfg.stages)}


def keep_bounds(meta: dict) -> list[int]:
    """Upper bound of each K_s: the counts at max_rate (counts never grow with a smaller rate)."""
    return C.keep_counts(meta["family"], float(meta["max_rate"]), int(meta["num_patches"]), len(meta["stages"]))


def _torch_export(built: BuiltModel, meta: dict, opset: int) -> onnx.ModelProto:
    cfg = built.config
    stages = len(cfg.stages)
    _, counts = C.check_rate(meta["rate"], meta)
    images = torch.randn(2, 3, cfg.img_size, cfg.img_size)
    keeps = tuple(torch.zeros(k) for k in counts)
    batch = torch.export.Dim(C.DIM_BATCH, min=1, max=4096)
    dims = [torch.export.Dim(C.keep_dim(s), min=1, max=max(2, bound)) for s, bound in enumerate(keep_bounds(meta))]
    dynamic = {"images": {0: batch}, "keeps": tuple({0: d} for d in dims)}
    names = ([C.INPUT_IMAGES] + [C.keep_input(s) for s in range(stages)],
             [C.OUTPUT_LOGITS, C.OUTPUT_COUNTS, C.OUTPUT_POSITIONS])
    return run_exporter(ReductionExportWrapper(built.module).eval(), (images, *keeps), names, dynamic, opset)


def export_reduction(opts: ReductionExportOptions, validate: Callable[[str, BuiltModel, dict], object] | None = None,
                     progress: Callable[[str], None] = lambda msg: None) -> ExportResult:
    """Export ``opts.model``; ``validate(tmp_path, built, meta)`` checks the written file before it
    is renamed into place (tools/ passes the ONNX Runtime vs PyTorch comparison)."""
    cfg, fields = resolve_options(opts)
    out = check_output_file(opts.output or f"{cfg.name}.onnx")
    progress(f"building {cfg.name} ({'checkpoint' if opts.checkpoint else 'random weights'})")
    built = build_model(cfg, checkpoint=opts.checkpoint, seed=opts.seed)
    progress("tracing and converting to ONNX")
    model = _torch_export(built, fields, opts.opset)
    meta = metadata_for(built, None, opts) | fields
    stamp(model, meta)
    check = bound_check(validate, opts.validate, built, meta, progress)
    lint, report = write_checked(model, out, check, progress)
    return ExportResult(out, meta, lint, report)
