"""``tscli bench`` for DynamicViT / EViT files: latency per (rate, batch) next to the dense model with
the same backbone weights.

The measurement is the interleaved loop of tools/timing.py: each round runs every (graph, rate,
batch) once. Each rate is its own session with the kept counts pinned, as runtime.load does, and
every session's workers stop spinning when its run returns (tools/bench.py says why). Ratios are
the median over rounds of the ratio within a round. The dense graph is exported on the fly
(export extras) unless ``baseline`` gives one; with ``graphs_dir`` it is kept and reused.

JSON report, schema ``tscli.bench-reduction/1``::

    {"schema", "file", "model", "family", "backend", "provider", "threads", "runs", "warmup",
     "baseline": path|"exported"|null,
     "rows": [{"rate", "counts", "batch", "method": {"median_ms", "p90_ms", "images_per_s", "gflops",
               "samples_ms"}, "dense": {same}|null, "speedup_vs_dense": float|null}]}
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

from .. import contract as C
from ..errors import MissingDependency, UsageError
from ..runtime import flops as F
from ..runtime.ort.session import OrtBackend
from .bench import _check_baseline, _stats
from .timing import interleaved

SCHEMA = "tscli.bench-reduction/1"


def _dense_graph(meta: dict, folder: Path, checkpoint: str | None, threads: int | None, progress) -> OrtBackend:
    """The dense baseline from ``folder`` when one of the same model and weights is there, else exported."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{meta['model']}.dense.onnx"
    if path.is_file():
        backend = OrtBackend(path, threads=threads, stop_spinning=True)
        ref = C.decode_metadata(backend.metadata_props)
        if C.is_current_reference(ref, "dense") and all(ref.get(k) == meta.get(k) for k in ("weights", "input_size", "opset")):
            return backend
    try:
        from ..export.reference_graphs import export_bench_graph  # torch: only when a graph is exported
    except ImportError as exc:
        raise MissingDependency(f"exporting the dense graph needs the export extras ({exc.name} is missing): "
                                "pip install 'tscli[export]', or give --baseline FILE") from None
    progress("exporting the dense graph")
    return OrtBackend(export_bench_graph("dense", meta, path, checkpoint), threads=threads, stop_spinning=True)


def bench_reduction(path: str | Path, rates: list[float] | None = None, batches: list[int] | None = None,
                    threads: int | None = None, runs: int = 10, warmup: int = 2, baseline: str | Path | None = None,
                    dense: bool = True, checkpoint: str | None = None, graphs_dir: str | Path | None = None,
                    progress: Callable[[str], None] = lambda m: None) -> dict:
    if runs < 1 or warmup < 0:
        raise UsageError(f"--runs {runs} / --warmup {warmup} invalid; need runs >= 1 and warmup >= 0")
    batches = batches or [1, 8]
    if any(b < 1 for b in batches):
        raise UsageError(f"bad --batch {batches}; batch sizes must be >= 1")
    probe = OrtBackend(path, threads=threads)
    meta = C.decode_metadata(probe.metadata_props)
    if not C.is_reduction(meta):
        raise UsageError(f"this bench needs a DynamicViT / EViT file; this one is {meta.get('family')!r}")
    checked = [C.check_rate(r, meta) for r in (rates or [meta["rate"]])]  # every rate checked before any work
    sessions = {rate: OrtBackend(path, threads=threads, stop_spinning=True,
                                 fixed_dims={C.keep_dim(s): c for s, c in enumerate(counts)})
                for rate, counts in checked}
    with tempfile.TemporaryDirectory(prefix="tscli-bench-") as tmp:
        ref = None
        if baseline is not None:
            ref = OrtBackend(baseline, threads=threads, stop_spinning=True)
            _check_baseline(meta, C.decode_metadata(ref.metadata_props), str(baseline))
        elif dense:
            ref = _dense_graph(meta, Path(graphs_dir or tmp), checkpoint, threads, progress)
        rng = np.random.default_rng(0)
        inputs = {b: rng.standard_normal((b, *meta["input_size"])).astype(np.float32) for b in batches}
        counts = dict(checked)
        feeds = {rate: {C.keep_input(s): np.zeros(c, np.float32) for s, c in enumerate(counts[rate])} for rate in sessions}
        items = [(rate, b) for b in batches for rate in sessions] + ([("dense", b) for b in batches] if ref else [])

        def run_once(item):
            key, b = item
            if key == "dense":
                return ref.run({C.INPUT_IMAGES: inputs[b]})
            return sessions[key].run({C.INPUT_IMAGES: inputs[b], **feeds[key]})

        timings = interleaved(items, run_once, runs, warmup, progress)
    arch = F.arch_from_meta(meta)
    rows = []
    for b in batches:
        d = np.asarray(timings.samples[("dense", b)]) if ref else None
        for rate in sessions:
            a = np.asarray(timings.samples[(rate, b)])
            rows.append({"rate": rate, "counts": counts[rate], "batch": b,
                         "method": _stats(a, b, F.reduction_flops(arch, meta["family"], counts[rate]) / 1e9),
                         "dense": _stats(d, b, F.dense_flops(arch) / 1e9) if d is not None else None,
                         "speedup_vs_dense": float(np.median(d / a)) if d is not None else None})
    return {"schema": SCHEMA, "file": str(path), "model": meta["model"], "family": meta["family"], "backend": "ort",
            "provider": probe.provider, "threads": threads, "runs": runs, "warmup": warmup,
            "baseline": str(baseline) if baseline is not None else ("exported" if ref else None), "rows": rows}
