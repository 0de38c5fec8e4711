"""`tscli doctor` / `tscli selftest` on this host (no GPU, no TensorRT): real probes, honest report."""

from __future__ import annotations

import json
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from tscli.runtime.trt import host
from tscli.tools import doctor as D
from tscli.tools.selftest import LOGIT_TOL, compare_outputs


def test_hand_encoded_probe_model_is_valid_onnx_and_runs():
    model = onnx.load_from_string(D.tiny_model_bytes())
    onnx.checker.check_model(model, full_check=True)
    assert [n.op_type for n in model.graph.node] == ["Add"]
    sess = ort.InferenceSession(D.tiny_model_bytes(), providers=["CPUExecutionProvider"])
    assert sess.run(None, {"X": np.array([1, 2], np.float32)})[0].tolist() == [2.0, 4.0]


def test_probe_reports_fallback_as_not_running():
    ok, detail = D.probe_provider(ort, "CPUExecutionProvider")
    assert ok, detail
    ok, detail = D.probe_provider(ort, "CUDAExecutionProvider")  # CPU-only onnxruntime here
    assert not ok
    assert detail == "falls back to CPUExecutionProvider", detail


def test_doctor_reports_no_gpu_here(monkeypatch, capsys):
    if host.detect_gpu()[0] is not None:
        pytest.skip("this host has a GPU; the assertion below is about hosts without one")
    from tscli.cli import main

    monkeypatch.setattr(sys, "argv", ["tscli", "doctor", "--json"])
    try:
        main()
    except SystemExit as exc:
        assert exc.code in (0, None)
    report = json.loads(capsys.readouterr().out)
    by = {c["name"].strip(): c for c in report["checks"]}
    assert by["GPU"]["status"] == "missing" and "no NVIDIA GPU found" in by["GPU"]["detail"]
    assert by["CPUExecutionProvider"]["status"] == "ok"
    assert by["numpy"]["status"] == "ok" and by["python"]["status"] == "ok"
    assert "trt" not in report["summary"].split(":")[1] and "ort (CPU)" in report["summary"]
    if by["TensorRT"]["status"] == "missing":
        assert "pip install tensorrt" in by["TensorRT"]["fix"]


def test_jetson_release_parsing(tmp_path, monkeypatch):
    rel = tmp_path / "nv_tegra_release"
    rel.write_text("# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, DATE: x\n")
    model = tmp_path / "model"
    model.write_bytes(b"NVIDIA Jetson AGX Orin Developer Kit\x00")
    monkeypatch.setattr(host, "TEGRA_RELEASE", rel)
    monkeypatch.setattr(host, "DEVICE_MODEL", model)
    info = host.jetson_info()
    assert info == {"model": "NVIDIA Jetson AGX Orin Developer Kit", "l4t": "36.4.3", "jetpack": "6.1/6.2",
                    "jetpack_tensorrt": "10.3.0"}
    assert D.check_jetson().status == "ok"
    assert host.gpu_from_jetson()[0].compute_capability == "8.7"
    rel.write_text("# R35 (release), REVISION: 4.1, GCID: 1, BOARD: t186ref, EABI: aarch64\n")
    check = D.check_jetson()
    assert check.status == "missing" and "JetPack 5.1.2" in check.detail and check.detail.endswith("not supported")
    assert "TensorRT 8.5, below tscli's minimum 8.6" in check.fix and "Xavier has no newer JetPack" in check.fix


def test_selftest_says_it_needs_tensorrt_and_gpu(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    from tscli.cli import main

    monkeypatch.setattr(sys, "argv", ["tscli", "selftest", str(tmp_path / "any.onnx")])
    with pytest.raises(SystemExit) as exc:
        main()
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1
    assert err.startswith("error: selftest needs TensorRT and an NVIDIA GPU") and "TensorRT Python bindings not found" in err


def test_selftest_comparison_thresholds():
    ref = {"logits": np.zeros((2, 10), np.float32), "kept_counts": np.array([[33, 30], [33, 29]])}
    near = {"logits": ref["logits"] + 0.9 * LOGIT_TOL, "kept_counts": ref["kept_counts"].astype(np.int32)}
    assert compare_outputs(ref, near, 32).ok
    far = {"logits": ref["logits"] + 1.1 * LOGIT_TOL, "kept_counts": ref["kept_counts"]}
    assert not compare_outputs(ref, far, 32).ok
    counts = {"logits": ref["logits"], "kept_counts": ref["kept_counts"] + np.array([[0, 1], [0, 0]])}
    assert not compare_outputs(ref, counts, 32).ok


def test_doctor_ort_op_library_line(ort_ops_library, tmp_path, monkeypatch):
    from tscli.tools.doctor import INFO, OK, check_ort_ops

    check = check_ort_ops()  # headers are present (the fixture made sure): built and registered
    assert check.status == OK and ort_ops_library in check.detail
    monkeypatch.setenv("TSCLI_ORT_INCLUDE", str(tmp_path))  # a folder without the headers
    check = check_ort_ops()
    assert check.status == INFO and str(tmp_path) in check.detail and "TSCLI_ORT_INCLUDE" in check.fix
    monkeypatch.delenv("TSCLI_ORT_INCLUDE")
    monkeypatch.setenv("TSCLI_CACHE", str(tmp_path / "empty-cache"))  # nothing fetched there
    check = check_ort_ops()
    assert check.status == INFO and "--fetch-headers" in check.fix
