"""``tscli tune``: sweep K on this device, measure latency and accuracy, choose K, write a profile.

Accuracy: top-1 against the folder's labels when it is an ImageFolder (class sub-folders; a class
maps to the model's class of the same name when the file has label names, else by sorted
position), otherwise agreement of the top-1 with the max_k output; the totals (correct / images)
are kept beside the fraction. Latency: ``runs`` interleaved rounds (every K once per round,
rotating order) on ``batch`` images, each K in its own session with K pinned, as
``runtime.load`` runs it; per K the median and its p10-p90 band.

What "faster" means: rounds are interleaved, so each round gives a paired ratio between two K
(latency of one over the other, measured moments apart). A K is only called faster than another
when the p10-p90 band of those per-round ratios lies wholly below 1 (it was faster in at least
90 % of the rounds), with at least MIN_ROUNDS rounds; a difference of medians inside the noise
is not a speed-up. Each row says whether its K is faster than the grid's largest K.

Choice: with ``budget_ms``, the most accurate K whose median latency fits (ties: the lower
median). With ``max_drop`` (percentage points of accuracy below the max_k accuracy; 1.0 by
default): among the K within the drop, those measurably faster than the largest of them; of
these, the fastest, or a more accurate one that the fastest is not measurably faster than; when
none is measurably faster, the largest K within the drop is kept. A budget no K meets is an
error that names the fastest K. The reason for the choice is a sentence in the report and the
profile (``run --k auto`` repeats it).

Outputs: the profile (runtime/device_profiles.py; merged into the store), ``<stem>.md`` (the
table) and ``<stem>.png`` (accuracy and latency bands vs K, the budget or max-drop line, the
chosen K) next to the store. JSON report schema ``tscli.tune/2``:
{"schema", "file", "model", "data", "labels", "images", "batch", "runs", "fingerprint",
 "objective" (with "reason"), "chosen_k", "accuracy_kind", "reference_k", "table": [{"k",
 "median_ms", "p10_ms", "p90_ms", "samples_ms", "vs_reference": {"k", "median", "p10", "p90"},
 "faster", "accuracy", "correct", "total", "gflops", "gmacs"}], "plugins", "profile_store",
 "markdown", "plot"}; "plugins" is the ORT op library a plugin-form file was timed with, or null.
"""

from __future__ import annotations

import datetime as _dt
import importlib.util
from pathlib import Path
from typing import Callable

import numpy as np

from .. import contract as C
from ..data.digits import read_imagefolder
from ..errors import InputError, UsageError
from ..files import atomic_path, check_output_file
from ..runtime import device_profiles as P
from ..runtime import flops as F
from ..runtime.images import images_in
from ..runtime.ort.session import OrtBackend
from ..runtime.preprocess import preprocess
from .timing import interleaved
from .tune_report import markdown, plot

SCHEMA = "tscli.tune/2"
MIN_ROUNDS = 5  # fewer interleaved rounds than this: no K is called faster than another
LABEL_MODES = ("auto", "ImageFolder", "none")
EVAL_BATCH = 64  # images per inference when measuring accuracy (not the latency batch)


def default_grid(max_k: int) -> list[int]:
    return sorted({max(1, round(max_k * f)) for f in (1, 7 / 8, 3 / 4, 5 / 8, 1 / 2, 3 / 8, 1 / 4, 1 / 8)}, reverse=True)


def load_data(data: str | Path, labels: str, meta: dict, limit: int | None):
    """-> (image files, label indices or None, 'top1' | 'agreement'). Images are read later, a
    batch at a time (memory stays bounded whatever the size of the folder)."""
    if labels not in LABEL_MODES:
        raise UsageError(f"unknown --labels {labels!r}; valid: {', '.join(LABEL_MODES)}")
    folder = Path(data)
    if not folder.is_dir():
        raise InputError(f"--data {str(folder)!r} is not a folder")
    is_folder = any(p.is_dir() for p in folder.iterdir())
    if labels == "ImageFolder" or (labels == "auto" and is_folder):
        files, y, classes = read_imagefolder(folder)
        names = meta.get("label_names")
        if isinstance(names, list) and all(c in names for c in classes):
            y = np.asarray([names.index(classes[i]) for i in y], np.int64)
        elif len(classes) > int(meta["num_classes"]):
            raise InputError(f"{len(classes)} class folders under {str(folder)!r}, but the model has {meta['num_classes']} classes")
    else:
        files, y = images_in(folder), None
    if limit:
        order = np.random.default_rng(0).permutation(len(files))[:limit]  # a fixed, class-mixed subset
        files = [files[i] for i in sorted(order)]
        y = None if y is None else y[sorted(order)]
    return files, y, ("top1" if y is not None else "agreement")


