"""``tscli bench``: latency of an exported ATS file per (K, batch) next to its dense baseline and,
optionally, the "ideal" bound (the same work minus all sampling; see tscli/models/ideal.py).

The measurement is interleaved (tools/timing.py): each round runs every (graph, K, batch) once.
Each (graph, K) is its own session with K pinned, as runtime.load does, and every session's
workers stop spinning when its run returns (otherwise they steal the cores from the next
session; see runtime/ort/session.py).

Reported per (K, batch): median and p90 latency, images/s, analytic GFLOPs (runtime/flops.py),
speed-up of the ATS graph over dense and the fraction of the ideal speed it reaches (ideal
latency / ATS latency). For an fp16 or int8 file, ``fp32`` (the fp32 file it was made from) is
timed at the same K in the same rounds, and its speed-up over that file is reported. Ratios are the median over rounds of the ratio within each round (paired
samples). The dense/ideal graphs are exported on the fly only when needed (export extras).

JSON report (``--json``), schema ``tscli.bench/1``::

    {"schema": "tscli.bench/1", "file", "model", "mode", "backend", "provider", "threads",
     "runs", "warmup", "baseline": path|null, "ideal": path|null, "precision", "fp32": path|null,
     "rows": [{"k", "batch",
               "ats": {"median_ms", "p90_ms", "images_per_s", "gflops", "samples_ms": [...]},
               "dense": {same}|null, "ideal": {same}|null, "fp32": {same}|null,
               "speedup_vs_dense": float|null, "ideal_speedup_vs_dense": float|null,
               "fraction_of_ideal": float|null, "speedup_vs_fp32": float|null}]}
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .. import contract as C
from ..errors import MissingDependency, ModelFileError, UsageError
from ..runtime import flops as F
from ..runtime.ort.session import OrtBackend
from .timing import interleaved

SCHEMA = "tscli.bench/1"
BENCH_BACKENDS = ("ort",)  # the backends bench can time (runtime.BACKENDS are those that run)


@dataclass(eq=False)  # identity hash: graphs are keys of the timing loop
class Graph:
    name: str  # "ats" | "dense" | "ideal" | "fp32" (the fp32 file an fp16/int8 "ats" was made from)
    backend: OrtBackend  # the first session; metadata and provider come from it
    meta: dict
    path: str
    threads: int | None = None
    plugins: str | None = None  # ORT op library for a plugin-form file
    samples: dict = field(default_factory=dict)  # (k, batch) -> [seconds]
    sessions: dict = field(default_factory=dict)  # k -> OrtBackend with K pinned

    def session(self, k: int | None) -> OrtBackend:
        if k is None or self.name == "dense":
            return self.backend
        if k not in self.sessions:
            self.sessions[k] = OrtBackend(self.path, threads=self.threads, fixed_dims={C.DIM_K: k}, stop_spinning=True,
                                          plugins=self.plugins)
        return self.sessions[k]


def _open(path: str | Path, threads: int | None, name: str, plugins: str | None = None) -> Graph:
    backend = OrtBackend(path, threads=threads, stop_spinning=True, plugins=plugins)
    meta = C.decode_metadata(backend.metadata_props)
    if "model" not in meta:
        raise ModelFileError(f"{str(path)!r} was not exported by tscli (no tscli.* metadata); export it with `tscli export`")
    return Graph(name, backend, meta, str(path), threads, plugins)


def check_ks(meta: dict, ks: list[int] | None) -> list[int]:
    max_k = meta.get("max_k")
    if meta.get("family") != "ats" or not max_k:
        raise UsageError(f"bench needs an ATS file with a K input; this one is {meta.get('family')!r}")
    return [C.check_k(k, max_k) for k in ks] if ks else C.default_ks(max_k)


def reference_graph(kind: str, meta: dict, path: Path, checkpoint: str | None) -> Path:
    """Export the dense baseline or the ideal graph of ``meta``'s model (needs the export extras)."""
    try:
        from ..export.reference_graphs import (
            export_bench_graph,  # torch: only when a graph is exported
        )
    except ImportError as exc:
        raise MissingDependency(f"exporting the {kind} graph needs the export extras ({exc.name} is missing): "
                                f"pip install 'tscli[export]', or give --baseline FILE and drop --ideal") from None
    return export_bench_graph(kind, meta, path, checkpoint)


