"""`tscli triton-repo`: repositories for each backend parse as Triton model configs (Triton's own
protobuf, from the serving venv's tritonclient) and carry the chosen K / xi; frozen files equal
the runtime; bad input is one line with nothing written. Also the Python-backend model's request
handling, and the serve/loadtest front doors that need no server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tomllib

from tscli.errors import ModelFileError, UsageError
from tscli.files import sha256_file
from tscli.runtime import device_profiles as P
from tscli.runtime import load, triton_model
from tscli.runtime.preprocess import preprocess
from tscli.tools import triton_config as T
from tscli.tools.loadtest import parse_url
from tscli.tools.serve_env import SERVE_PACKAGES
from tscli.tools.triton_repo import RepoOptions, write_repo

ROOT = Path(__file__).resolve().parents[1]
TOL = 1e-5  # a frozen copy runs the same graph as the runtime at that K (measured: 0)


@pytest.fixture(autouse=True)
def _validator(serve_python, monkeypatch):
    """The project's venv has no tritonclient: the validator takes the serving venv's."""
    monkeypatch.setenv("TSCLI_SERVE_PYTHON", str(serve_python))


def tscli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "tscli.cli", *map(str, args)], capture_output=True, text=True,
                          env=dict(os.environ, COLUMNS="200", **(env or {})), timeout=600)


def one_line(proc, code: int, message: str) -> None:
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert proc.returncode == code and len(lines) == 1 and message in lines[0], (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr


def _same(got: dict, want: dict) -> None:
    assert got and set(got) <= set(want)
    for n, value in got.items():
        assert value.shape == want[n].shape, n
        if value.dtype.kind == "f":
            assert np.max(np.abs(value - want[n])) <= TOL, n
        else:
            assert np.array_equal(value, want[n]), n


def test_serve_extra_lists_the_setup_packages():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert extras["serve"] == list(SERVE_PACKAGES)


@pytest.mark.parametrize("backend", ["onnxruntime", "tensorrt", "python"])
def test_repository_parses_and_carries_k_and_xi(backend, serving_exports, sample_arrays, tmp_path):
    ats, dovit = serving_exports["ats"], serving_exports["dovit"]
    repo = tmp_path / "repo"
    specs = write_repo(RepoOptions([str(ats), str(dovit)], str(repo), k=16, xi=0.9, backend=backend, max_batch=8,
                                   instances=2))
    assert [s.name for s in specs] == ["tiny_ats_k16", "tiny_dovit"]
    assert sorted(p.name for p in repo.iterdir()) == ["serve.sh", "tiny_ats_k16", "tiny_dovit"]
    for spec, file, k, xi in ((specs[0], ats, 16, None), (specs[1], dovit, None, 0.9)):
        folder = repo / spec.name
        cfg = T.parse((folder / "config.pbtxt").read_text())
        assert T.problems(folder / "config.pbtxt", spec) == []
        assert (cfg.name, cfg.backend, cfg.max_batch_size) == (spec.name, backend, 8)
        assert cfg.HasField("dynamic_batching") and cfg.instance_group[0].count == 2
        assert [(i.name, list(i.dims)) for i in cfg.input] == [("images", list(load(file).meta["input_size"]))]
        params = {key: v.string_value for key, v in cfg.parameters.items()}
        assert params.get("tscli.k") == (str(k) if k else None) and params.get("tscli.xi") == (str(xi) if xi else None)
        assert params["tscli.source_sha256"] == sha256_file(file)
        runner = load(file, k=k, xi=xi)
        x = preprocess(sample_arrays[:4], runner.meta)
        if backend == "python":
            assert (folder / "1" / "model.py").read_bytes() == Path(triton_model.__file__).read_bytes()
            assert sha256_file(folder / "1" / file.name) == sha256_file(file) and params["tscli.file"] == file.name
            continue
        frozen = folder / ("1/model.onnx" if backend == "onnxruntime" else "source.onnx")
        fixed = load(frozen)  # no K and no xi left to choose
        assert fixed.backend.input_names == ["images"] and fixed.k is None and fixed.xi is None
        _same(fixed.infer(x), runner.infer(x))
        if backend == "tensorrt":
            assert cfg.instance_group[0].kind == T.model_config_pb2().ModelInstanceGroup.KIND_GPU
            script = (folder / "build_engine.sh").read_text()
            assert "--maxShapes=images:8x" in script and "--saveEngine=1/model.plan" in script
            assert list((folder / "1").iterdir()) == []  # the plan is built on the serving device
    saturated = [o for o in T.parse((repo / "tiny_dovit" / "config.pbtxt").read_text()).output if o.name == "saturated"][0]
    assert list(saturated.dims) == [1] and list(saturated.reshape.shape) == []  # [B] in the file


def test_keep_k_input_is_unbatched(serving_exports, tmp_path):
    ats = serving_exports["ats"]
    spec, = write_repo(RepoOptions([str(ats)], str(tmp_path / "repo"), k=12, keep_k_input=True))
    cfg = T.parse((tmp_path / "repo" / spec.name / "config.pbtxt").read_text())
    assert cfg.max_batch_size == 0 and not cfg.HasField("dynamic_batching")
    assert [(i.name, list(i.dims)) for i in cfg.input] == [("images", [-1, 3, 32, 32]), ("k_select", [12])]
    assert [list(o.dims) for o in cfg.output if o.name == "kept_positions"] == [[-1, 3, 13]]
    assert sha256_file(tmp_path / "repo" / spec.name / "1" / "model.onnx") == sha256_file(ats)


def test_k_auto_takes_the_named_devices_profile(serving_exports, tmp_path):
    ats = serving_exports["ats"]
    meta = load(ats).meta
    store = tmp_path / "profiles.json"

    def profile(cpu, gpu, backend, k, batch=1):
        return {"fingerprint": {"cpu": cpu, "gpu": gpu, "backend": backend, "provider": None}, "batch": batch,
                "model": P.model_identity(meta), "chosen_k": k}

    P.write_store(store, [profile("ARMv8 Processor rev 1", "Orin", "ort", 20), profile("ARMv8 Processor rev 1", "Orin", "trt", 24),
                          profile("Intel Xeon", None, "ort", 36)])
    for backend, device, k in (("onnxruntime", "orin", 20), ("tensorrt", "ORIN", 24), ("python", "xeon", 36)):
        spec, = write_repo(RepoOptions([str(ats)], str(tmp_path / backend), k="auto", profiles=str(store),
                                       device=device, backend=backend))
        assert spec.name == f"tiny_ats_k{k}" and spec.parameters["tscli.k"] == str(k)
    for device, message in (("jetson nano", "matches no device"), ("e", "matches 2 devices")):
        with pytest.raises(UsageError, match=message):
            write_repo(RepoOptions([str(ats)], str(tmp_path / "x"), k="auto", profiles=str(store), device=device))


def test_rewriting_replaces_one_model_and_keeps_the_others(serving_exports, tmp_path):
    ats, repo = str(serving_exports["ats"]), tmp_path / "repo"
    write_repo(RepoOptions([ats], str(repo), k=16))
    write_repo(RepoOptions([ats], str(repo), k=8))
    before = (repo / "tiny_ats_k16" / "1" / "model.onnx").stat().st_mtime_ns
    write_repo(RepoOptions([ats], str(repo), k=16, max_batch=4))
    assert sorted(p.name for p in repo.iterdir()) == ["serve.sh", "tiny_ats_k16", "tiny_ats_k8"]  # no temporaries
    assert (repo / "tiny_ats_k16" / "1" / "model.onnx").stat().st_mtime_ns != before
    assert T.parse((repo / "tiny_ats_k16" / "config.pbtxt").read_text()).max_batch_size == 4
    spec, = write_repo(RepoOptions([ats], str(repo), k=16, name="fleet.model"))  # one name across devices
    assert T.parse((repo / "fleet.model" / "config.pbtxt").read_text()).name == "fleet.model" == spec.name


def test_the_validator_catches_what_triton_refuses(serving_exports, tmp_path):
    spec, = write_repo(RepoOptions([str(serving_exports["ats"])], str(tmp_path / "repo"), k=16))
    config = tmp_path / "repo" / spec.name / "config.pbtxt"
    good = config.read_text()
    for text, message in ((good.replace("max_batch_size", "max_batch_sise"), "max_batch_sise"),
                          (good.replace("TYPE_FP32", "TYPE_FLOAT32", 1), "TYPE_FLOAT32")):
        with pytest.raises(ModelFileError, match=message):
            T.parse(text)
    for text, message in ((good.replace("dims: [ 10 ]", "dims: [  ]"), "logits: dims empty"),
                          (good.replace('name: "tiny_ats_k16"', 'name: "other"'), "is not the folder's name"),
                          (good.replace("max_batch_size: 8", "max_batch_size: 0"), "dynamic_batching needs max_batch_size > 0"),
                          (good.replace("dims: [ 3, 17 ]", "dims: [ 3, 0 ]"), "each must be -1 or >= 1"),
                          (good.replace("dims: [ 3, 17 ]", "dims: [ 3, 18 ]"), "outputs")):
        config.write_text(text)
        assert any(message in p for p in T.problems(config, spec)), (message, T.problems(config, spec))
    config.write_text(good)
    assert T.problems(config, spec) == []


def test_python_model_gives_a_bad_request_its_own_error(serving_exports, sample_arrays, monkeypatch, tmp_path):
    """Triton's Python backend, faked: three requests in one dynamic batch, the second with a NaN."""
    ats = serving_exports["ats"]
    spec, = write_repo(RepoOptions([str(ats)], str(tmp_path / "repo"), k=16, backend="python"))

    class Tensor:
        def __init__(self, name, value):
            self.name, self.value = name, value

        def as_numpy(self):
            return self.value

    class Response:
        def __init__(self, output_tensors, error=None):
            self.outputs, self.error = {t.name: t.value for t in output_tensors}, error

    fake = type(sys)("triton_python_backend_utils")
    fake.Tensor, fake.InferenceResponse, fake.TritonError = Tensor, Response, str
    fake.get_input_tensor_by_name = lambda request, name: request[name]
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", fake)
    model = triton_model.TritonPythonModel()
    model.initialize({"model_config": json.dumps({"name": spec.name, "output": [{"name": o.name} for o in spec.outputs],
                                                  "parameters": {k: {"string_value": v} for k, v in spec.parameters.items()}}),
                      "model_repository": str(tmp_path / "repo" / spec.name), "model_version": "1"})
    x = preprocess(sample_arrays[:4], model.runner.meta)
    bad = x[1:2].copy()
    bad[0, 0, 0, 0] = np.nan
    responses = model.execute([{"images": Tensor("images", v)} for v in (x[0:1], bad, x[2:4])])
    assert responses[1].error and "NaN" in responses[1].error and responses[0].error is None
    want = load(ats, k=16)
    for response, images in ((responses[0], x[0:1]), (responses[2], x[2:4])):
        _same(response.outputs, want.infer(images))


