"""`tscli serve` end to end: a real Triton server (PyTriton) on free loopback ports, real images
over HTTP and gRPC, outputs equal to tscli.runtime at the same K, dynamic batching seen in the
server's statistics, `tscli loadtest` against it, and a clean stop on SIGTERM and SIGINT (exit 0,
ports free, no tritonserver or stub process, no shared-memory region, no workspace left).

Also: a `tscli triton-repo --backend python` repository loaded by the tritonserver binary that
the PyTriton wheel ships (the stock server, not PyTriton's proxy).

The server runs in the serving venv (numpy<2): $TSCLI_SERVE_PYTHON, else .venv-serve in the
checkout (`make serve-venv`; `make test` creates it). Without it these tests fail, not skip.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from tscli.runtime import load
from tscli.runtime.preprocess import preprocess

pytestmark = pytest.mark.serve
CLIENT = Path(__file__).with_name("triton_client.py")
TOL = 1e-5  # server vs tscli.runtime in-process, same file and K (measured: 0)


def _children(pid: int) -> set[int]:
    """Every live descendant of ``pid`` (from /proc)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parents[int(stat.parent.name)] = int(fields[1])
        except (OSError, IndexError, ValueError):
            continue
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, pp in parents.items() if pp in frontier and p not in found}
        found |= frontier
    return found


