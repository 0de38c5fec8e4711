"""What the host offers: TensorRT, CUDA bindings, GPU and Jetson facts. Lazy imports only."""

from __future__ import annotations

import importlib
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

from ...errors import MissingDependency, first_line

# The oldest TensorRT whose ONNX parser handles TopK with a runtime K (docs/design.md, "Operator traps").
MIN_TRT = (8, 6)
TRT_HINT = ("on Jetson install JetPack 6 (sudo apt install python3-libnvinfer; a venv needs "
            "--system-site-packages); on x86 `pip install tensorrt`")
CUDA_HINT = "pip install cuda-python (the major version of your CUDA, e.g. 'cuda-python>=12,<13')"
TEGRA_RELEASE = Path("/etc/nv_tegra_release")
DEVICE_MODEL = Path("/proc/device-tree/model")
# L4T release -> JetPack release (NVIDIA's JetPack archive), TensorRT version it ships.
L4T_TO_JETPACK = {
    "35.3": ("5.1.1", "8.5.2"), "35.4": ("5.1.2", "8.5.2"), "35.5": ("5.1.3", "8.5.2"), "35.6": ("5.1.4", "8.5.2"),
    "36.2": ("6.0 DP", "8.6.2"), "36.3": ("6.0", "8.6.2"), "36.4": ("6.1/6.2", "10.3.0"),
    "38.2": ("7.0", "10.13"),
}
# Used only when no CUDA bindings can ask the device itself.
JETSON_CC = {"orin": "8.7", "xavier": "7.2", "thor": "11.0"}


def import_tensorrt():
    """The tensorrt module, or MissingDependency with the install line. Any import failure counts:
    the PyPI stubs and a missing libnvinfer raise other errors than ImportError."""
    try:
        return importlib.import_module("tensorrt")
    except Exception as exc:  # noqa: BLE001 - OSError/RuntimeError from broken installs too
        raise MissingDependency(f"TensorRT Python bindings not found ({first_line(exc, 160)}): {TRT_HINT}") from None


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", str(version))[:3])


def check_trt_version(trt) -> tuple[int, ...]:
    v = version_tuple(trt.__version__)
    if v[:2] < MIN_TRT:
        raise MissingDependency(
            f"TensorRT {trt.__version__} is too old: the ATS graph's TopK takes K at runtime, which needs "
            f"TensorRT >= {'.'.join(map(str, MIN_TRT))} (JetPack 6 or newer, or `pip install tensorrt`)")
    return v


def import_cudart():
    """cuda-python's runtime module: `cuda.bindings.runtime` (>= 12.6) or the older `cuda.cudart`."""
    for name in ("cuda.bindings.runtime", "cuda.cudart"):
        try:
            return importlib.import_module(name)
        except Exception:  # noqa: BLE001
            continue
    raise MissingDependency(f"CUDA Python bindings not found: {CUDA_HINT}")


@dataclass
class GpuInfo:
    name: str
    compute_capability: str  # "8.7"
    driver: str | None = None
    cuda_runtime: str | None = None
    source: str = ""  # how it was found: cuda-python / nvidia-smi / jetson-model

    def to_dict(self) -> dict:
        return asdict(self)


def _cuda_version(v: int) -> str:
    return f"{v // 1000}.{(v % 1000) // 10}"


def gpu_from_cuda() -> tuple[GpuInfo | None, str]:
    try:
        cudart = import_cudart()
    except MissingDependency as exc:
        return None, str(exc)
    err, count = cudart.cudaGetDeviceCount()[:2]
    if int(err) != 0 or count < 1:
        return None, f"cuda-python: no CUDA device ({err})"
    err, props = cudart.cudaGetDeviceProperties(0)[:2]
    if int(err) != 0:
        return None, f"cuda-python: cudaGetDeviceProperties failed ({err})"
    name = props.name.decode(errors="replace").rstrip("\x00") if isinstance(props.name, bytes) else str(props.name)
    runtime = cudart.cudaRuntimeGetVersion()
    driver = cudart.cudaDriverGetVersion()
    return GpuInfo(name, f"{props.major}.{props.minor}",
                   _cuda_version(driver[1]) if int(driver[0]) == 0 else None,
                   _cuda_version(runtime[1]) if int(runtime[0]) == 0 else None, "cuda-python"), ""


def gpu_from_nvidia_smi() -> tuple[GpuInfo | None, str]:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None, "nvidia-smi not found"
    try:
        proc = subprocess.run([exe, "--query-gpu=name,compute_cap,driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"nvidia-smi failed: {exc}"
    line = proc.stdout.strip().splitlines()[0] if proc.returncode == 0 and proc.stdout.strip() else ""
    parts = [p.strip() for p in line.split(",")]
    if len(parts) < 3:
        first = (proc.stderr or proc.stdout).strip().splitlines()
        return None, f"nvidia-smi: {first[0][:160] if first else 'no GPU listed'}"
    return GpuInfo(parts[0], parts[1], parts[2], None, "nvidia-smi"), ""


def jetson_info() -> dict | None:
    """Jetson model and L4T/JetPack release, or None when this is not a Jetson."""
    if not TEGRA_RELEASE.exists() and not DEVICE_MODEL.exists():
        return None
    model = DEVICE_MODEL.read_text(errors="replace").strip("\x00\n ") if DEVICE_MODEL.exists() else ""
    release = TEGRA_RELEASE.read_text(errors="replace") if TEGRA_RELEASE.exists() else ""
    m = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", release)
    l4t = f"{m.group(1)}.{m.group(2).split('.')[0]}" if m else None
    if not l4t and "nvidia" not in model.lower() and "jetson" not in model.lower():
        return None  # a device tree of some other ARM board
    jetpack, trt = L4T_TO_JETPACK.get(l4t, (None, None)) if l4t else (None, None)
    full = f"{m.group(1)}.{m.group(2)}" if m else None
    return {"model": model or None, "l4t": full, "jetpack": jetpack, "jetpack_tensorrt": trt}


def gpu_from_jetson() -> tuple[GpuInfo | None, str]:
    info = jetson_info()
    if not info or not info.get("model"):
        return None, "not a Jetson"
    lower = info["model"].lower()
    cc = next((v for key, v in JETSON_CC.items() if key in lower), None)
    if cc is None:
        return None, f"Jetson {info['model']!r}: compute capability unknown without cuda-python"
    return GpuInfo(info["model"], cc, None, None, "jetson-model"), ""


def detect_gpu() -> tuple[GpuInfo | None, list[str]]:
    """The first GPU found by cuda-python, then nvidia-smi, then the Jetson model; with the reasons
    each probe gave when nothing is found (doctor prints them)."""
    reasons = []
    for probe in (gpu_from_cuda, gpu_from_nvidia_smi, gpu_from_jetson):
        try:
            gpu, why = probe()
        except Exception as exc:  # noqa: BLE001 - a broken driver must not crash doctor
            gpu, why = None, f"{probe.__name__}: {type(exc).__name__}: {exc}"
        if gpu is not None:
            return gpu, reasons
        reasons.append(why)
    return None, reasons