def _reference(kind: str, meta: dict, folder: Path, checkpoint: str | None, threads: int | None, progress) -> Graph:
    """A dense/ideal graph from ``folder`` if one made from the same model and weights is there, else exported."""
    path = folder / f"{meta['model']}.{kind}.onnx"
    if path.is_file():
        g = _open(path, threads, kind)
        same = ("weights", "input_size", "embed_dim", "depth", "opset") + (("stages", "max_k") if kind == "ideal" else ())
        if C.is_current_reference(g.meta, kind) and all(g.meta.get(key) == meta.get(key) for key in same):
            return g
    progress(f"exporting the {kind} graph")
    return _open(reference_graph(kind, meta, path, checkpoint), threads, kind)


def _check_baseline(ats: dict, dense: dict, path: str) -> None:
    if dense.get("family") != "dense" or list(dense.get("input_size", [])) != list(ats["input_size"]):
        raise UsageError(f"--baseline {path!r} is not a dense model with input {ats['input_size']} "
                         f"(it is {dense.get('family')!r}, input {dense.get('input_size')})")


def _check_fp32(meta: dict, ref: dict, path: str) -> None:
    keys = ("model", "weights", "max_k", "stages", "scheme", "mode")
    if ref.get("precision", "fp32") != "fp32" or any(meta.get(key) != ref.get(key) for key in keys):
        raise UsageError(f"--fp32 {path!r} is not the fp32 file of this model (it is {ref.get('model')!r}, "
                         f"precision {ref.get('precision', 'fp32')}, weights {ref.get('weights')!r}, "
                         f"max_k {ref.get('max_k')})")


def _schedule(graphs: list[Graph], ks: list[int], batches: list[int]) -> list[tuple[Graph, int | None, int]]:
    items = []
    for batch in batches:
        for g in graphs:
            if g.name == "dense":  # no K: one measurement per batch, shared by every K
                items.append((g, None, batch))
            else:
                items.extend((g, k, batch) for k in ks)
    return items


def measure(graphs: list[Graph], ks: list[int], batches: list[int], runs: int, warmup: int,
            progress: Callable[[str], None] = lambda m: None, seed: int = 0) -> dict:
    """Interleaved timing into each graph's ``samples``. Returns {(graph name, k, batch):
    kept_counts of the last run} as a by-product."""
    rng = np.random.default_rng(seed)
    size = tuple(graphs[0].meta["input_size"])
    inputs = {b: rng.standard_normal((b,) + size).astype(np.float32) for b in batches}
    items = _schedule(graphs, ks, batches)
    feeds = {}
    for g, k, b in items:  # open every session (and make every feed) before any timing
        g.session(k)
        feeds[(g.name, k, b)] = {C.INPUT_IMAGES: inputs[b]} | ({} if k is None else {C.INPUT_K: np.zeros(k, np.float32)})

    def run_once(item):
        g, k, b = item
        return g.session(k).run(feeds[(g.name, k, b)])

    timings = interleaved(items, run_once, runs, warmup, progress)
    counts = {}
    for (g, k, b), seconds in timings.samples.items():
        g.samples[(k, b)] = seconds
        if C.OUTPUT_COUNTS in timings.last[(g, k, b)]:
            counts[(g.name, k, b)] = timings.last[(g, k, b)][C.OUTPUT_COUNTS]
    return counts


def _stats(samples: list[float], batch: int, gflops: float) -> dict:
    ms = np.asarray(samples) * 1e3
    med = float(np.median(ms))
    return {"median_ms": med, "p90_ms": float(np.percentile(ms, 90)), "images_per_s": batch * 1e3 / med,
            "gflops": gflops, "samples_ms": [round(float(v), 4) for v in ms]}


def _gflops(g: Graph, k: int | None, counts) -> float:
    arch = F.arch_from_meta(g.meta)
    if g.name == "dense":
        return F.dense_flops(arch) / 1e9
    if g.name == "ideal":
        return F.ideal_flops(arch, k) / 1e9
    if g.meta.get("mode") == "trimmed" and counts is not None:
        return F.trimmed_flops(arch, counts) / 1e9
    return F.padded_flops(arch, k) / 1e9


