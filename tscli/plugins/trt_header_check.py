"""Compile the TensorRT plugin glue against TensorRT header sets; no TensorRT library or GPU needed.

    python -m tscli.plugins.trt_header_check INCLUDE_DIR [INCLUDE_DIR...]

For each folder (a TensorRT ``include/`` with NvInferVersion.h) it reads the TensorRT version and
compiles csrc/ats_plugin.cpp to an object file in a temporary folder with the host C++ compiler,
the CUDA include folder and the CMake build's language level. One line per folder:

    OK    the object file was produced (its size is shown)
    FAIL  the compiler's first error line (or why nothing could be compiled)
    SKIP  TensorRT < 10: no IPluginV3, so the plugin library is not supported there

Exit status: 0 when nothing failed, 1 on any FAIL, 2 on a usage error (one line on stderr).
A compile check only: nothing is linked or loaded.
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

from tscli.errors import MissingDependency, UsageError

CSRC = Path(__file__).resolve().parent / "csrc"
GLUE = CSRC / "ats_plugin.cpp"
MIN_MAJOR = 10  # IPluginV3 appeared in TensorRT 10.0
SKIP_REASON = "<10: no IPluginV3, not supported"
CXX_FLAGS = ("-std=c++17", "-O2", "-Wall", "-Wextra", "-fPIC")

_DEFINE = re.compile(r"^[ \t]*#[ \t]*define[ \t]+([A-Za-z_]\w*)[ \t]+([A-Za-z_0-9]\w*)", re.MULTILINE)


@dataclass(frozen=True)
class DirResult:
    include_dir: str
    version: tuple[int, int, int] | None
    status: str  # "OK", "FAIL" or "SKIP"
    detail: str = ""

    @property
    def version_text(self) -> str:
        return ".".join(map(str, self.version)) if self.version else "unknown"


def parse_version(text: str) -> tuple[int, int, int] | None:
    """(major, minor, patch) from the text of NvInferVersion.h, or None when unreadable.

    A value that is not a number is looked up as another macro of the same text: from 10.11 on
    the header says ``#define NV_TENSORRT_MAJOR TRT_MAJOR_ENTERPRISE`` and defines that macro
    above. A missing patch reads as 0; a missing major or minor makes the version unreadable.
    """
    macros: dict[str, str] = {}
    for name, value in _DEFINE.findall(text):
        macros.setdefault(name, value)

    def resolve(name: str) -> int | None:
        value = macros.get(name)
        for _ in range(4):  # a few levels of indirection at most, and no loops
            if value is None:
                return None
            if value.isdigit():
                return int(value)
            value = macros.get(value)
        return None

    major, minor, patch = (resolve(f"NV_TENSORRT_{part}") for part in ("MAJOR", "MINOR", "PATCH"))
    if major is None or minor is None:
        return None
    return major, minor, patch if patch is not None else 0


def read_version(include_dir: Path) -> tuple[int, int, int] | None:
    header = include_dir / "NvInferVersion.h"
    if not header.is_file():
        return None
    return parse_version(header.read_text(errors="replace"))


def find_cuda_include(explicit: str | None = None) -> Path | None:
    """The folder with cuda_runtime.h: --cuda-include, $CUDA_HOME, $CUDA_PATH, nvcc's toolkit
    ($CUDACXX or PATH), /usr/local/cuda."""
    candidates: list[Path] = []
    if explicit:
        return Path(explicit) if (Path(explicit) / "cuda_runtime.h").is_file() else None
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            candidates.append(Path(os.environ[var]) / "include")
    for nvcc in (os.environ.get("CUDACXX", ""), shutil.which("nvcc") or ""):
        if nvcc and os.access(nvcc, os.X_OK):
            candidates.append(Path(os.path.realpath(nvcc)).parent.parent / "include")
    candidates.append(Path("/usr/local/cuda/include"))
    return next((c for c in candidates if (c / "cuda_runtime.h").is_file()), None)


def _first_error(output: str) -> str:
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    return next((ln for ln in lines if "error" in ln or "fatal" in ln), lines[0] if lines else "no output")


def compile_glue(cxx: str, include_dir: Path, cuda_include: Path, out_dir: Path,
                 source: Path = GLUE) -> tuple[bool, str]:
    """Compile ``source`` to an object file; (True, size text) or (False, first error line)."""
    obj = out_dir / f"{source.stem}.o"
    if obj.exists():
        obj.unlink()
    cmd = [cxx, *CXX_FLAGS, "-isystem", str(include_dir), "-isystem", str(cuda_include), "-I", str(CSRC),
           "-c", str(source), "-o", str(obj)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        return False, f"{cxx} timed out after 600 s"
    if proc.returncode != 0 or not obj.is_file() or obj.stat().st_size == 0:
        return False, _first_error(proc.stderr + proc.stdout)
    warnings = sum(1 for ln in proc.stderr.splitlines() if "warning:" in ln)
    detail = f"{obj.name} {obj.stat().st_size} bytes"
    return True, detail + (f", {warnings} warning(s)" if warnings else "")


def check_dir(include_dir: Path, compile_fn) -> DirResult:
    """SKIP below TensorRT 10, FAIL without a readable version, else ``compile_fn(include_dir)``."""
    version = read_version(include_dir)
    if version is None:
        why = "no NvInferVersion.h" if not (include_dir / "NvInferVersion.h").is_file() else \
            "NV_TENSORRT_MAJOR/MINOR unreadable in NvInferVersion.h"
        return DirResult(str(include_dir), None, "FAIL", why)
    if version[0] < MIN_MAJOR:
        return DirResult(str(include_dir), version, "SKIP", SKIP_REASON)
    ok, detail = compile_fn(include_dir)
    return DirResult(str(include_dir), version, "OK" if ok else "FAIL", detail)


def run_checks(dirs: list[Path], cxx: str | None = None, cuda_include: str | None = None) -> list[DirResult]:
    """Check every folder. The compiler and CUDA headers are needed only when some folder has
    TensorRT >= 10; their absence is then a MissingDependency."""
    for d in dirs:
        if not d.is_dir():
            raise UsageError(f"not a folder: {d}")
    needs_compiler = any((v := read_version(d)) is not None and v[0] >= MIN_MAJOR for d in dirs)
    compiler = cuda = None
    if needs_compiler:
        name = cxx or os.environ.get("CXX") or "g++"
        compiler = shutil.which(name)
        if compiler is None:
            raise MissingDependency(f"C++ compiler '{name}' not found: install g++ or pass --cxx PATH")
        cuda = find_cuda_include(cuda_include)
        if cuda is None:
            where = f"in {cuda_include}" if cuda_include else "(CUDA_HOME, CUDA_PATH, nvcc's toolkit, /usr/local/cuda)"
            raise MissingDependency(
                f"cuda_runtime.h not found {where}: install the CUDA toolkit or pass --cuda-include DIR")
    with tempfile.TemporaryDirectory(prefix="tscli-trt-headers-") as tmp:
        return [check_dir(d, lambda inc: compile_glue(compiler, inc, cuda, Path(tmp))) for d in dirs]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line and exit status 2, as for every usage error here
        raise UsageError(message)


def _main(argv: list[str] | None = None) -> int:
    parser = _Parser(prog="python -m tscli.plugins.trt_header_check", description=__doc__.splitlines()[0])
    parser.add_argument("include_dirs", nargs="+", metavar="INCLUDE_DIR", help="TensorRT include folder(s)")
    parser.add_argument("--cxx", help="host C++ compiler (default: $CXX or g++)")
    parser.add_argument("--cuda-include", help="folder with cuda_runtime.h (default: searched)")
    try:
        args = parser.parse_args(argv)
        results = run_checks([Path(d) for d in args.include_dirs], cxx=args.cxx, cuda_include=args.cuda_include)
    except (UsageError, MissingDependency) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for res in results:
        detail = f"({res.detail})" if res.status == "SKIP" else res.detail
        print(f"TensorRT {res.version_text:<8} {res.include_dir}: {res.status}  {detail}")
    return 1 if any(r.status == "FAIL" for r in results) else 0


if __name__ == "__main__":
    sys.exit(_main())