def _predict(backend: OrtBackend, files: list[Path], meta: dict, ks: list[int],
             progress) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Top-1 and kept counts per K; each batch of images is read once and run at every K."""
    tops: dict[int, list] = {k: [] for k in ks}
    counts: dict[int, list] = {k: [] for k in ks}
    for lo in range(0, len(files), EVAL_BATCH):
        progress(f"accuracy at {len(ks)} K values: images {lo + 1}-{min(lo + EVAL_BATCH, len(files))} of {len(files)}")
        x = preprocess([str(f) for f in files[lo:lo + EVAL_BATCH]], meta)
        for k in ks:
            out = backend.run({C.INPUT_IMAGES: x, C.INPUT_K: np.zeros(k, np.float32)})
            tops[k].append(out[C.OUTPUT_LOGITS].argmax(-1))
            counts[k].append(out[C.OUTPUT_COUNTS])
    return {k: (np.concatenate(tops[k]), np.concatenate(counts[k])) for k in ks}


def _latency(path: str | Path, threads: int | None, x: np.ndarray, ks: list[int], runs: int, warmup: int,
             progress, plugins: str | Path | None = None) -> dict[int, list[float]]:
    """Milliseconds per K. Each K runs in its own session with K pinned, as ``runtime.load(FILE,
    k)`` runs it (a few per cent faster at batch 1 than a free K), interleaved (tools/timing.py)."""
    progress(f"opening {len(ks)} sessions (one per K, K pinned)")
    sessions = {k: OrtBackend(path, threads=threads, fixed_dims={C.DIM_K: k}, stop_spinning=True, plugins=plugins)
                for k in ks}
    feeds = {k: {C.INPUT_IMAGES: x, C.INPUT_K: np.zeros(k, np.float32)} for k in ks}
    timings = interleaved(ks, lambda k: sessions[k].run(feeds[k]), runs, warmup, progress, label="latency round")
    return {k: list(timings.ms(k)) for k in ks}


def check_objective(budget_ms: float | None, max_drop: float | None) -> None:
    """The objective options alone (tune calls it before measuring anything)."""
    if budget_ms is not None and max_drop is not None:
        raise UsageError("give either --budget-ms or --max-drop, not both")
    if budget_ms is not None and budget_ms <= 0:
        raise UsageError(f"--budget-ms {budget_ms} must be positive")
    if max_drop is not None and max_drop < 0:
        raise UsageError(f"--max-drop {max_drop} must be >= 0 (percentage points of accuracy)")


def ratio_band(a: dict, b: dict) -> dict | None:
    """Per-round latency ratios a / b (the rounds are interleaved, so each pair was measured moments
    apart): their median and p10-p90 band, or None without paired samples."""
    sa, sb = a.get("samples_ms"), b.get("samples_ms")
    if not sa or not sb or len(sa) != len(sb):
        return None
    r = np.asarray(sa, np.float64) / np.asarray(sb, np.float64)
    return {"k": int(b["k"]), "median": float(np.median(r)), "p10": float(np.percentile(r, 10)),
            "p90": float(np.percentile(r, 90))}


def faster(a: dict, b: dict) -> bool:
    """Is K=a measurably faster than K=b? With paired samples: at least MIN_ROUNDS rounds and the
    p10-p90 band of the per-round ratios a/b wholly below 1. Rows without samples (a table written
    by hand) compare their medians."""
    band = ratio_band(a, b)
    if band is None:
        return a["median_ms"] < b["median_ms"]
    return len(a["samples_ms"]) >= MIN_ROUNDS and band["p90"] < 1.0


def _timing(r: dict) -> str:
    band = f" (p10-p90 {r['p10_ms']:.2f}-{r['p90_ms']:.2f})" if "p10_ms" in r else ""
    return f"{r['median_ms']:.2f} ms{band}"


def _acc(r: dict) -> str:
    return f"{r['accuracy']:.4f}" + (f" ({r['correct']}/{r['total']})" if "correct" in r else "")


def choose(table: list[dict], budget_ms: float | None, max_drop: float | None,
           reference: dict | None = None) -> tuple[int, dict]:
    """Pick K from the measured table (rows with k, median_ms, accuracy, and samples_ms per round
    when measured). Pure logic, tested. -> (K, objective with a readable "reason").

    ``reference`` ({"k", "accuracy"}): what --max-drop is measured from, the file's max_k;
    without it, the table's largest K."""
    check_objective(budget_ms, max_drop)
    if budget_ms is not None:
        fits = [r for r in table if r["median_ms"] <= budget_ms]
        if not fits:
            fastest = min(table, key=lambda r: r["median_ms"])
            raise UsageError(f"no K meets --budget-ms {budget_ms:g}: the fastest, K={fastest['k']}, takes "
                             f"{fastest['median_ms']:.2f} ms on this device; raise the budget or use a smaller batch")
        best = max(fits, key=lambda r: (r["accuracy"], -r["median_ms"]))
        reason = (f"K={best['k']} is the most accurate K whose median latency fits {budget_ms:g} ms: accuracy {_acc(best)}, "
                  f"{_timing(best)}")
        if best.get("p90_ms", 0.0) > budget_ms:
            reason += "; its p90 is above the budget, so about 1 run in 10 takes longer"
        return int(best["k"]), {"budget_ms": budget_ms, "reason": reason}
    drop = 1.0 if max_drop is None else max_drop
    top = reference or max(table, key=lambda r: r["k"])
    ok = [r for r in table if r["accuracy"] >= top["accuracy"] - drop / 100.0 - 1e-12]
    if not ok:  # only possible when max_k is not in the grid
        best = max(table, key=lambda r: r["accuracy"])
        raise UsageError(f"no K in the grid stays within --max-drop {drop:g} points of K={top['k']} "
                         f"({top['accuracy']:.4f}); the most accurate, K={best['k']}, reaches {best['accuracy']:.4f}: "
                         "add larger K to --k-grid or allow a larger drop")
    largest = max(ok, key=lambda r: r["k"])
    quicker = [r for r in ok if r is not largest and faster(r, largest)]
    objective = {"max_drop_points": drop, "reference_k": int(top["k"]), "reference_accuracy": top["accuracy"]}
    within = f"within {drop:g} points of K={top['k']}'s accuracy {top['accuracy']:.4f}"
    if not quicker:
        objective["reason"] = (f"no K {within} was measurably faster than K={largest['k']} (the p10-p90 band of the "
                               f"per-round latency ratios reaches 1), so the largest K within the drop, K={largest['k']}, "
                               f"is kept: accuracy {_acc(largest)}, {_timing(largest)}")
        return int(largest["k"]), objective
    fastest = min(quicker, key=lambda r: r["median_ms"])
    # K that the fastest is not measurably faster than are as fast, as far as can be told: the most accurate of them
    best = max((r for r in quicker if r is fastest or not faster(fastest, r)), key=lambda r: (r["accuracy"], r["k"]))
    band = ratio_band(best, largest)
    speed = (f", {band['median']:.2f}x the latency of K={largest['k']} (p10-p90 {band['p10']:.2f}-{band['p90']:.2f})"
             if band else f", faster than K={largest['k']} ({largest['median_ms']:.2f} ms)")
    objective["reason"] = (f"K={best['k']} is the fastest K {within}, as far as the spread tells: accuracy {_acc(best)}, "
                           f"{_timing(best)}{speed}")
    return int(best["k"]), objective


