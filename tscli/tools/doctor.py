"""`tscli doctor`: what this host can do, one line per component: ok / missing / warn / info, with
the fix. Every probe is real (a session is created per ONNX Runtime provider, the plugin library is
loaded) and none may crash the report: a failing probe becomes a line."""

from __future__ import annotations

import os
import platform
import shutil
import sys
from dataclasses import asdict, dataclass

from .. import contract as C
from ..errors import MissingDependency, TscliError, first_line
from ..plugins.locate import LIBRARY_NAME, find_plugin_library
from ..plugins.ort_ops import build_ort_ops, find_ort_headers
from ..runtime.trt import host
from ..runtime.trt.plugin_registry import find_creator, load_plugin_library

OK, MISSING, WARN, INFO = "ok", "missing", "warn", "info"


@dataclass
class Check:
    name: str
    status: str
    detail: str
    fix: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


# --- a tiny ONNX model (Y = X + X, float[2]) encoded by hand: probing providers must not need the
# onnx package, which a deploy host usually lacks. Protobuf wire format: key = field << 3 | type.
def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(num: int, value) -> bytes:
    if isinstance(value, int):
        return _varint(num << 3) + _varint(value)
    data = value.encode() if isinstance(value, str) else value
    return _varint(num << 3 | 2) + _varint(len(data)) + data


def _value_info(name: str) -> bytes:
    dim = _field(1, _field(1, 2))  # TensorShapeProto.dim { dim_value: 2 }
    tensor = _field(1, 1) + _field(2, dim)  # elem_type FLOAT, shape
    return _field(1, name) + _field(2, _field(1, tensor))


def tiny_model_bytes(opset: int = 17) -> bytes:
    node = _field(1, "X") + _field(1, "X") + _field(2, "Y") + _field(3, "add") + _field(4, "Add")
    graph = _field(1, node) + _field(2, "tscli_doctor") + _field(11, _value_info("X")) + _field(12, _value_info("Y"))
    return _field(1, 8) + _field(2, "tscli") + _field(7, graph) + _field(8, _field(1, "") + _field(2, opset))


def probe_provider(ort, provider: str) -> tuple[bool, str]:
    """Create a session with only this provider and run it: True when it is really the one running."""
    import numpy as np

    opts = ort.SessionOptions()
    opts.log_severity_level = 4  # a failing provider logs errors; the line we print says it instead
    try:
        sess = ort.InferenceSession(tiny_model_bytes(), opts, providers=[provider])
        real = sess.get_providers()
        y = sess.run(None, {"X": np.array([1.0, 2.0], np.float32)})[0]
    except Exception as exc:  # noqa: BLE001
        return False, first_line(exc, 160)
    if not real or real[0] != provider:
        return False, f"falls back to {real[0] if real else 'nothing'}"
    if y.tolist() != [2.0, 4.0]:
        return False, f"wrong result {y.tolist()} for 1+1, 2+2"
    return True, "session created and ran"


def check_onnxruntime() -> list[Check]:
    try:
        import onnxruntime as ort
    except Exception as exc:  # noqa: BLE001
        return [Check("onnxruntime", MISSING, first_line(exc, 160), "pip install onnxruntime (or onnxruntime-gpu)")]
    checks = [Check("onnxruntime", OK, f"{ort.__version__} ({ort.get_device()})")]
    for provider in ort.get_available_providers():
        if provider == "AzureExecutionProvider":
            checks.append(Check(f"  {provider}", INFO, "remote inference provider, not probed"))
            continue
        ok, detail = probe_provider(ort, provider)
        fix = "" if ok else "install onnxruntime-gpu for your CUDA/TensorRT and put their libraries on LD_LIBRARY_PATH"
        checks.append(Check(f"  {provider}", OK if ok else MISSING, detail, fix))
    if not any(p in ort.get_available_providers() for p in ("CUDAExecutionProvider", "TensorrtExecutionProvider")):
        checks.append(Check("  GPU providers", INFO, "this onnxruntime build is CPU-only (backends ort-cuda/ort-trt unavailable)",
                            "for them: pip uninstall onnxruntime && pip install onnxruntime-gpu"))
    return checks


def check_tensorrt() -> tuple[Check, object | None]:
    try:
        trt = host.import_tensorrt()
    except MissingDependency as exc:
        return Check("TensorRT", MISSING, str(exc).replace(f": {host.TRT_HINT}", ""), host.TRT_HINT), None
    try:
        host.check_trt_version(trt)
    except MissingDependency as exc:
        return Check("TensorRT", WARN, trt.__version__, str(exc)), trt
    return Check("TensorRT", OK, trt.__version__), trt


def check_cuda_bindings() -> Check:
    try:
        host.import_cudart()
    except MissingDependency:
        return Check("cuda-python", MISSING, "not importable (the trt backend allocates GPU memory with it)", host.CUDA_HINT)
    try:
        from importlib.metadata import version

        detail = version("cuda-python")
    except Exception:  # noqa: BLE001 - distribution name differs between releases
        detail = "importable"
    return Check("cuda-python", OK, detail)