def report_rows(graphs: list[Graph], ks: list[int], batches: list[int], counts: dict) -> list[dict]:
    by = {g.name: g for g in graphs}
    rows = []
    for batch in batches:
        for k in ks:
            row = {"k": k, "batch": batch}
            for name in ("ats", "dense", "ideal", "fp32"):
                g = by.get(name)
                key = (None if name == "dense" else k, batch)
                row[name] = None if g is None else _stats(g.samples[key], batch, _gflops(g, k, counts.get((name, k, batch))))
            a = np.asarray(row["ats"]["samples_ms"])
            d, i, f = (np.asarray(row[n]["samples_ms"]) if row[n] else None for n in ("dense", "ideal", "fp32"))
            # Ratios are paired per round (the two runs were seconds apart), then the median is
            # taken: on a shared machine that cancels drift better than a ratio of medians.
            row["speedup_vs_dense"] = float(np.median(d / a)) if d is not None else None
            row["ideal_speedup_vs_dense"] = float(np.median(d / i)) if d is not None and i is not None else None
            row["fraction_of_ideal"] = float(np.median(i / a)) if i is not None else None
            row["speedup_vs_fp32"] = float(np.median(f / a)) if f is not None else None
            rows.append(row)
    return rows


def bench(path: str | Path, ks: list[int] | None = None, batches: list[int] | None = None, backend: str = "ort",
          threads: int | None = None, runs: int = 10, warmup: int = 2, baseline: str | Path | None = None,
          ideal: bool = False, dense: bool = True, checkpoint: str | None = None, graphs_dir: str | Path | None = None,
          progress: Callable[[str], None] = lambda m: None, plugins: str | Path | None = None,
          fp32: str | Path | None = None) -> dict:
    """``plugins``: the ORT op library for a plugin-form FILE (only FILE uses it). ``fp32``: the
    fp32 file an fp16/int8 FILE was made from, timed next to it at the same K."""
    if backend not in BENCH_BACKENDS:
        raise UsageError(f"bench times the {', '.join(BENCH_BACKENDS)} backend; --backend {backend!r} is not one "
                         "(run `tscli run --backend ...` to use it)")
    if runs < 1 or warmup < 0:
        raise UsageError(f"--runs {runs} / --warmup {warmup} invalid; need runs >= 1 and warmup >= 0")
    batches = batches or [1, 8]
    if any(b < 1 for b in batches):
        raise UsageError(f"bad --batch {batches}; batch sizes must be >= 1")
    ats = _open(path, threads, "ats", str(plugins) if plugins is not None else None)
    ks = check_ks(ats.meta, ks)
    graphs = [ats]
    if fp32 is not None:
        graphs.append(_open(fp32, threads, "fp32"))
        _check_fp32(ats.meta, graphs[-1].meta, str(fp32))
    with tempfile.TemporaryDirectory(prefix="tscli-bench-") as tmp:
        folder = Path(graphs_dir or tmp)
        if baseline is not None:
            graphs.append(_open(baseline, threads, "dense"))
            _check_baseline(ats.meta, graphs[-1].meta, str(baseline))
        elif dense:
            graphs.append(_reference("dense", ats.meta, folder, checkpoint, threads, progress))
        if ideal:
            graphs.append(_reference("ideal", ats.meta, folder, checkpoint, threads, progress))
        counts = measure(graphs, ks, batches, runs, warmup, progress)
    by = {g.name: g for g in graphs}
    return {
        "schema": SCHEMA, "file": str(path), "model": ats.meta.get("model"), "mode": ats.meta.get("mode", "padded"),
        "backend": backend, "provider": ats.backend.provider, "threads": threads, "runs": runs, "warmup": warmup,
        "form": ats.meta.get("form", "plain"), "plugins": ats.plugins,
        "baseline": str(baseline) if baseline is not None else ("exported" if "dense" in by else None),
        "ideal": "exported" if ideal else None,
        "precision": ats.meta.get("precision", "fp32"), "fp32": str(fp32) if fp32 is not None else None,
        "rows": report_rows(graphs, ks, batches, counts),
    }
