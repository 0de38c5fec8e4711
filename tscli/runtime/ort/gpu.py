"""Backends "ort-cuda" and "ort-trt": onnxruntime-gpu's CUDA / TensorRT execution providers.

onnxruntime-gpu on a host without a working CUDA silently falls back to the CPU while
get_available_providers() still lists CUDA, so the provider that really
runs (session.get_providers()[0]) is checked and a fallback is an error, not a quiet slowdown.
"""

from __future__ import annotations

import os
from pathlib import Path

from ... import contract as C
from ...errors import MissingDependency, UsageError
from .session import OrtBackend

PROVIDERS = {"ort-cuda": "CUDAExecutionProvider", "ort-trt": "TensorrtExecutionProvider"}
GPU_HINT = ("install onnxruntime-gpu built for your CUDA (it replaces onnxruntime: "
            "`pip uninstall onnxruntime && pip install onnxruntime-gpu`) and check `tscli doctor`")


def engine_cache_dir() -> Path:
    root = os.environ.get("TSCLI_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "tscli") / "ort-trt"


def _shape_list(shapes: dict[str, list[int]]) -> str:
    return ",".join(f"{name}:{'x'.join(map(str, dims))}" for name, dims in shapes.items())


def trt_provider_options(meta: dict, has_k: bool, k: int | None, batch: tuple[int, int, int],
                         cache_dir: Path, fp16: bool = False) -> dict:
    """TensorRT EP options: one profile with the batch range and K fixed (the runner fixes K at
    load), and an engine cache so the minutes-long build happens once per shape set."""
    chw = list(meta["input_size"])
    shapes = {key: {C.INPUT_IMAGES: [b, *chw]} for key, b in zip(("min", "opt", "max"), batch)}
    if has_k and k is not None:
        for key in shapes:
            shapes[key][C.INPUT_K] = [k]
    return {
        "trt_profile_min_shapes": _shape_list(shapes["min"]),
        "trt_profile_opt_shapes": _shape_list(shapes["opt"]),
        "trt_profile_max_shapes": _shape_list(shapes["max"]),
        "trt_engine_cache_enable": "True", "trt_engine_cache_path": str(cache_dir),
        "trt_timing_cache_enable": "True", "trt_timing_cache_path": str(cache_dir),
        "trt_fp16_enable": "True" if fp16 else "False",
    }


def _read_header(path: Path) -> tuple[dict, list[str]]:
    """Metadata and input names before the GPU session exists (its options depend on them)."""
    probe = OrtBackend(path)  # CPU session: cheap next to a TensorRT build, and needs no onnx package
    return C.decode_metadata(probe.metadata_props), probe.input_names


def check_active(backend: OrtBackend, wanted: str, available: list[str]) -> None:
    real = backend.session.get_providers()
    if not real or real[0] != wanted:
        raise MissingDependency(f"{wanted} was requested but ONNX Runtime runs {real[0] if real else 'nothing'} "
                                f"(available here: {', '.join(available)}): {GPU_HINT}")


def open_ort_gpu(path: str | Path, kind: str, k: int | None = None, threads: int | None = None,
                 batch: tuple[int, int, int] = (1, 1, 8), fp16: bool = False) -> OrtBackend:
    import onnxruntime as ort

    if kind not in PROVIDERS:
        raise UsageError(f"unknown ONNX Runtime GPU backend {kind!r}; valid: {', '.join(PROVIDERS)}")
    wanted = PROVIDERS[kind]
    available = ort.get_available_providers()
    if wanted not in available:
        raise MissingDependency(f"{wanted} is not in this onnxruntime (available: {', '.join(available)}): {GPU_HINT}")
    providers: list = [(wanted, {"device_id": 0})]
    if kind == "ort-trt":
        meta, inputs = _read_header(Path(path))
        if k is None and C.INPUT_K in inputs:
            k = meta.get("max_k")
        cache = engine_cache_dir()
        cache.mkdir(parents=True, exist_ok=True)
        providers = [(wanted, trt_provider_options(meta, C.INPUT_K in inputs, k, batch, cache, fp16)),
                     "CUDAExecutionProvider"]
    backend = OrtBackend(path, threads=threads, providers=providers + ["CPUExecutionProvider"])
    backend.name = kind
    check_active(backend, wanted, available)
    return backend
