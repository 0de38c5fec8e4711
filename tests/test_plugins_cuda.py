"""The CUDA side of the plugins compiles (nothing CUDA can run on these machines).

Skipped only when nvcc (or, for the CMake test, cmake) is absent. The TensorRT glue is compiled
only where NvInfer.h exists; here that test reports the skip.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tscli.plugins.nvcc_check import (
    CSRC,
    KERNELS,
    NVCC_FLAGS,
    TARGET_ARCHS,
    check_cuda,
    compile_arch,
    find_nvcc,
    supported_archs,
)

NVCC = find_nvcc()
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc not found (install the CUDA toolkit or set CUDACXX)")
PLUGINS_DIR = CSRC.parent


@needs_nvcc
@pytest.mark.parametrize("arch", TARGET_ARCHS)
def test_kernels_compile_for_arch(arch: str, tmp_path: Path) -> None:
    result = compile_arch(NVCC, arch, tmp_path)
    assert result.status == "OK", f"sm_{arch}: {result.detail}"
    obj = tmp_path / f"{KERNELS.stem}.sm_{arch}.o"
    assert obj.stat().st_size > 10_000  # real device code, not an empty object
    symbols = subprocess.run(["nm", "-C", str(obj)], capture_output=True, text=True).stdout
    assert "tscli::ats::launch_ats_sample" in symbols and "tscli::ats::launch_token_gather" in symbols


def test_no_xavier_promise() -> None:
    """Xavier (sm_72) tops out at JetPack 5 = TensorRT 8.5, below MIN_TRT: nothing promises it."""
    from tscli.plugins import nvcc_check
    from tscli.runtime.trt.host import MIN_TRT

    assert "72" not in TARGET_ARCHS and not hasattr(nvcc_check, "LEGACY_ARCHS") and (8, 5) < MIN_TRT


@needs_nvcc
def test_unknown_arch_is_skipped_not_failed() -> None:
    known = supported_archs(NVCC)
    assert {"80", "87", "90"} <= known  # the parsing works on this nvcc
    results = {r.arch: r for r in check_cuda(archs=("87", "1"))}
    assert results["87"].status == "OK" and results["1"].status == "SKIP" and "sm_1" in results["1"].detail


@needs_nvcc
def test_sampling_kernel_has_no_fused_multiply_add(tmp_path: Path) -> None:
    """The core's float ops must round like the CPU build and PyTorch: no FMA contraction even
    with nvcc's default --fmad=true (the core uses explicit _rn intrinsics)."""
    ptx = tmp_path / "k.ptx"
    flags = [f for f in NVCC_FLAGS if not f.startswith("--fmad")]
    subprocess.run([NVCC, *flags, "-arch=compute_87", "-ptx", str(KERNELS), "-o", str(ptx)], check=True,
                   capture_output=True, timeout=600)
    text = ptx.read_text()
    bodies = re.split(r"\.entry\s+", text)[1:]
    sample = [b for b in bodies if "ats_sample_kernel" in b.split("(")[0]]
    assert len(sample) == 2  # float and half variants
    for body in sample:
        assert "div.rn.f32" in body and "sub.rn.f32" in body
        assert "fma." not in body


@pytest.mark.skipif(NVCC is None or shutil.which("cmake") is None, reason="nvcc or cmake not found")
def test_cmake_builds_kernels_and_explains_missing_tensorrt(tmp_path: Path) -> None:
    build = tmp_path / "build"
    configure = subprocess.run(
        ["cmake", "-S", str(PLUGINS_DIR), "-B", str(build), "-DTSCLI_CUDA_ARCHS=87", f"-DCMAKE_CUDA_COMPILER={NVCC}"],
        capture_output=True, text=True, timeout=600)
    assert configure.returncode == 0, configure.stderr[-2000:]
    trt_found = "TensorRT headers not found" not in configure.stdout
    if not trt_found:
        assert "set TENSORRT_ROOT=" in configure.stdout
    built = subprocess.run(["cmake", "--build", str(build), "-j", "2"], capture_output=True, text=True, timeout=900)
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    assert (build / "libtscli_ats_kernels.a").stat().st_size > 10_000
    assert (build / "libtscli_ats_cpu.so").exists()
    assert (build / "libtscli_plugins.so").exists() == trt_found
