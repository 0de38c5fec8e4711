"""``tscli serve``: one tscli file behind a real Triton Inference Server (PyTriton), loopback only.

The server's HTTP, gRPC and metrics endpoints bind to 127.0.0.1 (ports P, P+1, P+2). The model
takes one input, ``images`` (float32 [batch, 3, H, W], preprocessed), and returns the file's own
outputs (logits, kept_counts, kept_positions; DoViT: seg_logits, kept_counts, kept_masks and
saturated as [batch, 1], since Triton needs outputs of rank >= 1). K and xi are fixed at load
(runtime/triton_model.py says why). Dynamic batching joins concurrent requests, up to
``max_batch`` images per run.

Runs in the serving interpreter (tools/serve_env.py). PyTriton runs the inference function in
this process and starts tritonserver as a child with a workspace (a copy of the server, ~30 MB,
and PyTriton's sockets) under $TSCLI_CACHE/serve (default ~/.cache/tscli/serve; the temporary
folder when that path is too long for a Unix socket). Stopping: SIGTERM and SIGINT only set
an event; leaving the Triton context then stops tritonserver, removes the workspace and the
shared-memory regions. What a killed (SIGKILL) server left behind is removed at the next start.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import sysconfig
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .. import contract as C
from ..errors import CheckFailed, TscliError, UsageError, first_line, require
from ..runtime.runner import Runner, load
from ..runtime.triton_model import output_specs, run_requests
from .serve_env import cache_root

HOST = "127.0.0.1"
# Endpoints that need PyTriton's access token. Statistics stay open (read-only counters, and the
# server is loopback-only), so `curl .../v2/models/M/stats` shows the batch sizes it ran.
RESTRICTED = ["shared-memory", "model-repository", "trace", "logging"]
SHM_PATTERN = re.compile(r"pytrtion(\d+)-")  # PyTriton's own spelling of its shm prefix


@dataclass
class ServeOptions:
    file: str
    k: int | str | None = None  # None: max_k; "auto": this device's profile
    xi: float | None = None
    port: int = 8000  # HTTP; gRPC = port + 1, metrics = port + 2; 0 = three free ports
    max_batch: int = 8  # 0 = no batching
    delay_us: int = 0  # how long the batcher may wait to fill a batch
    threads: int | None = None
    name: str | None = None
    profiles: str | None = None
    log: str | None = None  # tritonserver's log file (default: in the workspace, removed on stop)


@dataclass
class ServerInfo:
    model: str
    k: int | None
    xi: float | None
    http: str
    grpc: str
    metrics: str
    max_batch: int
    pid: int
    inputs: dict[str, list[int]] = field(default_factory=dict)
    outputs: dict[str, list[int]] = field(default_factory=dict)


SOCKET_PATH_MAX = 107  # a Unix socket path (sun_path) holds 108 bytes with its terminating zero


def workspace_roots() -> list[Path]:
    """Where workspaces go: $TSCLI_CACHE/serve (default ~/.cache/tscli/serve), or the system's
    temporary folder when that path is too long for the Unix sockets PyTriton puts in it."""
    return [cache_root() / "serve", Path(tempfile.gettempdir()) / f"tscli-serve-{os.getuid()}"]


def workspace_for(name: str) -> Path:
    sockets = len(f"/ws-{os.getpid()}/{name}_0_0-server.sock")
    for root in workspace_roots():
        if len(str(root)) + sockets <= SOCKET_PATH_MAX:
            return root / f"ws-{os.getpid()}"
    raise UsageError(f"model name {name!r} is too long for PyTriton's Unix sockets; give a shorter --name")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale(roots: list[Path] | None = None, shm: Path = Path("/dev/shm")) -> list[Path]:
    """Remove what servers killed outright left: their workspaces (ws-PID) and PyTriton's
    shared-memory regions (pytrtionPID-...) whose PID is gone."""
    removed = []
    folders = [d for root in roots or workspace_roots() if root.is_dir() for d in root.glob("ws-*")]
    for d in folders:
        pid = d.name[3:]
        if pid.isdigit() and (int(pid) == os.getpid() or not _alive(int(pid))):  # our own PID: an old server's
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
    for f in shm.glob("pytrtion*") if shm.is_dir() else []:
        m = SHM_PATTERN.match(f.name)
        if m and not _alive(int(m.group(1))):
            f.unlink(missing_ok=True)
            removed.append(f)
    return removed


def _bindable(port: int) -> bool:
    """Free to listen on, as tritonserver binds (SO_REUSEADDR: connections of a server that just
    stopped, in TIME_WAIT, do not block the port)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def choose_ports(port: int) -> tuple[int, int, int]:
    """(http, grpc, metrics) = port, port + 1, port + 2, all free on 127.0.0.1; port 0 picks them."""
    if port == 0:
        for _ in range(50):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind((HOST, 0))
                base = s.getsockname()[1]
            if base + 2 <= 65535 and all(_bindable(p) for p in (base, base + 1, base + 2)):
                return base, base + 1, base + 2
        raise UsageError("no three consecutive free ports found on 127.0.0.1; give --port")
    if not 1024 <= port <= 65533:
        raise UsageError(f"--port {port} is invalid; give 1024..65533 (HTTP; gRPC and metrics use the next two) or 0")
    for p, what in ((port, "HTTP"), (port + 1, "gRPC"), (port + 2, "metrics")):
        if not _bindable(p):
            raise UsageError(f"port {p} ({what}) on {HOST} is in use; give another --port (HTTP = P, gRPC = P+1, metrics = P+2)")
    return port, port + 1, port + 2


