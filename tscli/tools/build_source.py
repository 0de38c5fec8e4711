"""What `tscli build` needs to know about an exported file, read without TensorRT: metadata,
inputs and their types, custom nodes, the TensorRT lint, defaulted inputs, and whether its
tscli.ATSSample nodes keep the plugin's types. With the onnx package (export host) the graph is
read; a deploy host with only onnxruntime relies on the metadata."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

from .. import contract as C
from ..errors import ModelFileError, UsageError, first_line
from ..runtime.ort.session import OrtBackend
from . import build_plan as P
from .precision import island_nodes
from .quantize import quantization_summary


@dataclass
class SourceInfo:
    path: Path
    meta: dict
    input_names: list[str]
    input_types: dict[str, str]  # name -> "float32" / "float16"
    custom_ops: list[dict] = field(default_factory=list)  # [{"name", "namespace", "version"}]
    lint_error: str | None = None
    # Inputs that carry a default value (an initializer of the same name: DoViT's xi). TensorRT's
    # parser would fold such an input into a constant, freezing it in the engine: the plan drops
    # the default (DoViT: xi chosen at load).
    defaulted_inputs: list[str] = field(default_factory=list)
    model: object | None = None  # the loaded onnx.ModelProto (None on a host without onnx)
    node_problem: str | None = None  # tscli.ATSSample nodes off the plugin's types (build_plan)
    qdq: dict | None = None  # Q/DQ summary of an int8 file (tools/quantize.quantization_summary), else None
    island: list[str] = field(default_factory=list)  # sampling-island node names (tools/precision.py)

    @property
    def has_nodes(self) -> bool:
        return any(o["name"] == C.SAMPLE_OP and o["namespace"] == C.PLUGIN_DOMAIN for o in self.custom_ops)


def _custom_ops_from_onnx(model) -> list[dict]:
    ops = {}
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx"):
            attrs = {a.name: a.s.decode() for a in node.attribute if a.name in ("plugin_version", "plugin_namespace")}
            key = (node.op_type, attrs.get("plugin_namespace", node.domain), attrs.get("plugin_version", C.PLUGIN_VERSION))
            ops[key] = {"name": key[0], "namespace": key[1], "version": key[2]}
    return list(ops.values())


def read_source(path: str | Path) -> SourceInfo:
    """Metadata, inputs and custom nodes of an exported file. With the onnx package (export host)
    the graph is linted too; a deploy host with only onnxruntime relies on the metadata."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"ONNX file {str(path)!r} does not exist")
    if importlib.util.find_spec("onnx") is not None:
        import onnx

        from ..export.lint import lint_model  # needs onnx, like the branch it is in

        try:
            model = onnx.load(str(path))
        except Exception as exc:  # noqa: BLE001 - protobuf raises several types
            raise ModelFileError(f"{str(path)!r} is not a readable ONNX file: {first_line(exc, 200)}") from None
        meta = C.decode_metadata({p.key: p.value for p in model.metadata_props})
        init = {i.name for i in model.graph.initializer}
        inputs = [i for i in model.graph.input if i.name not in init]
        types = {i.name: onnx.helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type).name for i in inputs}
        report = lint_model(model)
        defaulted = [i.name for i in model.graph.input if i.name in init]
        problem = P.node_type_problem(model) if P.sample_nodes(model) else None
        qdq = quantization_summary(model) if any(n.op_type == "DequantizeLinear" for n in model.graph.node) else None
        return SourceInfo(path, meta, [i.name for i in inputs], types, _custom_ops_from_onnx(model),
                          None if report.ok else report.first_error(), defaulted, model, problem, qdq,
                          island_nodes(model, required=False))
    backend = OrtBackend(path)
    meta = C.decode_metadata(backend.metadata_props)
    types = {i.name: i.type.replace("tensor(", "").rstrip(")").replace("float", "float32").replace("3216", "16")
             for i in backend.session.get_inputs()}
    ops = [{"name": C.SAMPLE_OP, "namespace": C.PLUGIN_DOMAIN, "version": C.PLUGIN_VERSION}] if meta.get("form") == "plugin" else []
    defaulted = [i.name for i in backend.session.get_overridable_initializers()]
    return SourceInfo(path, meta, backend.input_names, types, ops, defaulted_inputs=defaulted,
                      qdq=meta.get("quantization") if meta.get("precision") == "int8" else None)


def refuse_unbuildable(src: SourceInfo) -> None:
    """Trimmed graphs have data-dependent shapes; TensorRT would need output allocators and lose
    the point of a fixed K. One line says how to get a buildable file."""
    name = src.path.name
    if "model" not in src.meta:
        raise ModelFileError(f"{name} was not exported by tscli (no tscli.* metadata); export it with `tscli export`")
    if src.meta.get("mode") == "trimmed":
        raise UsageError(f"{name} is a trimmed graph (data-dependent shapes): TensorRT engines need the padded graph; "
                         "export it again with `tscli export` (padded is the default)")
    if src.lint_error:
        raise UsageError(f"{name} cannot become a TensorRT engine: {src.lint_error}")
