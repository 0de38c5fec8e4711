"""`tscli compare`: the report (GFLOPs from each family, latency and speed-up per batch,
agreement / accuracy), its Markdown and PNG written together and atomically, and bad input as
one line with exit code 2 through the real CLI. Nothing here asserts a speed."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest

from tscli import contract as C
from tscli.errors import UsageError
from tscli.runtime import flops as F


def tscli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "tscli.cli", *map(str, args)], capture_output=True, text=True, cwd=cwd)


@pytest.fixture(scope="module")
def files(tiny_exports, tiny_reduction_exports, tmp_path_factory):
    """tiny ATS (max_k 40), dense, top-K (max_k 40) and ToMe (r=8) from conftest, plus an ATS
    file with other weights (seed 1); all but the last share random(seed=0)."""
    from tscli.tools.checked_export import ExportOptions, export_onnx

    other = tmp_path_factory.mktemp("compare") / "other.onnx"
    return {"ats": tiny_exports["paper"], "dense": tiny_exports["dense"], "topk": tiny_reduction_exports["topk"].path,
            "tome": tiny_reduction_exports["tome"].path,
            "other": export_onnx(ExportOptions("tiny_ats", seed=1, validate=False, output=str(other))).path}


def test_report_rows_and_files(files, tmp_path):
    from tscli.tools.compare import compare
    from tscli.tools.compare_report import write_outputs

    report = compare([files["ats"], files["topk"], files["tome"], files["dense"]],
                     {"k": ["20", f"{files['topk'].name}=40,10"]}, batches=[1, 2], runs=2, warmup=0)
    rows = {(r["method"], r["point"]): r for r in report["rows"]}
    assert list(rows) == [("ATS", "K=20"), ("top-K", "K=40"), ("top-K", "K=10"), ("ToMe", "r=8"), ("dense", "")]
    meta = {"input_size": [3, 32, 32], "patch_size": 4, "embed_dim": 48, "depth": 4, "num_classes": 10,
            "stages": [1, 2, 3], "num_heads": 3}
    arch = F.arch_from_meta(meta)
    assert rows[("ATS", "K=20")]["gflops"] == pytest.approx(F.padded_flops(arch, 20) / 1e9)
    assert rows[("top-K", "K=10")]["gflops"] == pytest.approx(F.padded_flops(arch, 10) / 1e9)
    assert rows[("ToMe", "r=8")]["gflops"] == pytest.approx(F.tome_flops(arch, [8, 8, 8, 8]) / 1e9)
    assert rows[("dense", "")]["gflops"] == pytest.approx(F.dense_flops(arch) / 1e9)
    assert rows[("top-K", "K=40")]["budget"] == {"name": "k", "value": 40}
    assert report["quality"] == "agreement" and report["images"] == 12 and report["dense"] == str(files["dense"])
    dense = rows[("dense", "")]
    assert dense["agreement"] == 1.0 and dense["accuracy"] is None
    for r in report["rows"]:
        assert set(r["latency"]) == {"1", "2"} and 0.0 <= r["agreement"] <= 1.0
        assert all(v["median_ms"] > 0 for v in r["latency"].values())
    assert all(dense["latency"][b]["speedup_vs_dense"] == 1.0 for b in ("1", "2"))
    write_outputs(report, tmp_path / "cmp.md")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cmp.md", "cmp.png"]  # no temporary files
    text = (tmp_path / "cmp.md").read_text()
    assert "| top-K | K=10 |" in text and "| ToMe | r=8 |" in text and "speed-up @2" in text
    assert (tmp_path / "cmp.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_accuracy_on_an_imagefolder_is_against_the_labels(files, tmp_path, sample_arrays):
    """Two class folders of scikit-image samples: top-1 accuracy equals an independent count
    with the runtime's predict on the same files."""
    from PIL import Image

    from tscli.runtime import load
    from tscli.tools.compare import compare

    data = tmp_path / "data"
    paths, labels = [], []
    for i, arr in enumerate(sample_arrays):
        cls = ("3", "7")[i % 2]
        (data / cls).mkdir(parents=True, exist_ok=True)
        paths.append(data / cls / f"{i}.png")
        labels.append(int(cls))
        Image.fromarray(arr).save(paths[-1])
    report = compare([files["tome"], files["dense"]], data=data, batches=[1], runs=1, warmup=0)
    assert report["quality"] == "top1" and report["images"] == len(paths)
    order = sorted(range(len(paths)), key=lambda i: (labels[i], str(paths[i])))  # ImageFolder order
    for row, f in zip(report["rows"], (files["tome"], files["dense"])):
        preds = load(f).predict([str(paths[i]) for i in order])
        expected = np.mean([p.index == labels[i] for p, i in zip(preds, order)])
        assert row["accuracy"] == pytest.approx(expected)


def test_dense_is_exported_when_not_given(files):
    from tscli.tools.compare import compare

    report = compare([files["tome"]], batches=[1], runs=1, warmup=0)
    assert report["dense"] == "exported" and [r["method"] for r in report["rows"]] == ["dense", "ToMe"]
    assert report["rows"][0]["file"] == "exported" and report["rows"][0]["agreement"] == 1.0


