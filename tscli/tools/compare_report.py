"""The files ``tscli compare`` writes: a Markdown table and a PNG (quality against latency, one
marker per method, one point per budget), both renamed into place together only when both are
complete."""

from __future__ import annotations

import contextlib
import importlib.util
from pathlib import Path

from ..errors import require
from ..files import atomic_path

# One marker and colour per method, in the order methods first appear; dense is always a star.
_STYLES = [("o", "tab:blue"), ("s", "tab:orange"), ("^", "tab:green"), ("D", "tab:red"), ("v", "tab:purple"),
           ("P", "tab:brown"), ("X", "tab:pink"), ("<", "tab:olive")]


def quality_label(report: dict) -> str:
    return "top-1 accuracy" if report["quality"] == "top1" else "top-1 agreement with dense"


def quality(report: dict, row: dict) -> float:
    return row["accuracy"] if report["quality"] == "top1" else row["agreement"]


def markdown(report: dict) -> str:
    batches = report["batches"]
    lines = [f"# tscli compare: {report['model']} ({report['weights']})", "",
             f"- device: ONNX Runtime {report['provider']}, threads={report['threads'] or 'default'}; latency = median "
             f"of {report['runs']} interleaved rounds, speed-up = median per-round ratio to dense",
             f"- quality: {quality_label(report)} on {report['images']} images ({report['data']})",
             f"- dense baseline: {report['dense']}", ""]
    head = ["method", "budget", "GFLOPs"] + (["top-1"] if report["quality"] == "top1" else []) + ["agreement"]
    for b in batches:
        head += [f"ms @{b}", f"speed-up @{b}"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * 2 + "---:|" * (len(head) - 2)]
    for r in report["rows"]:
        cells = [r["method"], r["point"] or "-", f"{r['gflops']:.3f}"]
        cells += ([f"{r['accuracy']:.4f}"] if report["quality"] == "top1" else []) + [f"{r['agreement']:.4f}"]
        for b in batches:
            lat = r["latency"][str(b)]
            cells += [f"{lat['median_ms']:.2f}", f"{lat['speedup_vs_dense']:.2f}x"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    """One panel per batch size: quality (y) against median latency (x)."""
    matplotlib = require("matplotlib", "pip install matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batches = report["batches"]
    fig, axes = plt.subplots(1, len(batches), figsize=(5.5 * len(batches), 4.3), dpi=110, squeeze=False)
    methods = list(dict.fromkeys(r["method"] for r in report["rows"] if r["family"] != "dense"))
    style = dict(zip(methods, _STYLES * (len(methods) // len(_STYLES) + 1)))
    for ax, b in zip(axes[0], batches):
        for name in methods:
            rows = sorted((r for r in report["rows"] if r["method"] == name), key=lambda r: r["gflops"])
            xs = [r["latency"][str(b)]["median_ms"] for r in rows]
            ys = [quality(report, r) for r in rows]
            marker, colour = style[name]
            ax.plot(xs, ys, marker=marker, color=colour, linestyle="-", linewidth=1, markersize=7, label=name)
            for r, x, y in zip(rows, xs, ys):
                if r["point"]:
                    ax.annotate(r["point"], (x, y), textcoords="offset points", xytext=(5, 4), fontsize=7, color=colour)
        for i, r in enumerate(r for r in report["rows"] if r["family"] == "dense"):
            ax.plot([r["latency"][str(b)]["median_ms"]], [quality(report, r)], marker="*", color="black",
                    markersize=13, linestyle="none", label=None if i else "dense")
        ax.set_xlabel(f"median latency, batch {b} (ms)")
        ax.set_ylabel(quality_label(report))
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    fig.suptitle(f"{report['model']}: {quality_label(report)} vs latency ({report['images']} images, "
                 f"{report['provider']}, threads={report['threads'] or 'default'})", fontsize=9)
    fig.tight_layout()
    try:
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)


def write_outputs(report: dict, markdown_path: str | Path) -> dict:
    """Write ``markdown_path`` and the PNG beside it (same stem). Both go to temporary names first
    and are renamed only when both are complete: a failure leaves neither. Without matplotlib
    (a deploy host) the PNG is skipped and the report says so."""
    md = Path(markdown_path)
    png = md.with_suffix(".png") if importlib.util.find_spec("matplotlib") else None
    with contextlib.ExitStack() as stack:
        tmp_md = stack.enter_context(atomic_path(md, suffix=".md"))
        tmp_md.write_text(markdown(report))
        if png is not None:
            plot(report, stack.enter_context(atomic_path(png, suffix=".png")))
    report.update(markdown=str(md), plot=str(png) if png else None)
    return report
