"""Segmentation parity: a DoViT / SETR file in a backend against the PyTorch model it came from.

DoViT's reference is the variable-length PyTorch execution (each image's blocks run on its own
kept tokens), so the comparison covers the static capacity/mask/scatter rewrite as well as the
exporter. Per xi: max |logit diff|, per-pixel argmax agreement, kept masks and counts, the
saturated flag. A mask that differs only where a decision was within float noise of xi (or of
the capacity boundary) is a near-tie, reported apart (docs/design.md, "Tie bands").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .. import contract as C
from ..errors import UsageError
from ..models.factory import BuiltModel, build_from_metadata
from ..runtime import load
from . import tie_band
from .parity import LOGIT_ATOL, Divergence, ParityReport, parity_inputs


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
    divergences: list[Divergence] = field(default_factory=list)


class SegParityReport(ParityReport):
    """Same report as ATS parity (ok, to_dict, raise_if_failed); rows are SegParityRows."""

    @property
    def band_rule(self) -> str:
        return tie_band.dovit_band_formula(self.precision)

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


def first_divergence(ref, got: dict, i: int, xi: float, band: float, source: str) -> Divergence | None:
    """Where image i's kept masks first differ from the reference's, with the margin of the
    least tie-like differing token: |q - xi|, or |q - capacity cut| where the cut decided."""
    for d in range(ref.kept_masks.shape[1]):
        mine, theirs = ref.kept_masks[i, d].numpy(), np.asarray(got[C.OUTPUT_KEEP_MASKS][i, d], bool)
        if np.array_equal(mine, theirs):
            continue
        q = ref.confidences[i, d].double().numpy()
        margins = np.abs(q - xi)
        cut = float(ref.boundary[i, d])
        if not np.isnan(cut):
            margins = np.minimum(margins, np.abs(q - cut))
        margin = float(margins[mine != theirs].max())
        return Divergence(i, source, d, margin, band, margin <= band, "decision layer", "|q - xi| or capacity cut")
    return None


def compare_seg(built: BuiltModel, got: dict, images: np.ndarray, xi: float | None, cap: int | None,
                tol: float = LOGIT_ATOL, sources: list[str] | None = None, precision: str = "fp32") -> SegParityRow:
    """As parity.compare for segmentation: masks, counts and the saturated flag must agree on every
    image, and its logits be within ``tol``, unless its masks first differ inside the tie band."""
    dense_logits, ref = _reference(built, images, xi, cap)
    logits_r = dense_logits if ref is None else ref.logits.numpy()
    logits_g = got[C.OUTPUT_SEG]
    n = len(images)
    sources = sources or [f"input {i + 1}" for i in range(n)]
    band = tie_band.dovit_band(built.config.embed_dim, built.config.num_classes, precision)
    diffs, agree, counts_ok, masks_ok, sat_ok, near, kept, divergences = [], [], 0, 0, 0, 0, [], []
    for i in range(n):
        if ref is not None:
            kept.append(float(ref.kept_counts[i, -1]) / ref.kept_masks.shape[-1])
            div = first_divergence(ref, got, i, xi, band, sources[i])
            if div is not None:
                divergences.append(div)
                near += int(div.near_tie)
                continue
            counts_ok += int(np.array_equal(ref.kept_counts[i].numpy(), got[C.OUTPUT_COUNTS][i]))
            sat_ok += int(bool(ref.saturated[i]) == bool(got[C.OUTPUT_SATURATED][i]))
        masks_ok += 1
        a, b = logits_r[i].astype(np.float64), logits_g[i].astype(np.float64)
        diffs.append(float(np.abs(a - b).max()))
        agree.append(float((a.argmax(0) == b.argmax(0)).mean()))
    checked = n - near
    max_diff = max(diffs) if diffs else 0.0
    flags_ok = ref is None or (counts_ok == checked and sat_ok == checked)
    ok = max_diff <= tol and masks_ok == checked and flags_ok and all(d.near_tie for d in divergences)
    sat = int(ref.saturated.sum()) if ref is not None else 0
    return SegParityRow(xi, cap, n, max_diff, min(agree) if agree else 1.0, counts_ok if ref is not None else n,
                        masks_ok, sat_ok if ref is not None else n, sat, float(np.mean(kept)) if kept else 1.0, near, ok,
                        divergences)


def seg_parity(runner_factory, built: BuiltModel, images: np.ndarray, xis: list[float | None],
               tol: float = LOGIT_ATOL, sources: list[str] | None = None, precision: str = "fp32") -> SegParityReport:
    """runner_factory(xi) -> Runner; one row per xi (None = dense model)."""
    report = None
    for xi in xis:
        runner = runner_factory(xi)
        if report is None:
            report = SegParityReport(runner.backend_name, runner.provider, tol, precision=precision)
        cap = runner.meta.get("max_keep")
        report.rows.append(compare_seg(built, runner.infer(images), images, xi, cap, tol, sources, precision))
    return report


def seg_parity_for_file(path: Path, checkpoint: Path | None, images: Path | None, n: int, xis: list[float] | None,
                        threads: int | None) -> SegParityReport:
    """`tscli parity FILE` for a segmentation file: real images (scikit-image samples by default) + noise."""
    probe = load(path, threads=threads)
    meta = probe.meta
    if meta["family"] == "seg" and xis:
        raise UsageError("--xi applies to DoViT files; this one is a dense segmentation model")
    for xi in xis or []:
        C.check_xi(xi)
    built = rebuild(meta, str(checkpoint) if checkpoint else None)
    # Segmentation inputs are few (--n) but large: they are compared in one batch per xi.
    batches = list(parity_inputs(meta, images, n))
    x = np.concatenate([b for b, _ in batches])
    sources = [name for _, names in batches for name in names]
    xis = xis or default_xis(built, x, meta)
    return seg_parity(lambda xi: load(path, xi=xi, threads=threads), built, x, xis, sources=sources)


def validate_seg_export(path: str, built: BuiltModel, meta: dict, images: str | Path | None = None,
                        n: int = 2) -> SegParityReport:
    """The check ``tscli export`` runs on a segmentation file before it is renamed into place:
    ``n`` real images (``images``, a folder, or scikit-image's samples) plus 2 random inputs, at
    the xi values of ``default_xis``."""
    batches = list(parity_inputs(meta, Path(images) if images else None, n))
    x = np.concatenate([b for b, _ in batches])
    sources = [name for _, names in batches for name in names]
    return seg_parity(lambda xi: load(path, xi=xi), built, x, default_xis(built, x, meta), sources=sources)
