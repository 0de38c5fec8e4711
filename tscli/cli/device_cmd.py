"""`tscli build`, `tscli doctor` and `tscli selftest`: TensorRT engines and what a host can run."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ..errors import UsageError
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


def _say_plan(plan) -> None:
    for line in plan.lines():
        err.print(f"plan: {line}", markup=False, highlight=False, soft_wrap=True)


def build(
    file: Path = typer.Argument(..., help="Exported .onnx file (plain or plugin form, padded)."),
    k: Optional[List[str]] = typer.Option(None, "--k", help="One profile fixed at this K (repeat or comma list)."),
    k_range: Optional[List[str]] = typer.Option(None, "--k-range", help="One profile MIN:OPT:MAX of K, e.g. 48:96:120 (repeatable)."),
    batch: str = typer.Option("1:1:8", "--batch", help="Batch MIN:OPT:MAX (or one number)."),
    precision: str = typer.Option("fp32", "--precision", help="fp32 | fp16 | int8 (int8: a QDQ file from `tscli quantize --target tensorrt`; TensorRT 11: from the ONNX file)."),
    plugins: Optional[Path] = typer.Option(None, "--plugins", help="libtscli_plugins.so (default: $TSCLI_PLUGIN_PATH, ./build/plugins; a dry run uses only this)."),
    workspace: Optional[int] = typer.Option(None, "--workspace", help="Builder workspace limit in MB."),
    timing_cache: Optional[Path] = typer.Option(None, "--timing-cache", help="Timing cache file (read if present, then updated)."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Engine file (default: FILE.engine); FILE.engine.json is the manifest."),
    verbose: bool = typer.Option(False, "--verbose", help="TensorRT's verbose log."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the build plan only (no TensorRT needed with --trt-version)."),
    trt_version: Optional[str] = typer.Option(None, "--trt-version", help="Dry run: plan for this TensorRT, e.g. 10.3."),
    save_parser_input: Optional[Path] = typer.Option(None, "--save-parser-input", help="Dry run: write the model the parser would get (.onnx)."),
    as_json: JsonFlag = False,
):
    """Build a TensorRT engine (one optimization profile per K bucket) and its manifest; --dry-run
    prints the plan a build would follow (sampling path, parser input, precision flags, profiles)."""
    from ..tools.engine_build import BuildOptions, build_engine
    from ..tools.engine_build import dry_run as plan_only

    if not dry_run and (trt_version or save_parser_input):
        given = "--trt-version" if trt_version else "--save-parser-input"
        raise UsageError(f"{given} needs --dry-run (a real build uses the installed TensorRT)")
    opts = BuildOptions(str(file), optional_str(output), parse_k_list(k), list(k_range or []) or None, batch,
                        precision, optional_str(plugins), workspace, optional_str(timing_cache), verbose, dry_run,
                        trt_version, optional_str(save_parser_input))
    if dry_run:
        plan = plan_only(opts).plan
        if as_json:
            return print_json({"plan": plan.to_dict(), "parser_input": opts.save_parser_input})
        for line in plan.lines():
            out.print(line, markup=False, highlight=False, soft_wrap=True)
        if opts.save_parser_input:
            out.print(f"parser input written to {opts.save_parser_input}", markup=False, highlight=False)
        return None
    with status("building") as spinner:
        result = build_engine(opts, progress=lambda msg: spinner.update(msg),
                              show_plan=(lambda plan: None) if as_json else _say_plan)
    m = result.manifest
    for w in result.warnings:
        err.print(f"warning: {w}", markup=False, highlight=False)
    if as_json:
        return print_json({"engine": str(result.engine_path), "manifest": m, "warnings": result.warnings})
    k_text = f"K {m['k_range'][0]}..{m['k_range'][1]}" if m["k_range"] else "no K"
    out.print(f"wrote {result.engine_path} + {result.manifest_path.name} in {result.seconds:.0f} s: TensorRT "
              f"{m['tensorrt_version']}, {m['gpu']['name'] if m['gpu'] else 'GPU unknown'}, {m['precision']}, "
              f"{len(m['profiles'])} profile(s), {k_text}, batch {m['batch_range'][0]}..{m['batch_range'][1]}, "
              f"sampling: {m['sampling']['path']} ({m['sampling']['checked_by']})", markup=False)


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
