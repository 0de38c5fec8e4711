"""Runtime backend "trt": a tscli engine + manifest, run with TensorRT's tensor-name API
(TensorRT >= 8.6: set_input_shape / set_tensor_address / execute_async_v3) and cuda-python for
device memory. Same interface as OrtBackend: .run(feeds) -> dict, .provider, .input_names,
.metadata_props, .name. K is fixed at load: it picks the optimization profile and the k_select shape.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ... import contract as C
from ...errors import CheckFailed, InputError, ModelFileError, UsageError
from ...files import sha256_file
from ...plugins.locate import find_plugin_library
from ..backend import BackendBase
from . import manifest as M
from .host import check_trt_version, detect_gpu, import_cudart, import_tensorrt
from .opt_profiles import Profile, choose_profile
from .plugin_registry import check_plugin_ops, load_plugin_library


def default_k(profiles: list[Profile], max_k: int | None) -> int | None:
    """max_k when the engine accepts it (as the ORT backend does), else the first profile's OPT."""
    if not any(p.k for p in profiles):
        return None
    if max_k is not None and any(p.covers(max_k) for p in profiles):
        return int(max_k)
    return next(p.k[1] for p in profiles if p.k)


def check_k_in_engine_range(engine, profile_index: int, k: int) -> None:
    """The engine itself is the authority on the range (the manifest could be edited by hand)."""
    lo, _, hi = engine.get_tensor_profile_shape(C.INPUT_K, profile_index)
    if not lo[0] <= k <= hi[0]:
        raise UsageError(f"K={k} is outside the engine's profile {profile_index} range {lo[0]}..{hi[0]}; "
                         "rebuild with `tscli build --k-range MIN:OPT:MAX` covering it")


def resolve_plugin_library(manifest: dict, explicit: str | None) -> Path | None:
    if not manifest.get("plugin_ops"):
        return None
    lib = find_plugin_library(explicit)
    recorded = (manifest.get("plugin_library") or {}).get("path")
    if lib is None and recorded and Path(recorded).is_file():
        lib = Path(recorded)
    return lib


class _Cuda:
    """The few CUDA runtime calls the backend needs, each error turned into one line."""

    def __init__(self):
        self.rt = import_cudart()

    def check(self, result, what: str):
        err, *rest = result if isinstance(result, tuple) else (result,)
        if int(err) != 0:
            name = self.rt.cudaGetErrorString(err)[1]
            raise CheckFailed(f"CUDA {what} failed: {name.decode() if isinstance(name, bytes) else name}")
        return rest[0] if len(rest) == 1 else rest

    def malloc(self, nbytes: int) -> int:
        return int(self.check(self.rt.cudaMalloc(max(nbytes, 1)), "cudaMalloc"))

    def copy(self, dst: int, src: int, nbytes: int, to_device: bool, stream) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice if to_device else self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self.check(self.rt.cudaMemcpyAsync(dst, src, nbytes, kind, stream), "cudaMemcpyAsync")


