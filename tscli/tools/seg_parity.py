"""Segmentation parity: a DoViT / SETR file in a backend against the PyTorch model it came from.

DoViT's reference is the variable-length PyTorch execution (each image's blocks run on its own
kept tokens), so the comparison covers the static capacity/mask/scatter rewrite as well as the
exporter. Per xi: max |logit diff|, per-pixel argmax agreement, kept masks and counts, the
saturated flag. A mask that differs only where a decision was within float noise of xi (or of
the capacity boundary) is a near-tie, reported apart (docs/design.md, "Tie bands").
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import contract as C
from ..errors import UsageError
from ..models.factory import BuiltModel, build_from_metadata
from ..runtime import load
from .parity import LOGIT_ATOL, NEAR_TIE, ParityReport, parity_inputs


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


def validate_seg_export(path: str, built: BuiltModel, meta: dict) -> SegParityReport:
    """The check ``tscli export`` runs on a segmentation file before it is renamed into place:
    2 random inputs at the xi values of ``default_xis``."""
    seed = C.random_seed(meta.get("weights")) or 0
    images = np.random.default_rng(seed).standard_normal((2, *meta["input_size"])).astype(np.float32)
    return seg_parity(lambda xi: load(path, xi=xi), built, images, default_xis(built, images, meta))
