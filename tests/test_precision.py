"""Reduced precision (docs/design.md, "Reduced precision"): the sampling island in the exported
graph, INT8 (QDQ) quantization and the fp16 conversion keeping it float32 and the graph contract,
the decision statistics of the precision parity report, `build --precision int8` (dry runs and the
fake TensorRT of tests/trt_fakes.py) and the CLI's one-line errors.

Everything runs on tiny_ats (64 patches, 3 ATS stages) with a few digits images as calibration.
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto as TP
from trt_fakes import Recorder, fake_tensorrt

from tscli import contract as C
from tscli.errors import ModelFileError, UsageError
from tscli.runtime import load
from tscli.tools import build_plan as P
from tscli.tools import engine_build as B
from tscli.tools import precision as PR
from tscli.tools import tie_band
from tscli.tools.fp16 import convert_fp16
from tscli.tools.precision_parity import _Acc, precision_parity
from tscli.tools.quantize import QuantizeOptions, quantization_summary, quantize


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    from tscli.data.digits import write_imagefolder

    folder = tmp_path_factory.mktemp("digits") / "d"
    write_imagefolder(folder)
    return folder


@pytest.fixture(scope="module")
def fp32_file(tiny_exports) -> Path:
    return tiny_exports["paper"]


@pytest.fixture(scope="module")
def int8_files(fp32_file, digits, tmp_path_factory) -> dict[str, Path]:
    """tiny_ats quantized for both targets, calibrated on 16 training digits."""
    folder = tmp_path_factory.mktemp("int8")
    out = {}
    for target in ("cpu", "tensorrt"):
        res = quantize(QuantizeOptions(str(fp32_file), str(digits / "train"), n=16, output=str(folder / f"{target}.onnx"),
                                       target=target, check_n=4))
        assert res.check is not None and res.check.ok  # the check before the rename ran
        out[target] = res.path
    return out


@pytest.fixture(scope="module")
def fp16_file(fp32_file, tmp_path_factory) -> Path:
    return convert_fp16(fp32_file, tmp_path_factory.mktemp("fp16") / "half.onnx")[0]


def _types(model) -> dict[str, int]:
    return PR.tensor_types(model)


# -- the island ----------------------------------------------------------------------------------


def test_island_is_found_by_its_scope(tiny_exports) -> None:
    """Every sampling-only operator of the plain graph is in the island, no linear layer is, and
    the plugin form's ATSSample nodes are."""
    model = onnx.load(str(tiny_exports["paper"]))
    island = set(PR.island_nodes(model))
    nodes = {n.name: n for n in model.graph.node}
    by_op = Counter(nodes[n].op_type for n in island)
    # picking-only operators (comparisons against midpoints, the rank scatter and gathers)
    for op in ("LessOrEqual", "ScatterElements", "GatherElements"):
        assert by_op[op] == sum(n.op_type == op for n in model.graph.node), op
    # learned weights, not the island's own constants: the triangular 0/1 "earlier" matrices and
    # the neighbour matrices of the cell rule (entries 0, 1/2, 1 and -1)
    weights = {t.name for t in model.graph.initializer
               if len(t.dims) == 2 and not np.isin(onnx.numpy_helper.to_array(t), (0, 0.5, 1, -1)).all()}
    assert len(weights) >= 4 * 4  # qkv, proj, fc1, fc2 of every block at least
    assert not any(i in weights for n in island for i in nodes[n].input if nodes[n].op_type == "MatMul")
    assert not any(nodes[n].op_type in ("LayerNormalization", "Conv", "Erf") for n in island)
    assert by_op["Softmax"] == 1  # the first stage's CLS row; the later stages read the block's own attention
    plugin = onnx.load(str(tiny_exports["plugin"]))
    members = set(PR.island_nodes(plugin))
    samples = [n.name for n in plugin.graph.node if n.op_type == C.SAMPLE_OP]
    assert len(samples) == 3 and set(samples) <= members
    assert PR.island_nodes(onnx.load(str(tiny_exports["dense"]))) == []


def test_untagged_ats_file_is_refused(tiny_exports, tmp_path) -> None:
    model = onnx.load(str(tiny_exports["paper"]))
    for node in model.graph.node:
        del node.metadata_props[:]
    with pytest.raises(ModelFileError, match="no nodes tagged as the sampling island.*export it again"):
        PR.island_nodes(model)


