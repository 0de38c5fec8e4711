"""python -m tscli.plugins.trt_header_check: version parsing, SKIP below 10, exit codes.

No TensorRT headers are needed: small fake NvInferVersion.h files stand in for them. The one test
that runs the compiler (a FAIL case) needs only g++; it is skipped without one.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tscli.plugins.trt_header_check import SKIP_REASON, check_dir, parse_version, read_version

REPO = Path(__file__).resolve().parents[1]

V8_6 = """
#define NV_TENSORRT_MAJOR 8 //!< TensorRT major version.
#define NV_TENSORRT_MINOR 6 //!< TensorRT minor version.
#define NV_TENSORRT_PATCH 1 //!< TensorRT patch version.
#define NV_TENSORRT_BUILD 5 //!< TensorRT build number.
"""

V10_3 = """
#define NV_TENSORRT_MAJOR 10 //!< TensorRT major version.
#define NV_TENSORRT_MINOR 3  //!< TensorRT minor version.
#define NV_TENSORRT_PATCH 0  //!< TensorRT patch version.
"""

# The form of 10.11+ and 11.x: the public macros name other macros.
V11_1 = """
#ifndef NV_INFER_VERSION_H
#define NV_INFER_VERSION_H

#define TRT_MAJOR_ENTERPRISE 11
#define TRT_MINOR_ENTERPRISE 1
#define TRT_PATCH_ENTERPRISE 0
#define TRT_BUILD_ENTERPRISE 106
#define NV_TENSORRT_MAJOR TRT_MAJOR_ENTERPRISE //!< TensorRT major version.
#define NV_TENSORRT_MINOR TRT_MINOR_ENTERPRISE //!< TensorRT minor version.
#define NV_TENSORRT_PATCH TRT_PATCH_ENTERPRISE //!< TensorRT patch version.
#define NV_TENSORRT_BUILD TRT_BUILD_ENTERPRISE //!< TensorRT build number.

#define NV_TENSORRT_LWS_MAJOR 0 //!< TensorRT LWS major version.
#endif
"""


def _fake_include(root: Path, name: str, text: str | None) -> Path:
    folder = root / name
    folder.mkdir()
    if text is not None:
        (folder / "NvInferVersion.h").write_text(text)
    return folder


def _run(*args: str, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "tscli.plugins.trt_header_check", *args], capture_output=True,
                          text=True, timeout=600, cwd=REPO, env=env)


def test_parse_plain_and_enterprise_forms() -> None:
    assert parse_version(V8_6) == (8, 6, 1)
    assert parse_version(V10_3) == (10, 3, 0)
    assert parse_version(V11_1) == (11, 1, 0)


def test_parse_unreadable_or_partial() -> None:
    assert parse_version("") is None
    assert parse_version("#define NV_TENSORRT_MAJOR 10\n") is None  # no minor
    assert parse_version("#define NV_TENSORRT_MAJOR SOMETHING_UNDEFINED\n#define NV_TENSORRT_MINOR 1\n") is None
    assert parse_version("#define NV_TENSORRT_MAJOR 10\n#define NV_TENSORRT_MINOR 7\n") == (10, 7, 0)
    # a macro loop does not hang
    looping = "#define NV_TENSORRT_MAJOR A\n#define A NV_TENSORRT_MAJOR\n#define NV_TENSORRT_MINOR 1\n"
    assert parse_version(looping) is None


def test_below_10_is_skipped_without_compiling(tmp_path: Path) -> None:
    folder = _fake_include(tmp_path, "trt86", V8_6)
    assert read_version(folder) == (8, 6, 1)

    def must_not_compile(_inc: Path):
        raise AssertionError("TensorRT 8.6 must not be compiled")

    result = check_dir(folder, must_not_compile)
    assert result.status == "SKIP" and result.detail == SKIP_REASON and result.version_text == "8.6.1"


def test_10_and_above_are_compiled(tmp_path: Path) -> None:
    seen: list[Path] = []

    def fake_compile(inc: Path) -> tuple[bool, str]:
        seen.append(inc)
        return True, "fake object"

    for name, text in (("trt103", V10_3), ("trt111", V11_1)):
        result = check_dir(_fake_include(tmp_path, name, text), fake_compile)
        assert result.status == "OK" and result.detail == "fake object"
    assert [p.name for p in seen] == ["trt103", "trt111"]


def test_missing_version_header_fails(tmp_path: Path) -> None:
    result = check_dir(_fake_include(tmp_path, "empty", None), lambda inc: (True, ""))
    assert result.status == "FAIL" and "NvInferVersion.h" in result.detail


def test_cli_skip_only_exits_0_without_compiler(tmp_path: Path) -> None:
    folder = _fake_include(tmp_path, "trt86", V8_6)
    # No compiler and no CUDA are needed when every folder is skipped.
    proc = _run(str(folder), "--cxx", "/nonexistent/g++", "--cuda-include", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert "TensorRT 8.6.1" in proc.stdout and "SKIP" in proc.stdout and SKIP_REASON in proc.stdout


@pytest.mark.parametrize("args", [(), ("/nonexistent/include",), ("--no-such-option", ".")])
def test_cli_usage_errors_exit_2_with_one_line(args: tuple[str, ...]) -> None:
    proc = _run(*args)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in proc.stderr


def test_cli_missing_compiler_for_10_exits_2(tmp_path: Path) -> None:
    folder = _fake_include(tmp_path, "trt103", V10_3)
    proc = _run(str(folder), "--cxx", "/nonexistent/g++")
    assert proc.returncode == 2 and "C++ compiler" in proc.stderr and "Traceback" not in proc.stderr


def test_cli_missing_cuda_headers_for_10_exits_2(tmp_path: Path) -> None:
    folder = _fake_include(tmp_path, "trt103", V10_3)
    proc = _run(str(folder), "--cuda-include", str(tmp_path))
    assert proc.returncode == 2 and "cuda_runtime.h" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.skipif(shutil.which("g++") is None, reason="g++ not found")
def test_cli_fail_exits_1_with_first_error(tmp_path: Path) -> None:
    """A 10.x version header without the rest of TensorRT: the compile fails on the first missing
    header. A fake cuda_runtime.h stands in for the CUDA toolkit."""
    trt = _fake_include(tmp_path, "trt103", V10_3)
    old = _fake_include(tmp_path, "trt86", V8_6)
    cuda = tmp_path / "cuda"
    cuda.mkdir()
    (cuda / "cuda_runtime.h").write_text("#pragma once\n")
    proc = _run(str(old), str(trt), "--cxx", "g++", "--cuda-include", str(cuda))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 2
    assert "TensorRT 8.6.1" in lines[0] and "SKIP" in lines[0]
    assert "TensorRT 10.3.0" in lines[1] and "FAIL" in lines[1] and "NvInferRuntime.h" in lines[1]
