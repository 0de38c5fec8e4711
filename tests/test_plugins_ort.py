"""The plugin form of the sampling node, run in ONNX Runtime through the C++ core, vs the reference.

Graphs are built by hand with onnx.helper: a tscli.ATSSample node the way the exporter's plugin
form writes it (plugin_version/plugin_namespace attributes, optional local function of the same
name), inside a small graph with ops before and after it.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto as TP
from onnx import helper

from tscli.models.ops import ats_sample_reference
from tscli.models.sampling import SCHEMES
from tscli.plugins.ort_custom_op import (
    ORT_CONTRIB_DOMAIN,
    create_ort_plugin_session,
    to_ort_plugin_model,
)

IR_VERSION = 10  # what onnxruntime 1.2x-1.3x accepts; onnx 1.23's default (14) is too new


def _decoy_function() -> onnx.FunctionProto:
    """A local function tscli.ATSSample whose body is deliberately NOT the sampling: if the rewrite
    left it in place, ORT would inline it and the outputs would be all zeros / all false."""
    nodes = [
        helper.make_node("Shape", ["scores"], ["b"], end=1),
        helper.make_node("Shape", ["k_like"], ["k"]),
        helper.make_node("Constant", [], ["one"], value=helper.make_tensor("one", TP.INT64, [1], [1])),
        helper.make_node("Add", ["k", "one"], ["k1"]),
        helper.make_node("Concat", ["b", "k1"], ["shape"], axis=0),
        helper.make_node("ConstantOfShape", ["shape"], ["index"],
                         value=helper.make_tensor("z", TP.INT32, [1], [0])),
        helper.make_node("Cast", ["index"], ["mask"], to=TP.BOOL),
    ]
    return helper.make_function("tscli", "ATSSample", ["scores", "valid", "k_like"], ["index", "mask"], nodes,
                                [helper.make_opsetid("", 17)], attributes=["scheme"])


def _plugin_model(scheme: str, with_function: bool) -> onnx.ModelProto:
    """x [B, N] -> Abs -> scores; valid from `valid_in`; ATSSample; the index is cast to int64
    and used by GatherElements on a token-id row, as a block would gather its tokens."""
    nodes = [
        helper.make_node("Abs", ["x"], ["scores"]),
        helper.make_node("ATSSample", ["scores", "valid_in", "k_like"], ["index", "mask"], domain="tscli",
                         scheme=scheme, plugin_version="1", plugin_namespace="tscli"),
        helper.make_node("Cast", ["index"], ["index64"], to=TP.INT64),
        helper.make_node("GatherElements", ["token_ids", "index64"], ["picked"], axis=1),
    ]
    graph = helper.make_graph(
        nodes, "ats_plugin_form",
        [helper.make_tensor_value_info("x", TP.FLOAT, ["B", "N"]),
         helper.make_tensor_value_info("valid_in", TP.BOOL, ["B", "N"]),
         helper.make_tensor_value_info("k_like", TP.FLOAT, ["K"]),
         helper.make_tensor_value_info("token_ids", TP.FLOAT, ["B", "T"])],
        [helper.make_tensor_value_info("index", TP.INT32, ["B", "K1"]),
         helper.make_tensor_value_info("mask", TP.BOOL, ["B", "K1"]),
         helper.make_tensor_value_info("picked", TP.FLOAT, ["B", "K1"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("tscli", 1)],
                              ir_version=IR_VERSION, functions=[_decoy_function()] if with_function else [])
    onnx.checker.check_model(model)
    return model


def test_rewrite_moves_node_and_drops_function() -> None:
    model = _plugin_model("paper", with_function=True)
    rewritten, count = to_ort_plugin_model(model)
    assert count == 1
    node = next(n for n in rewritten.graph.node if n.op_type == "ATSSample")
    assert node.domain == ORT_CONTRIB_DOMAIN
    assert [a.name for a in node.attribute] == ["scheme"]
    assert len(rewritten.functions) == 0
    domains = {op.domain for op in rewritten.opset_import}
    assert ORT_CONTRIB_DOMAIN in domains and "tscli" not in domains
    # the input model is untouched
    assert model.graph.node[1].domain == "tscli" and len(model.functions) == 1


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("with_function", [False, True])
def test_plugin_graph_matches_reference(scheme: str, with_function: bool) -> None:
    session = create_ort_plugin_session(_plugin_model(scheme, with_function))
    rng = np.random.default_rng(11)
    checked = 0
    for batch, n, k in ((1, 9, 3), (5, 48, 24), (3, 196, 120), (4, 120, 196), (2, 1, 1)):
        x = (rng.standard_normal((batch, n)) ** 3).astype(np.float32)
        x[:, : n // 3] = np.round(x[:, : n // 3])  # exact ties and zeros
        valid = rng.random((batch, n)) > 0.25
        token_ids = (np.arange(n + 1)[None] + 1000 * np.arange(batch)[:, None]).astype(np.float32)
        index, mask, picked = session.run(
            None, {"x": x, "valid_in": valid, "k_like": np.zeros(k, np.float32), "token_ids": token_ids})
        ref_index, ref_mask = ats_sample_reference(
            torch.from_numpy(np.abs(x)), torch.from_numpy(valid), torch.empty(k), scheme)
        assert index.dtype == np.int32 and mask.dtype == np.bool_ and index.shape == (batch, k + 1)
        np.testing.assert_array_equal(index, ref_index.numpy())
        np.testing.assert_array_equal(mask, ref_mask.numpy())
        np.testing.assert_array_equal(picked, np.take_along_axis(token_ids, index.astype(np.int64), axis=1))
        assert mask.sum() > batch or n == 1  # something besides CLS was kept
        checked += batch
    assert checked == 15


def test_exported_plugin_form_matches_plain_form(tiny_exports) -> None:
    """Issue 5 acceptance: the exporter's plugin-form tiny_ats, run here through the C++ core, gives
    the plain form's logits (<= 1e-5) and exactly the same kept counts and positions, for several K."""
    exports = tiny_exports
    plain = ort.InferenceSession(str(exports["paper"]), providers=["CPUExecutionProvider"])
    plugin_model = onnx.load(str(exports["plugin"]))
    assert sum(n.op_type == "ATSSample" and n.domain == "tscli" for n in plugin_model.graph.node) >= 1
    plugin = create_ort_plugin_session(plugin_model)
    names = [o.name for o in plain.get_outputs()]
    assert names == [o.name for o in plugin.get_outputs()] and names[0] == "logits"
    rng = np.random.default_rng(5)
    k_input = next(i for i in plain.get_inputs() if i.name != "images")
    for k in (40, 17, 3):
        feed = {"images": rng.standard_normal((3, 3, 32, 32)).astype(np.float32),
                k_input.name: np.zeros(k, np.float32)}
        ref, got = plain.run(None, feed), plugin.run(None, feed)
        assert float(np.abs(ref[0] - got[0]).max()) <= 1e-5
        for name, a, b in zip(names[1:], ref[1:], got[1:]):
            np.testing.assert_array_equal(a, b, err_msg=f"{name} differs at K={k}")