def check_gpu() -> list[Check]:
    gpu, reasons = host.detect_gpu()
    if gpu is None:
        return [Check("GPU", MISSING, "no NVIDIA GPU found (" + "; ".join(r for r in reasons if r) + ")",
                      "TensorRT needs an NVIDIA GPU and its driver; on Jetson the GPU comes with JetPack")]
    cuda = ", ".join(f"{k} {v}" for k, v in (("driver", gpu.driver), ("CUDA runtime", gpu.cuda_runtime)) if v)
    return [Check("GPU", OK, f"{gpu.name}, compute capability {gpu.compute_capability}" + (f", {cuda}" if cuda else "")
                  + f" (via {gpu.source})")]


def check_jetson() -> Check:
    info = host.jetson_info()
    if info is None:
        return Check("Jetson", INFO, "not a Jetson")
    jp = info.get("jetpack")
    detail = f"{info.get('model') or 'unknown model'}, L4T {info.get('l4t') or '?'}"
    if jp:
        detail += f" = JetPack {jp} (ships TensorRT {info['jetpack_tensorrt']})"
    old = info.get("l4t") and host.version_tuple(info["l4t"])[:1] < (36,)
    if old:  # JetPack 5 (Xavier's last) = TensorRT 8.5 < MIN_TRT: no tscli engine can run here
        return Check("Jetson", MISSING, detail + ": not supported",
                     f"JetPack 5 ships TensorRT 8.5, below tscli's minimum {'.'.join(map(str, host.MIN_TRT))} (a "
                     "runtime K); Orin: flash JetPack 6 or 7; Xavier has no newer JetPack (run the ONNX file "
                     "with ONNX Runtime instead)")
    return Check("Jetson", OK, detail)


def check_plugins(trt) -> Check:
    build = "cmake -S tscli/plugins -B build/plugins && cmake --build build/plugins -j (on the device)"
    lib = find_plugin_library(None)
    if lib is None:
        return Check("plugin library", MISSING, f"{LIBRARY_NAME} not found ($TSCLI_PLUGIN_PATH, ./build/plugins)",
                     f"only plugin-form engines need it: {build}")
    if trt is None:
        return Check("plugin library", WARN, f"found {lib}; not loadable without TensorRT", host.TRT_HINT)
    try:
        load_plugin_library(trt, lib)
    except TscliError as exc:
        return Check("plugin library", MISSING, f"{lib}: {exc}", build)
    creator = find_creator(trt.get_plugin_registry(), C.SAMPLE_OP, C.PLUGIN_VERSION, C.PLUGIN_DOMAIN)
    if creator is None:
        return Check("plugin library", MISSING, f"{lib} loaded but registers no {C.PLUGIN_DOMAIN}::{C.SAMPLE_OP}", build)
    return Check("plugin library", OK, f"{lib} ({C.PLUGIN_DOMAIN}::{C.SAMPLE_OP} v{C.PLUGIN_VERSION} registered)")


def check_ort_ops() -> Check:
    """tscli's ONNX Runtime op library: built (or found built) and registered in a session options."""
    name = "ORT op library"
    fetch = "python -m tscli.plugins.ort_ops --fetch-headers"
    try:
        find_ort_headers()
    except TscliError as exc:
        fix = ("fix TSCLI_ORT_INCLUDE, or unset it to use the fetched headers" if os.environ.get("TSCLI_ORT_INCLUDE")
               else f"only plugin-form files on the ort backend use it: {fetch}")
        return Check(name, INFO, str(exc), fix)
    try:
        lib = build_ort_ops()
        import onnxruntime as ort

        ort.SessionOptions().register_custom_ops_library(str(lib))
    except Exception as exc:  # a failing probe is a line, never a crash
        return Check(name, WARN, first_line(exc), "python -m tscli.plugins.ort_ops shows the whole build")
    return Check(name, OK, f"{lib} (tscli::ATSSample on the CPU provider; pass this path to --plugins)")


def check_tools() -> Check:
    found = {tool: shutil.which(tool) for tool in ("cmake", "nvcc")}
    missing = [t for t, p in found.items() if p is None]
    detail = ", ".join(f"{t} {'found' if p else 'missing'}" for t, p in found.items())
    return Check("plugin build tools", INFO if missing else OK, detail,
                 "to build the plugins on this host: apt install cmake; nvcc comes with CUDA/JetPack" if missing else "")


def run_doctor() -> list[Check]:
    import numpy

    checks = [Check("python", OK, f"{platform.python_version()} ({sys.executable})"),
              Check("platform", INFO, f"{platform.system()} {platform.machine()}"),
              Check("numpy", OK, numpy.__version__)]
    checks += check_onnxruntime()
    trt_check, trt = check_tensorrt()
    checks += [trt_check, check_cuda_bindings()]
    checks += check_gpu()
    checks += [check_jetson(), check_plugins(trt), check_ort_ops(), check_tools()]
    return checks


def summary(checks: list[Check]) -> str:
    """The one line that says which backends this host can run."""
    by = {c.name.strip(): c.status for c in checks}
    can = ["ort (CPU)"]
    if by.get("CUDAExecutionProvider") == OK:
        can.append("ort-cuda")
    if by.get("TensorrtExecutionProvider") == OK:
        can.append("ort-trt")
    if by.get("TensorRT") == OK and by.get("GPU") == OK and by.get("cuda-python") == OK:
        can.append("trt (tscli build / selftest)")
    return "this host can run: " + ", ".join(can)
