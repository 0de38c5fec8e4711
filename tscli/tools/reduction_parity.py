"""DynamicViT / EViT parity: a backend (ONNX Runtime by default) against the PyTorch model a file
was exported from, at one or more load-time keep rates. Per image and rate: logits within
parity.LOGIT_ATOL, the same kept counts and the same kept token sets per stage; an image whose
sets differ where the PyTorch decision was within parity.NEAR_TIE of a tie (the gap between the
last kept and the first dropped score) is reported as a near-tie, as for ATS.
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
from .parity import LOGIT_ATOL, ParityReport, compare, parity_inputs

EXECUTION = "static"  # every image keeps the same K_s tokens (export/reduction_export.py)


def torch_reference(built: BuiltModel, images: np.ndarray, counts: list[int]):
    """-> (logits [B,C], counts [B,S], positions per stage [B, *], smallest margin per image [B])."""
    model = built.module
    model.record_margin = True
    try:
        with torch.no_grad():
            logits, records = model.forward_with_records(torch.from_numpy(images), [torch.zeros(c) for c in counts])
    finally:
        model.record_margin = False
    kept = torch.stack([r.counts for r in records], 1).numpy()
    margins = torch.stack([r.margin for r in records], 1).amin(1).numpy()
    return logits.numpy(), kept, [r.positions.numpy() for r in records], margins


def default_rates(meta: dict) -> list[float]:
    """The file's default rate and 0.5 (when the file accepts it): a check that the load-time
    rate really changes what the graph keeps."""
    rates = [float(meta["rate"])]
    try:
        other, _ = C.check_rate(0.5, meta)
    except UsageError:
        return rates
    return rates if other in rates else rates + [other]


def run_rates(runner_factory, built: BuiltModel, images: np.ndarray, rates: list[float],
              tol: float = LOGIT_ATOL) -> ParityReport:
    """runner_factory(rate) -> a tscli.runtime Runner; images: preprocessed float32 NCHW."""
    report = None
    for rate in rates:
        runner = runner_factory(rate)
        if report is None:
            report = ParityReport(runner.backend_name, runner.provider, tol)
        ref = torch_reference(built, images, runner.keep_counts)
        row = compare(ref, runner.infer(images), None, EXECUTION, tol)
        row.rate = runner.rate
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
