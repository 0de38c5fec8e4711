"""Deploy-side runtime: no torch, predictions from files / PIL / arrays, clear errors."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from tscli.errors import InputError, ModelFileError, UsageError
from tscli.runtime import load


def test_runtime_import_does_not_import_torch():
    code = "import sys, tscli.runtime, tscli.tools.inspect; print(sorted(m for m in ('torch', 'timm', 'onnx') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_running_a_model_does_not_import_torch(tiny_exports):
    code = (
        "import sys, numpy as np; from tscli.runtime import load\n"
        f"r = load({str(tiny_exports['paper'])!r}, k=8, threads=1)\n"
        "r.predict([np.zeros((40, 50, 3), np.uint8)])\n"
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"


def test_predict_accepts_paths_pil_and_arrays(tiny_exports, sample_arrays, tmp_path):
    from PIL import Image

    path = tmp_path / "a.png"
    Image.fromarray(sample_arrays[0]).save(path)
    runner = load(tiny_exports["paper"], k=12, threads=1)
    preds = runner.predict([str(path), Image.fromarray(sample_arrays[0]), sample_arrays[0]])
    assert len(preds) == 3
    assert preds[0].index == preds[1].index == preds[2].index
    assert preds[0].score == pytest.approx(preds[2].score, abs=1e-6)
    assert len(preds[0].top5) == 5 and len(preds[0].kept_counts) == 3
    assert all(c <= 13 for c in preds[0].kept_counts)
    gray = runner.predict([sample_arrays[4]])  # camera: grayscale HxW
    assert gray[0].label


def test_k_defaults_to_max_k_and_is_range_checked(tiny_exports):
    assert load(tiny_exports["paper"]).k == 40
    for bad in (0, 41, -3):
        with pytest.raises(UsageError, match=r"valid: 1\.\.40"):
            load(tiny_exports["paper"], k=bad)
    with pytest.raises(UsageError, match="no K to choose"):
        load(tiny_exports["dense"], k=5)


def test_k_is_pinned_in_the_session_and_changes_nothing(tiny_exports):
    from tscli.runtime.ort.session import OrtBackend

    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
    dynamic = OrtBackend(tiny_exports["paper"])
    for k, runner in ((17, load(tiny_exports["paper"], k=17)), (40, load(tiny_exports["paper"]))):
        assert runner.backend.fixed_dims == {"K": k}
        pinned = runner.infer(x)
        free = dynamic.run({"images": x, "k_select": np.zeros(k, np.float32)})
        # Same graph, same kernels: pinning K only lets ORT plan for it; allow float reassociation.
        np.testing.assert_allclose(pinned["logits"], free["logits"], rtol=0, atol=1e-5)
        np.testing.assert_array_equal(pinned["kept_counts"], free["kept_counts"])
        np.testing.assert_array_equal(pinned["kept_positions"], free["kept_positions"])


def test_provider_is_the_one_really_running(tiny_exports):
    assert load(tiny_exports["paper"]).provider == "CPUExecutionProvider"


def test_bad_files_and_inputs(tiny_exports, tmp_path):
    with pytest.raises(ModelFileError, match="does not exist"):
        load(tmp_path / "missing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"\x00junk")
    with pytest.raises(ModelFileError, match="not a loadable ONNX model"):
        load(tmp_path / "junk.onnx")
    import onnx
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)], ir_version=9), tmp_path / "foreign.onnx")
    with pytest.raises(ModelFileError, match="not exported by tscli"):
        load(tmp_path / "foreign.onnx")
    runner = load(tiny_exports["paper"])
    with pytest.raises(InputError, match=r"\[B, 3, 32, 32\]"):
        runner.infer(np.zeros((1, 3, 64, 64), np.float32))
    with pytest.raises(InputError, match="does not exist"):
        runner.predict([str(tmp_path / "nope.jpg")])
    with pytest.raises(InputError, match="uint8"):
        runner.predict([np.zeros((8, 8, 3), np.float64)])
