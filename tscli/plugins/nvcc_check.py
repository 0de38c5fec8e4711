"""Compile checks for the plugin sources: ``python -m tscli.plugins.nvcc_check --check-cuda``.

Nothing CUDA can run on the development machines, so the verifiable claim is "the kernels compile
for every GPU we ship to": each architecture is compiled to an object file in a temporary
directory with the flags the CMake build uses, and reported OK / FAIL / SKIP.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import MissingDependency
from .core import build_cpu_library

CSRC = Path(__file__).resolve().parent / "csrc"
KERNELS = CSRC / "ats_sampling_kernels.cu"
# Jetson Orin, A100, RTX 30xx/A10, RTX 40xx/L4, H100. Not Jetson Xavier (sm_72): its last
# JetPack (5) ships TensorRT 8.5, below tscli's minimum (runtime/trt/host.MIN_TRT), so nothing
# built for it could run a tscli engine.
TARGET_ARCHS = ("87", "80", "86", "89", "90")
NVCC_FLAGS = ("-std=c++17", "-O2", "--fmad=false")


@dataclass(frozen=True)
class ArchResult:
    arch: str
    status: str  # "OK", "FAIL" or "SKIP"
    detail: str = ""


def find_nvcc() -> str | None:
    """nvcc from $CUDACXX, $CUDA_HOME/bin, PATH or /usr/local/cuda/bin, else None."""
    candidates = [os.environ.get("CUDACXX", "")]
    if os.environ.get("CUDA_HOME"):
        candidates.append(str(Path(os.environ["CUDA_HOME"]) / "bin" / "nvcc"))
    candidates += [shutil.which("nvcc") or "", "/usr/local/cuda/bin/nvcc"]
    return next((c for c in candidates if c and os.access(c, os.X_OK)), None)


def _require_nvcc() -> str:
    nvcc = find_nvcc()
    if nvcc is None:
        raise MissingDependency("nvcc not found: install the CUDA toolkit or set CUDACXX=/path/to/nvcc")
    return nvcc


def nvcc_version(nvcc: str) -> str:
    out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=60).stdout
    match = re.search(r"release (\d+\.\d+)", out)
    return match.group(1) if match else "unknown"


def supported_archs(nvcc: str) -> set[str]:
    """Real architectures this nvcc can target (from ``--list-gpu-arch``; empty if unsupported)."""
    proc = subprocess.run([nvcc, "--list-gpu-arch"], capture_output=True, text=True, timeout=60)
    return set(re.findall(r"compute_(\d+)", proc.stdout)) if proc.returncode == 0 else set()


def compile_arch(nvcc: str, arch: str, out_dir: Path, source: Path = KERNELS) -> ArchResult:
    """Compile ``source`` to an sm_<arch> object file; FAIL carries nvcc's first error line."""
    obj = out_dir / f"{source.stem}.sm_{arch}.o"
    cmd = [nvcc, *NVCC_FLAGS, f"-gencode=arch=compute_{arch},code=sm_{arch}", "-c", str(source), "-o", str(obj)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0 or not obj.exists() or obj.stat().st_size == 0:
        lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
        first = next((ln for ln in lines if "error" in ln or "fatal" in ln), lines[0] if lines else "no output")
        return ArchResult(arch, "FAIL", first.strip())
    return ArchResult(arch, "OK", f"{obj.stat().st_size} bytes")


def check_cuda(archs: tuple[str, ...] = TARGET_ARCHS) -> list[ArchResult]:
    """Compile the kernels for each arch; an arch this nvcc does not know is SKIP, not FAIL."""
    nvcc = _require_nvcc()
    known = supported_archs(nvcc)
    results = []
    with tempfile.TemporaryDirectory(prefix="tscli-nvcc-") as tmp:
        for arch in archs:
            if known and arch not in known:
                results.append(ArchResult(arch, "SKIP", f"nvcc {nvcc_version(nvcc)} does not know sm_{arch}"))
                continue
            results.append(compile_arch(nvcc, arch, Path(tmp)))
    return results


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tscli.plugins.nvcc_check", description=__doc__.splitlines()[0])
    parser.add_argument("--check-cuda", action="store_true", help="compile the CUDA kernels per GPU architecture")
    parser.add_argument("--arch", default=",".join(TARGET_ARCHS), help="comma list, default %(default)s")
    parser.add_argument("--cpu", action="store_true", help="build the CPU core library and print its path")
    args = parser.parse_args(argv)
    if not (args.check_cuda or args.cpu):
        parser.error("nothing to do: pass --check-cuda and/or --cpu")
    failed = False
    try:
        if args.cpu:
            print(f"cpu core: {build_cpu_library()}")
        if args.check_cuda:
            archs = tuple(a.strip().removeprefix("sm_") for a in args.arch.split(",") if a.strip())
            nvcc = _require_nvcc()
            print(f"nvcc {nvcc_version(nvcc)} ({nvcc})")
            for res in check_cuda(archs):
                print(f"sm_{res.arch}: {res.status}  {res.detail}")
                failed |= res.status == "FAIL"
    except MissingDependency as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(_main())
