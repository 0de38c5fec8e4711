"""One runner API over every backend. The model's metadata tells the runner everything it needs
(input size, mean/std, max_k, labels); K is fixed when the runner is created."""

from __future__ import annotations

import numbers
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import contract as C
from ..errors import InputError, ModelFileError, UsageError
from .backend import BACKENDS, Backend
from .device_profiles import auto_k
from .ort.gpu import open_ort_gpu
from .ort.session import OrtBackend
from .preprocess import preprocess
from .segmentation import segment
from .trt.backend import TrtBackend


@dataclass
class Prediction:
    source: str
    index: int
    label: str
    score: float
    top5: list[tuple[int, str, float]] = field(default_factory=list)
    kept_counts: list[int] = field(default_factory=list)
    # per stage, the token positions kept (0 = CLS, 1 + row * grid_width + col = a patch), ascending
    kept_positions: list[list[int]] = field(default_factory=list)


class RandomWeightsWarning(UserWarning):
    """The file was exported with random weights: its predictions and kept tokens are noise."""


def describe_weights(meta: dict) -> str:
    """Where a file's weights came from, in words (export, run and predict say it)."""
    weights = str(meta.get("weights") or "")
    if C.random_seed(weights) is not None:
        return (f"RANDOM, {weights}: predictions and kept tokens are noise; export with --pretrained or "
                "--checkpoint FILE for a real model")
    record = meta.get("pretrained")
    if isinstance(record, dict) and record.get("name"):
        return f"pretrained {record['name']} ({weights[:19]}...)"
    return f"checkpoint ({weights[:19]}...)" if weights else "unknown (no weights recorded)"


def kept_positions(positions: np.ndarray) -> list[list[int]]:
    """One image's kept_positions output [stages, slots] -> the kept positions of each stage
    (padding, -1, left out; a padded graph keeps tokens in their slots, so they are sorted here)."""
    return [sorted(int(p) for p in row if p >= 0) for row in positions]


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


