"""The one timing loop of every benchmark (bench, the segmentation bench, tune).

Only ratios measured in one run mean anything on a shared machine, so measurements are
interleaved: after the warm-up rounds, each round runs every item once, in an order rotated by
one position per round, so slow drift of the machine hits every item alike. Callers give each
item its own ONNX Runtime session with spinning stopped after a run (OrtBackend stop_spinning),
so one session's idle workers do not steal the cores from the next.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Hashable, Sequence

import numpy as np


@dataclass
class Timings:
    samples: dict = field(default_factory=dict)  # item -> [seconds per run]
    last: dict = field(default_factory=dict)  # item -> what its last run returned

    def ms(self, item: Hashable) -> np.ndarray:
        return np.asarray(self.samples[item]) * 1e3


def interleaved(items: Sequence[Hashable], run_once: Callable[[Hashable], object], runs: int, warmup: int,
                progress: Callable[[str], None] = lambda msg: None, label: str = "round") -> Timings:
    """Time ``run_once(item)`` for every item, ``runs`` interleaved rounds after ``warmup`` ones."""
    items = list(items)
    result = Timings()
    for _ in range(warmup):
        for item in items:
            run_once(item)
    for r in range(runs):
        progress(f"{label} {r + 1}/{runs}")
        shift = r % len(items)
        for item in items[shift:] + items[:shift]:
            t0 = time.perf_counter()
            out = run_once(item)
            result.samples.setdefault(item, []).append(time.perf_counter() - t0)
            result.last[item] = out
    return result
