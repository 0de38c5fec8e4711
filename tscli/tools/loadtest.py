"""``tscli loadtest``: a bounded closed-loop load generator for a Triton model on this machine,
reporting what perf_analyzer reports: throughput and p50/p90/p99 latency per concurrency.

Each concurrency level runs N threads, each with its own client, each sending one request, waiting
for the answer and sending the next, for ``warmup`` + ``seconds``; the requests that complete in
the last ``seconds`` are counted (throughput) and their latencies reported. Every level is
bounded by ``max_requests`` requests.
Only loopback targets are accepted (127.0.0.0/8, ::1, localhost): this tool is for measuring a
server on the same machine, not for loading other people's.

Inputs: ``images`` of the shape the server declares; with an image folder, its images resized
and centre-cropped to that size and normalised with ImageNet's mean and std (the server's file
may use others: the numbers measure the server, not accuracy), else seeded random values.
When the server's statistics endpoint is open (as ``tscli serve`` leaves it), each level also
reports how many images Triton ran per execution (its dynamic batches).

JSON report schema ``tscli.loadtest/1``: {"schema", "url", "protocol", "model", "batch",
"input_shape", "inputs", "seconds", "warmup", "max_requests", "load_average", "rows": [{
"concurrency", "requests", "errors", "first_error", "req_per_s", "img_per_s", "p50_ms", "p90_ms",
"p99_ms", "max_ms", "images_per_execution"}], "markdown", "plot"}.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import json
import os
import socket
import threading
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import CheckFailed, UsageError, first_line, require
from ..files import atomic_path, check_output_file
from ..runtime.images import images_in
from ..runtime.preprocess import preprocess

SCHEMA = "tscli.loadtest/1"
DEFAULT_PORTS = {"http": 8000, "grpc": 8001}
MAX_CONCURRENCY = 256
IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "crop_pct": 1.0, "interpolation": "bicubic"}


@dataclass
class LoadOptions:
    url: str
    model: str
    concurrency: list[int]
    seconds: float = 5.0
    warmup: float = 1.0
    max_requests: int = 100_000  # per level
    batch: int = 1  # images per request
    images: str | None = None
    output: str | None = None  # the JSON report; .md and .png beside it


def parse_url(url: str) -> tuple[str, str, int]:
    """(protocol, host, port) of http://HOST:PORT or grpc://HOST:PORT (HOST:PORT = http);
    refuses hosts that are not loopback addresses."""
    parts = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme not in DEFAULT_PORTS:
        raise UsageError(f"URL {url!r}: scheme {parts.scheme!r} is not http or grpc")
    if parts.path not in ("", "/") or parts.query or not parts.hostname:
        raise UsageError(f"URL {url!r} must be http://HOST:PORT or grpc://HOST:PORT (no path)")
    try:
        port = parts.port or DEFAULT_PORTS[parts.scheme]
        addresses = {info[4][0] for info in socket.getaddrinfo(parts.hostname, port, proto=socket.IPPROTO_TCP)}
    except (ValueError, OSError) as exc:
        raise UsageError(f"URL {url!r}: {first_line(exc)}") from None
    outside = sorted(a for a in addresses if not ipaddress.ip_address(a.split("%")[0]).is_loopback)
    if outside:
        raise UsageError(f"URL {url!r} resolves to {', '.join(outside)}, not a loopback address; loadtest only "
                         "measures a server on this machine (127.0.0.1, ::1, localhost)")
    return parts.scheme, parts.hostname, port


def check_options(opts: LoadOptions) -> None:
    if not opts.concurrency or any(c < 1 or c > MAX_CONCURRENCY for c in opts.concurrency):
        raise UsageError(f"--concurrency {opts.concurrency} is invalid; give client counts in 1..{MAX_CONCURRENCY}")
    if not 0 < opts.seconds <= 3600 or not 0 <= opts.warmup <= 600:
        raise UsageError(f"--seconds {opts.seconds} / --warmup {opts.warmup} are invalid; valid: 0 < seconds <= 3600, "
                         "0 <= warmup <= 600")
    if opts.max_requests < 1 or opts.batch < 1:
        raise UsageError(f"--max-requests {opts.max_requests} / --batch {opts.batch} are invalid; give numbers >= 1")


def client_module(protocol: str):
    if protocol == "http":
        return require("tritonclient.http", "pip install 'tritonclient[http]' (or use the serving venv)")
    return require("tritonclient.grpc", "pip install 'tritonclient[grpc]' (or use the serving venv)")


def _connect(protocol: str, host: str, port: int):
    module = client_module(protocol)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if protocol == "http":
        return module, module.InferenceServerClient(address, connection_timeout=10.0, network_timeout=60.0)
    return module, module.InferenceServerClient(address)


def input_spec(protocol: str, host: str, port: int, model: str) -> tuple[str, list[int], str]:
    """(input name, shape with -1 for the batch, datatype) from the server; one line if the model
    is not there or not ready."""
    module, client = _connect(protocol, host, port)
    try:
        if not client.is_model_ready(model):
            raise CheckFailed(f"model {model!r} is not ready at {protocol}://{host}:{port}")
        meta = client.get_model_metadata(model)
    except CheckFailed:
        raise
    except Exception as exc:
        raise CheckFailed(f"no Triton server answers at {protocol}://{host}:{port}: {first_line(exc)}") from None
    finally:
        client.close()
    inputs = meta["inputs"] if isinstance(meta, dict) else [{"name": i.name, "shape": list(i.shape), "datatype": i.datatype}
                                                             for i in meta.inputs]
    if len(inputs) != 1:
        raise UsageError(f"model {model!r} takes {len(inputs)} inputs; loadtest sends one (images)")
    return inputs[0]["name"], [int(d) for d in inputs[0]["shape"]], inputs[0]["datatype"]


def make_inputs(shape: list[int], batch: int, images: str | None) -> np.ndarray:
    """[n, *item] float32 pool the workers cycle through, n >= batch."""
    item = shape[1:]
    if images is None:
        return np.random.default_rng(0).standard_normal([max(batch, 8), *item]).astype(np.float32)
    files = images_in(images, limit=64)
    if len(item) != 3:
        raise UsageError(f"--images needs an image input [batch, 3, H, W]; the server's is {shape}")
    pool = preprocess([str(f) for f in files], dict(IMAGENET, input_size=item))
    return np.concatenate([pool] * -(-batch // len(pool))) if len(pool) < batch else pool


def _stats(protocol: str, host: str, port: int, model: str) -> tuple[int, int] | None:
    """(inference_count, execution_count) from the statistics endpoint, or None if closed."""
    try:
        _, client = _connect(protocol, host, port)
        stats = client.get_inference_statistics(model, as_json=True) if protocol == "grpc" else \
            client.get_inference_statistics(model)
        client.close()
        s = stats["model_stats"][0]
        return int(s.get("inference_count", 0)), int(s.get("execution_count", 0))
    except Exception:
        return None


def run_level(opts: LoadOptions, target: tuple[str, str, int], name: str, dtype: str, pool: np.ndarray,
              concurrency: int) -> dict:
    """One level: requests are sent until the window closes; what completes inside the window
    counts (as perf_analyzer counts), so slow requests straddling its end do not inflate it."""
    protocol, host, port = target
    done: list[list[tuple[float, float, bool]]] = [[] for _ in range(concurrency)]  # (start, end, ok)
    first_error: list[str] = []
    budget = [opts.max_requests]
    lock = threading.Lock()
    start = threading.Barrier(concurrency + 1)
    window = {}

    def worker(i: int) -> None:
        module, client = _connect(protocol, host, port)
        start.wait()
        n = 0
        try:
            while time.perf_counter() < window["stop"]:
                with lock:
                    if budget[0] <= 0:
                        break
                    budget[0] -= 1
                lo = (i + n) * opts.batch % (len(pool) - opts.batch + 1)
                n += 1
                tensor = module.InferInput(name, [opts.batch, *pool.shape[1:]], dtype)
                tensor.set_data_from_numpy(pool[lo:lo + opts.batch])
                t0 = time.perf_counter()
                try:
                    client.infer(opts.model, [tensor])
                    ok = True
                except Exception as exc:
                    ok = False
                    with lock:
                        first_error[:] = first_error or [first_line(exc, 200)]
                done[i].append((t0, time.perf_counter(), ok))
        finally:
            client.close()

    before = _stats(protocol, host, port, opts.model)
    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(concurrency)]
    for t in threads:
        t.start()
    now = time.perf_counter()
    window.update(measure=now + opts.warmup, stop=now + opts.warmup + opts.seconds)
    start.wait()
    for t in threads:
        t.join()
    after = _stats(protocol, host, port, opts.model)
    inside = [(t1 - t0, ok) for per in done for t0, t1, ok in per if window["measure"] <= t1 <= window["stop"]]
    ms = np.array([d for d, ok in inside if ok]) * 1e3
    row = {"concurrency": concurrency, "requests": int(ms.size), "errors": sum(1 for _, ok in inside if not ok),
           "first_error": first_error[0] if first_error else None,
           "req_per_s": ms.size / opts.seconds, "img_per_s": ms.size * opts.batch / opts.seconds}
    for q in (50, 90, 99):
        row[f"p{q}_ms"] = float(np.percentile(ms, q)) if ms.size else None
    row["max_ms"] = float(ms.max()) if ms.size else None
    executions = after[1] - before[1] if before and after else 0
    row["images_per_execution"] = (after[0] - before[0]) / executions if executions > 0 else None
    return row


def markdown(report: dict) -> str:
    fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
    lines = [f"# loadtest {report['model']} ({report['url']})", "",
             f"{report['protocol']}, batch {report['batch']} per request, {report['seconds']:g} s per level after "
             f"{report['warmup']:g} s warm-up, inputs: {report['inputs']}, load average {report['load_average']}", "",
             "| clients | requests | errors | req/s | img/s | p50 ms | p90 ms | p99 ms | max ms | images per execution |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        lines.append(f"| {r['concurrency']} | {r['requests']} | {r['errors']} | {r['req_per_s']:.1f} | "
                     f"{r['img_per_s']:.1f} | {fmt(r['p50_ms'], '.2f')} | {fmt(r['p90_ms'], '.2f')} | "
                     f"{fmt(r['p99_ms'], '.2f')} | {fmt(r['max_ms'], '.2f')} | {fmt(r['images_per_execution'], '.2f')} |")
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> Path:
    matplotlib = require("matplotlib", "pip install matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report["rows"] if r["requests"]]
    clients = [r["concurrency"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(clients, [r["req_per_s"] for r in rows], "o-")
    left.set(xlabel="concurrent clients", ylabel="requests / s", title="throughput", xscale="log")
    for q in (50, 90, 99):
        right.plot(clients, [r[f"p{q}_ms"] for r in rows], "o-", label=f"p{q}")
    right.set(xlabel="concurrent clients", ylabel="latency (ms)", title="latency", xscale="log")
    right.legend()
    fig.suptitle(f"{report['model']} over {report['protocol']}, batch {report['batch']}")
    fig.tight_layout()
    try:
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, format="png", dpi=100)
    finally:
        plt.close(fig)
    return path


def loadtest(opts: LoadOptions, progress=None) -> dict:
    check_options(opts)
    target = parse_url(opts.url)
    output = check_output_file(opts.output or f"loadtest-{opts.model}.json")
    if output.suffix != ".json":
        raise UsageError(f"-o {str(output)!r} must end in .json (the .md and .png go beside it)")
    name, shape, dtype = input_spec(*target, opts.model)
    pool = make_inputs(shape, opts.batch, opts.images)
    report = {"schema": SCHEMA, "url": opts.url, "protocol": target[0], "model": opts.model, "batch": opts.batch,
              "input_shape": [opts.batch, *shape[1:]], "inputs": opts.images or "random normal",
              "seconds": opts.seconds, "warmup": opts.warmup, "max_requests": opts.max_requests,
              "load_average": [round(v, 2) for v in os.getloadavg()], "rows": []}
    for c in opts.concurrency:
        if progress:
            progress(f"{c} clients")
        report["rows"].append(run_level(opts, target, name, dtype, pool, c))
    md, png = output.with_suffix(".md"), output.with_suffix(".png")
    report["markdown"] = str(md)
    report["plot"] = str(png) if importlib.util.find_spec("matplotlib") else None
    with atomic_path(md, suffix=".md") as tmp:
        tmp.write_text(markdown(report))
    if report["plot"]:  # a convenience: without matplotlib the JSON and the table still count
        plot(report, png)
    with atomic_path(output, suffix=".json") as tmp:
        tmp.write_text(json.dumps(report, indent=2))
    return report
