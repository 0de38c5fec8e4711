"""`tscli parity FILE`: rebuild the PyTorch model from the file's metadata and compare."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import UsageError
from ..models.build import build_from_metadata
from ..runtime import load
from ..runtime.preprocess import preprocess
from .validate import ParityReport, run_parity


def parity_inputs(meta: dict, images: Path | None, n: int, seed: int = 0) -> np.ndarray:
    """n real images (a folder, or scikit-image samples) plus 2 random inputs, preprocessed."""
    from ..data.samples import images_in, sample_images

    if n < 1:
        raise UsageError(f"--n {n} is invalid; give at least 1 image")
    sources = [str(p) for p in images_in(images, n)] if images else [a for _, a in sample_images(n)]
    real = preprocess(sources, meta)
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal((2,) + tuple(meta["input_size"])).astype(np.float32)
    return np.concatenate([real, noise])


def parity_for_file(path: Path, checkpoint: Path | None, images: Path | None, n: int, ks: list[int] | None,
                    threads: int | None, backend: str = "ort", plugins: Path | None = None,
                    probe=None) -> ParityReport:
    """``plugins``: the op library a plugin-form file runs with (ort: tscli's ORT ops; trt: the
    TensorRT plugins), so that what is compared is what will be deployed. ``probe``: a runner the
    caller already opened with these arguments and no K (it is reused, not opened again)."""
    if probe is None:  # validates the file, reads metadata
        probe = load(path, backend=backend, threads=threads, plugins=plugins)
    meta = probe.meta
    if ks is None:
        ks = [None] if probe.k is None else sorted({probe.k, max(1, probe.k // 2)}, reverse=True)
    # One runner per K, opened (and so checked) before the slow part; the probe already is the
    # max_k runner.
    runners = {k: probe if k == probe.k else load(path, k=k, backend=backend, threads=threads, plugins=plugins)
               for k in ks}
    built = build_from_metadata(meta, str(checkpoint) if checkpoint else None)
    x = parity_inputs(meta, images, n)
    return run_parity(runners.__getitem__, built, x, ks)
