"""Automated check that a graph is TensorRT-parseable and has no data-dependent shapes.

Errors make export fail; warnings name a TensorRT version floor. docs/design.md ("Operator traps") lists
the traps encoded here.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

import onnx

from .. import contract as C
from ..errors import first_line

FORBIDDEN = {
    "NonZero": "data-dependent output shape",
    "Unique": "data-dependent output shape",
    "Multinomial": "random sampling is not deterministic and not supported by TensorRT",
    "RandomUniform": "random op", "RandomUniformLike": "random op",
    "RandomNormal": "random op", "RandomNormalLike": "random op", "Bernoulli": "random op",
}
# Symbols a static graph's shapes may use: the two dynamic inputs and arithmetic on them.
_ALLOWED_DIM = re.compile(r"^[\sK0-9+\-*/()]*$|^batch$")


@dataclass
class Finding:
    level: str  # "error" | "warning" | "info"
    node: str
    message: str

    def __str__(self) -> str:
        return f"{self.level}: {self.node}: {self.message}"


@dataclass
class LintReport:
    findings: list[Finding] = field(default_factory=list)
    op_histogram: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not any(f.level == "error" for f in self.findings)

    def first_error(self) -> str:
        return next((str(f) for f in self.findings if f.level == "error"), "")

    def add(self, level: str, node: onnx.NodeProto | str, message: str) -> None:
        name = node if isinstance(node, str) else f"{node.op_type}({node.name or node.output[0]})"
        self.findings.append(Finding(level, name, message))


def _attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _check_node(node: onnx.NodeProto, constants: set[str], report: LintReport) -> None:
    op = node.op_type
    if node.domain not in ("", "ai.onnx"):
        if node.domain == C.PLUGIN_DOMAIN and op == C.SAMPLE_OP:
            report.add("info", node, "plugin node: TensorRT needs libtscli_plugins loaded (ONNX Runtime runs its body)")
        else:
            report.add("error", node, f"custom domain {node.domain!r} is unknown to TensorRT")
        return
    if op in FORBIDDEN:
        report.add("error", node, FORBIDDEN[op])
    elif op in ("ScatterND", "ScatterElements"):
        reduction = _attr(node, "reduction", b"none")
        if (reduction.decode() if isinstance(reduction, bytes) else reduction) != "none":
            report.add("error", node, f"{op} with reduction={reduction!r} is not supported by TensorRT")
    elif op in ("ArgMin", "ArgMax") and _attr(node, "select_last_index", 0):
        report.add("error", node, "select_last_index=1: ties must go to the first index")
    elif op == "TopK" and len(node.input) > 1 and node.input[1] not in constants:
        report.add("warning", node, "TopK with a computed K needs TensorRT >= 8.6 (not JetPack 5)")


def _check_shapes(model: onnx.ModelProto, report: LintReport, data_dependent: str = "error") -> None:
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception as exc:  # inference failing is itself worth knowing, but not fatal
        report.add("warning", "graph", f"shape inference failed: {first_line(exc, 200)}")
        inferred = model
    # Declared output shapes (the exporter's symbols) and inferred ones both count.
    for value in list(model.graph.output) + list(inferred.graph.output):
        for dim in value.type.tensor_type.shape.dim:
            if dim.HasField("dim_param") and not _ALLOWED_DIM.match(dim.dim_param):
                report.add(data_dependent, f"output {value.name}",
                           f"dimension {dim.dim_param!r} depends on the data (not batch or K): not for TensorRT")
                return


def _check_functions(model: onnx.ModelProto, report: LintReport) -> None:
    """Local function bodies (the plugin form's tscli.ATSSample) are what TensorRT inlines when
    the plugin library is not loaded, so they must pass the same node checks."""
    for fn in model.functions:
        body = LintReport()
        constants = {o for n in fn.node if n.op_type == "Constant" for o in n.output}
        for node in fn.node:
            _check_node(node, constants, body)
        for f in body.findings:
            report.findings.append(Finding(f.level, f"{fn.domain}.{fn.name}/{f.node}",
                                           f"{f.message} (in the function body TensorRT inlines without the plugin)"))


def _mode(model: onnx.ModelProto) -> str:
    props = {p.key: p.value for p in model.metadata_props}
    return str(C.decode_metadata(props).get("mode", "padded"))


def lint_model(model: onnx.ModelProto) -> LintReport:
    """Findings for TensorRT. A ``trimmed`` file (metadata mode) is for ONNX Runtime: its
    data-dependent shapes are reported as warnings that say so, not as errors."""
    report = LintReport()
    trimmed = _mode(model) == "trimmed"
    if trimmed:
        report.add("warning", "graph", "mode trimmed: slot counts depend on the data (batch max of K'+1 per stage); "
                                       "for ONNX Runtime, not for TensorRT (export --mode padded for TensorRT)")
    constants = {init.name for init in model.graph.initializer}
    constants |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    cumsum_axes = set()
    for node in model.graph.node:
        _check_node(node, constants, report)
        if node.op_type == "CumSum":
            cumsum_axes.add(node.input[1] if len(node.input) > 1 else "")
    if len(cumsum_axes) > 1:
        report.add("warning", "CumSum", "several CumSum axes gave wrong results in TensorRT 10.8+")
    _check_functions(model, report)
    _check_shapes(model, report, "warning" if trimmed else "error")
    report.op_histogram = dict(Counter(n.op_type for n in model.graph.node).most_common())
    return report
