"""LOGIC tests of the "trt" runtime backend with a FAKE tensorrt module and a fake CUDA runtime over
host memory (tests/trt_fakes.py): manifest checks before deserialising, profile/K selection, the
tensor-name API calls and the I/O data path. No TensorRT engine runs; no GPU is used."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from trt_fakes import Recorder, add_fake_runtime, fake_cudart, fake_tensorrt, make_onnx

from tscli.errors import InputError, ModelFileError, UsageError
from tscli.runtime import load
from tscli.runtime.trt import backend as TB
from tscli.runtime.trt.host import GpuInfo
from tscli.tools import engine_build as B

ORIN = GpuInfo("Orin", "8.7", "12.6", "12.6", "cuda-python")


def _install(monkeypatch, version="10.3.0.30", gpu=ORIN, **kw):
    trt = add_fake_runtime(fake_tensorrt(version, Recorder(), **kw))
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(B, "detect_gpu", lambda: (ORIN, []))
    monkeypatch.setattr(TB, "detect_gpu", lambda: (gpu, [] if gpu else ["none"]))
    monkeypatch.setattr(TB, "import_cudart", fake_cudart)
    return trt


@pytest.fixture
def engine(monkeypatch, tmp_path):
    _install(monkeypatch)
    src = make_onnx(tmp_path / "tiny.onnx")
    B.build_engine(B.BuildOptions(str(src), str(tmp_path / "tiny.engine"), k_ranges=["8:16:24"], ks=[32], batch="1:2:4"))
    return tmp_path / "tiny.engine"


def test_logic_runner_over_trt_backend(monkeypatch, engine):
    trt = _install(monkeypatch)
    runner = load(engine, k=12, backend="trt")
    assert runner.k == 12 and runner.provider == "TensorRT 10.3.0.30" and runner.backend_name == "trt"
    assert runner.meta["model"] == "tiny_ats" and runner.meta["max_k"] == 32  # from the manifest's metadata
    assert ("set_optimization_profile_async", 0) in trt.recorder.calls
    # engines of plugin-form files carry DETAILED layer information; the context drops back to names only
    assert runner.backend.context.nvtx_verbosity == trt.ProfilingVerbosity.LAYER_NAMES_ONLY
    assert ("set_input_shape", "k_select", (12,)) in trt.recorder.calls
    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
    out = runner.infer(x)
    np.testing.assert_allclose(out["logits"], x.mean(axis=(2, 3)), rtol=1e-6)
    assert out["kept_counts"].dtype == np.int64 and (out["kept_counts"] == 13).all()
    cudart = runner.backend.cuda.rt
    runner.backend.close()
    assert cudart.destroyed_streams == [7] and cudart.buffers == {}  # stream and device buffers released


def test_logic_k_selects_profile_and_default_k(monkeypatch, engine):
    trt = _install(monkeypatch)
    assert load(engine, k=32, backend="trt").backend.profile_index == 1
    assert ("set_optimization_profile_async", 1) in trt.recorder.calls
    # max_k = 32 is in profile 1, so the default K is max_k, as with the ORT backend
    assert load(engine, backend="trt").k == 32
    with pytest.raises(UsageError, match=r"K=30 is not in any profile of this engine \(K ranges: 8\.\.24, 32\.\.32\)"):
        load(engine, k=30, backend="trt")


def test_logic_batch_outside_profile(monkeypatch, engine):
    _install(monkeypatch)
    runner = load(engine, k=16, backend="trt")
    with pytest.raises(InputError, match=r"batch 5 is outside this engine's batch range 1\.\.4"):
        runner.infer(np.zeros((5, 3, 32, 32), np.float32))


def test_logic_mismatch_checked_before_deserialising(monkeypatch, engine):
    trt = _install(monkeypatch, version="10.7.0")
    with pytest.raises(ModelFileError, match=r"built with TensorRT 10\.3\.0\.30, this host has TensorRT 10\.7\.0"):
        load(engine, backend="trt")
    assert "deserialize_cuda_engine" not in trt.recorder.names()
    trt = _install(monkeypatch, gpu=GpuInfo("NVIDIA GeForce RTX 4090", "8.9"))
    with pytest.raises(ModelFileError, match=r"'Orin' \(compute capability 8\.7\), this host has 'NVIDIA GeForce RTX 4090'"):
        load(engine, backend="trt")
    assert "deserialize_cuda_engine" not in trt.recorder.names()


def test_logic_engine_bytes_must_match_manifest(monkeypatch, engine):
    _install(monkeypatch)
    engine.write_bytes(engine.read_bytes() + b" ")
    with pytest.raises(ModelFileError, match="is not the one its manifest describes"):
        load(engine, backend="trt")


def test_logic_plugin_engine_needs_creators(monkeypatch, tmp_path):
    _install(monkeypatch, plugin_layers=2)
    src = make_onnx(tmp_path / "p.onnx", plugin_node=True, form="plugin")
    lib = tmp_path / "libtscli_plugins.so"
    lib.write_bytes(b"fake")
    B.build_engine(B.BuildOptions(str(src), str(tmp_path / "p.engine"), plugins=str(lib)))
    lib.unlink()  # moved to another machine: the recorded path is gone and nothing else is found
    monkeypatch.setenv("TSCLI_PLUGIN_PATH", str(tmp_path / "nowhere"))
    monkeypatch.chdir(tmp_path)
    trt = _install(monkeypatch, creators=())
    with pytest.raises(ModelFileError, match="no TensorRT plugin creator for tscli::ATSSample v1 .no plugin library loaded"):
        load(tmp_path / "p.engine", backend="trt")
    assert "deserialize_cuda_engine" not in trt.recorder.names()
