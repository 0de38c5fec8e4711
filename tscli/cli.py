"""tscli command line: thin typer commands over the library.

Every TscliError becomes one line on stderr and a non-zero exit; tracebacks only with --debug.
Heavy packages (torch, timm, onnx) are imported inside the commands that need them, so `run`
and `inspect` work on a deploy host that has only the runtime installed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from .errors import TscliError, UsageError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Export token-sampling ViTs (ATS) to ONNX / TensorRT and run them with a per-device K.")
# Piped output (CI logs, files) gets a wide console instead of rich's 80-column default.
out = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 160)
_state = {"debug": False}


@app.callback()
def _main(debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors.")):
    _state["debug"] = debug


def _status(message: str):
    return err.status(message, spinner="dots")


def _parse_ks(values: Optional[List[str]]) -> list[int] | None:
    if not values:
        return None
    ks = []
    for value in values:
        for part in str(value).split(","):
            try:
                ks.append(int(part))
            except ValueError:
                raise UsageError(f"bad K {part!r}; give integers like --k 48 --k 96 or --k 48,96") from None
    return ks


def _parse_floats(values: Optional[List[str]], option: str) -> list[float] | None:
    if not values:
        return None
    try:
        return [float(p) for v in values for p in str(v).split(",") if p.strip()]
    except ValueError:
        raise UsageError(f"bad {option} {values!r}; give numbers like --xi 0.985 --xi 1.0 or --xi 0.9,1.0") from None


@app.command("list")
def list_cmd(family: Optional[str] = typer.Option(None, help="Only this family (ats, dense).")):
    """List the registered model variants."""
    from .models.registry import get_config, list_models

    table = Table("model", "family", "dim/depth/heads", "input", "stages", "description")
    for name in list_models(family):
        c = get_config(name)
        stages = f"{c.stages[0]}-{c.stages[-1]}" if c.stages else "-"
        table.add_row(name, c.family, f"{c.embed_dim}/{c.depth}/{c.num_heads}", f"{c.img_size}/{c.patch_size}", stages,
                      c.description)
    out.print(table)


@app.command()
def export(
    model: str = typer.Argument(..., help="Registered model name (see `tscli list`)."),
    max_k: Optional[int] = typer.Option(None, "--max-k", help="Largest K the file will accept (ATS). Default: all patches."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Output file (default: MODEL.onnx)."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="timm/DeiT state_dict (.pth/.bin/.safetensors)."),
    stages: Optional[str] = typer.Option(None, "--stages", help="ATS blocks, e.g. 3-11 (default) or 3,6,9."),
    sampling: str = typer.Option("paper", "--sampling", help="Sampling points: paper | official."),
    opset: int = typer.Option(18, "--opset", help="ONNX opset (>= 17)."),
    form: str = typer.Option("plain", "--form", help="plain (standard ops only) | plugin (tscli.ATSSample nodes for the TensorRT plugin)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random weights when no checkpoint is given."),
    no_validate: bool = typer.Option(False, "--no-validate", help="Skip the ONNX Runtime vs PyTorch check."),
    mode: str = typer.Option("padded", "--mode", help="ATS: padded (static K+1 slots; TensorRT) | trimmed (slots cut to the batch max of K'+1; ONNX Runtime only)."),
    max_keep: Optional[int] = typer.Option(None, "--max-keep", help="DoViT capacity C: most tokens kept after a decision layer. Default: all patches."),
    input_size: Optional[str] = typer.Option(None, "--input-size", help="Segmentation input HxW, multiples of the patch, e.g. 512x1024."),
    xi: Optional[float] = typer.Option(None, "--xi", help="DoViT default threshold (0..1; a token with confidence > xi stops); changeable at load."),
):
    """Export a model to one ONNX file (dynamic batch, K chosen at load time), then check it."""
    from .export.dovit_export import is_seg_model
    from .export.onnx_export import ExportOptions, export_onnx

    if is_seg_model(model):
        if max_k is not None or stages is not None or sampling != "paper" or form != "plain" or mode != "padded":
            raise UsageError(f"--max-k/--stages/--sampling/--form/--mode apply to ATS models; {model!r} is a segmentation model "
                             "(use --max-keep/--input-size/--xi)")
        return _export_seg(model, max_keep, input_size, xi, output, checkpoint, opset, seed, not no_validate)
    if max_keep is not None or input_size is not None or xi is not None:
        raise UsageError(f"--max-keep/--input-size/--xi apply to segmentation models (dovit, seg); {model!r} is not one")
    opts = ExportOptions(model, max_k, str(output) if output else None, str(checkpoint) if checkpoint else None,
                         stages, sampling, opset, form, seed, not no_validate, mode)
    with _status("exporting") as status:
        result = export_onnx(opts, progress=lambda msg: status.update(msg))
    meta = result.metadata
    out.print(f"wrote {result.path} ({result.path.stat().st_size / 1e6:.1f} MB): {meta['model']}, "
              f"max_k={meta['max_k']}, stages={meta['stages'] or '-'}, scheme={meta['scheme']}, form={meta['form']}")
    warnings = [f for f in result.lint.findings if f.level == "warning"]
    out.print(f"lint: ok ({len(warnings)} warnings)" + "".join(f"\n  {w}" for w in warnings))
    if result.validation is not None:
        _print_parity(result.validation)


def _export_seg(model, max_keep, input_size, xi, output, checkpoint, opset, seed, validate) -> None:
    from .export.dovit_export import SegExportOptions, export_seg

    opts = SegExportOptions(model, max_keep, input_size, xi, str(output) if output else None,
                            str(checkpoint) if checkpoint else None, opset, seed, validate)
    with _status("exporting") as status:
        result = export_seg(opts, progress=lambda msg: status.update(msg))
    meta = result.metadata
    out.print(f"wrote {result.path} ({result.path.stat().st_size / 1e6:.1f} MB): {meta['model']} ({meta['family']}), "
              f"input {meta['input_size'][1]}x{meta['input_size'][2]}, max_keep={meta['max_keep']}, xi={meta['xi']}, "
              f"decisions after blocks {meta['stages'] or '-'}")
    warnings = [f for f in result.lint.findings if f.level == "warning"]
    out.print(f"lint: ok ({len(warnings)} warnings)" + "".join(f"\n  {w}" for w in warnings))
    if result.validation is not None:
        _print_seg_parity(result.validation)


def _print_seg_parity(report) -> None:
    table = Table("xi", "C", "images", "max|dlogit|", "argmax agree (min)", "counts", "masks", "saturated (ref)",
                  "flags", "kept frac", "near-ties", "ok",
                  title=f"segmentation parity: {report.backend} ({report.provider}) vs variable-length PyTorch, "
                        f"tol {report.tolerance:.0e}")
    for r in report.rows:
        table.add_row("-" if r.xi is None else f"{r.xi:g}", str(r.capacity or "-"), str(r.images), f"{r.max_abs_diff:.2e}",
                      f"{r.argmax_agree:.6f}", f"{r.counts_agree}/{r.images}", f"{r.masks_agree}/{r.images - r.near_ties}",
                      str(r.saturated), f"{r.saturated_agree}/{r.images}", f"{r.kept_fraction:.3f}", str(r.near_ties),
                      "[green]yes[/]" if r.ok else "[red]NO[/]")
    out.print(table)


@app.command()
def inspect(
    file: Path = typer.Argument(..., help="Exported .onnx file."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
):
    """Show a file's metadata, inputs/outputs, operator histogram and lint result."""
    from .runtime.inspect import inspect_file

    info = inspect_file(file)
    if as_json:
        out.print_json(json.dumps(info))
        return
    table = Table("metadata", "value", title=str(file))
    from .export.contract import META_KEYS, SEG_META_KEYS

    order = {key: i for i, key in enumerate(META_KEYS + SEG_META_KEYS)}
    for key, value in sorted(info["metadata"].items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])):
        if key != "label_names":
            table.add_row(key, json.dumps(value))
    out.print(table)
    io = Table("kind", "name", "type", "shape")
    for kind in ("inputs", "outputs"):
        for t in info[kind]:
            io.add_row(kind[:-1], t["name"], t["type"], str(t["shape"]))
    out.print(io)
    if info.get("gflops"):
        flops = Table("graph", "GFLOPs", title="analytic GFLOPs per image (linear layers + attention matmuls, 1 MAC = 2 FLOPs)")
        for graph, value in info["gflops"].items():
            flops.add_row(graph + (" (padded upper bound)" if graph.startswith(("K=", "C=")) else ""), f"{value:.3f}")
        out.print(flops)
    if "ops" in info:
        out.print("operators: " + ", ".join(f"{op} {n}" for op, n in info["ops"].items()))
        lint = info["lint"]
        out.print(f"lint: {'ok' if lint['ok'] else 'FAILED'}" + "".join(f"\n  {f}" for f in lint["findings"]))
    if info["metadata"].get("form") == "plugin":
        out.print("plugin form: TensorRT runs tscli.ATSSample as a plugin; ONNX Runtime runs it natively with "
                  "--plugins LIB (`python -m tscli.plugins.ort_ops` builds LIB), else its standard-op body")


