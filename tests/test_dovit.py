"""DoViT / SETR segmentation: PyTorch reference, static capacity graph, ONNX export, ORT parity.

Tiny variants only (128-144 tokens). Tolerances: per-pixel logits max |diff| <= 1e-4 (fp32, ORT vs
the variable-length PyTorch reference); keep masks, kept counts and saturated flags must be equal
(no near-tie exemptions are accepted here: every test asserts near_ties == 0).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from tscli import contract as C
from tscli.errors import UsageError
from tscli.models.catalog import get_config
from tscli.models.factory import build_model
from tscli.runtime import load
from tscli.runtime.preprocess import preprocess
from tscli.tools.checked_export import SegExportOptions, export_seg
from tscli.tools.seg_parity import compare_seg, rebuild, seg_parity

TOL = 1e-4


@pytest.fixture(scope="module")
def seg_files(tmp_path_factory) -> dict:
    """tiny_dovit at 32x64 with C=64 of 128 (saturates), at 48x48 with C=144 (all tokens), dense tiny_seg 48x48."""
    folder = tmp_path_factory.mktemp("seg")
    specs = {
        "c64": SegExportOptions("tiny_dovit", max_keep=64, xi=0.3, validate=True),
        "full48": SegExportOptions("tiny_dovit", input_size="48x48", validate=False),
        "dense48": SegExportOptions("tiny_seg", input_size="48x48", validate=False),
    }
    out = {}
    for key, opts in specs.items():
        opts.output = str(folder / f"{key}.onnx")
        out[key] = export_seg(opts)
    return out


def _images(meta: dict, sample_arrays, n: int) -> np.ndarray:
    return preprocess(sample_arrays[:n], meta)


def _median_q(model, x: np.ndarray) -> float:
    with torch.no_grad():
        t = model.embed(torch.from_numpy(x))
        for blk in model.blocks[: model.decisions[0] + 1]:
            t = blk(t)
        return float(model.confidence(0, t).median())


def test_reference_xi_one_is_the_dense_model():
    dovit = build_model(get_config("tiny_dovit"), seed=3).module
    dense = build_model(get_config("tiny_seg"), seed=3).module
    x = torch.randn(2, 3, 32, 64)
    with torch.no_grad():
        ref = dovit.forward_reference(x, 1.0)
        assert torch.equal(ref.kept_counts, torch.full((2, 3), 128))
        assert not ref.saturated.any()
        assert (ref.logits - dense(x)).abs().max() <= 1e-6
        padded = dovit.forward_padded(x, torch.tensor(1.0), 128)
        assert (padded.logits - dense(x)).abs().max() <= 1e-5


@pytest.mark.parametrize("cap, merge", [(128, "paper"), (40, "paper"), (7, "paper"), (40, "released"), (40, "none")])
def test_padded_torch_equals_variable_length_reference(cap, merge):
    model = build_model(get_config("tiny_dovit"), seed=1).module
    model.merge = merge
    x = torch.randn(2, 3, 32, 64)
    xi = _median_q(model, x.numpy())
    with torch.no_grad():
        ref = model.forward_reference(x, xi, cap)
        pad = model.forward_padded(x, torch.tensor(xi), cap)
    assert 0 < int(ref.kept_counts[:, 0].min()) and int(ref.kept_counts[:, -1].max()) < 128  # tokens do stop
    assert torch.equal(ref.kept_masks, pad.kept_masks) and torch.equal(ref.kept_counts, pad.kept_counts)
    assert torch.equal(ref.saturated, pad.saturated)
    assert bool(ref.saturated.all()) == (cap < 64)  # about half stay at the median: 40/7 saturate, 128 cannot
    assert (ref.logits - pad.logits).abs().max() <= 1e-5
    # cumulative masks: a stopped token never restarts
    m = ref.kept_masks
    assert not (m[:, 1:] & ~m[:, :-1]).any()


def test_reference_is_per_image():
    model = build_model(get_config("tiny_dovit"), seed=2).module
    x = torch.randn(3, 3, 32, 64)
    xi = _median_q(model, x.numpy())
    with torch.no_grad():
        both = model.forward_reference(x, xi, 50)
        alone = model.forward_reference(x[1:2], xi, 50)
    assert torch.equal(both.kept_masks[1:2], alone.kept_masks)
    assert (both.logits[1:2] - alone.logits).abs().max() <= 1e-6


def test_stopped_tokens_do_not_influence_kept_ones():
    """Stopped tokens are neither keys nor queries: changing a stopped token's value after its
    decision must not change any other pixel's logits. (With the class-token merge they reach the
    others through the CLS token by design, so it is off here.)"""
    model = build_model(get_config("tiny_dovit"), seed=4).module
    model.merge = "none"
    x = torch.randn(1, 3, 32, 64)
    xi = _median_q(model, x.numpy())
    with torch.no_grad():
        ref = model.forward_reference(x, xi)
        stopped = torch.nonzero(~ref.kept_masks[0, 0]).squeeze(1)
        assert len(stopped) > 0
        victim = int(stopped[0])
        # Perturb the victim's token right after block 0 (its decision layer) via a block hook.
        def poke(module, inputs, output):
            output = output.clone()
            output[:, victim + 1] += 1e-3
            return output
        h = model.blocks[0].register_forward_hook(poke)
        # Same decisions needed; the perturbation is tiny, check that they match, then compare.
        poked = model.forward_reference(x, xi)
        h.remove()
    assert torch.equal(poked.kept_masks, ref.kept_masks)
    gh, gw = model.grid
    mask = torch.ones(gh, gw, dtype=torch.bool)
    mask.view(-1)[victim] = False
    # Only the victim's own patch (and the bilinear halo around it) may change.
    halo = torch.nn.functional.max_pool2d((~mask).float()[None, None], 3, 1, 1)[0, 0] > 0
    pix = torch.nn.functional.interpolate(halo[None, None].float(), size=(32, 64), mode="nearest")[0, 0] > 0
    diff = (poked.logits - ref.logits).abs().amax(1)[0]
    assert float(diff[~pix].max()) == 0.0 and float(diff[pix].max()) > 0.0


def test_graph_contract_and_lint(seg_files):
    from tscli.export.lint import lint_model

    res = seg_files["c64"]
    model = onnx.load(str(res.path))
    assert lint_model(model).ok
    ops = {n.op_type for n in model.graph.node}
    assert not ops & {"NonZero", "Unique", "Loop", "If"}
    for node in model.graph.node:
        if node.op_type == "ScatterElements":
            assert all(a.name != "reduction" or a.s in (b"", b"none") for a in node.attribute)
    inputs = {i.name: i for i in model.graph.input}
    assert list(inputs) == [C.INPUT_IMAGES, C.INPUT_XI]
    assert len(inputs[C.INPUT_XI].type.tensor_type.shape.dim) == 0
    default = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}[C.INPUT_XI]
    assert default.dtype == np.float32 and float(default) == pytest.approx(0.3)
    shapes = {o.name: [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim] for o in model.graph.output}
    assert shapes == {C.OUTPUT_SEG: ["batch", 5, 32, 64], C.OUTPUT_COUNTS: ["batch", 3],
                      C.OUTPUT_KEEP_MASKS: ["batch", 3, 128], C.OUTPUT_SATURATED: ["batch"]}
    assert res.metadata["max_keep"] == 64 and res.metadata["xi"] == 0.3 and res.metadata["family"] == "dovit"
    assert res.validation is not None and res.validation.ok


@pytest.mark.parametrize("batch", [1, 2])
def test_ort_parity_on_sample_images(seg_files, sample_arrays, batch):
    path = seg_files["c64"].path
    meta = load(path).meta
    built = rebuild(meta)
    x = _images(meta, sample_arrays, batch)
    med = round(_median_q(built.module, x), 6)
    xis = [1.0, 0.3, med, 0.05]
    report = seg_parity(lambda xi: load(path, xi=xi), built, x, xis)
    rows = {r.xi: r for r in report.rows}
    for r in report.rows:
        assert r.ok and r.near_ties == 0 and r.max_abs_diff <= TOL, r
        assert r.argmax_agree == 1.0 and r.masks_agree == batch and r.counts_agree == batch
    assert rows[1.0].saturated == batch  # nothing wants to stop, C=64 < 128 cuts: flag raised
    assert rows[1.0].kept_fraction == 0.5
    assert rows[0.05].saturated == 0 and rows[0.05].kept_fraction == 0.0  # everything stops at once
    assert 0.0 < rows[med].kept_fraction < 0.5


def test_ort_full_capacity_second_size_equals_dense(seg_files, sample_arrays):
    dovit, dense = load(seg_files["full48"].path, xi=1.0), load(seg_files["dense48"].path)
    x = _images(dovit.meta, sample_arrays, 2)
    a, b = dovit.infer(x), dense.infer(x)
    assert np.abs(a[C.OUTPUT_SEG] - b[C.OUTPUT_SEG]).max() <= TOL
    assert not a[C.OUTPUT_SATURATED].any() and (a[C.OUTPUT_COUNTS] == 144).all()
    built = rebuild(dovit.meta)  # and vs the reference at a stopping xi, second input size
    med = round(_median_q(built.module, x), 6)
    report = seg_parity(lambda xi: load(seg_files["full48"].path, xi=xi), built, x, [med, 1.0])
    assert report.ok and all(r.near_ties == 0 for r in report.rows)
    assert report.rows[0].kept_fraction < 1.0
    dense_report = seg_parity(lambda xi: load(seg_files["dense48"].path), rebuild(dense.meta), x, [None])
    assert dense_report.ok


def test_xi_default_is_the_export_value(seg_files, sample_arrays):
    import onnxruntime as ort

    path = seg_files["c64"].path
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = _images(load(path).meta, sample_arrays, 2)
    no_feed = sess.run(None, {C.INPUT_IMAGES: x})
    fed = sess.run(None, {C.INPUT_IMAGES: x, C.INPUT_XI: np.asarray(0.3, np.float32)})
    other = sess.run(None, {C.INPUT_IMAGES: x, C.INPUT_XI: np.asarray(1.0, np.float32)})
    assert all(np.array_equal(a, b) for a, b in zip(no_feed, fed))
    assert not np.array_equal(no_feed[1], other[1])  # the feed really overrides the default


def test_compare_detects_a_wrong_mask(seg_files, sample_arrays):
    path = seg_files["c64"].path
    meta = load(path).meta
    built = rebuild(meta)
    x = _images(meta, sample_arrays, 1)
    got = load(path, xi=0.3).infer(x)
    got[C.OUTPUT_KEEP_MASKS][0, -1, 0] = ~got[C.OUTPUT_KEEP_MASKS][0, -1, 0]
    assert not compare_seg(built, got, x, 0.3, 64).ok
    got = load(path, xi=0.3).infer(x)
    got[C.OUTPUT_SEG][0, 0, 0, 0] += 1e-3
    assert not compare_seg(built, got, x, 0.3, 64).ok


@pytest.mark.parametrize("kwargs, needle", [
    (dict(xi=1.5), "xi=1.5"), (dict(xi=-0.01), "xi=-0.01"), (dict(max_keep=0), "--max-keep 0"),
    (dict(max_keep=129), "1..128"), (dict(input_size="30x64"), "30x64"), (dict(input_size="big"), "big"),
])
def test_bad_options_are_one_clear_error(tmp_path, kwargs, needle):
    out = tmp_path / "x.onnx"
    with pytest.raises(UsageError, match=needle.replace(".", r"\.")):
        export_seg(SegExportOptions("tiny_dovit", output=str(out), **kwargs))
    assert list(tmp_path.iterdir()) == []


def test_runner_xi_checks_and_segment(seg_files, sample_arrays, tmp_path):
    from PIL import Image

    from tscli.runtime.segmentation import seg_gflops, write_outputs

    path = seg_files["c64"].path
    for bad in (1.01, -1, "x"):
        with pytest.raises(UsageError):
            load(path, xi=bad)
    with pytest.raises(UsageError):
        load(seg_files["dense48"].path, xi=0.5)
    runner = load(path, xi=0.05)
    segs = runner.segment(sample_arrays[:2])
    assert [s.kept_counts for s in segs] == [[0, 0, 0], [0, 0, 0]]
    s = load(path, xi=1.0).segment(sample_arrays[:1])[0]
    assert s.saturated and s.kept_counts == [64, 64, 64] and s.class_map.shape == (32, 64)
    classes, overlay = write_outputs(s, tmp_path, 5)
    assert np.array_equal(np.asarray(Image.open(classes)), s.class_map)
    assert np.asarray(Image.open(overlay)).shape == (32, 64, 3)
    assert segs[0].gflops < s.gflops < seg_gflops(runner.meta | {"family": "seg"})


def test_gflops_bounds():
    from tscli.runtime.segmentation import seg_flops

    meta = {"input_size": [3, 512, 1024], "patch_size": 16, "embed_dim": 384, "depth": 12, "num_classes": 19,
            "stages": [2, 5, 8], "family": "dovit", "max_keep": 2048}
    dense = seg_flops(meta, None)
    full = seg_flops(meta, [2048] * 3)
    # aux heads are the only extra work at full capacity
    assert full - dense == 3 * 2 * 2048 * 384 * 19
    assert seg_flops(meta, [512] * 3) < seg_flops(meta, [1024] * 3) < dense


def _cli(*args, cwd=None):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "tscli.cli", *map(str, args)], capture_output=True, text=True, cwd=cwd)


@pytest.mark.parametrize("args, message", [
    (["export", "tiny_dovit", "--xi", "1.5"], "xi=1.5 is out of range; valid: 0 <= xi <= 1"),
    (["export", "tiny_dovit", "--max-keep", "0"], "--max-keep 0 is out of range for tiny_dovit at 32x64; valid: 1..128"),
    (["export", "tiny_dovit", "--max-k", "3"], "apply to ATS models"),
    (["export", "tiny_ats", "--max-keep", "3"], "apply to segmentation models"),
    (["export", "tiny_seg", "--xi", "0.9"], "apply to DoViT models"),
])
def test_cli_bad_segmentation_options(args, message, tmp_path):
    proc = _cli(*args, cwd=tmp_path)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1 and message in lines[0], proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_cli_run_writes_class_maps_and_overlays(seg_files, tmp_path):
    import json

    from tscli.data.samples import write_samples

    write_samples(tmp_path / "imgs", 2)
    proc = _cli("run", seg_files["c64"].path, tmp_path / "imgs", "--xi", "1.0", "--out-dir", tmp_path / "seg", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)["images"]
    assert len(rows) == 2 and all(r["saturated"] and r["kept_counts"] == [64, 64, 64] for r in rows)
    assert sorted(p.name for p in (tmp_path / "seg").iterdir()) == [
        "astronaut_classes.png", "astronaut_overlay.png", "coffee_classes.png", "coffee_overlay.png"]
    bad = _cli("run", seg_files["c64"].path, tmp_path / "imgs", "--xi", "2")
    assert bad.returncode != 0 and "xi=2.0 is out of range" in bad.stderr


def test_bench_seg_report(seg_files, tmp_path):
    from tscli.tools.bench_seg import bench_seg

    path = seg_files["c64"].path
    report = bench_seg(path, [1.0, 0.05], [1], runs=2, warmup=0, graphs_dir=tmp_path)
    assert (tmp_path / "tiny_dovit.dense.onnx").is_file()  # exported with the same (seeded) weights
    rows = {r["xi"]: r for r in report["rows"]}
    assert rows[1.0]["saturated"] == 1 and rows[1.0]["kept_fraction"] == 0.5
    assert rows[0.05]["kept_fraction"] == 0.0 and rows[0.05]["gflops_token_pass"] < rows[0.05]["gflops_padded"]
    assert all(len(r["samples_ms"]["dovit"]) == 2 and r["dovit_ms"] > 0 and r["dense_ms"] > 0 for r in report["rows"])
    kept = tmp_path / "tiny_dovit.dense.onnx"
    before = kept.stat().st_mtime_ns
    bench_seg(path, [1.0], [1], runs=1, warmup=0, graphs_dir=tmp_path)  # reused, not exported again
    assert kept.stat().st_mtime_ns == before
    with pytest.raises(UsageError, match="not a dense segmentation model"):
        bench_seg(path, [1.0], [1], runs=1, warmup=0, baseline=seg_files["dense48"].path)  # wrong input size