def test_outputs_are_written_together_or_not_at_all(files, tmp_path, monkeypatch):
    from tscli.tools import compare_report
    from tscli.tools.compare import compare

    report = compare([files["dense"]], batches=[1], runs=1, warmup=0)

    def broken(report, path):
        path.write_bytes(b"half a png")
        raise RuntimeError("disk full")

    monkeypatch.setattr(compare_report, "plot", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        compare_report.write_outputs(report, tmp_path / "cmp.md")
    assert list(tmp_path.iterdir()) == []  # neither the table nor the half-written plot


def test_budget_rules():
    from tscli.tools.compare import check_batches, resolve_budgets

    ats = {"family": C.FAMILY_ATS, "max_k": 40}
    tome = {"family": C.FAMILY_TOME, "r": 8}
    from pathlib import Path

    opened = [(Path("a/ats.onnx"), ats), (Path("t.onnx"), tome)]
    assert resolve_budgets(opened, {}) == [[40, 20], [None]]
    assert resolve_budgets(opened, {"k": ["30,30,5"]}) == [[30, 5], [None]]
    assert resolve_budgets(opened, {"k": ["8", "ats.onnx=12"]}) == [[12], [None]]
    with pytest.raises(UsageError, match="K=41 in --k is out of range"):
        resolve_budgets(opened, {"k": ["41"]})
    with pytest.raises(UsageError, match="--rate given, but no FILE takes a rate"):
        resolve_budgets(opened, {"rate": ["0.5"]})
    with pytest.raises(UsageError, match="'t.onnx' takes no k"):
        resolve_budgets(opened, {"k": ["t.onnx=4"]})
    with pytest.raises(UsageError, match="'x.onnx' in 'x.onnx=4' is not one of the FILEs"):
        resolve_budgets(opened, {"k": ["x.onnx=4"]})
    with pytest.raises(UsageError, match="bad --k 'ats.onnx='; give values like 99,48"):
        resolve_budgets(opened, {"k": ["ats.onnx="]})
    with pytest.raises(UsageError, match="bad --k 'many'"):
        resolve_budgets(opened, {"k": ["many"]})
    with pytest.raises(UsageError, match="bad --batch 1,0"):
        check_batches([1, 0])


def test_cli_json_and_files(files, tmp_path):
    proc = tscli("compare", files["ats"], files["dense"], "--k", "16", "--batch", "1", "--runs", "1",
                 "-o", tmp_path / "out.md", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["schema"] == "tscli.compare/1" and [r["point"] for r in report["rows"]] == ["K=16", ""]
    assert report["markdown"] == str(tmp_path / "out.md") and report["plot"] == str(tmp_path / "out.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.md", "out.png"]


@pytest.mark.parametrize("args, message", [
    (["missing.onnx"], "model file 'missing.onnx' does not exist"),
    (["{ats}", "{other}"], "are not the same model with the same weights (weights 'random(seed=1)' vs 'random(seed=0)')"),
    (["{ats}", "--batch", "0"], "bad --batch 0; give batch sizes >= 1"),
    (["{ats}", "--batch", "1,x"], "bad --batch '1,x'; give integers"),
    (["{tome}", "--k", "8"], "--k given, but no FILE takes a k"),
    (["{ats}", "--rate", "0.5"], "--rate given, but no FILE takes a rate"),
    (["{ats}", "--k", "99"], "K=99 in --k is out of range for this file; valid: 1..40"),
    (["{ats}", "-o", "nodir/x.md"], "output folder 'nodir' does not exist"),
])
def test_bad_input_is_one_line_exit_2(files, tmp_path, args, message):
    proc = tscli("compare", *[a.format(**{k: str(v) for k, v in files.items()}) for a in args], cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_dynamicvit_and_evit_take_a_rate(files, tmp_path):
    """DynamicViT / EViT files join with their load-time keep rate; GFLOPs from their kept counts."""
    from tscli.tools.checked_export import ReductionExportOptions, export_reduction
    from tscli.tools.compare import compare

    paths = {m: export_reduction(ReductionExportOptions(m, output=str(tmp_path / f"{m}.onnx"), validate=False)).path
             for m in ("tiny_dynamicvit", "tiny_evit")}
    report = compare([paths["tiny_dynamicvit"], paths["tiny_evit"], files["dense"]], {"rate": ["0.5"]},
                     batches=[1], runs=1, warmup=0)
    rows = {(r["method"], r["point"]): r for r in report["rows"]}
    assert list(rows) == [("DynamicViT", "rate=0.5"), ("EViT", "rate=0.5"), ("dense", "")]
    for name, family in (("DynamicViT", C.FAMILY_DYNAMICVIT), ("EViT", C.FAMILY_EVIT)):
        model = onnx.load(str(paths[f"tiny_{family}"]))
        meta = C.decode_metadata({p.key: p.value for p in model.metadata_props})
        counts = C.check_rate(0.5, meta)[1]
        want = F.reduction_flops(F.arch_from_meta(meta), family, counts) / 1e9
        assert rows[(name, "rate=0.5")]["gflops"] == pytest.approx(want)
        assert rows[(name, "rate=0.5")]["gflops"] < rows[("dense", "")]["gflops"]
    # no dense FILE: the dense model is exported from the DynamicViT file's backbone (predictors left out)
    alone = compare([paths["tiny_dynamicvit"]], {"rate": ["0.5"]}, batches=[1], runs=1, warmup=0)
    assert [(r["method"], r["point"]) for r in alone["rows"]] == [("dense", ""), ("DynamicViT", "rate=0.5")]
    with pytest.raises(UsageError, match="rate=1.5 is out of range"):
        compare([paths["tiny_evit"], files["dense"]], {"rate": ["1.5"]}, batches=[1], runs=1, warmup=0)
