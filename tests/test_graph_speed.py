"""What makes the exported graphs fast (docs/design.md, "Graph speed"): the fusable GELU and
attention forms, dropped shape annotations, flushed denormals, and the ideal bound of bench.

Speed itself is measured by `tscli bench`, not here: these tests check that each measure is in
place and changes no number beyond float rounding."""

from __future__ import annotations

import onnx
import onnxruntime as ort
import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

from tscli import contract as C
from tscli.export.exporter import run_exporter, run_static_exporter
from tscli.export.fusable import ErfGelu, fusable_forms
from tscli.models.ideal import IdealBound
from tscli.runtime.ort.session import OrtBackend

TOL = 1e-5  # float32 rounding of the same function written in another order (logits ~1)


def _vit() -> VisionTransformer:
    torch.manual_seed(0)
    return VisionTransformer(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, num_classes=10).eval()


def _ort_ops(model: onnx.ModelProto, tmp_path) -> set[str]:
    """The operators ONNX Runtime's CPU provider runs after its own graph optimisations."""
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    opts.log_severity_level = 3
    ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return {n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node}


def test_fusable_forms_compute_the_same_and_restore_the_module() -> None:
    vit = _vit()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        before = vit(x)
        with fusable_forms(vit):
            assert all(isinstance(b.mlp.act, ErfGelu) for b in vit.blocks)
            assert not any(b.attn.fused_attn for b in vit.blocks)
            inside = vit(x)
        after = vit(x)
    assert all(isinstance(b.mlp.act, torch.nn.GELU) and b.attn.fused_attn for b in vit.blocks)
    assert (inside - before).abs().max() < TOL
    assert torch.equal(after, before)


def test_dynamo_export_fuses_gelu_and_attention_and_drops_shape_annotations(tmp_path) -> None:
    batch = torch.export.Dim(C.DIM_BATCH, min=1, max=64)
    model = run_exporter(_vit(), (torch.randn(2, 3, 32, 32),), ([C.INPUT_IMAGES], [C.OUTPUT_LOGITS]),
                         {"x": {0: batch}}, 18)
    assert len(model.graph.value_info) == 0
    ops = _ort_ops(model, tmp_path)
    # one BiasGelu per MLP instead of Div/Erf/Add/Mul/Mul; q.k^T with the scale as one FusedMatMul
    assert "BiasGelu" in ops and "Erf" not in ops
    assert "FusedMatMul" in ops


@pytest.mark.parametrize("static", [True, False], ids=["torchscript", "dynamo"])
def test_ideal_bound_at_full_k_is_the_dense_model(static: bool) -> None:
    """With K + 1 = all tokens nothing is cut: the bound must be the plain model, exported too."""
    vit = _vit()
    bound = IdealBound(vit, first=1).eval()
    x = torch.randn(2, 3, 32, 32)
    full_k = torch.zeros(vit.patch_embed.num_patches)  # K + 1 = patches + CLS
    with torch.no_grad():
        want = vit(x)
        assert (bound(x, full_k) - want).abs().max() < TOL
        assert bound(x, torch.zeros(5)).shape == want.shape  # cut: same logits shape
    dims = ({0: torch.export.Dim(C.DIM_BATCH, min=1, max=64)}, {0: torch.export.Dim(C.DIM_K, min=1, max=64)})
    names = ([C.INPUT_IMAGES, C.INPUT_K], [C.OUTPUT_LOGITS])
    if static:
        model = run_static_exporter(bound, (x, torch.zeros(4)), names, dims, 18)
    else:
        model = run_exporter(bound, (x, torch.zeros(4)), names, {"images": dims[0], "k_select": dims[1]}, 18)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = sess.run(None, {C.INPUT_IMAGES: x.numpy(), C.INPUT_K: full_k.numpy()})[0]
    assert abs(got - want.numpy()).max() < TOL
    k_dim = sess.get_inputs()[1].shape[0]
    assert k_dim == C.DIM_K  # K stays a named load-time dimension


def test_runtime_sessions_flush_denormals(tiny_exports) -> None:
    backend = OrtBackend(tiny_exports["dense"])
    opts = backend.session.get_session_options()
    assert opts.get_session_config_entry("session.set_denormal_as_zero") == "1"