def test_loadtest_refuses_targets_off_this_machine():
    assert parse_url("http://127.0.0.1:8000") == ("http", "127.0.0.1", 8000)
    assert parse_url("localhost:9000")[0::2] == ("http", 9000)
    assert parse_url("grpc://[::1]:8001") == ("grpc", "::1", 8001)
    for url, message in (("http://10.1.2.3:8000", "not a loopback address"), ("ftp://127.0.0.1:21", "not http or grpc"),
                         ("http://127.0.0.1:8000/v2", "no path")):
        with pytest.raises(UsageError, match=message):
            parse_url(url)
    one_line(tscli("loadtest", "http://192.0.2.7:8000", "m"), 2, "not a loopback address")
    one_line(tscli("loadtest", "http://127.0.0.1:8000", "m", "--concurrency", "0"), 2, "--concurrency [0] is invalid")


def test_serve_front_door_errors_are_one_line(serving_exports, tmp_path):
    nowhere = {"TSCLI_CACHE": str(tmp_path / "cache"), "TSCLI_SERVE_PYTHON": ""}
    one_line(tscli("serve", tmp_path / "none.onnx"), 2, "does not exist")
    one_line(tscli("serve"), 2, "give FILE to serve")
    one_line(tscli("serve", serving_exports["ats"], env=nowhere), 2, "tscli serve --setup")
    one_line(tscli("serve", serving_exports["ats"], "--python", tmp_path / "python", env=nowhere), 2,
             "does not exist; give a Python interpreter")
    one_line(tscli("loadtest", "http://127.0.0.1:1", "m", env=nowhere), 2, "tscli serve --setup")


