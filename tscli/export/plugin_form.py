"""The ATS sampling step as one ONNX node ``tscli.ATSSample`` and its standard-op body.

For the plugin form the exporter maps the torch op ``tscli::ats_sample`` to a single node
(custom_translation_table; a registered OpSchema lets onnxscript build it), and the model gets a
local function of the same name whose body is made of standard operators: ONNX Runtime runs the
body, TensorRT swaps in the plugin. The body is not written twice: it is the torch reference
exported on its own. (The plain form, the default, does not use the op at all: the exporter
traces the same tensor code inline, see ats_export._torch_export.)
"""

from __future__ import annotations

import functools

import onnx
import torch
from onnx import defs, helper

from ..contract import PLUGIN_DOMAIN, PLUGIN_VERSION, SAMPLE_OP
from ..models.ops import ats_sample_reference
from .exporter import run_exporter


@functools.cache
def register_schema() -> None:
    """Make ``tscli.ATSSample`` known to onnx so onnxscript can emit it (idempotent)."""
    P = defs.OpSchema.FormalParameter
    schema = defs.OpSchema(
        SAMPLE_OP, PLUGIN_DOMAIN, 1,
        # float32 and int32 only: the TensorRT plugin's types (models/ops.py says why)
        inputs=[P("scores", "F"), P("valid", "I"), P("k_like", "F")],
        outputs=[P("index", "I"), P("mask", "I")],
        type_constraints=[("F", ["tensor(float)"], ""), ("I", ["tensor(int32)"], "")],
        attributes=[defs.OpSchema.Attribute("scheme", defs.OpSchema.AttrType.STRING, "paper | official"),
                    defs.OpSchema.Attribute("plugin_version", defs.OpSchema.AttrType.STRING, "TensorRT plugin version", required=False),
                    defs.OpSchema.Attribute("plugin_namespace", defs.OpSchema.AttrType.STRING, "TensorRT plugin namespace", required=False)],
    )
    try:
        defs.register_schema(schema)
    except Exception:  # already registered by an earlier import in this process
        pass


def translation_table() -> dict:
    import onnxscript

    register_schema()
    opset = onnxscript.values.Opset(PLUGIN_DOMAIN, 1)

    def ats_sample(scores, valid, k_like, scheme: str):
        return opset.ATSSample(scores, valid, k_like, scheme=scheme)

    return {torch.ops.tscli.ats_sample.default: ats_sample}


class _Sample(torch.nn.Module):
    def __init__(self, scheme: str):
        super().__init__()
        self.scheme = scheme

    def forward(self, scores, valid, k_like):
        return ats_sample_reference(scores, valid, k_like, self.scheme)


@functools.cache
def sampling_function(scheme: str, opset: int) -> onnx.FunctionProto:
    """Export the torch reference with dynamic B, N, K and turn its graph into a FunctionProto."""
    dims = {"scores": {0: torch.export.Dim("b"), 1: torch.export.Dim("n")},
            "valid": {0: torch.export.Dim("b"), 1: torch.export.Dim("n")},
            "k_like": {0: torch.export.Dim("k")}}
    example = (torch.rand(2, 9), torch.ones(2, 9, dtype=torch.int32), torch.zeros(4))
    body = run_exporter(_Sample(scheme).eval(), example, (["scores", "valid", "k_like"], ["index", "mask"]), dims, opset)
    graph = body.graph
    consts = [helper.make_node("Constant", [], [init.name], value=init) for init in graph.initializer]
    return helper.make_function(
        PLUGIN_DOMAIN, SAMPLE_OP, [i.name for i in graph.input], [o.name for o in graph.output],
        consts + list(graph.node), list(body.opset_import), attributes=["scheme"],
    )


def to_plugin_form(model: onnx.ModelProto, scheme: str, opset: int) -> onnx.ModelProto:
    """Attach the body as a local function and tag the nodes for TensorRT's plugin lookup."""
    for node in model.graph.node:
        if node.domain == PLUGIN_DOMAIN and node.op_type == SAMPLE_OP:
            node.attribute.extend([helper.make_attribute("plugin_version", PLUGIN_VERSION),
                                   helper.make_attribute("plugin_namespace", PLUGIN_DOMAIN)])
    fn = onnx.FunctionProto()
    fn.CopyFrom(sampling_function(scheme, opset))
    fn.attribute.extend(["plugin_version", "plugin_namespace"])
    model.functions.append(fn)
    if not any(o.domain == PLUGIN_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(PLUGIN_DOMAIN, 1))
    return model