def model_name(path: str | Path, runner: Runner, name: str | None) -> str:
    """Triton model names allow letters, digits, '.', '_' and '-'; the default names K."""
    if name is None:
        name = Path(path).stem + (f"_k{runner.k}" if runner.k is not None else "")
        name = re.sub(r"[^A-Za-z0-9._-]", "_", name)
    elif not re.fullmatch(r"[A-Za-z0-9._-]+", name):
        raise UsageError(f"--name {name!r} is invalid; use letters, digits, '.', '_' and '-'")
    return name


@contextlib.contextmanager
def server_env():
    """Give tritonserver (and the Python-backend stub it starts) this interpreter's libpython.

    The stub finds libpython3.X.so by name; without a hint the loader takes the system's copy,
    which differs from a pyenv/uv interpreter's, and the stub dies with an RLock error. PyTriton
    copies os.environ when it starts tritonserver; this process read LD_LIBRARY_PATH at exec
    time, so the change is scoped to the start and undone afterwards."""
    old = os.environ.get("LD_LIBRARY_PATH")
    libdir = sysconfig.get_config_var("LIBDIR")
    if libdir and sysconfig.get_config_var("Py_ENABLE_SHARED"):
        os.environ["LD_LIBRARY_PATH"] = libdir + (f":{old}" if old else "")
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("LD_LIBRARY_PATH", None)
        else:
            os.environ["LD_LIBRARY_PATH"] = old


def _log_error(log: Path) -> str | None:
    """The last error line of tritonserver's log (E... lines), without its timestamp."""
    try:
        lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.startswith("E")]
    except OSError:
        return None
    return lines[-1].split("] ", 1)[-1].strip()[:300] if lines else None


def _infer_function(runner: Runner, names: list[str]):
    def infer(requests):
        images = [r[C.INPUT_IMAGES] for r in requests]
        results = run_requests(runner, images, names)
        # Triton needs rank >= 1 per item: a [B] output goes out as [B, 1]
        return [{n: v.reshape(len(v), 1) if v.ndim == 1 else v for n, v in r.items()} for r in results]

    return infer