@pytest.mark.parametrize("args, message", [
    (["--backend", "nope"], "unknown --backend 'nope'; valid: onnxruntime, tensorrt, python"),
    (["--k", "41"], "K=41 is out of range"),
    (["--keep-k-input", "--backend", "python"], "--keep-k-input applies to the onnxruntime and tensorrt backends"),
    (["--device", "orin"], "--device selects whose profile --k auto uses"),
    (["--plugins", "lib.so"], "--plugins applies to --backend tensorrt"),
    (["--k", "auto"], "--k auto needs a device profile"),
    (["--max-batch", "-1"], "--max-batch -1 is invalid"),
    (["--name", "a b"], "--name 'a b' is invalid"),
])
def test_bad_repo_options_are_one_line_and_write_nothing(args, message, serving_exports, tmp_path):
    one_line(tscli("triton-repo", serving_exports["ats"], "-o", tmp_path / "repo", *args), 2, message)
    assert not (tmp_path / "repo").exists()


def test_bad_repo_files_are_one_line(serving_exports, tmp_path):
    (tmp_path / "file").write_text("x")
    one_line(tscli("triton-repo", serving_exports["ats"], "-o", tmp_path / "file"), 2, "is a file; give a folder")
    one_line(tscli("triton-repo", serving_exports["dovit"], "--k", "8", "-o", tmp_path / "r"), 2, "no file takes K")
    one_line(tscli("triton-repo", tmp_path / "none.onnx", "-o", tmp_path / "r"), 2, "does not exist")
    assert not (tmp_path / "r").exists()