def measure(path: str | Path, data: str | Path, labels: str = "auto", k_grid: list[int] | None = None, batch: int = 1,
            threads: int | None = None, runs: int = 30, warmup: int = 2, limit: int | None = None,
            progress: Callable[[str], None] = lambda m: None,
            plugins: str | Path | None = None) -> tuple[dict, OrtBackend, list[dict], dict, str, int]:
    """-> (metadata, session, table, reference {"k": max_k, "accuracy"}, accuracy kind, images).
    ``plugins``: the ORT op library a plugin-form file is deployed with (timed and evaluated with it)."""
    backend = OrtBackend(path, threads=threads, plugins=plugins)
    meta = C.decode_metadata(backend.metadata_props)
    if meta.get("family") != "ats" or not meta.get("max_k"):
        raise UsageError(f"tune sweeps K of an ATS file; {str(path)!r} is {meta.get('family')!r}")
    max_k = int(meta["max_k"])
    ks = sorted({C.check_k(k, max_k, "--k-grid") for k in k_grid or default_grid(max_k)}, reverse=True)
    if batch < 1 or runs < 1:
        raise UsageError(f"--batch {batch} / --runs {runs} must be >= 1")
    progress("reading images")
    files, y, kind = load_data(data, labels, meta, limit)
    if len(files) < batch:
        raise InputError(f"{len(files)} images under {str(data)!r}, fewer than --batch {batch}")
    # max_k is always measured: it is the reference of --max-drop, and of agreement without labels.
    preds = _predict(backend, files, meta, sorted(set(ks) | {max_k}, reverse=True), progress)
    truth = y if y is not None else preds[max_k][0]
    x = preprocess([str(f) for f in files[:batch]], meta)
    times = _latency(path, threads, x, ks, runs, warmup, progress, plugins)
    arch = F.arch_from_meta(meta)
    table = []
    for k in ks:
        top1, counts = preds[k]
        flops = F.trimmed_flops(arch, counts) if meta.get("mode") == "trimmed" else F.padded_flops(arch, k)
        ms = np.asarray(times[k])
        table.append({"k": k, "median_ms": float(np.median(ms)), "p10_ms": float(np.percentile(ms, 10)),
                      "p90_ms": float(np.percentile(ms, 90)), "samples_ms": [round(float(v), 4) for v in ms],
                      "accuracy": float(np.mean(top1 == truth)), "correct": int(np.sum(top1 == truth)),
                      "total": int(len(truth)), "gflops": flops / 1e9, "gmacs": flops / F.FLOPS_PER_MAC / 1e9})
    largest = table[0]  # ks descending: the reference of every speed comparison
    for row in table:
        row["vs_reference"] = ratio_band(row, largest)
        row["faster"] = row is not largest and faster(row, largest)
    reference = {"k": max_k, "accuracy": float(np.mean(preds[max_k][0] == truth))}
    return meta, backend, table, reference, kind, len(files)


