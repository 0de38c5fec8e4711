"""`tscli build`, `tscli doctor` and `tscli selftest`: TensorRT engines and what a host can run."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from .common import (
    JsonFlag,
    KList,
    err,
    optional_str,
    out,
    parse_k_list,
    print_json,
    status,
    table,
)


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
    from ..tools.engine_build import BuildOptions, build_engine

    opts = BuildOptions(str(file), optional_str(output), parse_k_list(k), list(k_range or []) or None, batch,
                        precision, optional_str(plugins), workspace, optional_str(timing_cache), verbose)
    with status("building") as spinner:
        result = build_engine(opts, progress=lambda msg: spinner.update(msg))
    m = result.manifest
    for w in result.warnings:
        err.print(f"warning: {w}", markup=False, highlight=False)
    k_text = f"K {m['k_range'][0]}..{m['k_range'][1]}" if m["k_range"] else "no K"
    out.print(f"wrote {result.engine_path} + {result.manifest_path.name} in {result.seconds:.0f} s: TensorRT "
              f"{m['tensorrt_version']}, {m['gpu']['name'] if m['gpu'] else 'GPU unknown'}, {m['precision']}, "
              f"{len(m['profiles'])} profile(s), {k_text}, batch {m['batch_range'][0]}..{m['batch_range'][1]}, "
              f"plugins: {', '.join(o['name'] for o in m['plugin_ops']) or 'none'}", markup=False)


def doctor(as_json: JsonFlag = False):
    """What this host can do: Python, ONNX Runtime providers, TensorRT, CUDA/GPU, Jetson, plugins."""
    from ..tools.doctor import run_doctor, summary

    checks = run_doctor()
    if as_json:
        return print_json({"checks": [c.to_dict() for c in checks], "summary": summary(checks)})
    colour = {"ok": "green", "missing": "red", "warn": "yellow", "info": "cyan"}
    t = table("component", "status", "detail", "fix", title="tscli doctor")
    for c in checks:
        t.add_row(c.name, f"[{colour[c.status]}]{c.status}[/]", c.detail, c.fix)
    out.print(t)
    out.print(summary(checks))


def selftest(
    file: Optional[Path] = typer.Argument(None, help="A tscli .onnx file (default: export tiny_ats; needs the export extras)."),
    k: KList = None,
    plugins: Optional[Path] = typer.Option(None, "--plugins", help="libtscli_plugins.so for plugin-form files."),
):
    """GPU host: build a tiny engine, run it at two K, compare with ONNX Runtime CPU; one verdict line."""
    from ..tools.selftest import run_selftest_or_raise

    with status("selftest") as spinner:
        result = run_selftest_or_raise(optional_str(file), parse_k_list(k), optional_str(plugins),
                                       progress=lambda msg: spinner.update(msg))
    out.print(result.verdict(), markup=False)