# -- INT8 ------------------------------------------------------------------------------------------


def test_int8_file_keeps_the_contract(fp32_file, int8_files) -> None:
    src, q = onnx.load(str(fp32_file)), onnx.load(str(int8_files["cpu"]))
    assert [(i.name, i.type) for i in q.graph.input] == [(i.name, i.type) for i in src.graph.input]
    assert [(o.name, o.type.tensor_type.elem_type) for o in q.graph.output] == \
        [(o.name, o.type.tensor_type.elem_type) for o in src.graph.output]
    meta = C.decode_metadata({p.key: p.value for p in q.metadata_props})
    assert meta["precision"] == "int8" and meta["max_k"] == 40 and meta["island"] == PR.island_nodes(src)
    assert meta["quantization"]["images"] == 16 and meta["quantization"]["method"] == "minmax"
    assert meta["source"]["file"] == fp32_file.name
    from tscli.export.lint import lint_model

    assert lint_model(q).ok
    onnx.checker.check_model(q, full_check=True)
    ops = Counter(n.op_type for n in q.graph.node)
    assert ops["QuantizeLinear"] > 0 and ops["DequantizeLinear"] > ops["QuantizeLinear"]  # weights: DQ only
    # 4 blocks x (qkv, proj, fc1, fc2) + patch embedding + head; q.k and a.v (4 x 2) stay float32
    assert meta["quantization"]["quantized_nodes"] == 18 and meta["quantization"]["float_matmuls"] == 8
    producers = {o: n for n in q.graph.node for o in n.output}
    for node in q.graph.node:
        if node.op_type in ("MatMul", "Gemm", "Conv"):
            reads_dq = [producers[i].op_type == "DequantizeLinear" for i in node.input[:2] if i in producers]
            # quantized: both operands from DequantizeLinear; float32: neither
            assert all(reads_dq) or not any(reads_dq), node.name
            # no output is re-quantized (ONNX Runtime runs DQ -> MatMul as one MatMulIntegerToFloat)
            assert not any(n.op_type == "QuantizeLinear" and node.output[0] in n.input for n in q.graph.node)


def test_no_qdq_inside_the_island(fp32_file, int8_files) -> None:
    """The island computes in float32 from the same float32 tensors as in the fp32 file."""
    src = onnx.load(str(fp32_file))
    island = PR.island_nodes(src)
    for path in int8_files.values():
        q = onnx.load(str(path))
        assert PR.qdq_inside_island(q, island) == []
        assert PR.island_inputs(q, island) == PR.island_inputs(src, island)
        members = set(island)
        # same nodes, same inputs and attributes (the quantizer may list them in another order)
        assert ({n.name: n for n in q.graph.node if n.name in members}
                == {n.name: n for n in src.graph.node if n.name in members})


def test_int8_runs_at_two_k(int8_files, sample_arrays) -> None:
    from tscli.runtime.preprocess import preprocess

    for k in (40, 13):
        runner = load(int8_files["cpu"], k=k)
        meta = runner.meta
        out = runner.infer(preprocess(sample_arrays[:3], meta))
        assert out[C.OUTPUT_POSITIONS].shape == (3, 3, k + 1) and out[C.OUTPUT_COUNTS].shape == (3, 3)
        assert np.isfinite(out[C.OUTPUT_LOGITS]).all() and (out[C.OUTPUT_COUNTS] <= k + 1).all()


def test_targets_differ_in_the_activation_form(int8_files) -> None:
    cpu = quantization_summary(onnx.load(str(int8_files["cpu"])))
    trt = quantization_summary(onnx.load(str(int8_files["tensorrt"])))
    assert cpu["activation_types"] == ["uint8"] and cpu["nonzero_zero_points"] > 0
    assert trt["activation_types"] == ["int8"] and trt["nonzero_zero_points"] == 0
    assert cpu["weight_types"] == trt["weight_types"] == ["int8"]


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_histogram_calibration_never_sees_the_masks(fp32_file, digits, tmp_path, method) -> None:
    """Entropy/percentile histograms fail on infinite values: only the quantized ops' inputs are
    calibrated, and none of them carries the -inf key masks."""
    # 12 images in batches of 8: the last batch is filled up (histograms stack equal shapes), at max_k only
    res = quantize(QuantizeOptions(str(fp32_file), str(digits / "train"), n=12, method=method,
                                   output=str(tmp_path / f"{method}.onnx"), check_n=0))
    assert res.metadata["quantization"]["method"] == method and res.path.is_file()
    assert res.metadata["quantization"]["calibration_ks"] == [40]


