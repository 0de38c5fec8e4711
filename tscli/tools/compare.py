"""``tscli compare``: token-reduction methods side by side on one device (ONNX Runtime).

Every FILE is an exported classification model of a family listed in METHODS, and all are the
same architecture with the same weights (one checkpoint, or one random seed), so that they
differ only in how they reduce tokens. For each file and each of its budgets:

- GFLOPs: analytic (runtime/flops.py), as the family computes them;
- latency at each batch size: median of interleaved rounds (tools/timing.py), every (file,
  budget) in its own session with the budget pinned as ``runtime.load`` pins it and spinning
  stopped after each run; speed-up over the dense model with the same weights = the median of
  the per-round ratios (paired samples, as ``tscli bench``);
- quality: top-1 accuracy on a labelled folder (an ImageFolder: class sub-folders, read as
  ``tscli tune`` reads it) and top-1 agreement with the dense model on the same images (a plain
  folder, or without --data the scikit-image samples: agreement only).

The dense model is a FILE of family ``dense``; without one it is exported on the fly from the
files' metadata (needs the export extras, and --checkpoint for checkpoint weights).

Families plug in through METHODS: what the family is called, the name of its load-time budget
(the command-line option and the Runner keyword: ``k`` for ATS and top-K; None when the budget
was fixed at export, as ToMe's r), how a value is read and checked, its default values, and its
GFLOPs. The rest of compare never looks at a family.

Report (schema ``tscli.compare/1``): {"schema", "model" (the dense model's name), "weights", "provider", "threads", "runs",
"warmup", "batches", "data", "images", "quality": "top1" | "agreement", "dense": file,
"rows": [{"file", "model", "family", "method", "budget": {"name", "value"} | null, "point",
"gflops", "accuracy" (null without labels), "agreement", "latency": {"<batch>": {"median_ms",
"p90_ms", "speedup_vs_dense"}}}], "markdown", "plot"}; compare_report.py writes the files.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .. import contract as C
from ..errors import MissingDependency, UsageError
from ..runtime import flops as F
from ..runtime.ort.session import OrtBackend
from ..runtime.preprocess import preprocess
from ..runtime.runner import Runner
from .timing import interleaved
from .tune import load_data

SCHEMA = "tscli.compare/1"
EVAL_BATCH = 64
# What makes two files "the same model with the same weights" (preprocessing included).
SAME_MODEL_KEYS = ("input_size", "patch_size", "embed_dim", "depth", "num_heads", "num_classes", "mean", "std",
                   "crop_pct", "interpolation", "weights")


@dataclass(frozen=True)
class Method:
    """What compare needs from a family (see the module docstring)."""

    name: Callable[[dict], str]
    gflops: Callable[[dict, object, np.ndarray | None], float]  # (meta, budget, kept_counts or None)
    budget: str | None = None  # load-time budget: --<budget> and the Runner keyword; None = fixed at export
    parse: Callable[[str], object] = int
    check: Callable[[dict, object], object] = lambda meta, value: value
    defaults: Callable[[dict], list] = lambda meta: [None]
    point: Callable[[dict, object], str] = lambda meta, value: ""  # a budget as a short label
    dims: Callable[[dict, object], dict] = lambda meta, value: {}  # named dims pinned in the session for a budget


def _ats_gflops(meta: dict, k: int, counts: np.ndarray | None) -> float:
    arch = F.arch_from_meta(meta)
    if meta.get("mode") == "trimmed" and counts is not None and len(counts):
        return F.trimmed_flops(arch, counts) / 1e9
    return F.padded_flops(arch, k) / 1e9


METHODS: dict[str, Method] = {
    C.FAMILY_DENSE: Method(name=lambda meta: "dense", gflops=lambda meta, _, __: F.gflops(meta, graph="dense")),
    C.FAMILY_ATS: Method(
        name=lambda meta: ("top-K" if meta.get("scheme") == C.TOPK else "ATS")
        + (" trimmed" if meta.get("mode") == "trimmed" else ""),
        gflops=_ats_gflops, budget="k", check=lambda meta, k: C.check_k(k, meta["max_k"], "--k"),
        defaults=lambda meta: C.default_ks(meta["max_k"]), point=lambda meta, k: f"K={k}",
        dims=lambda meta, k: {C.DIM_K: k}),
    C.FAMILY_TOME: Method(name=lambda meta: "ToMe", gflops=lambda meta, _, __: F.gflops(meta),
                          point=lambda meta, _: f"r={meta['r']}"),
}


def _rate_counts(meta: dict, rate: float) -> list[int]:
    return C.check_rate(rate, meta)[1]


for _family, _name in ((C.FAMILY_DYNAMICVIT, "DynamicViT"), (C.FAMILY_EVIT, "EViT")):
    METHODS[_family] = Method(
        name=lambda meta, _name=_name: _name,
        gflops=lambda meta, rate, _: F.reduction_flops(F.arch_from_meta(meta), meta["family"],
                                                       _rate_counts(meta, rate)) / 1e9,
        budget="rate", parse=float, check=lambda meta, rate: C.check_rate(rate, meta)[0],
        defaults=lambda meta: [float(meta["rate"])], point=lambda meta, rate: f"rate={rate:g}",
        dims=lambda meta, rate: {C.keep_dim(s): c for s, c in enumerate(_rate_counts(meta, rate))})


@dataclass(eq=False)  # identity hash: entries are keys of the timing loop
class Entry:
    path: Path
    meta: dict
    method: Method
    budget: object
    runner: Runner
    top1: np.ndarray | None = None
    counts: np.ndarray | None = None
    samples: dict = field(default_factory=dict)  # batch -> [seconds]

    @property
    def is_dense(self) -> bool:
        return self.meta.get("family") == C.FAMILY_DENSE


def read_files(files: list[str | Path]) -> list[tuple[Path, dict]]:
    """Open every file once (a missing or foreign file fails here) and check they are comparable."""
    if not files:
        raise UsageError("give at least one exported model FILE")
    out = []
    for f in files:
        meta = C.decode_metadata(OrtBackend(f, threads=1).metadata_props)
        if "model" not in meta:
            raise UsageError(f"{str(f)!r} was not exported by tscli (no tscli.* metadata)")
        if meta.get("family") not in METHODS:
            raise UsageError(f"compare takes classification files of the families {', '.join(METHODS)}; "
                             f"{str(f)!r} is {meta.get('family')!r}")
        out.append((Path(f), meta))
    first, fmeta = out[0]
    for path, meta in out[1:]:
        for key in SAME_MODEL_KEYS:
            if meta.get(key) != fmeta.get(key):
                raise UsageError(f"{str(path)!r} and {str(first)!r} are not the same model with the same weights "
                                 f"({key} {meta.get(key)!r} vs {fmeta.get(key)!r}); compare needs one architecture "
                                 "and one set of weights")
    return out


def _split_spec(text: str, files: list[Path], option: str) -> tuple[Path | None, list[str]]:
    """'99,48' (every file) or 'FILE=99,48' (that file: as given, or its name) -> (file or None, values)."""
    target, _, values = text.rpartition("=")
    parts = [p.strip() for p in values.split(",") if p.strip()]
    if not parts:
        raise UsageError(f"bad --{option} {text!r}; give values like 99,48 (every file) or FILE=99,48 (one file)")
    if not target:
        return None, parts
    hits = [f for f in files if str(f) == target or f.name == target]
    if not hits:
        raise UsageError(f"{target!r} in {text!r} is not one of the FILEs ({', '.join(str(f) for f in files)})")
    return hits[0], parts


def resolve_budgets(opened: list[tuple[Path, dict]], specs: dict[str, list[str] | None]) -> list[list]:
    """Per file, the budgets to run: its own values, else the values given for every file, else
    its family's defaults; every value read and checked by the family."""
    files = [p for p, _ in opened]
    per_file: dict[tuple[str, Path], list[str]] = {}
    common: dict[str, list[str]] = {}
    for name, texts in specs.items():
        if not texts:
            continue
        takers = [p for p, m in opened if METHODS[m["family"]].budget == name]
        if not takers:
            raise UsageError(f"--{name} given, but no FILE takes a {name} (files: "
                             + ", ".join(f"{p.name} ({m['family']})" for p, m in opened) + ")")
        for text in texts:
            target, values = _split_spec(str(text), files, name)
            if target is not None and target not in takers:
                raise UsageError(f"--{name} {text!r}: {str(target)!r} takes no {name}")
            if target is None:
                common.setdefault(name, []).extend(values)
            else:
                per_file.setdefault((name, target), []).extend(values)
    out = []
    for path, meta in opened:
        method = METHODS[meta["family"]]
        if method.budget is None:
            out.append([None])
            continue
        texts = per_file.get((method.budget, path)) or common.get(method.budget)
        if not texts:
            out.append(method.defaults(meta))
            continue
        values = []
        for text in texts:
            try:
                value = method.parse(text)
            except ValueError:
                raise UsageError(f"bad --{method.budget} {text!r} for {path.name}; give numbers like 99,48") from None
            values.append(method.check(meta, value))
        out.append(list(dict.fromkeys(values)))
    return out


