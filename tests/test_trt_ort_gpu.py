"""Backends ort-cuda / ort-trt: provider options, and a clear error when the provider is not the one
that really runs (this host's onnxruntime is CPU-only, so that error is what runs here)."""

from __future__ import annotations

from pathlib import Path

import pytest
from trt_fakes import make_onnx

from tscli.errors import MissingDependency
from tscli.runtime import BACKENDS, load
from tscli.runtime.ort.gpu import trt_provider_options


def test_trt_ep_profile_options_from_metadata():
    opts = trt_provider_options({"input_size": [3, 224, 224]}, True, 96, (1, 2, 8), Path("/c"), fp16=True)
    assert opts["trt_profile_min_shapes"] == "images:1x3x224x224,k_select:96"
    assert opts["trt_profile_opt_shapes"] == "images:2x3x224x224,k_select:96"
    assert opts["trt_profile_max_shapes"] == "images:8x3x224x224,k_select:96"
    assert opts["trt_engine_cache_enable"] == "True" and opts["trt_engine_cache_path"] == "/c"
    assert opts["trt_fp16_enable"] == "True"
    dense = trt_provider_options({"input_size": [3, 32, 32]}, False, None, (1, 1, 1), Path("/c"))
    assert dense["trt_profile_max_shapes"] == "images:1x3x32x32"


@pytest.mark.parametrize("backend,provider", [("ort-cuda", "CUDAExecutionProvider"), ("ort-trt", "TensorrtExecutionProvider")])
def test_requested_gpu_provider_not_active_is_an_error(tmp_path, backend, provider):
    import onnxruntime as ort

    if provider in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu installed: the error path needs a CPU-only build")
    assert backend in BACKENDS
    with pytest.raises(MissingDependency, match=f"{provider} is not in this onnxruntime .*onnxruntime-gpu"):
        load(make_onnx(tmp_path / "m.onnx"), backend=backend)


def test_active_check_catches_silent_fallback():
    """onnxruntime-gpu without CUDA lists CUDA as available but runs the CPU: check_active sees it."""
    from tscli.runtime.ort.gpu import check_active

    class Session:
        def get_providers(self):
            return ["CPUExecutionProvider"]

    backend = type("B", (), {"session": Session()})()
    with pytest.raises(MissingDependency, match="CUDAExecutionProvider was requested but ONNX Runtime runs CPUExecutionProvider"):
        check_active(backend, "CUDAExecutionProvider", ["CUDAExecutionProvider", "CPUExecutionProvider"])