def test_quantize_refusals(fp32_file, int8_files, digits, tmp_path) -> None:
    calib = str(digits / "train")
    with pytest.raises(UsageError, match="unknown --method 'kl'; valid: minmax, entropy, percentile"):
        quantize(QuantizeOptions(str(fp32_file), calib, method="kl", output=str(tmp_path / "a.onnx")))
    with pytest.raises(UsageError, match="already int8; give the fp32 file"):
        quantize(QuantizeOptions(str(int8_files["cpu"]), calib, output=str(tmp_path / "b.onnx")))
    assert not list(tmp_path.iterdir())  # nothing half-written


# -- fp16 ------------------------------------------------------------------------------------------


def test_fp16_keeps_the_island_fp32(fp32_file, fp16_file) -> None:
    src, half = onnx.load(str(fp32_file)), onnx.load(str(fp16_file))
    island = PR.island_nodes(src)
    types = _types(half)
    members = set(island)
    floats = (TP.FLOAT, TP.FLOAT16)
    island_tensors = [t for n in half.graph.node if n.name in members for t in (*n.input, *n.output) if t]
    assert island_tensors and all(types.get(t) != TP.FLOAT16 for t in island_tensors)
    island_reads = {i for n in half.graph.node if n.name in members for i in n.input}
    weights = [t for t in half.graph.initializer if len(t.dims) == 2 and t.name not in island_reads]
    assert weights and all(t.data_type == TP.FLOAT16 for t in weights)  # the island's own constants stay fp32
    assert Counter(types[o] for n in half.graph.node if n.name not in members for o in n.output
                   if types.get(o) in floats)[TP.FLOAT16] > 100
    assert [i.type.tensor_type.elem_type for i in half.graph.input] == [TP.FLOAT, TP.FLOAT]  # the contract
    assert half.graph.output[0].type.tensor_type.elem_type == TP.FLOAT
    from tscli.export.lint import lint_model

    assert lint_model(half).ok
    meta = C.decode_metadata({p.key: p.value for p in half.metadata_props})
    assert meta["precision"] == "fp16" and meta["island"] == island


def test_fp16_runs_in_ort_cpu_within_tolerance(fp32_file, fp16_file, digits) -> None:
    """Logits within precision.FP16_TOLERANCE of the fp32 file wherever the kept sets agree."""
    report = precision_parity(fp16_file, fp32_file, digits / "val", n=24, ks=[40, 13], torch_reference_too=False)
    assert {r.k for r in report.rows} == {40, 13}
    for r in report.rows:
        assert r.nonfinite == 0 and r.changed < r.images
        assert r.unchanged_max_abs_diff <= PR.FP16_TOLERANCE
        assert r.agreement >= 0.9


# -- decision statistics -----------------------------------------------------------------------------


def test_decision_statistics_by_hand() -> None:
    acc = _Acc()
    ref_logits = np.array([[1.0, 0.0], [0.0, 1.0]])
    ref_pos = np.array([[[0, 1, 2, -1]], [[0, 3, 4, 5]]])  # 1 stage, K = 3
    got = {C.OUTPUT_LOGITS: np.array([[0.9, 0.0], [1.0, 0.0]]), C.OUTPUT_POSITIONS: np.array([[[2, 1, 0, -1]], [[0, 3, 6, -1]]])}
    acc.add(ref_logits, ref_pos, got, np.array([0, 0]), in_band=lambda i: True)
    row = acc.row(13, "pytorch")
    assert row.jaccard_mean == [pytest.approx((1.0 + 2 / 5) / 2)] and row.jaccard_min == [pytest.approx(0.4)]
    assert (row.changed, row.changed_in_band, row.top1_agree) == (1, 1, 1)
    assert row.unchanged_max_abs_diff == pytest.approx(0.1)  # image 0 only: the same set in another order
    assert (row.accuracy, row.reference_accuracy) == (1.0, 0.5)


