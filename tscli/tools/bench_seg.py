"""``tscli bench`` on a DoViT file: its latency per (xi, batch) next to the dense SETR baseline with
the same weights, the kept fraction and saturation on real images, and analytic GFLOPs."""

from __future__ import annotations

import importlib.util
import tempfile
from pathlib import Path

import numpy as np

from .. import contract as C
from ..data.samples import sample_images
from ..errors import MissingDependency, UsageError
from ..runtime.ort.session import OrtBackend
from ..runtime.preprocess import preprocess
from ..runtime.segmentation import seg_flops, seg_gflops
from .timing import interleaved


def _bench_inputs(meta: dict, batch: int, seed: int = 0) -> np.ndarray:
    """Real images when scikit-image is there (token stopping depends on content), else noise."""
    if importlib.util.find_spec("skimage") is not None:
        arrays = [a for _, a in sample_images(batch)]
        return preprocess([arrays[i % len(arrays)] for i in range(batch)], meta)
    rng = np.random.default_rng(seed)
    return rng.standard_normal((batch,) + tuple(meta["input_size"])).astype(np.float32)


def _dense_baseline(meta: dict, path: str | Path, baseline, checkpoint, folder: Path, threads, progress):
    """--baseline, else a dense baseline already in ``folder`` made from the same model, weights,
    input size and opset (--graphs-dir), else one exported there now."""
    kept = folder / f"{meta['model']}.dense.onnx"
    if baseline is None and kept.is_file():
        dense = OrtBackend(kept, threads=threads, stop_spinning=True)
        dmeta = C.decode_metadata(dense.metadata_props)
        if dmeta.get("family") == "seg" and dmeta.get("model") == meta.get("dense_name") and all(
                dmeta.get(key) == meta.get(key) for key in ("weights", "input_size", "opset")):
            return dense, dmeta
    if baseline is None:
        try:
            from ..export.seg_export import (
                export_dense_baseline,  # torch: only when a graph is exported
            )
        except ImportError as exc:
            raise MissingDependency(f"exporting the dense baseline needs the export extras ({exc.name} is missing): "
                                    "pip install 'tscli[export]', or give --baseline FILE") from None
        progress("exporting the dense SETR baseline (same weights)")
        baseline = export_dense_baseline(meta, kept, checkpoint)
    dense = OrtBackend(baseline, threads=threads, stop_spinning=True)  # interleaved timing: see OrtBackend
    dmeta = C.decode_metadata(dense.metadata_props)
    if dmeta.get("family") != "seg" or list(dmeta.get("input_size", [])) != list(meta["input_size"]):
        raise UsageError(f"--baseline {str(baseline)!r} is not a dense segmentation model with input {meta['input_size']}")
    return dense, dmeta


def bench_seg(path: str | Path, xis: list[float] | None = None, batches: list[int] | None = None,
              threads: int | None = None, runs: int = 5, warmup: int = 1, baseline: str | Path | None = None,
              checkpoint: str | None = None, graphs_dir: str | Path | None = None, progress=lambda m: None) -> dict:
    """Median latency of the DoViT file per (xi, batch) and of the dense baseline, measured in one
    interleaved loop (tools/timing.py). Also: kept fraction and saturation on the bench images,
    and analytic GFLOPs (padded graph at C; token-pass equivalent of the measured counts; dense)."""
    dovit = OrtBackend(path, threads=threads, stop_spinning=True)
    meta = C.decode_metadata(dovit.metadata_props)
    if meta.get("family") != "dovit":
        raise UsageError(f"segmentation bench needs a DoViT file; this one is {meta.get('family')!r}")
    xis = [C.check_xi(v) for v in xis] if xis else [float(meta["xi"])]
    batches = batches or [1]
    if runs < 1 or warmup < 0 or any(b < 1 for b in batches):
        raise UsageError(f"bad --runs {runs} / --warmup {warmup} / --batch {batches}; need runs >= 1, warmup >= 0, batch >= 1")
    with tempfile.TemporaryDirectory(prefix="tscli-bench-") as tmp:
        dense, dmeta = _dense_baseline(meta, path, baseline, checkpoint, Path(graphs_dir or tmp), threads, progress)
        inputs = {b: _bench_inputs(meta, b) for b in batches}
        items = [(b, xi) for b in batches for xi in xis] + [(b, None) for b in batches]

        def run_once(item):
            b, xi = item
            feeds = {C.INPUT_IMAGES: inputs[b]}
            if xi is not None:
                feeds[C.INPUT_XI] = np.asarray(xi, np.float32)
            return (dovit if xi is not None else dense).run(feeds)

        timings = interleaved(items, run_once, runs, warmup, progress)
    return {"schema": "tscli.bench-seg/1", "file": str(path), "model": meta["model"], "max_keep": meta["max_keep"],
            "input_size": meta["input_size"], "provider": dovit.provider, "threads": threads, "runs": runs,
            "warmup": warmup, "baseline": str(baseline) if baseline else "exported",
            "rows": [_bench_row(meta, b, xi, timings.samples, timings.last) for b in batches for xi in xis]}


def _bench_row(meta: dict, batch: int, xi: float, samples: dict, outs: dict) -> dict:
    ms = {k: float(np.median(v)) * 1e3 for k, v in samples.items()}
    counts = outs[(batch, xi)][C.OUTPUT_COUNTS]
    patches = int(np.prod(meta["grid"]))
    return {
        "xi": xi, "batch": batch, "dovit_ms": ms[(batch, xi)], "dense_ms": ms[(batch, None)],
        "speedup_vs_dense": ms[(batch, None)] / ms[(batch, xi)],
        "kept_fraction": float((counts[:, -1] / patches).mean()), "kept_counts": counts.tolist(),
        "saturated": int(outs[(batch, xi)][C.OUTPUT_SATURATED].sum()),
        "gflops_padded": seg_gflops(meta), "gflops_token_pass": float(np.mean([seg_gflops(meta, list(c)) for c in counts])),
        "gflops_dense": seg_flops(meta, None) / 1e9,
        "samples_ms": {"dovit": [round(v * 1e3, 3) for v in samples[(batch, xi)]],
                       "dense": [round(v * 1e3, 3) for v in samples[(batch, None)]]},
    }