def test_setup_refuses_an_existing_venv(tmp_path):
    (tmp_path / "serve-venv" / "bin").mkdir(parents=True)
    (tmp_path / "serve-venv" / "bin" / "python").write_text("")
    one_line(tscli("serve", "--setup", env={"TSCLI_CACHE": str(tmp_path)}), 2, "already exists; remove it first")


def test_sweep_removes_what_killed_servers_left(tmp_path):
    """A SIGKILLed server cannot clean up: its workspace and shared memory go at the next start."""
    from tscli.tools.serve import sweep_stale

    dead = 2 ** 22 + 7  # above the default pid_max of 4194304: never a live process
    root, shm = tmp_path / "serve", tmp_path / "shm"
    for d in (root / f"ws-{dead}", root / f"ws-{os.getpid()}", root / f"ws-{os.getppid()}", shm):
        d.mkdir(parents=True)
    for name in (f"pytrtion{dead}-abc", f"pytrtion{os.getppid()}-abc", "other"):
        (shm / name).write_text("")
    removed = sweep_stale([root], shm)
    assert sorted(p.name for p in removed) == sorted([f"ws-{dead}", f"ws-{os.getpid()}", f"pytrtion{dead}-abc"])
    assert sorted(p.name for p in root.iterdir()) == [f"ws-{os.getppid()}"]  # a live server's stays
    assert sorted(p.name for p in shm.iterdir()) == ["other", f"pytrtion{os.getppid()}-abc"]