def test_precision_parity_report(fp32_file, int8_files, digits) -> None:
    report = precision_parity(int8_files["cpu"], fp32_file, digits / "val", n=16, ks=[40, 20])
    assert report.precision == "int8" and report.ok
    assert {(r.k, r.reference) for r in report.rows} == {(k, ref) for k in (40, 20) for ref in ("fp32 file", "pytorch")}
    for r in report.rows:
        assert r.images == 16 and len(r.jaccard_mean) == len(r.jaccard_min) == 3
        assert all(0.0 <= lo <= mean <= 1.0 for lo, mean in zip(r.jaccard_min, r.jaccard_mean))
        assert 0 <= r.changed <= r.images and r.accuracy is not None and r.reference_accuracy is not None
        assert (r.changed_in_band is None) == (r.reference == "fp32 file")
    d = report.to_dict()
    assert d["tie_band"].startswith("point decision margin <= 4*(n*u_fp32 + u_int8)") and "changed_share" in d["rows"][0]
    strict = precision_parity(int8_files["cpu"], fp32_file, digits / "val", n=16, ks=[40, 20],
                              torch_reference_too=False, min_agreement=1.0)
    assert strict.ok == all(r.top1_agree == r.images for r in strict.rows)  # the threshold decides


def test_fp32_against_itself_changes_nothing(fp32_file, digits) -> None:
    """The statistics can tell no change from a change: the same file gives exact identity."""
    report = precision_parity(fp32_file, fp32_file, digits / "val", n=8, ks=[40, 7], torch_reference_too=False)
    for r in report.rows:
        assert r.jaccard_mean == [1.0] * 3 and r.changed == 0 and r.top1_agree == 8
        assert r.unchanged_max_abs_diff == 0.0


def test_int8_band_scales_with_the_activations() -> None:
    assert tie_band.ats_band(196, "int8") == pytest.approx(4 * (196 * 2.0 ** -24 + 2.0 ** -8))
    assert tie_band.ats_band(64, "fp32") < tie_band.ats_band(64, "fp16") < tie_band.ats_band(64, "int8")


# -- TensorRT: build --precision int8 and the fp16 island pinning -------------------------------------


def _dry(path, version, precision):
    return B.dry_run(B.BuildOptions(str(path), precision=precision, dry_run=True, trt_version=version)).plan


def test_build_int8_needs_explicit_quantization(fp32_file, int8_files) -> None:
    with pytest.raises(UsageError, match=r"--precision int8 needs explicit quantization, and paper.onnx has no "
                                         r"QuantizeLinear/DequantizeLinear nodes; make a QDQ file with `tscli quantize"):
        _dry(fp32_file, "10.3", "int8")
    with pytest.raises(UsageError, match="quantized for the CPU .*quantize again with `--target tensorrt`"):
        _dry(int8_files["cpu"], "10.3", "int8")
    with pytest.raises(UsageError, match="holds Q/DQ nodes \\(int8\\): build it with --precision int8"):
        _dry(int8_files["tensorrt"], "10.3", "fp16")


@pytest.mark.parametrize("version,flag,strongly", [("8.6", True, False), ("10.3", True, False),
                                                   ("10.13", True, False), ("11.1", False, True)])
def test_build_int8_plan_per_version(int8_files, version, flag, strongly) -> None:
    plan = _dry(int8_files["tensorrt"], version, "int8")
    assert plan.int8_flag == flag and plan.strongly_typed == strongly and not plan.fp16_flag and not plan.tf32
    assert plan.sampling_precision.startswith("fp32")
    assert any("deprecated from TensorRT 10.12" in n for n in plan.notes) == (version == "10.13")


def test_build_int8_sets_only_the_int8_flag(monkeypatch, int8_files, tmp_path) -> None:
    trt = fake_tensorrt("10.3.0", Recorder())
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(B, "detect_gpu", lambda: (None, []))
    res = B.build_engine(B.BuildOptions(str(int8_files["tensorrt"]), str(tmp_path / "q.engine"), precision="int8"))
    flags = trt.recorder.config.flags
    assert trt.BuilderFlag.INT8 in flags and trt.BuilderFlag.FP16 not in flags
    assert res.manifest["precision"] == "int8" and res.manifest["build_plan"]["int8_flag"]