def _listen_addresses(port: int) -> set[str]:
    """Local addresses listening on ``port`` (/proc/net/tcp and tcp6, state 0A = LISTEN)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:
                found.add(address)
    return found


LOOPBACK = {"0100007F", "0000000000000000FFFF00000100007F", "00000000000000000000000001000000"}


def _free(port: int) -> bool:
    """Nothing listens on ``port`` and a server could bind it (SO_REUSEADDR, as servers do:
    closed connections in TIME_WAIT do not count)."""
    if _listen_addresses(port):
        return False
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class Server:
    """`tscli serve FILE ARGS --port 0 --json` from this (numpy 2) Python: it re-executes itself
    in the serving venv. The ready line is the JSON ServerInfo."""

    def __init__(self, file: Path, args: list[str], python: Path, tmp: Path):
        self.cache = tmp / "cache"
        self.err = tmp / "serve.err"
        env = dict(os.environ, TSCLI_CACHE=str(self.cache))
        env.pop("TSCLI_SERVE_PYTHON", None)  # --python decides
        self.proc = subprocess.Popen([sys.executable, "-m", "tscli.cli", "serve", str(file), *args, "--port", "0", "--json",
                                      "--python", str(python)], stdout=subprocess.PIPE, stderr=open(self.err, "w"),
                                     text=True, env=env, start_new_session=True)
        deadline = time.time() + 300
        while True:
            line = self.proc.stdout.readline()
            if line.startswith("{"):
                self.info = json.loads(line)
                break
            if not line and self.proc.poll() is not None or time.time() > deadline:
                self.kill()
                pytest.fail(f"tscli serve did not start (rc {self.proc.returncode}): {self.err.read_text()[-2000:]}")

    def port(self, which: str) -> int:
        return int(self.info[which].split(":")[2].split("/")[0])

    def stop(self, sig: int) -> int:
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(90)
        finally:
            self.kill()

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def _client(python: Path, info_http: str, info_grpc: str, model: str, x: np.ndarray, tmp: Path,
            concurrency: int, requests: int) -> tuple[dict, dict]:
    np.savez(tmp / "x.npz", x=x)
    request = {"http": info_http, "grpc": info_grpc, "model": model, "inputs": str(tmp / "x.npz"),
               "out": str(tmp / "y.npz"), "stats": str(tmp / "stats.json"), "concurrency": concurrency,
               "requests": requests}
    (tmp / "request.json").write_text(json.dumps(request))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the client needs no tscli
    proc = subprocess.run([str(python), str(CLIENT), str(tmp / "request.json")], capture_output=True, text=True,
                          timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return dict(np.load(tmp / "y.npz")), json.loads((tmp / "stats.json").read_text())


def _compare(got: dict, file: Path, k: int | None, x: np.ndarray, xi: float | None = None) -> None:
    runner = load(file, k=k, xi=xi)
    want_all = runner.infer(x)
    want_one = {n: np.concatenate([runner.infer(x[i:i + 1])[n] for i in range(len(x))]) for n in want_all}
    names = list(runner.backend.output_names)
    for proto in ("http", "grpc"):
        for mode, want in (("all", want_all), ("one", want_one)):
            for n in names:
                value, ref = got[f"{proto}/{mode}/{n}"], want[n]
                assert value.shape == (ref.shape if ref.ndim > 1 else (len(ref), 1)), (proto, mode, n, value.shape)
                value = value.reshape(ref.shape)
                if ref.dtype.kind == "f":
                    assert np.max(np.abs(value - ref)) <= TOL, (proto, mode, n)
                else:
                    assert np.array_equal(value, ref), (proto, mode, n)


def _assert_clean(server: Server, children: set[int], ports: list[int]) -> None:
    deadline = time.time() + 20
    while time.time() < deadline and any(Path(f"/proc/{p}").exists() for p in children):
        time.sleep(0.2)
    left = [p for p in children if Path(f"/proc/{p}").exists()]
    assert not left, f"processes left after the stop: {left}"
    assert all(_free(p) for p in ports), ports
    assert not list(Path("/dev/shm").glob(f"pytrtion{server.info['pid']}-*"))
    roots = [server.cache / "serve", Path(tempfile.gettempdir()) / f"tscli-serve-{os.getuid()}"]
    assert not [r / f"ws-{server.info['pid']}" for r in roots if (r / f"ws-{server.info['pid']}").exists()]


def test_serve_matches_the_runtime_batches_and_stops_on_sigterm(serving_exports, serve_python, sample_arrays, tmp_path):
    file, k = serving_exports["ats"], 16
    server = Server(file, ["--k", str(k), "--max-batch", "8"], serve_python, tmp_path)
    try:
        info = server.info
        assert info["model"] == "tiny_ats_k16" and info["k"] == k
        assert info["outputs"] == {"logits": [10], "kept_counts": [3], "kept_positions": [3, k + 1]}
        ports = [server.port("http"), server.port("grpc"), server.port("metrics")]
        for p in ports:  # bound to loopback only
            assert _listen_addresses(p) and _listen_addresses(p) <= LOOPBACK, (p, _listen_addresses(p))
        x = preprocess(sample_arrays[:6], load(file).meta)
        got, stats = _client(serve_python, info["http"], info["grpc"], info["model"], x, tmp_path, 16, 20)
        _compare(got, file, k, x)
        assert stats["errors"] == []
        assert max(int(b) for b in stats["batch_sizes"]) > 1, stats  # concurrent requests were batched
        assert stats["inference_count"] > stats["execution_count"], stats
        assert any(m.startswith("nv_inference_exec_count{") for m in stats["metrics"])

        report = tmp_path / "lt.json"
        env = dict(os.environ)
        env.pop("TSCLI_SERVE_PYTHON", None)
        for url, levels in ((info["http"], "1,4"), (info["grpc"], "2")):
            proc = subprocess.run([sys.executable, "-m", "tscli.cli", "loadtest", url, info["model"], "--concurrency", levels,
                                   "--seconds", "1", "--warmup", "0.3", "-o", str(report), "--python", str(serve_python)],
                                  capture_output=True, text=True, timeout=300, env=env)
            assert proc.returncode == 0, proc.stderr
            data = json.loads(report.read_text())
            assert [r["concurrency"] for r in data["rows"]] == [int(c) for c in levels.split(",")]
            for r in data["rows"]:
                assert r["requests"] > 0 and r["errors"] == 0
                assert r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"] <= r["max_ms"]
                assert r["req_per_s"] == pytest.approx(r["requests"] / 1.0)
            assert report.with_suffix(".md").is_file() and report.with_suffix(".png").stat().st_size > 1000

        children = _children(server.proc.pid)
        assert children, "tritonserver should run as a child of tscli serve"
        assert server.stop(signal.SIGTERM) == 0, server.err.read_text()[-2000:]
        assert "stopped" in server.err.read_text()
        _assert_clean(server, children, ports)
    finally:
        server.kill()


def test_serve_dovit_outputs_and_sigint(serving_exports, serve_python, sample_arrays, tmp_path):
    file, xi = serving_exports["dovit"], 0.9
    server = Server(file, ["--xi", str(xi), "--max-batch", "4"], serve_python, tmp_path)
    try:
        info = server.info
        assert info["model"] == "tiny_dovit" and info["xi"] == pytest.approx(xi)
        assert set(info["outputs"]) == {"seg_logits", "kept_counts", "kept_masks", "saturated"}
        assert info["outputs"]["saturated"] == [1]  # [B] in the file; Triton needs rank >= 1
        x = preprocess(sample_arrays[:3], load(file).meta)
        got, stats = _client(serve_python, info["http"], info["grpc"], info["model"], x, tmp_path, 2, 3)
        _compare(got, file, None, x, xi=xi)
        assert stats["errors"] == []
        children = _children(server.proc.pid)
        ports = [server.port("http"), server.port("grpc"), server.port("metrics")]
        assert server.stop(signal.SIGINT) == 0, server.err.read_text()[-2000:]
        _assert_clean(server, children, ports)
    finally:
        server.kill()


def _tritonserver(python: Path, tmp: Path) -> tuple[Path, dict]:
    """The tritonserver binary of the PyTriton wheel, set up as PyTriton sets it up: a copy with
    the Python-backend stub for this Python version, libpython and the wheel's libraries on the
    loader path, the serving venv first on PATH (the stub takes its Python from there)."""
    code = ("import os, sys, sysconfig, pytriton; print(os.path.dirname(pytriton.__file__)); "
            "print(sysconfig.get_config_var('LIBDIR')); print(f'{sys.version_info[0]}.{sys.version_info[1]}')")
    package, libdir, version = subprocess.run([str(python), "-c", code], capture_output=True, text=True,
                                              check=True).stdout.split()
    dist = tmp / "tritonserver"
    shutil.copytree(Path(package) / "tritonserver", dist, ignore=shutil.ignore_patterns("python_backend_stubs"))
    shutil.copy2(Path(package) / "tritonserver" / "python_backend_stubs" / version / "triton_python_backend_stub",
                 dist / "backends" / "python")
    libs = Path(package).parent / "nvidia_pytriton.libs"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the stub must find tscli installed
    env.update(LD_LIBRARY_PATH=f"{libdir}:{libs}", PATH=f"{python.parent}:{env.get('PATH', '')}")
    return dist, env


def test_python_backend_repository_on_the_stock_tritonserver(serving_exports, serve_python, sample_arrays, tmp_path):
    repo = tmp_path / "repo"
    proc = subprocess.run([sys.executable, "-m", "tscli.cli", "triton-repo", serving_exports["ats"], serving_exports["dovit"],
                           "--k", "8", "--backend", "python", "--max-batch", "4", "-o", repo],
                          capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, TSCLI_SERVE_PYTHON=str(serve_python)))  # its tritonclient validates
    assert proc.returncode == 0, proc.stderr
    dist, env = _tritonserver(serve_python, tmp_path)
    http = None
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if all(_free(p) for p in (base, base + 1, base + 2)):
            http = base
            break
    log = open(tmp_path / "tritonserver.log", "w")
    server = subprocess.Popen([str(dist / "bin" / "tritonserver"), f"--model-repository={repo}",
                               f"--backend-directory={dist / 'backends'}", "--http-address=127.0.0.1",
                               f"--http-port={http}", "--grpc-address=127.0.0.1", f"--grpc-port={http + 1}",
                               "--metrics-address=127.0.0.1", f"--metrics-port={http + 2}", "--allow-gpu-metrics=false",
                               "--exit-timeout-secs=5"], stdout=log, stderr=subprocess.STDOUT, env=env,
                              start_new_session=True)
    try:
        import urllib.request

        ready = False
        for _ in range(240):
            try:
                ready = urllib.request.urlopen(f"http://127.0.0.1:{http}/v2/health/ready", timeout=2).status == 200
            except OSError:
                pass
            if ready or server.poll() is not None:
                break
            time.sleep(0.5)
        assert ready, (tmp_path / "tritonserver.log").read_text()[-3000:]
        for model, file, k in (("tiny_ats_k8", serving_exports["ats"], 8), ("tiny_dovit", serving_exports["dovit"], None)):
            x = preprocess(sample_arrays[:3], load(file).meta)
            work = tmp_path / model
            work.mkdir()
            got, stats = _client(serve_python, f"http://127.0.0.1:{http}", f"grpc://127.0.0.1:{http + 1}", model, x,
                                 work, 8, 5)
            _compare(got, file, k, x)
            assert stats["errors"] == []
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(60)
        finally:
            if server.poll() is None:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
    assert server.returncode == 0
