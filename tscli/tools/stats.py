"""``tscli stats``: how many tokens a file keeps over a folder of images: K' per stage (histograms,
as in the ATS paper's figure 6), the GFLOPs each image costs on its own kept tokens, and the
means. Writes Markdown, a PNG and the JSON report (schema ``tscli.stats/1``).

- ATS: K' = the patch tokens a stage kept (kept_counts - 1) at the chosen K. Per-image GFLOPs:
  every block after a stage on that image's own K' + 1 tokens, with one CLS scoring row at the
  first stage (later stages score from their own attention, as the padded graph does): the
  image's own cost, the unit of the ATS paper's per-image GFLOPs. The padded graph always
  computes K + 1 slots: its cost, the upper bound, is shown beside.
- DoViT: the patch tokens still active after each decision layer at the chosen xi, and the
  token-pass GFLOPs (runtime/segmentation.seg_flops); images that hit the capacity are counted.

GFLOPs count 2 per multiply-add; GMACs (= GFLOPs / 2) are what papers call "GFLOPs".
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from .. import contract as C
from ..errors import UsageError
from ..files import atomic_path, check_output_file
from ..runtime import flops as F
from ..runtime import load
from ..runtime.images import images_in
from ..runtime.preprocess import preprocess
from ..runtime.runner import describe_weights
from ..runtime.segmentation import seg_gflops
from .plots import pyplot, save_figure, write_json

SCHEMA = "tscli.stats/1"


def _spread(values) -> dict:
    v = np.asarray(values, np.float64)
    return {"mean": float(v.mean()), "median": float(np.median(v)), "p10": float(np.percentile(v, 10)),
            "p90": float(np.percentile(v, 90)), "min": float(v.min()), "max": float(v.max())}


def collect(path: str | Path, data: str | Path, k: int | None = None, xi: float | None = None, limit: int | None = None,
            batch: int = 16, threads: int | None = None, progress: Callable[[str], None] = lambda m: None) -> dict:
    """Run every image under ``data`` once; -> the report (without output paths)."""
    runner = load(path, k=k, xi=xi, threads=threads)
    meta = runner.meta
    family = meta.get("family")
    if family not in (C.FAMILY_ATS, "dovit"):
        raise UsageError(f"stats counts the tokens an ATS or DoViT file keeps; {meta.get('model')} ({family}) keeps every token")
    if isinstance(batch, bool) or batch < 1:
        raise UsageError(f"--batch {batch} is invalid; give a number >= 1")
    files = images_in(data, limit)
    seg = family == "dovit"
    step = 1 if seg else batch  # segmentation inputs are large
    counts, saturated = [], 0
    for lo in range(0, len(files), step):
        progress(f"images {lo + 1}-{min(lo + step, len(files))} of {len(files)}")
        out = runner.infer(preprocess([str(f) for f in files[lo:lo + step]], meta))
        counts.append(np.asarray(out[C.OUTPUT_COUNTS], np.int64))
        saturated += int(np.sum(out.get(C.OUTPUT_SATURATED, 0)))
    counts = np.concatenate(counts)
    if seg:
        tokens = counts  # active patch tokens after each decision layer
        per_image = [seg_gflops(meta, row.tolist()) for row in counts]
        upper, dense = seg_gflops(meta), seg_gflops(dict(meta, family="seg"))
    else:
        tokens = counts - 1  # K': patch tokens kept (the counts include CLS)
        arch = F.arch_from_meta(meta)
        per_image = [F.ats_flops(arch, row, score_rows=1) / 1e9 for row in counts]
        upper, dense = F.padded_flops(arch, runner.k) / 1e9, F.dense_flops(arch) / 1e9
    blocks = list(meta.get("stages") or [])
    stages = [{"stage": i + 1, "block": blocks[i] if i < len(blocks) else None, **_spread(tokens[:, i])}
              for i in range(tokens.shape[1])]
    gflops = dict(_spread(per_image), padded=upper, dense=dense)
    return {
        "schema": SCHEMA, "file": str(path), "data": str(data), "model": meta.get("model"), "family": family,
        "k": runner.k, "xi": runner.xi, "capacity": meta.get("max_keep"), "images": len(files),
        "weights": describe_weights(meta), "random_weights": runner.random_weights,
        "unit": "active patch tokens after the decision layer" if seg else "K' (patch tokens the stage kept)",
        "patches": int(np.prod(meta.get("grid") or [0])) if seg else F.arch_from_meta(meta).num_patches,
        "stages": stages, "gflops": gflops, "gmacs": {key: v / F.FLOPS_PER_MAC for key, v in gflops.items()},
        "saturated": saturated if seg else None,
        "per_image": [{"image": str(f), "tokens": t.tolist(), "gflops": g} for f, t, g in zip(files, tokens, per_image)],
    }


def markdown(report: dict) -> str:
    what = f"K={report['k']}" if report["family"] == C.FAMILY_ATS else f"xi={report['xi']}, C={report['capacity']}"
    g, m = report["gflops"], report["gmacs"]
    lines = [f"# tscli stats: {report['model']} at {what}", "",
             f"- data: {report['data']} ({report['images']} images); weights: {report['weights']}",
             f"- per stage: {report['unit']}, of {report['patches']} patches",
             "- GFLOPs count 2 per multiply-add; GMACs are the multiply-adds (what papers call \"GFLOPs\")"]
    if report["saturated"] is not None:
        lines.append(f"- {report['saturated']} of {report['images']} images hit the capacity C={report['capacity']}")
    lines += ["", "| stage | block | mean | median | p10-p90 | min-max |", "|---:|---:|---:|---:|---:|---:|"]
    for s in report["stages"]:
        lines.append(f"| {s['stage']} | {s['block']} | {s['mean']:.1f} | {s['median']:.0f} | {s['p10']:.0f}-{s['p90']:.0f} "
                     f"| {s['min']:.0f}-{s['max']:.0f} |")
    padded = "padded graph at K" if report["family"] == C.FAMILY_ATS else "padded graph at C"
    lines += ["", "| cost per image | GFLOPs | GMACs (papers' \"GFLOPs\") |", "|---|---:|---:|",
              f"| own kept tokens: mean | {g['mean']:.4g} | {m['mean']:.4g} |",
              f"| own kept tokens: median (p10-p90) | {g['median']:.4g} ({g['p10']:.4g}-{g['p90']:.4g}) | {m['median']:.4g} |",
              f"| own kept tokens: min-max | {g['min']:.4g}-{g['max']:.4g} | {m['min']:.4g}-{m['max']:.4g} |",
              f"| {padded} (what it computes) | {g['padded']:.4g} | {m['padded']:.4g} |",
              f"| dense | {g['dense']:.4g} | {m['dense']:.4g} |"]
    return "\n".join(lines) + "\n"


def _bins(values: np.ndarray) -> np.ndarray | int:
    lo, hi = int(np.floor(values.min())), int(np.ceil(values.max()))
    return np.arange(lo, hi + 2) - 0.5 if hi - lo <= 60 else 30


def plot(report: dict, path: Path) -> Path:
    """One K' histogram per stage and the per-image GFLOPs histogram, means marked."""
    plt = pyplot()
    tokens = np.asarray([p["tokens"] for p in report["per_image"]], np.float64)
    n = len(report["stages"]) + 1
    cols = min(5, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 2.6, rows * 2.3 + 0.6), dpi=110, squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    short = "K'" if report["family"] == C.FAMILY_ATS else "active"
    for ax, s in zip(axes.flat, report["stages"]):
        ax.hist(tokens[:, s["stage"] - 1], bins=_bins(tokens[:, s["stage"] - 1]), color="tab:blue")
        ax.axvline(s["mean"], color="black", linestyle="--", linewidth=1)
        ax.set_title(f"stage {s['stage']} (block {s['block']}): mean {s['mean']:.1f}", fontsize=8)
        ax.set_xlabel(short, fontsize=8)
        ax.tick_params(labelsize=7)
    ax, g = axes.flat[n - 1], report["gflops"]
    ax.hist([p["gflops"] for p in report["per_image"]], bins=20, color="tab:green")
    ax.axvline(g["mean"], color="black", linestyle="--", linewidth=1, label=f"mean {g['mean']:.4g}")
    ax.axvline(g["padded"], color="tab:red", linestyle=":", linewidth=1, label=f"padded {g['padded']:.4g}")
    ax.set_title("GFLOPs per image (GMACs = /2)", fontsize=8)
    ax.legend(fontsize=6)
    ax.tick_params(labelsize=7)
    what = f"K={report['k']}" if report["family"] == C.FAMILY_ATS else f"xi={report['xi']}, C={report['capacity']}"
    fig.suptitle(f"{report['model']} at {what}: {report['unit']} over {report['images']} images"
                 + ("\nRANDOM weights: these counts say nothing about a trained model" if report["random_weights"] else ""),
                 fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def default_output(path: str | Path, report_k: int | None, xi: float | None) -> Path:
    p = Path(path)
    what = f"k{report_k}" if report_k is not None else f"xi{xi:g}"
    return p.with_name(f"{p.stem}.stats-{what}.md")


def stats(path: str | Path, data: str | Path, k: int | None = None, xi: float | None = None, limit: int | None = None,
          batch: int = 16, threads: int | None = None, output: str | Path | None = None,
          progress: Callable[[str], None] = lambda m: None) -> dict:
    """Collect, then write OUTPUT.md, OUTPUT.png and OUTPUT.json (default beside the file)."""
    pyplot()  # matplotlib missing: said before the images run
    if output is not None:
        if Path(output).suffix != ".md":
            raise UsageError(f"-o {str(output)!r} must end in .md (its .png and .json are written beside it)")
        check_output_file(output, "-o", inputs=[path])
    report = collect(path, data, k, xi, limit, batch, threads, progress)
    md = Path(output) if output is not None else check_output_file(default_output(path, report["k"], report["xi"]))
    with atomic_path(md, suffix=".md") as tmp:
        tmp.write_text(markdown(report))
    png = plot(report, md.with_suffix(".png"))
    report.update(markdown=str(md), plot=str(png), json=str(md.with_suffix(".json")))
    write_json(md.with_suffix(".json"), report)
    return report
