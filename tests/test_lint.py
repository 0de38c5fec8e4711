"""The lint rejects what TensorRT cannot take (deliberately bad graphs) and passes our exports."""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

from tscli.export.lint import lint_model


def _graph(nodes, outputs, inputs=None):
    inputs = inputs or [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])]
    return helper.make_model(helper.make_graph(nodes, "g", inputs, outputs), opset_imports=[helper.make_opsetid("", 18)])


def test_rejects_nonzero_and_unique():
    model = _graph(
        [helper.make_node("NonZero", ["x"], ["nz"]), helper.make_node("Unique", ["x"], ["u"])],
        [helper.make_tensor_value_info("nz", TensorProto.INT64, None), helper.make_tensor_value_info("u", TensorProto.FLOAT, None)],
    )
    report = lint_model(model)
    assert not report.ok
    errors = [f for f in report.findings if f.level == "error"]
    assert {f.node.split("(")[0] for f in errors} >= {"NonZero", "Unique"}


def test_rejects_scatter_with_reduction_and_last_index_argmin():
    idx = helper.make_tensor("idx", TensorProto.INT64, [1, 1], [0])
    model = _graph(
        [helper.make_node("ScatterElements", ["x", "idx", "x1"], ["s"], reduction="add"),
         helper.make_node("ArgMin", ["x"], ["a"], select_last_index=1),
         helper.make_node("Slice", ["x", "z", "o"], ["x1"])],
        [helper.make_tensor_value_info("s", TensorProto.FLOAT, None), helper.make_tensor_value_info("a", TensorProto.INT64, None)],
    )
    model.graph.initializer.extend([idx, helper.make_tensor("z", TensorProto.INT64, [1], [0]),
                                    helper.make_tensor("o", TensorProto.INT64, [1], [1])])
    messages = [str(f) for f in lint_model(model).findings if f.level == "error"]
    assert any("reduction" in m for m in messages) and any("select_last_index" in m for m in messages)


def test_local_function_bodies_are_checked():
    """The plugin form's function body is inlined by TensorRT without the plugin: same rules."""
    body = helper.make_function("tscli", "Pick", ["x"], ["y"], [helper.make_node("NonZero", ["x"], ["y"])],
                                [helper.make_opsetid("", 18)])
    model = _graph([helper.make_node("Pick", ["x"], ["y"], domain="tscli")],
                   [helper.make_tensor_value_info("y", TensorProto.INT64, None)])
    model.functions.append(body)
    model.opset_import.append(helper.make_opsetid("tscli", 1))
    errors = [f for f in lint_model(model).findings if f.level == "error"]
    assert any(f.node.startswith("tscli.Pick/NonZero") and "inlines" in f.message for f in errors), errors


def test_data_dependent_output_dim_is_an_error():
    model = _graph([helper.make_node("Identity", ["x"], ["y"])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "u0"])])
    report = lint_model(model)
    assert not report.ok and "depends on the data" in report.first_error()


def test_computed_topk_is_a_version_warning_not_an_error():
    model = _graph([helper.make_node("Shape", ["x"], ["s"]), helper.make_node("TopK", ["x", "s"], ["v", "i"])],
                   [helper.make_tensor_value_info("v", TensorProto.FLOAT, None)])
    topk = [f for f in lint_model(model).findings if f.node.startswith("TopK")]
    assert [f.level for f in topk] == ["warning"] and "8.6" in topk[0].message


def test_our_exports_pass(tiny_exports):
    for key, path in tiny_exports.items():
        report = lint_model(onnx.load(str(path)))
        assert report.ok, (key, report.first_error())
        assert "NonZero" not in report.op_histogram and "Unique" not in report.op_histogram
