"""CPU build of the ATS sampling core (csrc/ats_sampling_core.h), loaded with ctypes.

The same header is compiled into the CUDA kernel behind the TensorRT plugin, so testing this
library against the PyTorch reference tests the plugin's arithmetic without a GPU. The library
is compiled on first use with g++ into a cache directory ($TSCLI_CACHE/plugins, default
~/.cache/tscli/plugins), under a name that hashes the sources and flags, so an edited source is
never served from a stale build.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import numpy as np

from ..contract import SCHEMES
from ..errors import InputError, MissingDependency, TscliError, UsageError

CSRC = Path(__file__).resolve().parent / "csrc"
CPU_SOURCES = ("ats_sampling_core.h", "ats_sampling_fast.h", "ats_sampling_cpu.cpp")
# -ffp-contract=off: a fused multiply-add rounds once where the reference rounds twice.
# -O3: ats_sampling_fast.h relies on the vectoriser (-O2 leaves it 4x slower); float sums are
# never reordered without -ffast-math, so results are the same at either level.
CXXFLAGS = ("-O3", "-shared", "-fPIC", "-std=c++17", "-ffp-contract=off")
ABI_VERSION = 3
# The enum in ats_sampling_core.h uses the same codes.
SCHEME_CODES = {name: code for code, name in enumerate(SCHEMES)}
_ERRORS = {1: "bad shape (need K >= 1, N >= 0)", 2: "unknown scheme code", 3: "out of memory"}

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None


def cache_dir() -> Path:
    """Where compiled plugin libraries live: $TSCLI_CACHE/plugins or ~/.cache/tscli/plugins."""
    root = os.environ.get("TSCLI_CACHE")
    base = Path(root) if root else Path.home() / ".cache" / "tscli"
    return base / "plugins"


def _source_hash(compiler: str, sources: tuple[str | Path, ...], flags: tuple[str, ...]) -> str:
    digest = hashlib.sha256()
    for name in sources:
        digest.update(str(name).encode())
        digest.update((CSRC / name).read_bytes())  # an absolute path stays as it is
    digest.update(" ".join((compiler, *flags)).encode())
    return digest.hexdigest()[:16]


def _find_compiler() -> str:
    cxx = os.environ.get("CXX") or "g++"
    path = shutil.which(cxx)
    if path is None:
        raise MissingDependency(
            f"C++ compiler '{cxx}' not found: the CPU sampling core is compiled on first use; "
            "install g++ (e.g. apt-get install g++) or set CXX"
        )
    return path


def compile_library(stem: str, sources: tuple[str | Path, ...], main: str, extra_flags: tuple[str, ...] = (),
                    force: bool = False) -> Path:
    """Compile csrc/``main`` into cache_dir()/``stem``-HASH.so unless that build is cached.

    HASH covers ``sources`` (every file the build reads: names in csrc/ or absolute paths), the
    compiler and the flags, so an edited source is never served from a stale build.
    """
    compiler = _find_compiler()
    flags = (*CXXFLAGS, *extra_flags)
    target = cache_dir() / f"{stem}-{_source_hash(compiler, sources, flags)}.so"
    if target.exists() and not force:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Compile to a temporary name in the same directory, then rename: a concurrent process (or
    # an interrupted build) never sees a half-written library.
    fd, tmp_name = tempfile.mkstemp(prefix=".build-", suffix=".so", dir=target.parent)
    os.close(fd)
    cmd = [compiler, *flags, "-o", tmp_name, str(CSRC / main)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            first = next((ln for ln in proc.stderr.splitlines() if "error" in ln), proc.stderr.strip()[:300])
            raise TscliError(f"compiling {main} failed ({' '.join(cmd)}): {first}")
        os.replace(tmp_name, target)
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
    return target


def build_cpu_library(force: bool = False) -> Path:
    """Compile csrc/ats_sampling_cpu.cpp unless a build of the same sources is cached; return it."""
    return compile_library("libtscli_ats_cpu", CPU_SOURCES, "ats_sampling_cpu.cpp", force=force)


def _bind(path: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path))
    lib.tscli_ats_abi_version.restype = ctypes.c_int
    if lib.tscli_ats_abi_version() != ABI_VERSION:
        raise TscliError(f"{path} has ABI {lib.tscli_ats_abi_version()}, expected {ABI_VERSION}; delete it")
    ptr = ctypes.c_void_p
    lib.tscli_ats_sample_batch.argtypes = [ptr, ptr, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
                                           ctypes.c_int, ptr, ptr, ptr]
    lib.tscli_ats_sample_batch.restype = ctypes.c_int
    lib.tscli_ats_sample_batch_fast.argtypes = [ptr, ptr, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
                                                ctypes.c_int, ptr, ptr]
    lib.tscli_ats_sample_batch_fast.restype = ctypes.c_int
    return lib


def load_cpu_library() -> ctypes.CDLL:
    """The loaded CPU library (compiled on first call, then shared by the process)."""
    global _lib
    with _lock:
        if _lib is None:
            _lib = _bind(build_cpu_library())
        return _lib


def scheme_code(scheme: str | int) -> int:
    """Scheme name (or code) -> the integer code the C++ core takes."""
    if isinstance(scheme, (int, np.integer)) and int(scheme) in SCHEME_CODES.values():
        return int(scheme)
    if isinstance(scheme, bytes):
        scheme = scheme.decode()
    if scheme in SCHEME_CODES:
        return SCHEME_CODES[scheme]
    raise UsageError(f"unknown sampling scheme {scheme!r}; valid: {', '.join(SCHEME_CODES)}")


def _as_batch(scores: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.ascontiguousarray(scores, dtype=np.float32)
    valid = np.asarray(valid)  # compared with 0 before any narrowing: an int32 256 is valid, not 0
    if scores.ndim != 2 or valid.shape != scores.shape:
        raise InputError(f"scores/valid must both be [B, N]; got {scores.shape} and {valid.shape}")
    return scores, np.ascontiguousarray(valid != 0, dtype=np.uint8)


def _sample(scores: np.ndarray, valid: np.ndarray, k: int, scheme: str | int,
            fast: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """One call into the library: the core's driver (with margins) or the fast batch loop."""
    if int(k) < 1:
        raise UsageError(f"K must be >= 1, got {k}")
    scores, valid_u8 = _as_batch(scores, valid)
    code = scheme_code(scheme)
    batch, n = scores.shape
    index = np.empty((batch, int(k) + 1), dtype=np.int32)
    mask = np.empty((batch, int(k) + 1), dtype=np.uint8)
    margin = None if fast else np.empty((batch,), dtype=np.float32)
    lib = load_cpu_library()
    args = (scores.ctypes.data, valid_u8.ctypes.data, batch, n, int(k), code, index.ctypes.data, mask.ctypes.data)
    rc = lib.tscli_ats_sample_batch_fast(*args) if fast else lib.tscli_ats_sample_batch(*args, margin.ctypes.data)
    if rc != 0:
        raise TscliError(f"ats_sample_cpu failed: {_ERRORS.get(rc, f'error {rc}')} (B={batch}, N={n}, K={k})")
    return index, mask.astype(bool), margin


def ats_sample_cpu_with_margin(scores: np.ndarray, valid: np.ndarray, k: int,
                               scheme: str | int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Like ats_sample_cpu, plus each image's smallest decision margin (float32 [B])."""
    return _sample(scores, valid, k, scheme, fast=False)


def ats_sample_cpu(scores: np.ndarray, valid: np.ndarray, k: int, scheme: str | int,
                   fast: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The ``tscli::ats_sample`` contract on the CPU: (index int32 [B, K+1], mask bool [B, K+1]).

    scores: [B, N] (cast to float32), valid: [B, N] bool, k: the number of sample points K.
    fast=True runs ats_sample_fast_batch (the ONNX Runtime op's loop; bit-identical, ~6x faster
    serially) instead of the core's serial driver (the CUDA kernel's arithmetic).
    """
    index, mask, _ = _sample(scores, valid, k, scheme, fast)
    return index, mask
