"""CLI: one clear line and a non-zero exit on bad input, never a traceback; real outputs."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def tscli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "tscli.cli", *map(str, args)], capture_output=True, text=True, cwd=cwd)


@pytest.mark.parametrize("args, message", [
    (["export", "nope"], "unknown model 'nope'; valid:"),
    (["export", "tiny_ats", "--max-k", "0"], "--max-k 0 is out of range for tiny_ats; valid: 1..64"),
    (["export", "tiny_ats", "--max-k", "65"], "valid: 1..64"),
    (["export", "tiny_ats", "--sampling", "fancy"], "unknown --sampling 'fancy'; valid: paper, official"),
    (["export", "tiny_ats", "--stages", "2-9"], "bad --stages '2-9'"),
    (["export", "tiny_ats", "--checkpoint", "/nonexistent.pth"], "checkpoint '/nonexistent.pth' does not exist"),
    (["inspect", "/nonexistent.onnx"], "does not exist"),
    (["export", "tiny_ats", "--opset", "99"], "--opset 99 is out of range; valid: 17.."),
    (["export", "tiny_ats", "-o", "/tmp"], "-o '/tmp' is a folder"),
    (["export", "tiny_dovit", "--mode", "trimmed"], "apply to ATS models"),
    (["export", "tiny_dovit", "-o", "/tmp"], "-o '/tmp' is a folder"),
    (["train-digits", "-o", "/tmp"], "-o '/tmp' is a folder"),
    (["train-digits", "-o", "w.pth"], "--output 'w.pth' must end in .safetensors"),
    (["digits", "/etc/hostname"], "is a file; give a new folder path"),
    (["run", "m.onnx", "x.png", "--plugins", "p.so", "--backend", "ort-cuda"],
     "--plugins applies to the ort and trt backends; --backend is 'ort-cuda'"),
    (["digits", "out", "--size", "0"], "--size 0 is invalid"),
    (["export", "tiny_ats", "--pretrained"], "no pretrained weights are known for 'tiny_ats'"),
    (["export", "tiny_dovit", "--pretrained"], "'tiny_dovit' is a segmentation model"),
    (["export", "deit_t_ats", "--pretrained", "nope"], "unknown --pretrained 'nope' for deit_t_ats; valid: fb_in1k"),
    (["export", "deit_t_ats", "--pretrained", "--checkpoint", "x.pth"], "either --checkpoint or --pretrained"),
    (["stats", "m.onnx", "--data", ".", "-o", "r.txt"], "-o 'r.txt' must end in .md"),
])
def test_bad_input_is_one_line(args, message, tmp_path):
    proc = tscli(*args, cwd=tmp_path)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_run_and_k_errors(tiny_exports, tmp_path):
    from tscli.data.samples import write_samples

    write_samples(tmp_path / "imgs", 2)
    proc = tscli("run", tiny_exports["paper"], tmp_path / "imgs", "--k", "8", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["k"] == 8 and len(data["predictions"]) == 2
    assert all(max(p["kept_counts"]) <= 9 for p in data["predictions"])
    for args, message in [(["--k", "41"], "K=41 is out of range"), (["--k", "0"], "valid: 1..40")]:
        proc = tscli("run", tiny_exports["paper"], tmp_path / "imgs", *args)
        assert proc.returncode != 0 and message in proc.stderr and "Traceback" not in proc.stderr
    proc = tscli("run", tiny_exports["paper"], tmp_path / "missing.png")
    assert proc.returncode != 0 and "image" in proc.stderr and "does not exist" in proc.stderr


def test_wrong_checkpoint_is_named(tmp_path):
    import torch

    torch.save({"model": {"head.weight": torch.zeros(3, 3)}}, tmp_path / "wrong.pth")
    proc = tscli("export", "tiny_ats", "--checkpoint", tmp_path / "wrong.pth", "-o", tmp_path / "m.onnx")
    assert proc.returncode != 0
    assert "does not fit tiny_ats" in proc.stderr and "missing keys" in proc.stderr
    assert not (tmp_path / "m.onnx").exists()


def test_inspect_and_parity_json(tiny_exports):
    proc = tscli("inspect", tiny_exports["official"], "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["metadata"]["scheme"] == "official" and info["lint"]["ok"]
    proc = tscli("parity", tiny_exports["official"], "--n", "3", "--k", "40,10", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["ok"] and {r["k"] for r in report["rows"]} == {40, 10}
    assert all(r["max_abs_diff"] <= 1e-4 for r in report["rows"])


def test_export_writes_a_checked_file(tmp_path):
    out = tmp_path / "t.onnx"
    proc = tscli("export", "tiny_ats", "--max-k", "20", "--sampling", "official", "-o", out)
    assert proc.returncode == 0, proc.stderr
    assert out.is_file() and "lint: ok" in proc.stdout and "parity" in proc.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.onnx"]  # no temp file left