def check_batches(batches: list[int]) -> list[int]:
    if not batches or any(b < 1 for b in batches):
        raise UsageError(f"bad --batch {','.join(map(str, batches))}; give batch sizes >= 1, like 1,8")
    return list(dict.fromkeys(batches))


def _dense_file(opened, folder: Path, checkpoint: str | None) -> tuple[Path, dict]:
    dense = [(p, m) for p, m in opened if m["family"] == C.FAMILY_DENSE]
    if dense:
        return dense[0]
    meta = opened[0][1]
    try:
        from ..export.reference_graphs import export_bench_graph  # torch: only when a graph is exported
    except ImportError as exc:
        raise MissingDependency(f"no dense FILE given, and exporting one needs the export extras ({exc.name} is "
                                "missing): add the dense model with the same weights as a FILE "
                                "(tscli export <dense model> with the same --checkpoint/--seed)") from None
    path = export_bench_graph("dense", meta, folder / f"{meta['model']}.dense.onnx", checkpoint)
    return path, C.decode_metadata(OrtBackend(path, threads=1).metadata_props)


def quality_inputs(meta: dict, data: str | Path | None, limit: int | None):
    """-> (images, labels or None, where they came from)."""
    if data is None:
        from ..data.samples import sample_images

        return preprocess([a for _, a in sample_images(limit)], meta), None, "scikit-image samples"
    files, y, _ = load_data(data, "auto", meta, limit)  # image files, read a batch at a time below
    return files, y, str(data)


