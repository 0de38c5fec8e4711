"""`tscli triton-repo`, `tscli serve` and `tscli loadtest`: serving past one device with Triton.

`serve` and `loadtest` run in the serving venv (PyTriton needs numpy<2, the project runs on numpy
2): started from another Python they re-execute themselves there (tools/serve_env.py).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Annotated, List, Optional

import typer

from ..errors import CheckFailed, UsageError
from .common import JsonFlag, Threads, err, optional_str, out, parse_ints, parse_k_value, print_json, status, table

ServePython = Annotated[Optional[Path], typer.Option("--python", help="The serving interpreter (default: $TSCLI_SERVE_PYTHON, else the venv "
                                             "that `tscli serve --setup` makes in ~/.cache/tscli/serve-venv).")]


def triton_repo(
    files: List[Path] = typer.Argument(..., help="Exported .onnx files, one model each."),
    output: Path = typer.Option(..., "-o", "--output", help="The model repository folder (created; models in it are replaced)."),
    k: Optional[str] = typer.Option(None, "--k", help="K for every ATS file (default: max_k), or 'auto': the K `tscli tune` "
                                                      "chose, for this device, or with --device for a device in the store."),
    xi: Optional[float] = typer.Option(None, "--xi", help="DoViT threshold 0..1 (default: the file's export value)."),
    backend: str = typer.Option("onnxruntime", "--backend", help="onnxruntime | tensorrt | python."),
    max_batch: int = typer.Option(8, "--max-batch", help="Largest dynamic batch (0: no batching)."),
    instances: int = typer.Option(1, "--instances", help="Model instances (instance_group count)."),
    delay_us: int = typer.Option(0, "--delay-us", help="How long the batcher may wait to fill a batch (microseconds)."),
    keep_k_input: bool = typer.Option(False, "--keep-k-input", help="onnxruntime/tensorrt: keep k_select [K] as an input "
                                                                     "(then max_batch_size 0: no dynamic batching)."),
    threads: Threads = None,
    plugins: Optional[Path] = typer.Option(None, "--plugins", help="tensorrt: libtscli_plugins.so for plugin-form files "
                                                                   "(copied into REPO/plugins, loaded by serve.sh)."),
    profiles: Optional[Path] = typer.Option(None, "--profiles", help="--k auto: the profile store (default: MODEL.profiles.json next to each file)."),
    device: Optional[str] = typer.Option(None, "--device", help="--k auto: use the profile of the device whose CPU or GPU "
                                                                "name contains this (e.g. Orin)."),
    name: Optional[str] = typer.Option(None, "--name", help="One file: the model name (default: file stem + _kK; "
                                                            "one name across devices with different K)."),
    as_json: JsonFlag = False,
):
    """A Triton model repository (config.pbtxt + version folder) per file, with each device's K carried in."""
    from ..tools.triton_repo import RepoOptions, write_repo

    opts = RepoOptions([str(f) for f in files], str(output), parse_k_value(k), xi, backend, max_batch, instances,
                       delay_us, keep_k_input, threads, optional_str(plugins), optional_str(profiles), device, name)
    with status("writing the repository") as spinner:
        specs = write_repo(opts, progress=lambda msg: spinner.update(msg))
    if as_json:
        return print_json({"repository": str(output), "models": [
            {"name": s.name, "backend": s.backend, "max_batch_size": s.max_batch, "parameters": s.parameters,
             "inputs": {t.name: t.dims for t in s.inputs}, "outputs": {t.name: t.dims for t in s.outputs}}
            for s in specs]})
    t = table("model", "backend", "carried in", "max batch", "inputs", "outputs", title=f"Triton model repository {output}")
    for s in specs:
        carried = ", ".join(f"{label}={s.parameters[key]}" for key, label in (("tscli.k", "K"), ("tscli.xi", "xi"))
                            if key in s.parameters)
        t.add_row(s.name, s.backend, carried or "-", str(s.max_batch), " ".join(f"{i.name}{i.dims}" for i in s.inputs),
                  " ".join(o.name for o in s.outputs))
    out.print(t)
    out.print(f"configs checked against Triton's model-config protobuf; start with {output}/serve.sh"
              + ("; build each engine with MODEL/build_engine.sh on the serving device first" if backend == "tensorrt" else ""),
              markup=False)


