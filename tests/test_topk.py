"""The ATS paper's top-K baseline (docs/design.md, "Top-K"): the picks against a numpy reference
(ties included), the block in a model, the exported graph in ONNX Runtime, and what is refused."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from tscli import contract as C
from tscli.errors import UsageError
from tscli.models.catalog import get_config
from tscli.models.factory import build_model
from tscli.models.sampling import normalise_scores, pick_tokens, topk_pick


def reference_topk(scores: np.ndarray, valid: np.ndarray, k: int) -> list[int]:
    """Straightforward: normalise as ATS does (float32), order valid tokens by (-S, index), keep K."""
    s = np.where(valid, scores, 0).astype(np.float32)
    total = s.sum(dtype=np.float32)
    s = s / total if total > 0 else valid.astype(np.float32) / max(int(valid.sum()), 1)
    order = sorted((j for j in range(len(s)) if valid[j]), key=lambda j: (-float(s[j]), j))
    return sorted(order[:k])


def _picks(scores, valid, k) -> list[int]:
    keep, _ = topk_pick(torch.tensor(np.asarray([scores], np.float32)), torch.tensor([valid]), torch.zeros(k))
    return torch.nonzero(keep[0]).flatten().tolist()


CASES = [  # (name, scores, valid, K, expected kept indices)
    ("plain", [0.1, 0.5, 0.2, 0.9, 0.3], [True] * 5, 2, [1, 3]),
    ("tie at the cut: lower index", [0.5, 0.2, 0.5, 0.5, 0.1], [True] * 5, 2, [0, 2]),
    ("all equal", [1.0] * 6, [True] * 6, 4, [0, 1, 2, 3]),
    ("all zero: uniform", [0.0] * 5, [True] * 5, 3, [0, 1, 2]),
    ("masked high score never kept", [0.9, 0.1, 0.8, 0.2], [False, True, True, True], 2, [2, 3]),
    ("K above the valid count", [0.3, 0.2, 0.1, 0.7], [True, False, True, False], 3, [0, 2]),
    ("masked zeros vs valid zeros", [0.0, 0.0, 0.0, 0.4], [False, True, True, True], 2, [1, 3]),
    ("K = 1 with a tie", [0.25, 0.25, 0.5, 0.5], [True] * 4, 1, [2]),
]


@pytest.mark.parametrize("name, scores, valid, k, expected", CASES, ids=[c[0] for c in CASES])
def test_hand_cases(name, scores, valid, k, expected):
    assert reference_topk(np.asarray(scores), np.asarray(valid), k) == expected
    assert _picks(scores, valid, k) == expected


def test_random_and_tied_vectors_match_reference():
    """800 vectors: continuous, heavy-tailed, small-integer (many exact ties), with masks; K from
    1 to past N. The static rule (pairwise 'ahead' counts) equals the sorted reference exactly."""
    rng = np.random.default_rng(0)
    wrong = []
    for it in range(800):
        n = int(rng.integers(1, 120))
        k = int(rng.integers(1, n + 5))
        kind = it % 4
        s = rng.random(n)
        if kind == 1:
            s = s ** 8
        elif kind == 2:
            s = rng.integers(0, 4, n).astype(float)  # exact ties everywhere
        elif kind == 3:
            s = np.where(rng.random(n) < 0.4, 0.0, rng.integers(1, 3, n).astype(float))
        valid = rng.random(n) < 0.8
        if _picks(s, valid.tolist(), k) != reference_topk(s, valid, k):
            wrong.append((it, n, k, kind))
    assert wrong == []


def test_kept_count_and_margin():
    s = torch.tensor([[0.4, 0.1, 0.3, 0.2], [0.25, 0.25, 0.25, 0.25]])
    valid = torch.ones(2, 4, dtype=torch.bool)
    keep, margin = topk_pick(s, valid, torch.zeros(2))
    assert keep.sum(-1).tolist() == [2, 2]
    norm = normalise_scores(s, valid)
    assert margin[0] == pytest.approx(float(norm[0, 2] - norm[0, 3]))  # worst kept minus best dropped
    assert margin[1] == 0.0  # an exact tie at the cut is decided by the index rule, margin 0
    keep, margin = topk_pick(s, valid, torch.zeros(9))  # K beyond N: everything kept, nothing close
    assert keep.all() and (margin > 1).all()
    same, _ = pick_tokens(s, valid, torch.zeros(2), C.TOPK)
    assert torch.equal(same, topk_pick(s, valid, torch.zeros(2))[0])


def test_block_keeps_exactly_k_then_everything():
    """In the model: the first top-K stage keeps min(K, N) tokens, the later ones keep all K (one
    K for every stage, as ATS takes it); padded == trimmed; the picks are those of the scores."""
    model = build_model(get_config("tiny_topk")).module
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    for k in (1, 10, 64):
        with torch.no_grad():
            lp, rp = model.forward_with_records(x, torch.zeros(k))
            model.configure(execution="trimmed")
            lt, rt = model.forward_with_records(x, torch.zeros(k))
            model.configure(execution="padded")
        assert (lp - lt).abs().max() <= 1e-5
        for r in rp:
            assert (r.counts == k + 1).all()
        for a, b in zip(rp, rt):
            assert [set(p[p >= 0].tolist()) for p in a.positions] == [set(p[p >= 0].tolist()) for p in b.positions]


def test_first_stage_picks_are_the_top_scores():
    """Recompute block 1's significance scores by hand (CLS attention summed over heads times
    ||v||) and check the kept positions are the reference top-K of them."""
    model = build_model(get_config("tiny_topk")).module
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    captured = {}
    blk = model.blocks[1]
    blk.register_forward_pre_hook(lambda mod, args: captured.update(x=args[0].x))  # returns None: args unchanged
    with torch.no_grad():
        _, records = model.forward_with_records(x, torch.zeros(12))
        h = captured["x"]
        qkv = blk.attn.qkv(blk.norm1(h)).reshape(2, 65, 3, 3, 16).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        a = ((q @ k.transpose(-2, -1)) * blk.attn.scale).softmax(-1)
        scores = (a[:, :, 0, 1:].sum(1) * v.transpose(1, 2).reshape(2, 65, 48).norm(dim=-1)[:, 1:]).numpy()
    for i in range(2):
        expected = [j + 1 for j in reference_topk(scores[i], np.ones(64, bool), 12)]
        got = sorted(p for p in records[0].positions[i].tolist() if p > 0)
        assert got == expected


@pytest.fixture(scope="module")
def topk_file(tiny_reduction_exports):
    return tiny_reduction_exports["topk"]


def test_export_contract_lint_and_ort_parity(topk_file, sample_arrays):
    from tscli.export.lint import lint_model
    from tscli.models.factory import build_from_metadata
    from tscli.runtime import load
    from tscli.runtime.preprocess import preprocess
    from tscli.tools.parity import LOGIT_ATOL, run_parity

    meta = topk_file.metadata
    assert meta["scheme"] == C.TOPK and meta["family"] == C.FAMILY_ATS and meta["max_k"] == 40
    model = onnx.load(str(topk_file.path))
    assert lint_model(model).ok
    banned = {"TopK", "ArgMax", "ArgMin", "NonZero", "Unique", "CumSum", "ScatterND"}
    assert not banned & {n.op_type for n in model.graph.node}
    x = np.concatenate([preprocess(sample_arrays, meta),
                        np.random.default_rng(1).standard_normal((3, 3, 32, 32)).astype(np.float32)])
    report = run_parity(lambda k: load(topk_file.path, k=k), build_from_metadata(meta), x, [40, 13, 1])
    for row in report.rows:
        assert row.max_abs_diff <= LOGIT_ATOL and row.sets_agree + row.near_ties == row.images, row
        assert row.near_ties <= 1, row
    out = load(topk_file.path, k=13).infer(x)
    assert (out[C.OUTPUT_COUNTS] == 14).all()  # top-K keeps exactly K (64 candidates >= 13)


def test_plugin_form_and_bad_scheme_refused(tmp_path):
    from tscli.tools.checked_export import ExportOptions, export_onnx

    with pytest.raises(UsageError, match="--form plugin .* plain form only"):
        export_onnx(ExportOptions("tiny_topk", output=str(tmp_path / "x.onnx"), form="plugin"))
    with pytest.raises(UsageError, match="--form plugin"):
        export_onnx(ExportOptions("tiny_ats", output=str(tmp_path / "x.onnx"), form="plugin", scheme="topk"))
    with pytest.raises(UsageError, match="unknown --sampling 'top'; valid: paper, official, topk"):
        export_onnx(ExportOptions("tiny_ats", output=str(tmp_path / "x.onnx"), scheme="top"))
    with pytest.raises(ValueError, match="no sampling op"):
        build_model(get_config("tiny_topk")).module.configure(use_custom_op=True)
    assert list(tmp_path.iterdir()) == []


def test_bench_and_tune_take_a_topk_file(topk_file, tiny_exports, tmp_path):
    """Top-K has a load-time budget like ATS, so bench and tune sweep its K unchanged."""
    from tscli.data.samples import write_samples
    from tscli.runtime import flops as F
    from tscli.tools.bench import bench
    from tscli.tools.tune import tune

    report = bench(topk_file.path, ks=[8], batches=[1], runs=1, warmup=0, baseline=tiny_exports["dense"])
    (row,) = report["rows"]
    assert row["k"] == 8 and row["dense"] is not None and row["speedup_vs_dense"] > 0
    assert row["ats"]["gflops"] == pytest.approx(F.padded_flops(F.arch_from_meta(topk_file.metadata), 8) / 1e9)
    write_samples(tmp_path / "imgs", 4)
    result = tune(topk_file.path, tmp_path / "imgs", labels="none", k_grid=[40, 8], runs=1,
                  output=tmp_path / "profiles.json")
    assert result["model"] == "tiny_topk" and result["chosen_k"] in (40, 8)
    assert {r["k"] for r in result["table"]} == {40, 8}
    assert next(r for r in result["table"] if r["k"] == 40)["accuracy"] == 1.0  # agreement with max_k, itself