def _evaluate(entry: Entry, x) -> None:
    """x: preprocessed float32 NCHW, or image files (read EVAL_BATCH at a time)."""
    tops, counts = [], []
    for i in range(0, len(x), EVAL_BATCH):
        chunk = x[i:i + EVAL_BATCH]
        if not isinstance(chunk, np.ndarray):
            chunk = preprocess([str(p) for p in chunk], entry.meta)
        out = entry.runner.infer(chunk)
        tops.append(out[C.OUTPUT_LOGITS].argmax(-1))
        counts.append(out[C.OUTPUT_COUNTS])
    entry.top1, entry.counts = np.concatenate(tops), np.concatenate(counts)


def _open_entry(path: Path, meta: dict, budget, threads: int | None) -> Entry:
    method = METHODS[meta["family"]]
    backend = OrtBackend(path, threads=threads, fixed_dims=method.dims(meta, budget) if method.budget else None,
                         stop_spinning=True)
    runner = Runner(backend, **({method.budget: budget} if method.budget else {}))
    return Entry(path, meta, method, budget, runner)


def _row(e: Entry, dense: Entry, labels: np.ndarray | None, batches: list[int]) -> dict:
    latency = {}
    for b in batches:
        ms, d = np.asarray(e.samples[b]) * 1e3, np.asarray(dense.samples[b]) * 1e3
        latency[str(b)] = {"median_ms": float(np.median(ms)), "p90_ms": float(np.percentile(ms, 90)),
                           "speedup_vs_dense": float(np.median(d / ms))}
    m = e.method
    return {"file": str(e.path), "model": e.meta["model"], "family": e.meta["family"], "method": m.name(e.meta),
            "budget": {"name": m.budget, "value": e.budget} if m.budget else None, "point": m.point(e.meta, e.budget),
            "gflops": float(m.gflops(e.meta, e.budget, e.counts)),
            "accuracy": None if labels is None else float(np.mean(e.top1 == labels)),
            "agreement": float(np.mean(e.top1 == dense.top1)), "latency": latency}


