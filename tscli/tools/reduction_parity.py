"""DynamicViT / EViT parity: a backend (ONNX Runtime by default) against the PyTorch model a file
was exported from, at one or more load-time keep rates. Per image and rate: logits within
parity.LOGIT_ATOL, the same kept counts and the same kept token sets per stage; an image whose
sets first differ at a stage whose top-K cut was a near-tie is reported as a near-tie, as for ATS:
the relative gap between the last kept and the first dropped score (float64) within the score-order
band 4 (T + D) u of tools/tie_band.py (T tokens, D embed dim; both families rank scores that come
out of dot products of length D and, for EViT, a softmax over T keys).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .. import contract as C
from ..errors import UsageError
from ..models.factory import BuiltModel, build_from_metadata
from ..runtime import load
from . import tie_band
from .parity import LOGIT_ATOL, Divergence, ParityReport, ParityRow, _merge, parity_inputs

EXECUTION = "static"  # every image keeps the same K_s tokens (export/reduction_export.py)


def torch_reference(built: BuiltModel, images: np.ndarray, counts: list[int]):
    """-> (logits [B,C], counts [B,S], positions per stage [B, *], records): records keep each
    stage's float64 cut margin and relative gap (reference runs)."""
    model = built.module
    model.record_margin = True
    try:
        with torch.no_grad():
            logits, records = model.forward_with_records(torch.from_numpy(images), [torch.zeros(c) for c in counts])
    finally:
        model.record_margin = False
    kept = torch.stack([r.counts for r in records], 1).numpy()
    return logits.numpy(), kept, [r.positions.numpy() for r in records], records


def _kept(positions: np.ndarray) -> frozenset:
    return frozenset(int(p) for p in positions if p >= 0)


def compare(ref, got: dict, rate: float, tokens: int, embed_dim: int, tol: float = LOGIT_ATOL,
            sources: list[str] | None = None, precision: str = "fp32") -> ParityRow:
    """One row at one rate: per image the same kept sets and counts and logits within ``tol``,
    unless the kept sets first differ at a stage whose cut was inside the score-order band."""
    logits_r, counts_r, pos_r, records = ref
    n = len(logits_r)
    sources = sources or [f"input {i + 1}" for i in range(n)]
    diffs, cosines, top1, counts_ok, sets_ok, near, divergences = [], [], 0, 0, 0, 0, []
    band = tie_band.order_band(tokens, embed_dim, precision)
    for i in range(n):
        stage = next((s for s in range(len(pos_r))
                      if _kept(pos_r[s][i]) != _kept(got[C.OUTPUT_POSITIONS][i, s])), None)
        if stage is not None:
            gap = float(records[stage].margin[i])  # relative gap, see models/reduction.decision_margin
            divergences.append(Divergence(i, sources[i], stage, gap, band, gap <= band, kind="score order"))
            near += int(gap <= band)
            continue
        sets_ok += 1
        counts_ok += int(np.array_equal(counts_r[i], got[C.OUTPUT_COUNTS][i]))
        a, b = logits_r[i].astype(np.float64), got[C.OUTPUT_LOGITS][i].astype(np.float64)
        diffs.append(float(np.abs(a - b).max()))
        cosines.append(float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-30)))
        top1 += int(a.argmax() == b.argmax())
    max_diff = max(diffs) if diffs else 0.0
    checked = n - near
    ok = max_diff <= tol and all(d.near_tie for d in divergences) and sets_ok == checked and counts_ok == checked
    row = ParityRow(None, EXECUTION, n, max_diff, min(cosines) if cosines else 1.0, top1, counts_ok, sets_ok, near,
                    ok, divergences)
    row.rate = rate
    return row


def default_rates(meta: dict) -> list[float]:
    """The file's default rate and 0.5 (when the file accepts it): a check that the load-time
    rate really changes what the graph keeps."""
    rates = [float(meta["rate"])]
    try:
        other, _ = C.check_rate(0.5, meta)
    except UsageError:
        return rates
    return rates if other in rates else rates + [other]


def run_rates(runner_factory, built: BuiltModel, images, rates: list[float], tol: float = LOGIT_ATOL,
              batch: int = 8) -> ParityReport:
    """runner_factory(rate) -> a tscli.runtime Runner; images: preprocessed float32 NCHW, or an
    iterable of (batch, names) pairs (tools/parity.parity_inputs)."""
    runners = {rate: runner_factory(rate) for rate in rates}
    first = runners[rates[0]]
    report = ParityReport(first.backend_name, first.provider, tol)
    if isinstance(images, np.ndarray):
        images = [(images[lo:lo + batch], None) for lo in range(0, len(images), batch)]
    cfg = built.config
    parts: dict[float, list] = {rate: [] for rate in rates}
    offset = 0
    for x, names in images:
        for rate, runner in runners.items():
            ref = torch_reference(built, x, runner.keep_counts)
            row = compare(ref, runner.infer(x), runner.rate, cfg.num_patches + 1, cfg.embed_dim, tol, names)
            parts[rate].append((offset, row))
        offset += len(x)
    for rate in rates:
        row = _merge(parts[rate])
        row.rate = parts[rate][0][1].rate
        report.rows.append(row)
    return report


def validate_export(path: str, built: BuiltModel, meta: dict, batch: int = 2, seed: int = 0) -> ParityReport:
    """The check ``tscli export`` runs before the file is renamed into place."""
    cfg = built.config
    images = np.random.default_rng(seed).standard_normal((batch, 3, cfg.img_size, cfg.img_size)).astype(np.float32)
    return run_rates(lambda rate: load(path, rate=rate), built, images, default_rates(meta))


def parity_for_file(path: Path, checkpoint: Path | None, images: Path | None, n: int, rates: list[float] | None,
                    threads: int | None, backend: str = "ort", probe=None,
                    on_runner: Callable[[object], None] = lambda runner: None) -> ParityReport:
    """``tscli parity`` for a DynamicViT / EViT file: real images (or scikit-image samples) plus 2
    random inputs, at ``rates`` (default: default_rates). Every rate is checked (its runner opened
    and passed to ``on_runner``, e.g. to print a caveat) before the slow part."""
    if probe is None:
        probe = load(path, backend=backend, threads=threads)
    rates = rates or default_rates(probe.meta)
    runners = {rate: load(path, backend=backend, threads=threads, rate=rate) for rate in rates}
    for runner in runners.values():
        on_runner(runner)
    built = build_from_metadata(probe.meta, str(checkpoint) if checkpoint else None)
    x = parity_inputs(probe.meta, images, n)
    return run_rates(runners.__getitem__, built, x, rates)