class Runner:
    profile: dict | None = None  # set by load(k="auto"): the device profile K came from
    _warned_random = False

    def __init__(self, backend, k: int | None = None, xi: float | None = None, rate: float | None = None):
        self.backend = backend
        self.meta = C.decode_metadata(backend.metadata_props)
        if "model" not in self.meta or "family" not in self.meta:
            raise ModelFileError("this ONNX file was not exported by tscli (no tscli.* metadata); export it with `tscli export`")
        self._check_meta()
        self.k = self._check_k(k)
        self._k_feed = None if self.k is None else np.zeros(self.k, np.float32)
        self.xi = self._check_xi(xi)
        self.rate, self.keep_counts = self._check_rate(rate)
        self._keep_feeds = {C.keep_input(s): np.zeros(c, np.float32) for s, c in enumerate(self.keep_counts or ())}

    def _check_rate(self, rate):
        """DynamicViT / EViT keep rate chosen at load; None = the file's default. -> (rate, counts)."""
        if not C.is_reduction(self.meta):
            if rate is not None:
                raise UsageError(f"rate={rate} given, but {self.meta['model']} ({self.meta['family']}) has no keep rate to choose")
            return None, None
        return C.check_rate(self.meta["rate"] if rate is None else rate, self.meta)

    @property
    def keep_dims(self) -> dict[str, int]:
        """The kept-count dims of a DynamicViT / EViT file at this runner's rate (to pin in a session)."""
        return {C.keep_dim(s): c for s, c in enumerate(self.keep_counts or ())}

    @property
    def caveat(self) -> str | None:
        """A note for the user about the chosen rate (DynamicViT: predictors trained for one rate)."""
        return C.rate_caveat(self.meta, self.rate) if self.rate is not None else None

    def _check_meta(self) -> None:
        """The metadata the runner relies on, checked once (a hand-edited or truncated file says so
        here instead of failing later with a KeyError)."""
        size = self.meta.get("input_size")
        problems = []
        if not (isinstance(size, list) and len(size) == 3 and all(isinstance(v, int) and v > 0 for v in size)):
            problems.append(f"input_size {size!r}")
        for key in ("mean", "std"):
            v = self.meta.get(key)
            if not (isinstance(v, list) and len(v) == 3 and all(isinstance(x, (int, float)) for x in v)):
                problems.append(f"{key} {v!r}")
        if problems:
            raise ModelFileError(f"this file's tscli metadata is incomplete or malformed ({'; '.join(problems)}); "
                                 "export it again with `tscli export`")

    def _check_xi(self, xi):
        """DoViT threshold chosen at load; None = the file's default (the export value)."""
        if C.INPUT_XI not in self.backend.input_names:
            if xi is not None:
                raise UsageError(f"xi={xi} given, but {self.meta['model']} ({self.meta['family']}) has no threshold to choose")
            return None
        return float(self.meta.get("xi", 1.0)) if xi is None else C.check_xi(xi)

    def _check_k(self, k):
        max_k = self.meta.get("max_k")
        if C.INPUT_K not in self.backend.input_names:
            if k is not None and max_k is None:
                raise UsageError(f"K={k} given, but {self.meta['model']} ({self.meta['family']}) has no K to choose")
            return None
        return C.check_k(max_k if k is None else k, max_k)

    @property
    def backend_name(self) -> str:
        return self.backend.name

    @property
    def provider(self) -> str:
        return self.backend.provider

    @property
    def random_weights(self) -> bool:
        return C.random_seed(self.meta.get("weights")) is not None

    @property
    def label_names(self) -> list[str] | None:
        names = self.meta.get("label_names")
        return names if isinstance(names, list) else None

    def infer(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Preprocessed float32 [B, 3, H, W] -> dict of outputs (logits, kept_counts, kept_positions)."""
        expected = tuple(self.meta["input_size"])
        if not isinstance(x, np.ndarray) or x.ndim != 4 or tuple(x.shape[1:]) != expected:
            got = getattr(x, "shape", type(x).__name__)
            raise InputError(f"input must be a float32 array [B, {', '.join(map(str, expected))}]; got {got}")
        if x.dtype.kind != "f":  # uint8 pixels, bools, strings, complex: never silently cast
            raise InputError(f"input must be a float array of preprocessed images (float32); got {x.dtype} "
                             "(preprocess uint8 images with tscli.runtime.preprocess, or use Runner.predict)")
        finite = np.isfinite(x).reshape(len(x), -1).all(axis=1)
        if not finite.all():
            bad = ", ".join(str(i) for i in np.flatnonzero(~finite)[:5])
            raise InputError(f"input has NaN or infinite values (image {bad} of the batch); they would give NaN "
                             "logits and meaningless kept tokens")
        feeds = {C.INPUT_IMAGES: np.ascontiguousarray(x, dtype=np.float32)}
        if self._k_feed is not None:
            feeds[C.INPUT_K] = self._k_feed
        if self.xi is not None:
            feeds[C.INPUT_XI] = np.asarray(self.xi, np.float32)
        feeds.update(self._keep_feeds)
        out = self.backend.run(feeds)
        if C.OUTPUT_COUNTS not in out:
            out[C.OUTPUT_COUNTS] = np.zeros((x.shape[0], 0), np.int64)
        return out

    def segment(self, images) -> list:
        """Segmentation files: images -> one runtime.segmentation.Segmentation per image."""
        return segment(self, images)

    def predict(self, images, topk: int = 5) -> list[Prediction]:
        images = list(images) if isinstance(images, (list, tuple)) else [images]
        if isinstance(topk, bool) or not isinstance(topk, int) or topk < 1:
            raise UsageError(f"topk={topk!r} is invalid; give a number of classes >= 1")
        if self.random_weights and not self._warned_random:
            self._warned_random = True
            warnings.warn(f"{self.meta['model']}: weights {describe_weights(self.meta)}", RandomWeightsWarning, stacklevel=2)
        out = self.infer(preprocess(images, self.meta))
        probs = _softmax(out[C.OUTPUT_LOGITS].astype(np.float64))
        positions = out.get(C.OUTPUT_POSITIONS)
        names = self.label_names
        preds = []
        for i, image in enumerate(images):
            order = np.argsort(-probs[i], kind="stable")[:topk]
            top = [(int(j), names[j] if names else str(int(j)), float(probs[i, j])) for j in order]
            source = str(image) if isinstance(image, (str, Path)) else f"<{type(image).__name__} #{i}>"
            kept = kept_positions(positions[i]) if positions is not None else []
            preds.append(Prediction(source, top[0][0], top[0][1], top[0][2], top, out[C.OUTPUT_COUNTS][i].tolist(), kept))
        return preds


def open_backend(path: str | Path, backend: str = "ort", *, k: int | None = None, threads: int | None = None,
                 plugins: str | Path | None = None, fixed_dims: dict[str, int] | None = None) -> Backend:
    """Open ``path`` with one of BACKENDS; GPU packages are imported only by the GPU backends.

    ``k``: a TensorRT engine fixes K at load (it picks the optimization profile), and the ort-trt
    provider builds its engine for one K; ONNX Runtime on the CPU takes K per run, so there K is
    only pinned through ``fixed_dims``. ``plugins``: tscli's ORT op library (ort) or the TensorRT
    plugin library (trt) for plugin-form files.
    """
    if backend not in BACKENDS:
        raise UsageError(f"unknown backend {backend!r}; valid: {', '.join(BACKENDS)}")
    if plugins is not None and backend not in ("ort", "trt"):
        raise UsageError(f"--plugins applies to the ort and trt backends; --backend is {backend!r}")
    if backend == "ort":
        return OrtBackend(path, threads=threads, fixed_dims=fixed_dims, plugins=plugins)
    if backend == "trt":
        return TrtBackend(path, k=k, plugins=str(plugins) if plugins else None)
    return open_ort_gpu(path, backend, k=k, threads=threads)


def load(path: str | Path, k: int | str | None = None, backend: str = "ort", threads: int | None = None,
         xi: float | None = None, profiles: str | Path | None = None, plugins: str | Path | None = None,
         rate: float | None = None) -> Runner:
    """Open an exported model. k=None means max_k; k="auto" takes K from the device profile that
    matches this device (runtime/device_profiles.py; ``profiles`` = the store, default next to the
    model); xi=None means the file's default (DoViT). backend: one of BACKENDS. ``plugins``: with
    ort, tscli's ONNX Runtime op library, so that a plugin-form file runs each sampling step as
    one native op (tscli/plugins/ort_ops.py builds it); with trt, the TensorRT plugin library for
    an engine with plugin layers (default: $TSCLI_PLUGIN_PATH, else the library the engine's
    manifest records). rate: DynamicViT / EViT keep rate (None: the file's default), which fixes
    the kept count of every stage (contract.check_rate)."""
    if isinstance(k, str) and k != "auto":
        raise UsageError(f"K={k!r} is invalid; give an integer or 'auto'")
    if k == "auto" and backend != "ort":
        raise UsageError(f"--k auto is available with the ort backend; with {backend!r} give --k")
    if backend != "ort":
        opened = open_backend(path, backend, k=k, threads=threads, plugins=plugins)
        return Runner(opened, getattr(opened, "k", k), xi, rate)
    # K is fixed for the runner's life, so it is pinned in the session's shapes too (ORT then
    # plans for that K: measured about 2 % faster at batch 1). A K known only from the file
    # (default max_k, or "auto") costs a second session creation (~0.3 s for DeiT-S).
    # A K that cannot be pinned (not a positive int32) is left to the Runner, which says why.
    given = isinstance(k, numbers.Integral) and not isinstance(k, bool) and 1 <= k < 2**31
    fixed = {C.DIM_K: int(k)} if given else None
    session = open_backend(path, "ort", threads=threads, fixed_dims=fixed, plugins=plugins)
    profile = None
    if k == "auto":
        k, profile = auto_k(path, C.decode_metadata(session.metadata_props), "ort", session.provider, profiles)
    runner = Runner(session, k, xi, rate)
    if runner.k is not None and not given:
        runner.backend = open_backend(path, "ort", threads=threads, fixed_dims={C.DIM_K: runner.k}, plugins=plugins)
    if runner.keep_counts:  # the counts follow from the rate and the file's metadata: pinned as K is
        runner.backend = open_backend(path, "ort", threads=threads, fixed_dims=runner.keep_dims, plugins=plugins)
    runner.profile = profile  # the device profile K came from (k="auto"), else None
    return runner