@app.command()
def run(
    file: Path = typer.Argument(..., help="Exported .onnx file."),
    images: List[Path] = typer.Argument(..., help="Image files or folders."),
    k: Optional[str] = typer.Option(None, "--k", help="Points per ATS stage (1..max_k), or 'auto' (from this device's profile, see `tscli tune`). Default: max_k."),
    profiles: Optional[Path] = typer.Option(None, "--profiles", help="Profile store for --k auto (default: MODEL.profiles.json next to the file)."),
    topk: int = typer.Option(5, "--topk", help="How many classes to show."),
    threads: Optional[int] = typer.Option(None, "--threads", help="ONNX Runtime intra-op threads."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    backend: str = typer.Option("ort", "--backend", help="ort | trt (FILE is an engine) | ort-cuda | ort-trt."),
    xi: Optional[float] = typer.Option(None, "--xi", help="DoViT threshold 0..1 (default: the file's export value)."),
    out_dir: Path = typer.Option(Path("seg_out"), "--out-dir", help="Segmentation: where class maps and overlays go."),
    plugins: Optional[Path] = typer.Option(None, "--plugins", help="ort: tscli's ONNX Runtime op library for a plugin-form file (`python -m tscli.plugins.ort_ops` builds it). trt: libtscli_plugins.so for an engine with plugins (default: $TSCLI_PLUGIN_PATH, else the library the engine was built with)."),
):
    """Run images through an exported model: predictions and kept tokens per stage."""
    from .data.samples import images_in
    from .runtime import load

    files: list[Path] = []
    for item in images:
        files.extend(images_in(item) if item.is_dir() else [item])
    runner = load(file, k=_parse_k(k), backend=backend, threads=threads, xi=xi, profiles=profiles, plugins=plugins)
    if runner.meta.get("family") in ("dovit", "seg"):
        return _run_seg(runner, files, out_dir, as_json)
    preds = runner.predict([str(f) for f in files], topk=topk)
    if as_json:
        out.print_json(json.dumps({"k": runner.k, "provider": runner.provider, "predictions": [p.__dict__ for p in preds]}))
        return
    table = Table("image", "label", "prob", f"top-{topk}", "kept per stage (K'+1)",
                  title=f"{runner.meta['model']}  K={runner.k}  provider={runner.provider}")
    for p in preds:
        table.add_row(Path(p.source).name, p.label, f"{p.score:.3f}", " ".join(l for _, l, _ in p.top5),
                      " ".join(map(str, p.kept_counts)) or "-")
    out.print(table)


def _run_seg(runner, files: list[Path], out_dir: Path, as_json: bool) -> None:
    from .runtime.segmentation import write_outputs

    n_classes = int(runner.meta["num_classes"])
    rows = []
    for f in files:  # one image at a time: segmentation inputs are large
        seg = runner.segment([str(f)])[0]
        classes, overlay = write_outputs(seg, out_dir, n_classes)
        rows.append({"image": seg.source, "classes_png": str(classes), "overlay_png": str(overlay),
                     "kept_counts": seg.kept_counts, "kept_fraction": seg.kept_fraction, "saturated": seg.saturated,
                     "gflops": seg.gflops})
    if as_json:
        out.print_json(json.dumps({"xi": runner.xi, "provider": runner.provider, "images": rows}))
        return
    table = Table("image", "kept per decision", "kept frac", "saturated", "GFLOPs (token-pass)", "overlay",
                  title=f"{runner.meta['model']}  xi={runner.xi}  C={runner.meta.get('max_keep')}  provider={runner.provider}")
    for r in rows:
        table.add_row(Path(r["image"]).name, " ".join(map(str, r["kept_counts"])) or "-", f"{r['kept_fraction']:.3f}",
                      "yes" if r["saturated"] else "no", "-" if r["gflops"] is None else f"{r['gflops']:.2f}", r["overlay_png"])
    out.print(table)


def _print_parity(report) -> None:
    table = Table("K", "torch", "n", "max|dlogit|", "min cos", "top-1", "counts", "kept sets", "near-ties", "ok",
                  title=f"parity: {report.backend} ({report.provider}) vs PyTorch, tol {report.tolerance:.0e}")
    for r in report.rows:
        checked = r.images - r.near_ties
        table.add_row(str(r.k), r.execution, str(r.images), f"{r.max_abs_diff:.1e}", f"{r.min_cosine:.6f}",
                      f"{r.top1_agree}/{checked}", f"{r.counts_agree}/{r.images}", f"{r.sets_agree}/{checked}",
                      str(r.near_ties), "[green]yes[/]" if r.ok else "[red]NO[/]")
    out.print(table)


@app.command()
def parity(
    file: Path = typer.Argument(..., help="Exported .onnx file."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="The checkpoint the file was exported from."),
    images: Optional[Path] = typer.Option(None, "--images", help="Folder of images (default: scikit-image samples)."),
    n: int = typer.Option(8, "--n", help="Number of images (plus 2 random inputs)."),
    k: Optional[List[str]] = typer.Option(None, "--k", help="K values to check (repeat or comma list). Default: max_k and max_k/2."),
    threads: Optional[int] = typer.Option(None, "--threads"),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    backend: str = typer.Option("ort", "--backend", help="ort | trt (FILE is an engine) | ort-cuda | ort-trt."),
    xi: Optional[List[str]] = typer.Option(None, "--xi", help="DoViT thresholds to check (repeat or comma list). "
                                           "Default: the export value, 1.0 and the median first-decision confidence."),
    plugins: Optional[Path] = typer.Option(None, "--plugins", help="Plugin-form FILE: the op library to run it with (ort: tscli's ORT ops, see `tscli run --help`; trt: libtscli_plugins.so)."),
):
    """Compare ONNX Runtime with the PyTorch model the file was exported from."""
    from .export.parity_cmd import parity_for_file
    from .runtime import load

    probe = load(file, backend=backend, threads=threads, plugins=plugins)
    seg = probe.meta.get("family") in ("dovit", "seg")
    if seg and (k or plugins):
        raise UsageError("--k/--plugins apply to ATS files; this is a segmentation file (use --xi)")
    if xi and not seg:
        raise UsageError("--xi applies to DoViT segmentation files")
    with _status("running parity"):
        if seg:
            from .export.dovit_export import seg_parity_for_file

            report = seg_parity_for_file(file, checkpoint, images, n, _parse_floats(xi, "--xi"), threads)
        else:
            report = parity_for_file(file, checkpoint, images, n, _parse_ks(k), threads, backend, plugins, probe)
    if as_json:
        out.print_json(json.dumps(report.to_dict()))
    elif seg:
        _print_seg_parity(report)
    else:
        _print_parity(report)
    if not report.ok:
        raise typer.Exit(1)


def _parse_k(value: str | None) -> int | str | None:
    if value is None or value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        raise UsageError(f"bad --k {value!r}; give an integer in 1..max_k or 'auto'") from None


def _parse_ints(text: str, option: str) -> list[int]:
    try:
        return [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise UsageError(f"bad {option} {text!r}; give integers like 48,96") from None


def _print_bench(report: dict) -> None:
    table = Table("K", "batch", "ATS ms", "p90 ms", "img/s", "GFLOPs", "dense ms", "speed-up", "ideal ms", "ideal speed-up",
                  "of ideal", title=f"bench {report['model']} ({report['mode']}): {report['backend']} {report['provider']}, "
                                    f"threads={report['threads'] or 'default'}, median of {report['runs']} interleaved runs")
    fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
    for r in report["rows"]:
        a, d, i = r["ats"], r["dense"], r["ideal"]
        table.add_row(str(r["k"]), str(r["batch"]), f"{a['median_ms']:.1f}", f"{a['p90_ms']:.1f}", f"{a['images_per_s']:.1f}",
                      f"{a['gflops']:.2f}" + (f" / {d['gflops']:.2f}" if d else ""), fmt(d and d["median_ms"], ".1f"),
                      fmt(r["speedup_vs_dense"], ".2f") + ("x" if d else ""), fmt(i and i["median_ms"], ".1f"),
                      fmt(r["ideal_speedup_vs_dense"], ".2f"), fmt(r["fraction_of_ideal"], ".3f"))
    out.print(table, width=max(out.width, 130))  # 11 columns: do not wrap them in a narrow pipe


@app.command()
def bench(
    file: Path = typer.Argument(..., help="Exported ATS .onnx file."),
    k: str = typer.Option("", "--k", help="K values, comma list (default: max_k and max_k/2)."),
    batch: str = typer.Option("1,8", "--batch", help="Batch sizes, comma list."),
    backend: str = typer.Option("ort", "--backend", help="Runtime backend: ort."),
    threads: Optional[int] = typer.Option(None, "--threads", help="ONNX Runtime intra-op threads."),
    runs: int = typer.Option(10, "--runs", help="Interleaved rounds; medians are over these."),
    warmup: int = typer.Option(2, "--warmup", help="Untimed rounds first."),
    baseline: Optional[Path] = typer.Option(None, "--baseline", help="Dense baseline .onnx (default: exported on the fly)."),
    ideal: bool = typer.Option(False, "--ideal", help="Also time the ideal bound (same work minus all sampling)."),
    no_dense: bool = typer.Option(False, "--no-dense", help="Skip the dense baseline."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="Checkpoint the file was exported from (to rebuild reference graphs)."),
    graphs_dir: Optional[Path] = typer.Option(None, "--graphs-dir", help="Keep/reuse the exported reference graphs here."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable report (schema tscli.bench/1)."),
    xi: Optional[List[str]] = typer.Option(None, "--xi", help="DoViT files: thresholds to time (default: the export value)."),
    plugins: Optional[Path] = typer.Option(None, "--plugins", help="Plugin-form FILE: tscli's ONNX Runtime op library (`python -m tscli.plugins.ort_ops` builds it)."),
):
    """Latency per (K, batch) vs the dense baseline and the ideal bound, interleaved so drift cancels."""
    from .export import contract as C
    from .runtime.bench import bench as run_bench
    from .runtime.ort_backend import OrtBackend

    # Only the family is needed here: one plain session, not a runner (which would pin a K).
    if C.decode_metadata(OrtBackend(file, threads=1).metadata_props).get("family") in ("dovit", "seg"):
        if k or ideal or no_dense or plugins:
            raise UsageError("--k/--ideal/--no-dense/--plugins apply to ATS files; this is a segmentation file (use --xi)")
        from .runtime.segmentation import bench_seg

        with _status("benchmarking") as status:
            report = bench_seg(file, _parse_floats(xi, "--xi"), _parse_ints(batch, "--batch"), threads, runs, warmup,
                               baseline, str(checkpoint) if checkpoint else None, graphs_dir,
                               progress=lambda msg: status.update(msg))
        return out.print_json(json.dumps(report)) if as_json else _print_seg_bench(report)
    if xi:
        raise UsageError("--xi applies to DoViT segmentation files")
    with _status("benchmarking") as status:
        report = run_bench(file, _parse_ints(k, "--k") or None, _parse_ints(batch, "--batch"), backend, threads, runs, warmup,
                           baseline, ideal, not no_dense, str(checkpoint) if checkpoint else None, graphs_dir,
                           progress=lambda msg: status.update(msg), plugins=plugins)
    if as_json:
        out.print_json(json.dumps(report))
    else:
        _print_bench(report)


def _print_seg_bench(report: dict) -> None:
    table = Table("xi", "batch", "DoViT ms", "dense ms", "speed-up", "kept frac", "saturated", "GFLOPs padded / token-pass / dense",
                  title=f"bench {report['model']} C={report['max_keep']} input {report['input_size'][1]}x{report['input_size'][2]}: "
                        f"ort {report['provider']}, threads={report['threads'] or 'default'}, median of {report['runs']} interleaved runs")
    for r in report["rows"]:
        table.add_row(f"{r['xi']:g}", str(r["batch"]), f"{r['dovit_ms']:.1f}", f"{r['dense_ms']:.1f}", f"{r['speedup_vs_dense']:.2f}x",
                      f"{r['kept_fraction']:.3f}", f"{r['saturated']}/{r['batch']}",
                      f"{r['gflops_padded']:.3g} / {r['gflops_token_pass']:.3g} / {r['gflops_dense']:.3g}")
    out.print(table)


@app.command()
def build(
    file: Path = typer.Argument(..., help="Exported .onnx file (plain or plugin form, padded)."),
    k: Optional[List[str]] = typer.Option(None, "--k", help="One profile fixed at this K (repeat or comma list)."),
    k_range: Optional[List[str]] = typer.Option(None, "--k-range", help="One profile MIN:OPT:MAX of K, e.g. 48:96:120 (repeatable)."),
    batch: str = typer.Option("1:1:8", "--batch", help="Batch MIN:OPT:MAX (or one number)."),
    precision: str = typer.Option("fp32", "--precision", help="fp32 | fp16 (TensorRT 11: from the ONNX file)."),
    plugins: Optional[Path] = typer.Option(None, "--plugins", help="libtscli_plugins.so (default: $TSCLI_PLUGIN_PATH, ./build/plugins)."),
    workspace: Optional[int] = typer.Option(None, "--workspace", help="Builder workspace limit in MB."),
    timing_cache: Optional[Path] = typer.Option(None, "--timing-cache", help="Timing cache file (read if present, then updated)."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Engine file (default: FILE.engine); FILE.engine.json is the manifest."),
    verbose: bool = typer.Option(False, "--verbose", help="TensorRT's verbose log."),
):
    """Build a TensorRT engine (one optimization profile per K bucket) and its manifest."""
    from .runtime.trt.build import BuildOptions, build_engine

    opts = BuildOptions(str(file), str(output) if output else None, _parse_ks(k), list(k_range or []) or None, batch,
                        precision, str(plugins) if plugins else None, workspace, str(timing_cache) if timing_cache else None,
                        verbose)
    with _status("building") as status:
        result = build_engine(opts, progress=lambda msg: status.update(msg))
    m = result.manifest
    for w in result.warnings:
        err.print(f"warning: {w}", markup=False, highlight=False)
    k_text = f"K {m['k_range'][0]}..{m['k_range'][1]}" if m["k_range"] else "no K"
    out.print(f"wrote {result.engine_path} + {result.manifest_path.name} in {result.seconds:.0f} s: TensorRT "
              f"{m['tensorrt_version']}, {m['gpu']['name'] if m['gpu'] else 'GPU unknown'}, {m['precision']}, "
              f"{len(m['profiles'])} profile(s), {k_text}, batch {m['batch_range'][0]}..{m['batch_range'][1]}, "
              f"plugins: {', '.join(o['name'] for o in m['plugin_ops']) or 'none'}", markup=False)


@app.command()
def doctor(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")):
    """What this host can do: Python, ONNX Runtime providers, TensorRT, CUDA/GPU, Jetson, plugins."""
    from .runtime.doctor import run_doctor, summary

    checks = run_doctor()
    if as_json:
        out.print_json(json.dumps({"checks": [c.to_dict() for c in checks], "summary": summary(checks)}))
        return
    colour = {"ok": "green", "missing": "red", "warn": "yellow", "info": "cyan"}
    table = Table("component", "status", "detail", "fix", title="tscli doctor")
    for c in checks:
        table.add_row(c.name, f"[{colour[c.status]}]{c.status}[/]", c.detail, c.fix)
    out.print(table)
    out.print(summary(checks))


@app.command()
def selftest(
    file: Optional[Path] = typer.Argument(None, help="A tscli .onnx file (default: export tiny_ats; needs the export extras)."),
    k: Optional[List[str]] = typer.Option(None, "--k", help="K values to check (default: max_k and max_k/2)."),
    plugins: Optional[Path] = typer.Option(None, "--plugins", help="libtscli_plugins.so for plugin-form files."),
):
    """GPU host: build a tiny engine, run it at two K, compare with ONNX Runtime CPU; one verdict line."""
    from .runtime.selftest import run_selftest_or_raise

    with _status("selftest") as status:
        result = run_selftest_or_raise(str(file) if file else None, _parse_ks(k), str(plugins) if plugins else None,
                                       progress=lambda msg: status.update(msg))
    out.print(result.verdict(), markup=False)


@app.command("digits")
def digits_cmd(
    folder: Path = typer.Argument(..., help="New folder for the ImageFolder (train/ and val/ inside)."),
    size: int = typer.Option(32, "--size", help="Image side in pixels (the digits model takes 32)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the train/val split."),
):
    """Write scikit-learn's digits as a labelled ImageFolder (real data that installs offline)."""
    from .data.digits import write_imagefolder

    counts = write_imagefolder(folder, size=size, seed=seed)
    out.print(f"wrote {folder}: {counts['train']} train, {counts['val']} val images in 10 class folders")


@app.command("train-digits")
def train_digits_cmd(
    output: Path = typer.Option(..., "-o", "--output", help="Checkpoint to write (.safetensors)."),
    epochs: int = typer.Option(12, "--epochs", help="Training epochs (12: ~20 s on 2 CPU cores)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the split, the init and the batches."),
):
    """Train the small digits ViT on the CPU; export it with `tscli export digits_ats --checkpoint FILE`."""
    from .models.digits import train_digits

    if epochs < 1:
        raise UsageError(f"--epochs {epochs} is invalid; give at least 1")
    with _status("training") as status:
        r = train_digits(output, epochs=epochs, seed=seed, progress=lambda msg: status.update(msg))
    out.print(f"wrote {r.path}: {r.epochs} epochs in {r.seconds:.0f} s, train top-1 {r.train_accuracy:.3f}, "
              f"val top-1 {r.val_accuracy:.3f} at K=max_k, {r.val_accuracy_k8:.3f} at K=8 (digits_ats, held-out split)")


@app.command()
def tune(
    file: Path = typer.Argument(..., help="Exported ATS .onnx file."),
    data: Path = typer.Option(..., "--data", help="Images: an ImageFolder (class sub-folders) or a plain folder."),
    labels: str = typer.Option("auto", "--labels", help="ImageFolder (top-1 vs folder labels) | none (agreement with max_k) | auto."),
    budget_ms: Optional[float] = typer.Option(None, "--budget-ms", help="Most accurate K whose median latency fits."),
    max_drop: Optional[float] = typer.Option(None, "--max-drop", help="Fastest K within P accuracy points of max_k (default 1.0)."),
    k_grid: str = typer.Option("", "--k-grid", help="K values, comma list (default: 8 fractions of max_k)."),
    batch: int = typer.Option(1, "--batch", help="Batch size of the latency measurement."),
    threads: Optional[int] = typer.Option(None, "--threads", help="ONNX Runtime intra-op threads."),
    runs: int = typer.Option(10, "--runs", help="Interleaved latency rounds."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Use at most N images (a fixed subset)."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Profile store (default: MODEL.profiles.json next to the file); .md and .png go beside it."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable report (schema tscli.tune/1)."),
    plugins: Optional[Path] = typer.Option(None, "--plugins", help="Plugin-form FILE: tscli's ONNX Runtime op library to time it with (as deployed)."),
):
    """Sweep K on this device: latency and accuracy, choose K, write a device profile for --k auto."""
    from .runtime.tune import tune as run_tune

    with _status("tuning") as status:
        report = run_tune(file, data, labels, budget_ms, max_drop, _parse_ints(k_grid, "--k-grid") or None, batch, threads,
                          runs, 2, limit, output, progress=lambda msg: status.update(msg), plugins=plugins)
    if as_json:
        out.print_json(json.dumps(report))
        return
    table = Table("K", "median ms", "p90 ms", "accuracy" if report["accuracy_kind"] == "top1" else "agreement", "GFLOPs",
                  title=f"tune {report['model']}: batch {report['batch']}, {report['images']} images, {report['fingerprint']['cpu']}")
    for r in report["table"]:
        table.add_row(f"[bold green]{r['k']} <-[/]" if r["k"] == report["chosen_k"] else str(r["k"]), f"{r['median_ms']:.2f}", f"{r['p90_ms']:.2f}", f"{r['accuracy']:.4f}", f"{r['gflops']:.4f}")
    out.print(table)
    out.print(f"chosen K={report['chosen_k']} ({report['objective']}); profile -> {report['profile_store']}, "
              f"table -> {report['markdown']}, plot -> {report['plot'] or 'skipped (pip install matplotlib)'}")


def main() -> None:
    import click

    command = typer.main.get_command(app)
    try:
        command.main(standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except (click.exceptions.Abort, KeyboardInterrupt):
        err.print("aborted")
        sys.exit(130)
    except TscliError as exc:
        if _state["debug"]:
            raise
        err.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except Exception as exc:  # a bug: still one line unless --debug
        if _state["debug"]:
            raise
        err.print(f"internal error: {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
                  " (rerun with --debug for the traceback)", markup=False, highlight=False, soft_wrap=True)
        sys.exit(3)


if __name__ == "__main__":
    main()
