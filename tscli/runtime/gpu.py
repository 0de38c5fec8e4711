"""Opening the GPU backends ("trt", "ort-cuda", "ort-trt") for runner.load; lazy imports only."""

from __future__ import annotations

from pathlib import Path


def open_gpu_backend(path: str | Path, backend: str, k: int | None = None, threads: int | None = None,
                     plugins: str | None = None):
    """The backend object (same interface as OrtBackend). For "trt", K picks the engine profile
    and is resolved here (backend.k), because an engine fixes K at load time."""
    if backend == "trt":
        from .trt.backend import TrtBackend

        return TrtBackend(path, k=k, plugins=plugins)
    from .ort_gpu import open_ort_gpu

    return open_ort_gpu(path, backend, k=k, threads=threads)
