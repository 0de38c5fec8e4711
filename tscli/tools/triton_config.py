"""Triton model configurations (config.pbtxt): written from a spec, checked against Triton's own
model-config protobuf, and checked for what the protobuf parser does not catch but Triton refuses
at load time (empty dims, a name that is not the folder's, batching without a batch size, ...).

The protobuf module comes from tritonclient (``tritonclient/grpc/model_config_pb2.py``). It is
loaded by file path, because importing ``tritonclient.grpc`` needs tritonclient's gRPC extra, which
wants protobuf<7, while the project's venv has protobuf 7; the generated module itself loads fine
there. Looked for in this interpreter first, then in the serving venv (tools/serve_env.py).
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import MissingDependency, ModelFileError, first_line
from .serve_env import serving_python

TRITON_TYPES = {"float32": "TYPE_FP32", "int64": "TYPE_INT64", "bool": "TYPE_BOOL", "int32": "TYPE_INT32",
                "float16": "TYPE_FP16"}
DEFAULT_FILES = {"onnxruntime": "model.onnx", "tensorrt": "model.plan", "python": "model.py"}
KINDS = ("KIND_AUTO", "KIND_CPU", "KIND_GPU")


@dataclass
class TensorSpec:
    name: str
    dtype: str  # a TYPE_* name
    dims: list[int]  # without the batch dimension when max_batch_size > 0; -1 = any size
    reshape: list[int] | None = None  # what the model sees, when it differs from dims (rank-0 -> [])


@dataclass
class ModelSpec:
    name: str
    backend: str  # onnxruntime | tensorrt | python
    max_batch: int
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    instances: int = 1
    kind: str = "KIND_AUTO"
    delay_us: int = 0
    parameters: dict[str, str] = field(default_factory=dict)
    comment: list[str] = field(default_factory=list)


def triton_type(dtype) -> str:
    name = np.dtype(dtype).name
    if name not in TRITON_TYPES:
        raise ModelFileError(f"output type {name} has no Triton type in tscli's table ({', '.join(TRITON_TYPES)})")
    return TRITON_TYPES[name]


def _tensor(t: TensorSpec) -> str:
    lines = [f'    name: "{t.name}"', f"    data_type: {t.dtype}", f"    dims: [ {', '.join(map(str, t.dims))} ]"]
    if t.reshape is not None:
        lines.append(f"    reshape: {{ shape: [{''.join(f' {d},' for d in t.reshape).rstrip(',')} ] }}")
    return "  {\n" + "\n".join(lines) + "\n  }"


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render(spec: ModelSpec) -> str:
    """The config.pbtxt text (protobuf text format) for ``spec``."""
    parts = [f"# {line}" for line in spec.comment]
    parts += [f"name: {_quote(spec.name)}", f"backend: {_quote(spec.backend)}", f"max_batch_size: {spec.max_batch}"]
    parts.append("input [\n" + ",\n".join(_tensor(t) for t in spec.inputs) + "\n]")
    parts.append("output [\n" + ",\n".join(_tensor(t) for t in spec.outputs) + "\n]")
    if spec.max_batch > 0:
        parts.append(f"dynamic_batching {{\n  max_queue_delay_microseconds: {spec.delay_us}\n}}")
    parts.append(f"instance_group [\n  {{\n    count: {spec.instances}\n    kind: {spec.kind}\n  }}\n]")
    for key, value in spec.parameters.items():
        parts.append(f"parameters {{\n  key: {_quote(key)}\n  value: {{ string_value: {_quote(value)} }}\n}}")
    return "\n".join(parts) + "\n"


def _pb2_candidates() -> list[Path]:
    found = []
    spec = importlib.util.find_spec("tritonclient")
    if spec and spec.submodule_search_locations:
        found += [Path(p) / "grpc" / "model_config_pb2.py" for p in spec.submodule_search_locations]
    try:
        python, _ = serving_python(None)
    except Exception:  # a broken $TSCLI_SERVE_PYTHON is for serve to report, not for this lookup
        python = None
    if python is not None:
        found += sorted(python.parent.parent.glob("lib/python3*/site-packages/tritonclient/grpc/model_config_pb2.py"))
    return [p for p in found if p.is_file()]


@functools.cache
def model_config_pb2():
    """Triton's ModelConfig protobuf module (tritonclient's generated file, loaded by path)."""
    if importlib.util.find_spec("google.protobuf") is None:
        raise MissingDependency("validating config.pbtxt needs protobuf; install it with: pip install protobuf")
    candidates = _pb2_candidates()
    if not candidates:
        raise MissingDependency("validating config.pbtxt needs Triton's model-config protobuf, which tritonclient "
                                "ships; install it with `pip install tritonclient`, or create the serving venv "
                                "with `tscli serve --setup`")
    spec = importlib.util.spec_from_file_location("tscli_triton_model_config_pb2", candidates[0])
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        raise MissingDependency(f"Triton's model-config protobuf at {str(candidates[0])!r} does not load with this "
                                f"protobuf: {first_line(exc)}") from None
    return module


def parse(text: str, where: str = "config.pbtxt"):
    """config.pbtxt text -> ModelConfig message; a syntax error or unknown field is one line."""
    from google.protobuf import text_format

    pb2 = model_config_pb2()
    try:
        return text_format.Parse(text, pb2.ModelConfig())
    except text_format.ParseError as exc:
        raise ModelFileError(f"{where} is not a valid Triton model config: {first_line(exc)}") from None


def problems(config_path: Path, expected: ModelSpec | None = None) -> list[str]:
    """What Triton would refuse in MODEL/config.pbtxt (empty list: nothing), and, given
    ``expected``, every difference between the parsed config and the spec it was written from."""
    pb2 = model_config_pb2()
    cfg = parse(config_path.read_text(), str(config_path))
    folder = config_path.parent
    found = []
    if cfg.name != folder.name:
        found.append(f"name {cfg.name!r} is not the folder's name {folder.name!r}")
    if cfg.backend not in DEFAULT_FILES:
        found.append(f"backend {cfg.backend!r} is not one of {', '.join(DEFAULT_FILES)}")
    if cfg.max_batch_size < 0:
        found.append(f"max_batch_size {cfg.max_batch_size} < 0")
    if cfg.HasField("dynamic_batching") and cfg.max_batch_size == 0:
        found.append("dynamic_batching needs max_batch_size > 0")
    if not cfg.input or not cfg.output:
        found.append("no inputs or no outputs")
    for t in [*cfg.input, *cfg.output]:
        if not t.dims:
            found.append(f"{t.name}: dims empty (Triton needs rank >= 1; a scalar is dims [ 1 ] with reshape {{ shape: [ ] }})")
        if any(d == 0 or d < -1 for d in t.dims):
            found.append(f"{t.name}: dims {list(t.dims)} (each must be -1 or >= 1)")
        if t.data_type == pb2.TYPE_INVALID:
            found.append(f"{t.name}: no data_type")
    for group in cfg.instance_group:
        if group.count < 1:
            found.append(f"instance_group count {group.count} < 1")
        if cfg.backend == "tensorrt" and group.kind != pb2.ModelInstanceGroup.KIND_GPU:
            found.append("TensorRT models run on GPU instances (kind: KIND_GPU)")
    version = folder / "1"
    if not version.is_dir():
        found.append("no version folder 1/")
    elif cfg.backend != "tensorrt" and not (version / DEFAULT_FILES.get(cfg.backend, "?")).is_file():
        found.append(f"1/{DEFAULT_FILES.get(cfg.backend, '?')} is missing")
    if expected is not None:
        found += _differences(cfg, expected)
    return found


def _differences(cfg, spec: ModelSpec) -> list[str]:
    pb2 = model_config_pb2()
    found = []
    if cfg.max_batch_size != spec.max_batch:
        found.append(f"max_batch_size {cfg.max_batch_size} != {spec.max_batch}")
    for kind, parsed, wanted in (("input", cfg.input, spec.inputs), ("output", cfg.output, spec.outputs)):
        got = [(t.name, pb2.DataType.Name(t.data_type), list(t.dims),
                list(t.reshape.shape) if t.HasField("reshape") else None) for t in parsed]
        want = [(t.name, t.dtype, list(t.dims), t.reshape) for t in wanted]
        if got != want:
            found.append(f"{kind}s {got} != {want}")
    params = {k: v.string_value for k, v in cfg.parameters.items()}
    if params != spec.parameters:
        found.append(f"parameters {params} != {spec.parameters}")
    return found