def test_fp16_build_pins_the_plain_island(monkeypatch, fp32_file, tmp_path) -> None:
    """A plain-form file: its island nodes reach the parser renamed, and their float layers are
    pinned to fp32 (before, only inlined plugin bodies were)."""
    island = PR.island_nodes(onnx.load(str(fp32_file)))
    trt = fake_tensorrt("10.3.0", Recorder())
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(B, "detect_gpu", lambda: (None, []))
    B.build_engine(B.BuildOptions(str(fp32_file), str(tmp_path / "h.engine"), precision="fp16"))
    layers = [trt.recorder.network.get_layer(i) for i in range(trt.recorder.network.num_layers)]
    renamed = [la for la in layers if la.name.startswith(P.SAMPLING_PREFIX + "island/")]
    assert len(renamed) == len(island)
    pinned = [la for la in layers if la.precision == trt.float32]
    assert pinned and all(la.name.startswith(P.SAMPLING_PREFIX) for la in pinned)
    assert trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS in trt.recorder.config.flags
    half = _dry(fp32_file, "11.1", "fp32")  # strongly typed: the file decides, nothing renamed
    assert not any("renamed" in e for e in half.edits)


def test_fp16_file_plans(fp16_file) -> None:
    assert _dry(fp16_file, "11.1", "fp16").strongly_typed  # float32 inputs, but the metadata says fp16
    with pytest.raises(UsageError, match="half.onnx is float16 \\(tscli convert\\): build it with --precision fp16"):
        _dry(fp16_file, "10.3", "fp32")


# -- bench and the CLI -------------------------------------------------------------------------------


def test_bench_times_the_fp32_source_alongside(fp32_file, int8_files, tiny_exports) -> None:
    from tscli.tools.bench import bench

    report = bench(int8_files["cpu"], ks=[40], batches=[2], runs=2, warmup=1, dense=False, fp32=fp32_file)
    row = report["rows"][0]
    assert report["precision"] == "int8" and row["fp32"]["median_ms"] > 0 and row["speedup_vs_fp32"] > 0
    with pytest.raises(UsageError, match="--fp32 .* is not the fp32 file of this model"):
        bench(int8_files["cpu"], ks=[40], batches=[1], runs=1, warmup=0, dense=False, fp32=tiny_exports["official"])


def _tscli(*args):
    return subprocess.run([sys.executable, "-m", "tscli.cli", *map(str, args)], capture_output=True, text=True)


def test_cli_one_line_errors(fp32_file, int8_files, digits, tmp_path) -> None:
    calib = digits / "train"
    cases = [
        (("quantize", fp32_file, "--calib", calib, "--method", "kl", "-o", tmp_path / "a.onnx"),
         "unknown --method 'kl'; valid: minmax, entropy, percentile"),
        (("quantize", fp32_file, "--calib", tmp_path / "none", "-o", tmp_path / "a.onnx"), "does not exist"),
        (("quantize", fp32_file, "--calib", calib, "--target", "gpu"), "unknown --target 'gpu'; valid: cpu, tensorrt"),
        (("convert", fp32_file, "--precision", "int8"), "convert writes fp16; for int8 run `tscli quantize"),
        (("export", "tiny_ats", "--precision", "int8"), "unknown --precision 'int8'; valid: fp32, fp16"),
        (("build", fp32_file, "--precision", "int8", "--dry-run", "--trt-version", "10.3"),
         "needs explicit quantization, and paper.onnx has no QuantizeLinear/DequantizeLinear nodes"),
        (("parity", fp32_file, "--reference", fp32_file), "--reference/--min-agreement apply to fp16 and int8 files"),
    ]
    for args, message in cases:
        proc = _tscli(*args)
        assert proc.returncode == 2, (args, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], (args, proc.stderr)
    assert not list(tmp_path.iterdir())


def test_cli_parity_on_an_int8_file_prints_decisions(fp32_file, int8_files, digits) -> None:
    proc = _tscli("parity", int8_files["cpu"], "--reference", fp32_file, "--images", digits / "val", "--n", 4,
                  "--k", 40, "--min-agreement", 0.0)
    assert proc.returncode == 0, proc.stderr
    assert "int8 decisions" in proc.stdout and "fp32 file" in proc.stdout and "pytorch" in proc.stdout
    proc = _tscli("parity", int8_files["cpu"], "--images", digits / "val", "--n", 4, "--k", 40, "--min-agreement", 1.5)
    assert proc.returncode == 2 and "--min-agreement 1.5 is out of range" in proc.stderr