def compare(files: list[str | Path], budgets: dict[str, list[str] | None] | None = None, data: str | Path | None = None,
            batches: list[int] | None = None, threads: int | None = None, runs: int = 10, warmup: int = 2,
            limit: int | None = None, checkpoint: str | None = None,
            progress: Callable[[str], None] = lambda m: None) -> dict:
    """Measure every (file, budget); returns the report (compare_report.write_outputs writes it)."""
    batches = check_batches(batches or [1, 8])
    if runs < 1 or warmup < 0:
        raise UsageError(f"--runs {runs} / --warmup {warmup} invalid; need runs >= 1 and warmup >= 0")
    if limit is not None and limit < 1:
        raise UsageError(f"--limit {limit} is invalid; give at least 1 image")
    opened = read_files(files)
    plan = resolve_budgets(opened, budgets or {})
    exported = not any(m["family"] == C.FAMILY_DENSE for _, m in opened)
    with tempfile.TemporaryDirectory(prefix="tscli-compare-") as tmp:
        if exported:
            progress("exporting the dense model with the same weights")
        dense_path, dense_meta = _dense_file(opened, Path(tmp), checkpoint)
        progress("opening sessions")
        entries = [_open_entry(p, m, b, threads) for (p, m), bs in zip(opened, plan) for b in bs]
        dense = next((e for e in entries if e.is_dense), None)
        if dense is None:
            dense = _open_entry(dense_path, dense_meta, None, threads)
            entries.insert(0, dense)
        meta = opened[0][1]
        x, labels, source = quality_inputs(meta, data, limit)
        for i, e in enumerate(entries):
            progress(f"quality {i + 1}/{len(entries)}: {e.method.name(e.meta)} {e.method.point(e.meta, e.budget)}")
            _evaluate(e, x)
        timed = x if isinstance(x, np.ndarray) else preprocess([str(p) for p in x[:max(batches)]], meta)
        reps = -(-max(batches) // len(timed))
        inputs = {b: np.concatenate([timed] * reps)[:b] for b in batches}
        items = [(e, b) for b in batches for e in entries]
        timings = interleaved(items, lambda item: item[0].runner.infer(inputs[item[1]]), runs, warmup, progress)
        for (e, b), seconds in timings.samples.items():
            e.samples[b] = seconds
        rows = [_row(e, dense, labels, batches) for e in entries]
    if exported:
        rows[0]["file"] = "exported"  # its temporary file is gone
    return {"schema": SCHEMA, "model": dense.meta["model"], "weights": meta.get("weights"),
            "provider": dense.runner.provider, "threads": threads, "runs": runs, "warmup": warmup, "batches": batches,
            "data": source, "images": int(len(x)), "quality": "top1" if labels is not None else "agreement",
            "dense": "exported" if exported else str(dense_path), "rows": rows}
