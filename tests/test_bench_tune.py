"""bench / tune / device profiles / trimmed export / the digits model.

Benchmarks are commands, not timed tests: nothing here asserts a speed. What is checked: report
schemas, the choice logic, profile matching, trimmed == padded logits, and that the digits model
is really trained (its accuracy at max_k is far above chance, 10 %).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest

from tscli.errors import UsageError
from tscli.runtime import device_profiles as P
from tscli.tools.tune import choose, default_grid

TRIM_TOL = 1e-4  # trimmed vs padded logits, max |diff| (same decisions, fewer padded slots)


# ---------------------------------------------------------------- fixtures

@pytest.fixture(scope="session")
def tiny_trimmed(tmp_path_factory):
    from tscli.tools.checked_export import ExportOptions, export_onnx

    folder = tmp_path_factory.mktemp("trimmed")
    out = {}
    for mode in ("padded", "trimmed"):
        out[mode] = export_onnx(ExportOptions("tiny_ats", max_k=40, output=str(folder / f"{mode}.onnx"), mode=mode))
    return out


@pytest.fixture(scope="session")
def digits(tmp_path_factory):
    """The digits ImageFolder, a trained checkpoint (~25 s) and its padded + trimmed exports."""
    from tscli.data.digits import write_imagefolder
    from tscli.tools.checked_export import ExportOptions, export_onnx
    from tscli.tools.train_digits import train_digits

    folder = tmp_path_factory.mktemp("digits")
    counts = write_imagefolder(folder / "data")
    epochs, steps = [], []
    trained = train_digits(folder / "digits.safetensors", progress=steps.append, on_epoch=epochs.append)
    files = {}
    for mode in ("padded", "trimmed"):
        files[mode] = export_onnx(ExportOptions("digits_ats", checkpoint=str(trained.path), mode=mode,
                                                output=str(folder / f"digits_ats_{mode}.onnx"))).path
    return {"folder": folder, "data": folder / "data", "counts": counts, "trained": trained, "epochs": epochs,
            "steps": steps, **files}


# ---------------------------------------------------------------- choice and profiles (pure logic)

TABLE = [
    {"k": 64, "median_ms": 10.0, "accuracy": 0.90},
    {"k": 48, "median_ms": 8.0, "accuracy": 0.895},
    {"k": 32, "median_ms": 6.0, "accuracy": 0.88},
    {"k": 16, "median_ms": 4.0, "accuracy": 0.70},
]


def test_choose_by_max_drop_and_budget():
    assert choose(TABLE, None, 1.0)[0] == 48  # 0.895 >= 0.90 - 0.01; 0.88 is not
    assert choose(TABLE, None, 2.0)[0] == 32
    assert choose(TABLE, None, None)[0] == 48  # default: 1 point
    # measured from the file's max_k when given, not from the largest K of the grid
    assert choose(TABLE, None, 1.0, {"k": 120, "accuracy": 0.905})[0] == 48
    assert choose(TABLE, None, 0.6, {"k": 120, "accuracy": 0.905})[0] == 64  # 0.895 < 0.899
    with pytest.raises(UsageError, match=r"no K in the grid stays within --max-drop 1 points of K=120 \(0.9500\)"):
        choose(TABLE, None, 1.0, {"k": 120, "accuracy": 0.95})
    assert choose(TABLE, 7.0, None)[0] == 32  # most accurate within 7 ms
    assert choose(TABLE, 100.0, None)[0] == 64
    with pytest.raises(UsageError, match=r"no K meets --budget-ms 3.*K=16, takes 4.00 ms"):
        choose(TABLE, 3.0, None)
    with pytest.raises(UsageError, match="either"):
        choose(TABLE, 5.0, 1.0)


def _row(k: int, accuracy: float, samples: list[float]) -> dict:
    ms = np.asarray(samples)
    return {"k": k, "accuracy": accuracy, "median_ms": float(np.median(ms)), "p10_ms": float(np.percentile(ms, 10)),
            "p90_ms": float(np.percentile(ms, 90)), "samples_ms": samples}


def test_a_k_is_only_faster_outside_the_spread():
    """Per-round ratios decide, not medians: the digits case (medians 0.60-0.78 ms, p90 up to
    17 ms, K=24 as slow as K=64) must not call K=24 faster; a K faster in every round is."""
    from tscli.tools.tune import MIN_ROUNDS, faster, ratio_band

    rng = np.random.default_rng(0)
    base = 0.7 + 0.05 * rng.standard_normal(30)
    spikes = np.where(rng.random(30) < 0.15, 15.0, 0.0)  # another process takes the core now and then
    k64 = base + spikes
    k24 = list(k64 * np.tile([0.9, 1.05], 15))  # 10 % faster in half the rounds, 5 % slower in the others
    k8 = list(base * 0.8 + spikes)  # 20 % faster in every round (the spikes hit both alike)
    k64 = list(k64)
    rows = [_row(64, 0.95, k64), _row(24, 0.95, k24), _row(8, 0.949, k8)]
    assert rows[1]["median_ms"] < rows[0]["median_ms"]  # the medians alone would call K=24 faster ...
    assert not faster(rows[1], rows[0])  # ... its per-round ratios say it is not
    assert faster(rows[2], rows[0]) and ratio_band(rows[2], rows[0])["median"] == pytest.approx(0.8)
    k, objective = choose(rows, None, 1.0)
    assert k == 8 and "K=8 is the fastest K within 1 points of K=64" in objective["reason"]
    assert "0.80x the latency of K=64" in objective["reason"]
    k, objective = choose(rows[:2], None, 1.0)
    assert k == 64 and "no K within 1 points of K=64's accuracy 0.9500 was measurably faster" in objective["reason"]
    few = [_row(64, 0.95, k64[:MIN_ROUNDS - 1]), _row(8, 0.95, k8[:MIN_ROUNDS - 1])]
    assert choose(few, None, 1.0)[0] == 64  # too few rounds to call anything faster
    k, objective = choose(rows, 1.0, None)
    assert k in (64, 24) and "most accurate K whose median latency fits 1 ms" in objective["reason"]
    assert "p90 is above the budget" in objective["reason"]
    assert "{" not in objective["reason"]


def test_bad_objective_is_refused_before_any_measurement(tmp_path):
    from tscli.tools.tune import tune

    # The model path does not exist: reaching the measurement would raise ModelFileError instead.
    missing = tmp_path / "none.onnx"
    for budget, drop, match in ((0.0, None, "must be positive"), (None, -1.0, ">= 0"), (5.0, 1.0, "either")):
        with pytest.raises(UsageError, match=match):
            tune(missing, tmp_path, budget_ms=budget, max_drop=drop)


def test_default_grid_is_within_range():
    grid = default_grid(196)
    assert grid[0] == 196 and min(grid) >= 1 and grid == sorted(set(grid), reverse=True)
    assert default_grid(1) == [1]


META = {"model": "digits_ats", "weights": "sha256:abc", "max_k": 64, "mode": "padded"}


def _profile(cpu: str, k: int, batch: int = 1, provider: str = "CPUExecutionProvider", meta=META) -> dict:
    fp = {"cpu": cpu, "gpu": None, "backend": "ort", "provider": provider, "onnxruntime": "x", "numpy": "y"}
    return {"fingerprint": fp, "model": P.model_identity(meta), "chosen_k": k, "batch": batch, "table": []}


def test_profile_selection_matches_device_and_model():
    here = {"cpu": "Cortex-A78AE", "gpu": None, "backend": "ort", "provider": "CPUExecutionProvider",
            "onnxruntime": "other version", "numpy": "z"}
    profiles = [_profile("Xeon", 48), _profile("Cortex-A78AE", 24, batch=8), _profile("Cortex-A78AE", 32, batch=1)]
    assert P.select(profiles, here, META)["chosen_k"] == 32  # smallest batch; versions do not block
    assert P.select(profiles, here, META, batch=8)["chosen_k"] == 24
    with pytest.raises(UsageError, match=r"no device profile .* matches this device \(cpu=Orin CPU, gpu=None, "
                                         r"backend=ort, provider=CPUExecutionProvider\).*cpu=Xeon"):
        P.select(profiles, dict(here, cpu="Orin CPU"), META)
    with pytest.raises(UsageError, match="another model file"):
        P.select(profiles, here, dict(META, weights="sha256:def"))
    with pytest.raises(UsageError, match="matches this device"):
        P.select(profiles, dict(here, provider="CUDAExecutionProvider"), META)


def test_profile_store_replaces_same_device_and_rejects_garbage(tmp_path):
    store = tmp_path / "m.profiles.json"
    P.add_profile(store, _profile("Xeon", 48))
    P.add_profile(store, _profile("EPYC", 40))
    P.add_profile(store, _profile("Xeon", 32))  # tuned again on the Xeon: replaces
    ks = sorted((p["fingerprint"]["cpu"], p["chosen_k"]) for p in P.read_store(store))
    assert ks == [("EPYC", 40), ("Xeon", 32)]
    assert P.default_store("out/deit_s_ats.onnx").as_posix() == "out/deit_s_ats.profiles.json"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"schema": "something else"}))
    with pytest.raises(Exception, match="not a tscli profile store"):
        P.read_store(bad)


# ---------------------------------------------------------------- trimmed export

def test_trimmed_export_equals_padded(tiny_trimmed, sample_arrays):
    from tscli.runtime import load
    from tscli.runtime.preprocess import preprocess

    padded, trimmed = tiny_trimmed["padded"], tiny_trimmed["trimmed"]
    assert trimmed.metadata["mode"] == "trimmed" and padded.metadata["mode"] == "padded"
    assert any("not for TensorRT" in f.message for f in trimmed.lint.findings)
    assert not any("not for TensorRT" in f.message for f in padded.lint.findings)
    rng = np.random.default_rng(1)
    x = np.concatenate([preprocess(sample_arrays, padded.metadata), rng.standard_normal((3, 3, 32, 32)).astype(np.float32)])
    for k in (40, 17, 3):
        a, b = load(padded.path, k=k).infer(x), load(trimmed.path, k=k).infer(x)
        assert np.abs(a["logits"] - b["logits"]).max() <= TRIM_TOL, k
        assert np.array_equal(a["kept_counts"], b["kept_counts"])
        for i in range(len(x)):  # same kept sets per stage
            for s in range(a["kept_positions"].shape[1]):
                sa, sb = a["kept_positions"][i, s], b["kept_positions"][i, s]
                assert set(sa[sa >= 0]) == set(sb[sb >= 0])


def test_trimmed_refused_for_dense(tmp_path):
    from tscli.tools.checked_export import ExportOptions, export_onnx

    with pytest.raises(UsageError, match="--mode trimmed applies to ATS"):
        export_onnx(ExportOptions("tiny_dense", output=str(tmp_path / "d.onnx"), mode="trimmed"))
    with pytest.raises(UsageError, match="valid: padded, trimmed"):
        export_onnx(ExportOptions("tiny_ats", output=str(tmp_path / "d.onnx"), mode="fast"))
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------- bench report

def test_bench_report_schema(tiny_exports, tmp_path):
    from tscli.tools.bench import SCHEMA, bench

    report = bench(tiny_exports["paper"], ks=[40, 10], batches=[1, 2], threads=1, runs=3, warmup=1,
                   baseline=tiny_exports["dense"], ideal=True, graphs_dir=tmp_path)
    json.dumps(report)  # serialisable
    assert report["schema"] == SCHEMA and report["mode"] == "padded" and report["runs"] == 3
    assert [(r["k"], r["batch"]) for r in report["rows"]] == [(40, 1), (10, 1), (40, 2), (10, 2)]
    for r in report["rows"]:
        for graph in ("ats", "dense", "ideal"):
            s = r[graph]
            assert len(s["samples_ms"]) == 3 and s["median_ms"] > 0 and s["p90_ms"] >= s["median_ms"] * 0.999
            assert s["images_per_s"] == pytest.approx(r["batch"] * 1e3 / s["median_ms"])
        assert r["ats"]["gflops"] < r["dense"]["gflops"] and r["ideal"]["gflops"] <= r["ats"]["gflops"]
        for key in ("speedup_vs_dense", "ideal_speedup_vs_dense", "fraction_of_ideal"):
            assert r[key] > 0
    ideal_file = tmp_path / "tiny_ats.ideal.onnx"
    assert ideal_file.is_file()  # kept in graphs_dir and reused next time
    from tscli import contract as C
    from tscli.runtime.ort.session import OrtBackend

    cached = C.decode_metadata(OrtBackend(ideal_file).metadata_props)
    assert C.is_current_reference(cached, "ideal") and not C.is_current_reference(cached, "dense")
    # a graph cached by an older tscli (no form, or another one) is exported again, not reused
    assert not C.is_current_reference({k: v for k, v in cached.items() if k != "bench_graph_form"}, "ideal")
    again = bench(tiny_exports["paper"], ks=[5], batches=[1], runs=1, warmup=0, ideal=True, dense=False,
                  graphs_dir=tmp_path)
    assert again["rows"][0]["dense"] is None and again["rows"][0]["speedup_vs_dense"] is None


def test_bench_sessions_pin_k_and_stop_spinning(tiny_exports):
    # One session per (graph, K) with K pinned, as runtime.load runs it; idle workers must not
    # spin into the next session's run (see OrtBackend).
    from tscli.tools.bench import _open

    g = _open(tiny_exports["paper"], 1, "ats")
    for k in (40, 7):
        s = g.session(k)
        assert s.fixed_dims == {"K": k} and g.session(k) is s
        assert s.session.get_session_options().get_session_config_entry("session.force_spinning_stop") == "1"
    dense = _open(tiny_exports["dense"], 1, "dense")
    assert dense.session(None) is dense.backend and dense.backend.fixed_dims == {}


def test_bench_rejects_bad_input(tiny_exports):
    from tscli.tools.bench import bench

    with pytest.raises(UsageError, match="out of range.*1..40"):
        bench(tiny_exports["paper"], ks=[41], baseline=tiny_exports["dense"])
    with pytest.raises(UsageError, match="not a dense model"):
        bench(tiny_exports["paper"], ks=[4], baseline=tiny_exports["paper"], runs=1)
    with pytest.raises(UsageError, match="needs an ATS file"):
        bench(tiny_exports["dense"])


def test_bench_cli_json(tiny_exports):
    from typer.testing import CliRunner

    from tscli.cli import app

    res = CliRunner().invoke(app, ["bench", str(tiny_exports["paper"]), "--k", "8", "--batch", "1", "--runs", "2",
                                   "--warmup", "0", "--baseline", str(tiny_exports["dense"]), "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)
    assert report["schema"] == "tscli.bench/1" and report["rows"][0]["k"] == 8


# ---------------------------------------------------------------- digits: trained model, tune, --k auto

@pytest.mark.slow
def test_digits_model_is_trained_and_tune_writes_profile(digits, capsys):
    from tscli.runtime import load
    from tscli.tools.tune import SCHEMA, tune

    assert digits["counts"] == {"train": 1348, "val": 449}
    # train-digits shows its progress: every epoch's loss and held-out top-1, the last one the result's
    assert [e["epoch"] for e in digits["epochs"]] == list(range(1, 13)) and digits["steps"]
    assert digits["epochs"][-1]["val_top1"] == pytest.approx(digits["trained"].val_accuracy)
    assert digits["epochs"][-1]["loss"] < digits["epochs"][0]["loss"]
    store = digits["folder"] / "profiles.json"
    report = tune(digits["padded"], digits["data"] / "val", k_grid=[64, 32, 16, 8, 4], runs=12, output=store)
    by_k = {r["k"]: r for r in report["table"]}
    with capsys.disabled():  # the measured accuracy curve, for the record
        print("\ndigits_ats val top-1 by K:", {k: round(r["accuracy"], 4) for k, r in sorted(by_k.items())})
        print("chosen:", report["objective"]["reason"])
    assert report["schema"] == SCHEMA and report["accuracy_kind"] == "top1" and report["images"] == 449
    assert by_k[64]["accuracy"] > 0.8  # chance is 0.1: the model is trained
    assert by_k[64]["accuracy"] == pytest.approx(digits["trained"].val_accuracy, abs=0.01)  # same split, same K
    assert by_k[4]["gflops"] < by_k[64]["gflops"] and by_k[4]["gmacs"] == pytest.approx(by_k[4]["gflops"] / 2)
    for r in report["table"]:  # totals, and a band around every median
        assert r["total"] == 449 and r["correct"] / r["total"] == pytest.approx(r["accuracy"])
        assert r["p10_ms"] <= r["median_ms"] <= r["p90_ms"] and len(r["samples_ms"]) == 12
        assert r["faster"] == (r["k"] != 64 and r["vs_reference"]["p90"] < 1.0)
    assert report["chosen_k"] in by_k
    assert store.is_file() and store.with_suffix(".md").is_file() and store.with_suffix(".png").stat().st_size > 1000
    text = store.with_suffix(".md").read_text()
    assert f"chosen K = {report['chosen_k']}: K=" in text and "p10-p90" in text and "(correct/total)" in text
    assert "{'" not in text  # the objective reads as a sentence, not a dict
    runner = load(digits["padded"], k="auto", profiles=store)
    assert runner.k == report["chosen_k"] and runner.profile["fingerprint"]["cpu"] == P.cpu_model()
    proc = subprocess.run([sys.executable, "-m", "tscli.cli", "run", str(digits["padded"]), str(digits["data"] / "val" / "3"),
                           "--k", "auto", "--profiles", str(store)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert f"note: K={report['chosen_k']} from the device profile in {store}" in proc.stderr
    assert report["objective"]["reason"][:40] in " ".join(proc.stderr.split())
    # The same store seen from another device: a clear refusal naming this device, not a guess.
    data = json.loads(store.read_text())
    data["profiles"][0]["fingerprint"]["cpu"] = "Some Other CPU"
    other = digits["folder"] / "other.json"
    other.write_text(json.dumps(data))
    with pytest.raises(UsageError, match=f"no device profile .*cpu={re.escape(P.cpu_model())}.*cpu=Some Other CPU"):
        load(digits["padded"], k="auto", profiles=other)
    with pytest.raises(UsageError, match="does not exist"):
        load(digits["padded"], k="auto", profiles=digits["folder"] / "missing.json")


def test_digits_stats_and_token_maps(digits, capsys):
    """On a trained model K' varies per image (background patches score low): the stats and the
    maps show it."""
    from tscli.tools.stats import stats

    report = stats(digits["padded"], digits["data"] / "val", k=16, output=digits["folder"] / "stats.md")
    first = report["stages"][0]
    with capsys.disabled():
        print("\ndigits_ats K=16 mean K' per stage:", [round(s["mean"], 2) for s in report["stages"]],
              "GFLOPs mean", round(report["gflops"]["mean"], 5), "padded", round(report["gflops"]["padded"], 5))
    assert report["images"] == 449 and first["max"] <= 16 and first["min"] < first["max"]
    assert report["gflops"]["min"] < report["gflops"]["max"] <= report["gflops"]["padded"] + 1e-12


@pytest.mark.slow
def test_tune_without_labels_and_impossible_budget(digits):
    from tscli.tools.tune import tune

    three = digits["data"] / "val" / "3"  # a plain folder of images: agreement with max_k
    report = tune(digits["padded"], three, k_grid=[64, 8], runs=1, output=digits["folder"] / "nolabels.json")
    assert report["accuracy_kind"] == "agreement"
    assert {r["k"]: r["accuracy"] for r in report["table"]}[64] == 1.0
    store = digits["folder"] / "never.json"
    with pytest.raises(UsageError, match="no K meets --budget-ms 1e-06"):
        tune(digits["padded"], three, k_grid=[8], runs=1, budget_ms=1e-6, output=store)
    assert not store.exists()  # nothing written on failure


@pytest.mark.slow
def test_digits_trimmed_equals_padded(digits):
    from tscli.data.digits import read_imagefolder
    from tscli.runtime import load
    from tscli.runtime.preprocess import preprocess

    files, _, _ = read_imagefolder(digits["data"] / "val")
    pad, trim = load(digits["padded"], k=16), load(digits["trimmed"], k=16)
    x = preprocess([str(f) for f in files[:40]], pad.meta)
    for i in range(0, 40, 8):  # batch 1 and batch 8
        a, b = pad.infer(x[i:i + 1]), trim.infer(x[i:i + 1])
        assert np.abs(a["logits"] - b["logits"]).max() <= TRIM_TOL
    a, b = pad.infer(x[:8]), trim.infer(x[:8])
    assert np.abs(a["logits"] - b["logits"]).max() <= TRIM_TOL
