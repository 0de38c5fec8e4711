"""DynamicViT / EViT files end to end: the load-time rate decides the kept counts (by each method's
rule), bad rates are one-line usage errors through the real CLI, and run / parity / bench / list
work on them. Tiny variants, exported once per module."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from tscli import contract as C
from tscli.runtime import load

MODELS = ("tiny_dynamicvit", "tiny_evit")


def tscli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "tscli.cli", *map(str, args)], capture_output=True, text=True, cwd=cwd)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from tscli.tools.checked_export import ReductionExportOptions, export_reduction

    folder = tmp_path_factory.mktemp("reduction")
    out = {name: export_reduction(ReductionExportOptions(name, output=str(folder / f"{name}.onnx"))).path
           for name in MODELS}
    # a file whose largest rate is 0.6 (every K_s bounded by the counts at 0.6)
    out["capped"] = export_reduction(ReductionExportOptions("tiny_evit", rate=0.5, max_rate=0.6,
                                                            output=str(folder / "capped.onnx"))).path
    return out


@pytest.mark.parametrize("name", MODELS)
def test_rate_sets_the_kept_counts(files, name):
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    extra = 1 if name == "tiny_dynamicvit" else 2  # CLS (+ EViT's fused token)
    for rate in (None, 0.7, 0.5, 0.3):
        runner = load(files[name], rate=rate)
        family = runner.meta["family"]
        want = C.keep_counts(family, 0.7 if rate is None else rate, 64, 3)
        assert runner.rate == (0.7 if rate is None else rate) and runner.keep_counts == want
        assert runner.backend.fixed_dims == {f"K{s}": c for s, c in enumerate(want)}  # pinned as K is for ATS
        out = runner.infer(x)
        assert out[C.OUTPUT_COUNTS].tolist() == [[c + extra for c in want]] * 2
        for s, c in enumerate(want):
            valid = out[C.OUTPUT_POSITIONS][:, s]
            for row in valid:
                kept = [int(p) for p in row if p >= 0]
                assert len(kept) == len(set(kept)) == c + extra and kept[0] == 0
                if family == C.FAMILY_EVIT:
                    assert kept[-1] == C.fused_position(64, s)


def test_rate_bounded_by_the_export_maximum(files):
    meta = load(files["capped"]).meta
    assert (meta["rate"], meta["max_rate"]) == (0.5, 0.6)
    assert load(files["capped"], rate=0.6).keep_counts == C.keep_counts("evit", 0.6, 64, 3)
    with pytest.raises(Exception, match=r"rate=0.7 is out of range for this file; valid: 0 < rate <= 0.6"):
        load(files["capped"], rate=0.7)


@pytest.mark.parametrize("args, message", [
    (["run", "{dyvit}", "img.png", "--rate", "1.5"], "rate=1.5 is out of range for this file; valid: 0 < rate <= 1"),
    (["run", "{dyvit}", "img.png", "--rate", "0"], "rate=0.0 is out of range"),
    (["run", "{dyvit}", "img.png", "--rate", "nan"], "rate=nan is out of range"),
    (["run", "{dyvit}", "img.png", "--rate", "abc"], "bad --rate ['abc']"),
    (["run", "{dyvit}", "img.png", "--rate", "0.001"], "keeps no token at stage 0"),
    (["run", "{evit}", "img.png", "--rate", "0.99"], "drops no token at EViT stage 0"),
    (["run", "{dyvit}", "img.png", "--k", "8"], "has no K to choose"),
    (["run", "{capped}", "img.png", "--rate", "0.65"], "valid: 0 < rate <= 0.6"),
    (["parity", "{evit}", "--rate", "2"], "rate=2.0 is out of range"),
    (["parity", "{evit}", "--k", "8"], "--k/--plugins/--xi do not apply"),
    (["bench", "{dyvit}", "--rate", "-1"], "rate=-1.0 is out of range"),
    (["bench", "{evit}", "--ideal"], "do not apply to DynamicViT / EViT files"),
    (["export", "tiny_evit", "--max-rate", "1.5"], "--max-rate 1.5 is out of range; valid: 0 < max_rate <= 1"),
    (["export", "tiny_evit", "--rate", "0.8", "--max-rate", "0.5"], "rate=0.8 is out of range"),
    (["export", "tiny_dynamicvit", "--max-k", "8"], "only --rate/--max-rate apply"),
    (["export", "tiny_ats", "--rate", "0.5"], "--rate/--max-rate apply to DynamicViT / EViT models"),
    (["train-digits", "-o", "x.safetensors", "--method", "evit"], "unknown --method 'evit'; valid: ats, dynamicvit"),
])
def test_bad_rate_is_one_line(files, args, message, tmp_path):
    names = {"dyvit": files["tiny_dynamicvit"], "evit": files["tiny_evit"], "capped": files["capped"]}
    from PIL import Image

    Image.new("RGB", (40, 40)).save(tmp_path / "img.png")
    before = sorted(tmp_path.iterdir())
    proc = tscli(*[a.format(**names) for a in args], cwd=tmp_path)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and message in lines[0], proc.stderr
    assert sorted(tmp_path.iterdir()) == before  # nothing written


def test_run_parity_bench_and_list(files, tmp_path):
    from PIL import Image

    Image.new("RGB", (40, 40), (200, 30, 30)).save(tmp_path / "red.png")
    proc = tscli("run", files["tiny_dynamicvit"], tmp_path / "red.png", "--rate", "0.5", "--json")
    assert proc.returncode == 0, proc.stderr
    assert "trains its predictors for one rate" in proc.stderr  # the DynamicViT caveat at another rate
    data = json.loads(proc.stdout)
    assert data["rate"] == 0.5 and data["predictions"][0]["kept_counts"] == [33, 17, 9]
    proc = tscli("run", files["tiny_evit"], tmp_path / "red.png", "--rate", "0.5")
    # EViT has nothing trained for one rate: no caveat (only the random-weights note)
    assert proc.returncode == 0 and "one rate" not in proc.stderr and "weights RANDOM" in proc.stderr, proc.stderr

    proc = tscli("parity", files["tiny_evit"], "--n", "2", "--rate", "0.7,0.4", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["ok"] and [r["rate"] for r in report["rows"]] == [0.7, 0.4]
    assert all(r["sets_agree"] + r["near_ties"] == r["images"] == 4 and r["max_abs_diff"] <= 1e-4 for r in report["rows"])

    proc = tscli("bench", files["tiny_dynamicvit"], "--rate", "0.7", "--batch", "1", "--runs", "3", "--warmup", "0",
                 "--threads", "1", "--json", "--graphs-dir", tmp_path / "graphs")
    assert proc.returncode == 0, proc.stderr
    bench = json.loads(proc.stdout)
    row = bench["rows"][0]
    assert bench["schema"] == "tscli.bench-reduction/1" and row["counts"] == [44, 31, 21]
    assert row["dense"] is not None and row["speedup_vs_dense"] > 0 and len(row["method"]["samples_ms"]) == 3
    assert row["method"]["gflops"] < row["dense"]["gflops"]
    assert (tmp_path / "graphs" / "tiny_dynamicvit.dense.onnx").is_file()

    proc = tscli("list", "--family", "evit")
    assert proc.returncode == 0 and "evit_deit_s" in proc.stdout and "tiny_evit" in proc.stdout