def serve(
    file: Optional[Path] = typer.Argument(None, help="Exported .onnx file (not needed with --setup)."),
    k: Optional[str] = typer.Option(None, "--k", help="Points per ATS stage (default: max_k), or 'auto' (this device's profile)."),
    xi: Optional[float] = typer.Option(None, "--xi", help="DoViT threshold 0..1 (default: the file's export value)."),
    port: int = typer.Option(8000, "--port", help="HTTP port on 127.0.0.1; gRPC is PORT+1, metrics PORT+2; 0 picks free ports."),
    max_batch: int = typer.Option(8, "--max-batch", help="Largest dynamic batch (0: no batching)."),
    delay_us: int = typer.Option(0, "--delay-us", help="How long the batcher may wait to fill a batch (microseconds)."),
    threads: Threads = None,
    name: Optional[str] = typer.Option(None, "--name", help="Model name (default: file stem + _kK)."),
    profiles: Optional[Path] = typer.Option(None, "--profiles", help="Profile store for --k auto."),
    log: Optional[Path] = typer.Option(None, "--log", help="Keep tritonserver's log in this file."),
    python: ServePython = None,
    setup: bool = typer.Option(False, "--setup", help="Create the serving venv (pip, ~0.5 GB) and exit."),
    as_json: JsonFlag = False,
):
    """Serve FILE with Triton Inference Server (PyTriton) on 127.0.0.1 until Ctrl-C or SIGTERM (then exit 0)."""
    from ..tools import serve_env

    if setup:
        with status("creating the serving venv") as spinner:
            venv = serve_env.create_venv(progress=lambda msg: spinner.update(msg))
        return out.print(f"serving venv ready: {venv} (tscli serve and loadtest use it)", markup=False)
    if file is None:
        raise UsageError("give FILE to serve (or --setup to create the serving venv)")
    if not file.is_file():
        raise UsageError(f"model file {str(file)!r} does not exist")
    serve_env.run_here_or_reexec("serve", python)  # returns only if this Python can serve
    from ..tools.serve import ServeOptions, install_stop_handlers, restore_handlers
    from ..tools.serve import serve as run_server

    opts = ServeOptions(str(file), parse_k_value(k), xi, port, max_batch, delay_us, threads, name,
                        optional_str(profiles), optional_str(log))
    stop = threading.Event()
    previous = install_stop_handlers(stop)
    try:
        code = run_server(opts, stop, on_ready=lambda info: _ready(info, as_json))
    finally:
        restore_handlers(previous)
    err.print("stopped" if code == 0 else "error: the Triton server or its model proxy died", markup=False)
    raise typer.Exit(code)


def _ready(info, as_json: bool) -> None:
    if as_json:
        out.print(json.dumps(info.__dict__), markup=False, highlight=False, soft_wrap=True)
    else:
        carried = f" K={info.k}" if info.k is not None else (f" xi={info.xi}" if info.xi is not None else "")
        out.print(f"serving {info.model}{carried} (max batch {info.max_batch}): {info.http}  {info.grpc}  "
                  f"{info.metrics}  (Ctrl-C stops)", markup=False, highlight=False, soft_wrap=True)
    out.file.flush()


def loadtest(
    url: str = typer.Argument(..., help="http://127.0.0.1:PORT or grpc://127.0.0.1:PORT (loopback only)."),
    model: str = typer.Argument(..., help="Model name on the server."),
    concurrency: str = typer.Option("1,4,16", "--concurrency", help="Concurrent clients per level, comma list."),
    seconds: float = typer.Option(5.0, "--seconds", help="Measured seconds per level."),
    warmup: float = typer.Option(1.0, "--warmup", help="Uncounted seconds before each level."),
    max_requests: int = typer.Option(100_000, "--max-requests", help="At most this many requests per level."),
    batch: int = typer.Option(1, "--batch", help="Images per request."),
    images: Optional[Path] = typer.Option(None, "--images", help="Image folder to send (default: random values)."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="JSON report (default: loadtest-MODEL.json); .md and .png beside it."),
    python: ServePython = None,
    as_json: JsonFlag = False,
):
    """Throughput and p50/p90/p99 latency per concurrency against a Triton model on this machine."""
    from ..tools import serve_env
    from ..tools.loadtest import LoadOptions, check_options, parse_url
    from ..tools.loadtest import loadtest as run_load

    opts = LoadOptions(url, model, parse_ints(concurrency, "--concurrency"), seconds, warmup, max_requests, batch,
                       optional_str(images), optional_str(output))
    check_options(opts)
    parse_url(url)  # a non-loopback target is refused before anything starts
    serve_env.run_here_or_reexec("loadtest", python)
    with status("loading the server") as spinner:
        report = run_load(opts, progress=lambda msg: spinner.update(msg))
    if as_json:
        print_json(report)
    else:
        t = table("clients", "requests", "errors", "req/s", "img/s", "p50 ms", "p90 ms", "p99 ms", "img/execution",
                  title=f"loadtest {model} over {report['protocol']}: {seconds:g} s per level, load average "
                        f"{report['load_average']}")
        fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
        for r in report["rows"]:
            t.add_row(str(r["concurrency"]), str(r["requests"]), str(r["errors"]), f"{r['req_per_s']:.1f}",
                      f"{r['img_per_s']:.1f}", fmt(r["p50_ms"], ".2f"), fmt(r["p90_ms"], ".2f"), fmt(r["p99_ms"], ".2f"),
                      fmt(r["images_per_execution"], ".2f"))
        out.print(t)
        out.print(f"report -> {output or report['markdown'][:-3] + '.json'}, {report['markdown']}, "
                  f"{report['plot'] or 'no plot (pip install matplotlib)'}", markup=False)
    failed = [r for r in report["rows"] if r["errors"]]
    if failed:
        raise CheckFailed(f"{sum(r['errors'] for r in failed)} requests failed (first: {failed[0]['first_error']})")