def _check(opts: ServeOptions) -> None:
    for value, option, low in ((opts.max_batch, "--max-batch", 0), (opts.delay_us, "--delay-us", 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise UsageError(f"{option} {value!r} is invalid; give an integer >= {low}")


def serve(opts: ServeOptions, stop: threading.Event, on_ready: Callable[[ServerInfo], None]) -> int:
    """Serve until ``stop`` is set (the caller's signal handlers set it) or the server dies.
    0 after a clean stop, 1 if tritonserver or the inference proxy died."""
    _check(opts)
    require("pytriton", "the serving venv: tscli serve --setup")
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig, TritonSecurityConfig

    http, grpc, metrics = choose_ports(opts.port)  # a taken port is known before the model loads
    # One model instance: PyTriton starts extra instances' stubs with a 1 s handshake timeout,
    # which they missed on a loaded 2-core machine (Triton repositories take --instances).
    first = load(opts.file, k=opts.k, xi=opts.xi, threads=opts.threads, profiles=opts.profiles)
    name = model_name(opts.file, first, opts.name)
    inputs = {C.INPUT_IMAGES: list(first.meta["input_size"])}
    outputs = {n: (d or [1], dt) for n, (d, dt) in output_specs(first).items()}  # Triton: rank >= 1 per item
    if stop.is_set():  # a signal while the model loaded: no server to start
        return 0
    sweep_stale()
    workspace = workspace_for(name)
    workspace.parent.mkdir(parents=True, exist_ok=True)
    # tritonserver's own log goes to a file (PyTriton would print it on our stdout)
    log = Path(opts.log) if opts.log else workspace / "tritonserver.log"
    config = TritonConfig(http_address=HOST, http_port=http, grpc_address=HOST, grpc_port=grpc,
                          metrics_address=HOST, metrics_port=metrics, allow_sagemaker=False, allow_vertex_ai=False,
                          allow_gpu_metrics=False, allow_cpu_metrics=True, log_verbose=0, log_file=log,
                          exit_timeout_secs=5)  # a server orphaned by a SIGKILL exits within seconds
    batching = opts.max_batch > 0
    # With batching off, PyTriton still wants the leading batch dimension in the tensors' shapes.
    lead = [] if batching else [-1]
    try:
        triton = Triton(config=config, workspace=workspace,
                        security_config=TritonSecurityConfig(restricted_endpoints=RESTRICTED))
        triton.bind(model_name=name, infer_func=_infer_function(first, list(outputs)),
                    inputs=[Tensor(name=n, dtype=np.float32, shape=tuple(lead + d)) for n, d in inputs.items()],
                    outputs=[Tensor(name=n, dtype=dt, shape=tuple(lead + d)) for n, (d, dt) in outputs.items()],
                    config=ModelConfig(batching=batching, max_batch_size=max(opts.max_batch, 1),
                                       batcher=DynamicBatcher(max_queue_delay_microseconds=opts.delay_us)),
                    strict=True)
    except BaseException:  # nothing started yet: only the workspace folder to remove
        shutil.rmtree(workspace, ignore_errors=True)
        raise
    with contextlib.ExitStack() as stack:
        try:
            with server_env():
                stack.enter_context(triton)  # starts tritonserver, loads the model; leaving the block stops it
        except TscliError:
            raise
        except Exception as exc:
            why = _log_error(log) or first_line(exc)
            triton.stop()
            raise CheckFailed(f"Triton did not start: {why}") from None
        on_ready(ServerInfo(name, first.k, first.xi, f"http://{HOST}:{http}", f"grpc://{HOST}:{grpc}",
                            f"http://{HOST}:{metrics}/metrics", opts.max_batch, os.getpid(), inputs,
                            {n: d for n, (d, _) in outputs.items()}))
        while not stop.wait(0.5):
            if not triton.is_alive():
                return 1
    return 0


def install_stop_handlers(stop: threading.Event) -> dict:
    """SIGTERM and SIGINT set ``stop`` (the serving loop then leaves the Triton context, which
    stops the server and cleans up). Set explicitly: shells start background jobs with SIGINT
    ignored. Returns the previous handlers."""
    previous = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        previous[sig] = signal.signal(sig, lambda signum, frame: stop.set())
    return previous


def restore_handlers(previous: dict) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)
