"""`tscli bench` and `tscli tune`: how fast a file runs here, and which K this device should use."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from .. import contract as C
from ..errors import ModelFileError, UsageError
from .common import (
    Checkpoint,
    JsonFlag,
    Plugins,
    RateList,
    Threads,
    err,
    optional_str,
    out,
    parse_floats,
    parse_ints,
    print_json,
    status,
    table,
)


def bench(
    file: Path = typer.Argument(..., help="Exported ATS, DoViT, DynamicViT or EViT .onnx file."),
    k: str = typer.Option("", "--k", help="K values, comma list (default: max_k and max_k/2)."),
    batch: str = typer.Option("1,8", "--batch", help="Batch sizes, comma list."),
    backend: str = typer.Option("ort", "--backend", help="Runtime backend: ort."),
    threads: Threads = None,
    runs: int = typer.Option(10, "--runs", help="Interleaved rounds; medians are over these."),
    warmup: int = typer.Option(2, "--warmup", help="Untimed rounds first."),
    baseline: Optional[Path] = typer.Option(None, "--baseline", help="Dense baseline .onnx (default: exported on the fly)."),
    ideal: bool = typer.Option(False, "--ideal", help="Also time the ideal bound (same work minus all sampling)."),
    no_dense: bool = typer.Option(False, "--no-dense", help="Skip the dense baseline."),
    checkpoint: Checkpoint = None,
    graphs_dir: Optional[Path] = typer.Option(None, "--graphs-dir", help="Keep/reuse the exported reference graphs here."),
    as_json: JsonFlag = False,
    xi: Optional[List[str]] = typer.Option(None, "--xi", help="DoViT files: thresholds to time (default: the export value)."),
    plugins: Plugins = None,
    rate: RateList = None,
    fp32: Optional[Path] = typer.Option(None, "--fp32", help="fp16/int8 FILE: the fp32 file it was made from, timed at the same K."),
):
    """Latency per (K, batch) vs the dense baseline and the ideal bound, interleaved so drift cancels."""
    from ..runtime.ort.session import OrtBackend
    from ..tools.bench import bench as run_bench
    from ..tools.bench_seg import bench_seg

    # Only the family is needed here: one plain session, not a runner (which would pin a K).
    meta = C.decode_metadata(OrtBackend(file, threads=1).metadata_props)
    if "model" not in meta:
        raise ModelFileError(f"{str(file)!r} was not exported by tscli (no tscli.* metadata); export it with `tscli export`")
    if C.is_reduction(meta):
        if k or ideal or plugins or xi or backend != "ort":
            raise UsageError("--k/--ideal/--plugins/--xi/--backend do not apply to DynamicViT / EViT files (use --rate)")
        rates = [C.check_rate(r, meta)[0] for r in parse_floats(rate, "--rate") or []] or None  # checked first
        for caveat in dict.fromkeys(C.rate_caveat(meta, r) for r in rates or []):
            if caveat:
                err.print(caveat, markup=False, highlight=False, soft_wrap=True)
        return _bench_reduction(file, rates, parse_ints(batch, "--batch"), threads, runs, warmup,
                                baseline, not no_dense, optional_str(checkpoint), graphs_dir, as_json)
    if rate:
        raise UsageError("--rate applies to DynamicViT / EViT files")
    if C.is_segmentation(meta):
        if k or ideal or no_dense or plugins or fp32:
            raise UsageError("--k/--ideal/--no-dense/--plugins/--fp32 apply to ATS files; this is a segmentation file "
                             "(use --xi)")
        with status("benchmarking") as spinner:
            report = bench_seg(file, parse_floats(xi, "--xi"), parse_ints(batch, "--batch"), threads, runs, warmup,
                               baseline, optional_str(checkpoint), graphs_dir, progress=lambda msg: spinner.update(msg))
        return print_json(report) if as_json else _print_seg_bench(report)
    if xi:
        raise UsageError("--xi applies to DoViT segmentation files")
    with status("benchmarking") as spinner:
        report = run_bench(file, parse_ints(k, "--k") or None, parse_ints(batch, "--batch"), backend, threads, runs, warmup,
                           baseline, ideal, not no_dense, optional_str(checkpoint), graphs_dir,
                           progress=lambda msg: spinner.update(msg), plugins=plugins, fp32=fp32)
    return print_json(report) if as_json else _print_bench(report)


def _bench_reduction(file, rates, batches, threads, runs, warmup, baseline, dense, checkpoint, graphs_dir, as_json):
    from ..tools.bench_reduction import bench_reduction

    with status("benchmarking") as spinner:
        report = bench_reduction(file, rates, batches, threads, runs, warmup, baseline, dense, checkpoint, graphs_dir,
                                 progress=lambda msg: spinner.update(msg))
    if as_json:
        return print_json(report)
    t = table("rate", "kept per stage", "batch", "ms", "p90 ms", "img/s", "GFLOPs", "dense ms", "speed-up",
              title=f"bench {report['model']} ({report['family']}): ort {report['provider']}, "
                    f"threads={report['threads'] or 'default'}, median of {report['runs']} interleaved runs")
    for r in report["rows"]:
        m, d = r["method"], r["dense"]
        t.add_row(f"{r['rate']:g}", " ".join(map(str, r["counts"])), str(r["batch"]), f"{m['median_ms']:.2f}",
                  f"{m['p90_ms']:.2f}", f"{m['images_per_s']:.1f}", f"{m['gflops']:.2f}" + (f" / {d['gflops']:.2f}" if d else ""),
                  f"{d['median_ms']:.2f}" if d else "-", f"{r['speedup_vs_dense']:.2f}x" if d else "-")
    out.print(t)


def _print_bench(report: dict) -> None:
    precision = report.get("precision", "fp32")
    extra = ("fp32 ATS ms", f"{precision} vs fp32") if report.get("fp32") else ()
    t = table("K", "batch", f"ATS ms ({precision})" if precision != "fp32" else "ATS ms", "p90 ms", "img/s", "GFLOPs",
              "dense ms", "speed-up", "ideal ms", "ideal speed-up", "of ideal", *extra,
              title=f"bench {report['model']} ({report['mode']}): {report['backend']} {report['provider']}, "
                    f"threads={report['threads'] or 'default'}, median of {report['runs']} interleaved runs")
    fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
    for r in report["rows"]:
        a, d, i, f = r["ats"], r["dense"], r["ideal"], r.get("fp32")
        more = (f"{f['median_ms']:.1f}", f"{r['speedup_vs_fp32']:.2f}x") if extra else ()
        t.add_row(str(r["k"]), str(r["batch"]), f"{a['median_ms']:.1f}", f"{a['p90_ms']:.1f}", f"{a['images_per_s']:.1f}",
                  f"{a['gflops']:.2f}" + (f" / {d['gflops']:.2f}" if d else ""), fmt(d and d["median_ms"], ".1f"),
                  fmt(r["speedup_vs_dense"], ".2f") + ("x" if d else ""), fmt(i and i["median_ms"], ".1f"),
                  fmt(r["ideal_speedup_vs_dense"], ".2f"), fmt(r["fraction_of_ideal"], ".3f"), *more)
    out.print(t, width=max(out.width, 150))  # 11-13 columns: do not wrap them in a narrow pipe
    if report.get("form") == "plugin" and not report.get("plugins"):
        # Timed without the op library, ORT ran each ATSSample node's standard-operator body, which
        # has more nodes than the plain form's picking: 0.90 of the bound at batch 1 against the
        # plain form's 0.94 (measured, docs/design.md "Graph speed"). Say so under the numbers.
        out.print("note: plugin-form file timed without --plugins: ONNX Runtime ran the sampling nodes' "
                  "standard-operator bodies (slower than the plain form at batch 1); give --plugins LIB "
                  "(`python -m tscli.plugins.ort_ops` builds LIB) to time the native op")


def _print_seg_bench(report: dict) -> None:
    t = table("xi", "batch", "DoViT ms", "dense ms", "speed-up", "kept frac", "saturated", "GFLOPs padded / token-pass / dense",
              title=f"bench {report['model']} C={report['max_keep']} input {report['input_size'][1]}x{report['input_size'][2]}: "
                    f"ort {report['provider']}, threads={report['threads'] or 'default'}, median of {report['runs']} interleaved runs")
    for r in report["rows"]:
        t.add_row(f"{r['xi']:g}", str(r["batch"]), f"{r['dovit_ms']:.1f}", f"{r['dense_ms']:.1f}", f"{r['speedup_vs_dense']:.2f}x",
                  f"{r['kept_fraction']:.3f}", f"{r['saturated']}/{r['batch']}",
                  f"{r['gflops_padded']:.3g} / {r['gflops_token_pass']:.3g} / {r['gflops_dense']:.3g}")
    out.print(t)


def tune(
    file: Path = typer.Argument(..., help="Exported ATS .onnx file."),
    data: Path = typer.Option(..., "--data", help="Images: an ImageFolder (class sub-folders) or a plain folder."),
    labels: str = typer.Option("auto", "--labels", help="ImageFolder (top-1 vs folder labels) | none (agreement with max_k) | auto."),
    budget_ms: Optional[float] = typer.Option(None, "--budget-ms", help="Most accurate K whose median latency fits."),
    max_drop: Optional[float] = typer.Option(None, "--max-drop", help="Fastest K within P accuracy points of max_k (default 1.0)."),
    k_grid: str = typer.Option("", "--k-grid", help="K values, comma list (default: 8 fractions of max_k)."),
    batch: int = typer.Option(1, "--batch", help="Batch size of the latency measurement."),
    threads: Threads = None,
    runs: int = typer.Option(30, "--runs", help="Interleaved latency rounds (a K is called faster only when the p10-p90 band "
                                                "of its per-round latency ratios is below 1; at least 5 rounds)."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Use at most N images (a fixed subset)."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Profile store (default: MODEL.profiles.json next to the file); .md and .png go beside it."),
    as_json: JsonFlag = False,
    plugins: Plugins = None,
):
    """Sweep K on this device: latency and accuracy, choose K, write a device profile for --k auto."""
    from ..tools.tune import tune as run_tune

    with status("tuning") as spinner:
        report = run_tune(file, data, labels, budget_ms, max_drop, parse_ints(k_grid, "--k-grid") or None, batch, threads,
                          runs, 2, limit, output, progress=lambda msg: spinner.update(msg), plugins=plugins)
    if as_json:
        return print_json(report)
    from ..tools.tune_report import cells, chosen_line, columns

    t = table(*columns(report), title=f"tune {report['model']}: batch {report['batch']}, {report['images']} images, "
                                      f"{report['runs']} interleaved rounds, {report['fingerprint']['cpu']}")
    for r in report["table"]:
        row = cells(r, report)
        if r["k"] == report["chosen_k"]:
            row[0] = f"[bold green]{row[0]} <-[/]"
        t.add_row(*row)
    out.print(t, width=max(out.width, 120))
    out.print(chosen_line(report), markup=False, highlight=False)
    out.print(f"profile -> {report['profile_store']}, table -> {report['markdown']}, "
              f"plot -> {report['plot'] or 'skipped (pip install matplotlib)'}", markup=False, highlight=False)