def tune(path: str | Path, data: str | Path, labels: str = "auto", budget_ms: float | None = None,
         max_drop: float | None = None, k_grid: list[int] | None = None, batch: int = 1, threads: int | None = None,
         runs: int = 30, warmup: int = 2, limit: int | None = None, output: str | Path | None = None,
         progress: Callable[[str], None] = lambda m: None, plugins: str | Path | None = None) -> dict:
    """Measure, choose K, and write the profile (+ .md and .png beside the store)."""
    check_objective(budget_ms, max_drop)
    store = Path(output) if output else P.default_store(path)
    if store.suffix != ".json":  # its .md and .png go beside it: -o x.md would overwrite the store
        raise UsageError(f"-o {str(store)!r} must end in .json (the profile store; its .md table and .png plot "
                         "are written beside it)")
    check_output_file(store, "-o", inputs=[path])
    meta, backend, table, reference, kind, n = measure(path, data, labels, k_grid, batch, threads, runs, warmup,
                                                       limit, progress, plugins)
    chosen, objective = choose(table, budget_ms, max_drop, reference)  # raises before anything is written
    library = str(plugins) if plugins is not None else None
    fp = P.fingerprint("ort", backend.provider)
    profile = {"fingerprint": fp, "model": P.model_identity(meta), "chosen_k": chosen, "batch": batch,
               "objective": objective, "accuracy_kind": kind, "table": table,
               "plugins": library,
               "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    report = {"schema": SCHEMA, "file": str(path), "model": meta.get("model"), "data": str(data), "labels": labels,
              "images": n, "batch": batch, "runs": runs, "fingerprint": fp, "objective": objective,
              "chosen_k": chosen, "accuracy_kind": kind, "reference_k": int(table[0]["k"]), "table": table,
              "plugins": library}
    P.add_profile(store, profile)
    md = store.with_suffix(".md")
    with atomic_path(md, suffix=".md") as tmp:
        tmp.write_text(markdown(report))
    # The plot is a convenience: without matplotlib (a deploy host) the profile and table still count.
    png = plot(report, store.with_suffix(".png")) if importlib.util.find_spec("matplotlib") else None
    report.update(profile_store=str(store), markdown=str(md), plot=str(png) if png else None)
    return report