class TrtBackend(BackendBase):
    name = "trt"

    def __init__(self, path: str | Path, k: int | None = None, plugins: str | None = None):
        self.path = Path(path)
        self.manifest = M.read_manifest(self.path)
        trt = self.trt = import_tensorrt()
        check_trt_version(trt)
        gpu, _ = detect_gpu()
        self.warnings = M.check_host(self.manifest, trt.__version__, gpu, self.path)
        data = self.path.read_bytes()
        M.check_engine_bytes(self.manifest, data, self.path)
        library = resolve_plugin_library(self.manifest, plugins)
        if self.manifest.get("plugin_ops"):
            if library is not None:
                load_plugin_library(trt, library)
                recorded = (self.manifest.get("plugin_library") or {}).get("sha256")
                if recorded and sha256_file(library) != recorded:
                    self.warnings.append(f"plugin library {library} differs from the one the engine was built with")
            check_plugin_ops(trt, self.manifest["plugin_ops"], library)
        self.meta = self.manifest["model_metadata"]
        self.metadata_props = C.encode_metadata(self.meta)
        self.profiles = [Profile.from_dict(p) for p in self.manifest["profiles"]]
        self.k = default_k(self.profiles, self.meta.get("max_k")) if k is None else k
        self.profile_index = choose_profile(self.profiles, self.k)
        self.cuda = _Cuda()
        self._open(trt, data)

    def _open(self, trt, data: bytes) -> None:
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(data)
        if self.engine is None:
            raise ModelFileError(f"TensorRT could not deserialise {self.path.name} (see its log above)")
        if self.engine.num_optimization_profiles != len(self.profiles):
            raise ModelFileError(f"{self.path.name} has {self.engine.num_optimization_profiles} profiles, its manifest "
                                 f"{len(self.profiles)}; rebuild with `tscli build`")
        self.context = self.engine.create_execution_context()
        verbosity = getattr(trt, "ProfilingVerbosity", None)
        if verbosity is not None and hasattr(self.context, "nvtx_verbosity"):
            # Plugin-form engines are built with DETAILED layer information (so `tscli build` can
            # ask the engine inspector for plugin layers); NVTX markers at that level cost enqueue
            # time, so the context drops back to the default level.
            self.context.nvtx_verbosity = verbosity.LAYER_NAMES_ONLY
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = {n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.input_names = [n for n in names if is_input[n]]
        self.output_names = [n for n in names if not is_input[n]]
        # numpy dtypes, looked up once (run() is the hot path)
        self.dtypes = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in names}
        self.stream = self.cuda.check(self.cuda.rt.cudaStreamCreate(), "cudaStreamCreate")
        self.context.set_optimization_profile_async(self.profile_index, int(self.stream))
        if self.k is not None and C.INPUT_K in self.input_names:
            check_k_in_engine_range(self.engine, self.profile_index, self.k)
            self.context.set_input_shape(C.INPUT_K, (self.k,))
        self._buffers: dict[str, tuple[int, int]] = {}  # name -> (pointer, capacity in bytes)

    @property
    def provider(self) -> str:
        return f"TensorRT {self.trt.__version__}"

    def _buffer(self, name: str, nbytes: int) -> int:
        ptr, cap = self._buffers.get(name, (0, 0))
        if nbytes > cap:
            if ptr:
                self.cuda.check(self.cuda.rt.cudaFree(ptr), "cudaFree")
            ptr, cap = self.cuda.malloc(nbytes), nbytes
            self._buffers[name] = (ptr, cap)
        self.context.set_tensor_address(name, ptr)
        return ptr

    def _check_feeds(self, feeds: dict) -> None:
        images = feeds[C.INPUT_IMAGES]
        lo, hi = self.profiles[self.profile_index].batch[0], self.profiles[self.profile_index].batch[2]
        if not lo <= images.shape[0] <= hi:
            raise InputError(f"batch {images.shape[0]} is outside this engine's batch range {lo}..{hi} "
                             "(rebuild with `tscli build --batch MIN:OPT:MAX`)")
        if C.INPUT_K in self.input_names and len(feeds.get(C.INPUT_K, ())) != self.k:
            raise InputError(f"k_select must have length K={self.k} (fixed at load); got {len(feeds.get(C.INPUT_K, ()))}")

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self._check_feeds(feeds)
        stream = self.stream
        self.context.set_input_shape(C.INPUT_IMAGES, tuple(feeds[C.INPUT_IMAGES].shape))
        hosts = {}  # keeps the host arrays alive until the stream is synchronised
        for name in self.input_names:
            arr = np.ascontiguousarray(feeds[name], dtype=self.dtypes[name])
            hosts[name] = arr
            self.cuda.copy(self._buffer(name, arr.nbytes), arr.ctypes.data, arr.nbytes, True, stream)
        outs = {}
        for name in self.output_names:
            shape = tuple(self.context.get_tensor_shape(name))
            outs[name] = np.empty(shape, dtype=self.dtypes[name])
            self._buffer(name, outs[name].nbytes)
        if not self.context.execute_async_v3(int(stream)):
            raise CheckFailed(f"TensorRT execution of {self.path.name} failed (see its log above)")
        for name, arr in outs.items():
            self.cuda.copy(arr.ctypes.data, self._buffers[name][0], arr.nbytes, False, stream)
        self.cuda.check(self.cuda.rt.cudaStreamSynchronize(stream), "cudaStreamSynchronize")
        # TensorRT 8.6 has no int64 I/O (the parser narrows to int32): keep the contract's int64
        # (a no-copy view when the engine already returns int64).
        return {n: a.astype(np.int64, copy=False) if a.dtype.kind == "i" else a for n, a in outs.items()}

    def close(self) -> None:
        for ptr, _ in self._buffers.values():
            self.cuda.rt.cudaFree(ptr)
        self._buffers = {}
        if getattr(self, "stream", None) is not None:
            self.cuda.rt.cudaStreamDestroy(self.stream)
            self.stream = None

    def __del__(self):  # best effort: the process usually ends right after
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass
