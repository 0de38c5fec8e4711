"""``tscli export``'s front door: the exporters of tscli/export/ with the post-export check.

The exporters know nothing of the runtime (export sits below it); the check that a written file
runs in ONNX Runtime and matches PyTorch is passed in here, where both are available.
"""

from __future__ import annotations

from typing import Callable

from .. import contract as C
from ..export.ats_export import ExportOptions, ExportResult, export_ats
from ..export.reduction_export import ReductionExportOptions
from ..export.reduction_export import export_reduction as _export_reduction
from ..export.seg_export import SegExportOptions, SegExportResult
from ..export.seg_export import export_seg as _export_seg
from ..models.catalog import get_config
from ..runtime.images import images_in
from . import parity, reduction_parity, seg_parity

__all__ = ["ExportOptions", "ExportResult", "ReductionExportOptions", "SegExportOptions", "SegExportResult",
           "export_onnx", "export_reduction", "export_seg", "export_variant"]


def export_onnx(opts: ExportOptions, progress: Callable[[str], None] = lambda msg: None) -> ExportResult:
    """Export an ATS or dense model; with ``opts.validate`` the file is checked against PyTorch
    in ONNX Runtime before it is renamed into place."""
    if opts.validate and opts.validate_images:
        images_in(opts.validate_images)  # a missing or empty folder is known before the slow part

    def check(tmp: str, built, meta: dict):
        return parity.validate_export(tmp, built, meta, images=opts.validate_images)

    return export_ats(opts, check, progress)


def export_seg(opts: SegExportOptions, progress: Callable[[str], None] = lambda msg: None) -> SegExportResult:
    """Export a DoViT / SETR model, checked against the variable-length PyTorch reference."""
    if opts.validate and opts.validate_images:
        images_in(opts.validate_images)

    def check(tmp: str, built, meta: dict):
        return seg_parity.validate_seg_export(tmp, built, meta, images=opts.validate_images)

    return _export_seg(opts, check, progress)


def export_reduction(opts: ReductionExportOptions, progress: Callable[[str], None] = lambda msg: None) -> ExportResult:
    """Export a DynamicViT / EViT model, checked in ONNX Runtime at its default rate and at 0.5."""
    return _export_reduction(opts, reduction_parity.validate_export, progress)


def export_variant(model: str, output: str, progress: Callable[[str], None] = lambda msg: None):
    """Export any registered variant with its family's defaults (checked as above)."""
    family = get_config(model).family
    if family in C.SEG_FAMILIES:
        return export_seg(SegExportOptions(model, output=output), progress)
    if family in C.REDUCTION_FAMILIES:
        return export_reduction(ReductionExportOptions(model, output=output), progress)
    return export_onnx(ExportOptions(model, output=output), progress)
