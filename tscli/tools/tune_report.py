"""How a ``tscli tune`` report reads: the table cells (shared by the Markdown file and the CLI),
the Markdown file and the plot (accuracy, latency median with its p10-p90 band, the budget or
max-drop line, the chosen K)."""

from __future__ import annotations

from pathlib import Path

from ..runtime import device_profiles as P
from .plots import pyplot, save_figure

COLUMNS = ("K", "median ms", "p10-p90 ms", "latency vs K={ref} (p10-p90)", "faster?", "{accuracy} (correct/total)",
           "GFLOPs", "GMACs")


def accuracy_name(report: dict) -> str:
    return "top-1" if report["accuracy_kind"] == "top1" else "agreement with max_k"


def columns(report: dict) -> list[str]:
    return [c.format(ref=report["reference_k"], accuracy=accuracy_name(report)) for c in COLUMNS]


def cells(r: dict, report: dict) -> list[str]:
    """One table row as text. "faster?": measurably faster than the largest K (tools/tune.faster)."""
    band = r.get("vs_reference")
    if r["k"] == report["reference_k"]:
        vs, quick = "1 (reference)", "-"
    else:
        vs = f"{band['median']:.2f} ({band['p10']:.2f}-{band['p90']:.2f})" if band else "-"
        quick = "yes" if r.get("faster") else "no"
    return [str(r["k"]), f"{r['median_ms']:.2f}", f"{r['p10_ms']:.2f}-{r['p90_ms']:.2f}", vs, quick,
            f"{r['accuracy']:.4f} ({r['correct']}/{r['total']})", f"{r['gflops']:.4g}", f"{r['gmacs']:.4g}"]


def chosen_line(report: dict) -> str:
    return f"chosen K = {report['chosen_k']}: {report['objective'].get('reason', '')}"


def markdown(report: dict) -> str:
    fp = report["fingerprint"]
    lines = [f"# tscli tune: {report['model']} on this device", "",
             f"- device: {P.describe(fp)} (onnxruntime {fp.get('onnxruntime')}, numpy {fp.get('numpy')})",
             f"- data: {report['data']} ({report['images']} images, accuracy = {accuracy_name(report)})",
             f"- latency: batch {report['batch']}, median and p10-p90 of {report['runs']} interleaved rounds; a K is "
             f"called faster than K={report['reference_k']} only when the p10-p90 band of its per-round latency "
             "ratios is below 1" + (f"; with the ORT op library {Path(report['plugins']).name}" if report.get("plugins") else ""),
             "- GFLOPs count 2 per multiply-add; GMACs are the multiply-adds (what papers call \"GFLOPs\")",
             f"- **{chosen_line(report)}**", ""]
    head = columns(report)
    lines += ["| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
    for r in report["table"]:
        row = cells(r, report)
        if r["k"] == report["chosen_k"]:
            row[0] += " **<-**"
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> Path:
    """Accuracy (left axis) and latency (right axis: median, p10-p90 band) vs K, with the
    --max-drop floor or the --budget-ms line and the chosen K. Temp file + rename."""
    plt = pyplot()
    rows = sorted(report["table"], key=lambda r: r["k"])
    ks = [r["k"] for r in rows]
    objective = report["objective"]
    fig, ax = plt.subplots(figsize=(7.5, 4.4), dpi=110)
    ax.plot(ks, [r["accuracy"] for r in rows], "o-", color="tab:blue", label=accuracy_name(report))
    ax.set_xlabel("K (points per ATS stage)")
    ax.set_ylabel(accuracy_name(report), color="tab:blue")
    if "max_drop_points" in objective:
        floor = objective["reference_accuracy"] - objective["max_drop_points"] / 100.0
        ax.axhline(floor, color="tab:blue", linestyle="--", linewidth=1,
                   label=f"max drop {objective['max_drop_points']:g} pt: {floor:.4f}")
    lat = ax.twinx()
    lat.fill_between(ks, [r["p10_ms"] for r in rows], [r["p90_ms"] for r in rows], color="tab:red", alpha=0.15,
                     label="latency p10-p90")
    lat.plot(ks, [r["median_ms"] for r in rows], "s-", color="tab:red", label="latency median")
    if "budget_ms" in objective:
        lat.axhline(objective["budget_ms"], color="tab:red", linestyle="--", linewidth=1,
                    label=f"budget {objective['budget_ms']:g} ms")
    lat.set_ylabel(f"latency, batch {report['batch']} (ms)", color="tab:red")
    ax.axvline(report["chosen_k"], color="gray", linestyle=":", label=f"chosen K={report['chosen_k']}")
    ax.set_title(f"{report['model']}: accuracy and latency vs K ({report['runs']} interleaved rounds)\n"
                 f"{report['fingerprint']['cpu']}", fontsize=9)
    handles = ax.get_legend_handles_labels()[0] + lat.get_legend_handles_labels()[0]
    ax.legend(handles, [h.get_label() for h in handles], loc="lower right", fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)
