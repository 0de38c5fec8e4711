"""Run the plugin form of a tscli graph in ONNX Runtime on the CPU.

The exporter's plugin form contains nodes ``op_type="ATSSample", domain="tscli"`` that TensorRT
maps to the CUDA plugin of the same name. ONNX Runtime cannot run those, but onnxruntime-extensions
can execute Python custom ops in its fixed domain ``ai.onnx.contrib``. This module registers an
``ATSSample`` op there that calls the C++ core (tscli.plugins.core), and rewrites a model so its
ATSSample nodes use that domain. The result exercises exactly the arithmetic of the TensorRT plugin
inside a full graph, which is how the plugin form is tested without a GPU.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from tscli.errors import require
from tscli.plugins import PLUGIN_NAMESPACE, SAMPLE_PLUGIN
from tscli.plugins.core import ats_sample_cpu

ORT_CONTRIB_DOMAIN = "ai.onnx.contrib"
# Node attributes that only address the TensorRT plugin registry.
_PLUGIN_ATTRS = ("plugin_version", "plugin_namespace")
_EXT_HINT = "pip install onnxruntime-extensions"

_registered = False
_lock = threading.Lock()


def register_ort_ops() -> None:
    """Register ATSSample with onnxruntime-extensions (idempotent; once per process)."""
    global _registered
    with _lock:
        if _registered:
            return
        ext = require("onnxruntime_extensions", _EXT_HINT)
        dt = ext.PyCustomOpDef

        @ext.onnx_op(op_type=SAMPLE_PLUGIN,
                     inputs=[dt.dt_float, dt.dt_bool, dt.dt_float],
                     outputs=[dt.dt_int32, dt.dt_bool],
                     attrs={"scheme": dt.dt_string})
        def _ats_sample(scores: np.ndarray, valid: np.ndarray, k_like: np.ndarray,
                        **attrs: Any) -> tuple[np.ndarray, np.ndarray]:
            # Missing attribute = "paper", as in the TensorRT plugin's creator.
            scheme = attrs.get("scheme") or "paper"
            return ats_sample_cpu(scores, valid, int(np.asarray(k_like).shape[0]), scheme)

        _registered = True


def _is_plugin_node(node: Any) -> bool:
    return node.op_type == SAMPLE_PLUGIN and node.domain == PLUGIN_NAMESPACE


def _domain_in_use(model: Any, domain: str) -> bool:
    if any(n.domain == domain for n in model.graph.node):
        return True
    return any(f.domain == domain or any(n.domain == domain for n in f.node) for f in model.functions)


def to_ort_plugin_model(model: Any) -> tuple[Any, int]:
    """Copy of ``model`` whose tscli.ATSSample nodes run as the extensions custom op.

    Nodes move to domain ai.onnx.contrib (TensorRT-only attributes dropped), the local function
    tscli.ATSSample is removed (otherwise ORT would inline its body and never call the op), the
    contrib opset is imported and an unused ``tscli`` import removed. Returns (model, nodes
    rewritten). Only the top-level graph is scanned: the exporter puts the node there.
    """
    onnx = require("onnx", "pip install onnx")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    count = 0
    for node in out.graph.node:
        if not _is_plugin_node(node):
            continue
        node.domain = ORT_CONTRIB_DOMAIN
        keep = [a for a in node.attribute if a.name not in _PLUGIN_ATTRS]
        del node.attribute[:]
        node.attribute.extend(keep)
        count += 1
    functions = [f for f in out.functions if not (f.name == SAMPLE_PLUGIN and f.domain == PLUGIN_NAMESPACE)]
    del out.functions[:]
    out.functions.extend(functions)
    imports = [op for op in out.opset_import if op.domain != ORT_CONTRIB_DOMAIN]
    if not _domain_in_use(out, PLUGIN_NAMESPACE):
        imports = [op for op in imports if op.domain != PLUGIN_NAMESPACE]
    imports.append(onnx.helper.make_opsetid(ORT_CONTRIB_DOMAIN, 1))
    del out.opset_import[:]
    out.opset_import.extend(imports)
    return out, count


def create_ort_plugin_session(model: Any, providers: list[str] | None = None,
                              sess_options: Any = None) -> Any:
    """An onnxruntime.InferenceSession running ``model``'s plugin nodes through the C++ core.

    ``model`` is a ModelProto in plugin form (tscli.ATSSample nodes); it is rewritten with
    to_ort_plugin_model first. The custom op runs on the CPU whatever the providers are.
    """
    ort = require("onnxruntime", "pip install onnxruntime")
    ext = require("onnxruntime_extensions", _EXT_HINT)
    register_ort_ops()
    rewritten, _ = to_ort_plugin_model(model)
    options = sess_options if sess_options is not None else ort.SessionOptions()
    options.register_custom_ops_library(ext.get_library_path())
    return ort.InferenceSession(rewritten.SerializeToString(), options,
                                providers=providers or ["CPUExecutionProvider"])
