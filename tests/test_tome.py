"""ToMe (docs/design.md, "ToMe"): the static matching and merge against a per-image reference
written from the paper's description (ties included), the model, the exported graph in ONNX
Runtime, the lint (no scatter at all), and bad --r values.

The comparison with the released implementation (facebookresearch/ToMe, tome.patch.timm) is not
a test: the release is not on PyPI (the `tome` package there is unrelated) and its code is not
copied into this repository. It was run on the same timm models and weights outside the
repository; docs/design.md, "ToMe", records what was compared and the numbers."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from tscli import contract as C
from tscli.errors import UsageError
from tscli.models.catalog import get_config
from tscli.models.factory import build_model
from tscli.models.merging import bipartite_match, merge_schedule, merge_tokens

# Merged tokens vs the float64 reference (float32 arithmetic, a few additions per row).
MERGE_TOL = 1e-5


def reference_merge(x: np.ndarray, size: np.ndarray, metric: np.ndarray, r: int):
    """One image, as the paper describes it, with tscli's tie rules: -> (tokens, sizes, slot of
    each input row). A = even rows (row 0 = CLS, never merged), B = odd rows; each A token's
    edge goes to its most similar B token (lowest B index on ties); the r strongest edges
    (ties: lower A index) are merged; output = unmerged A rows ascending, then the B rows."""
    m = metric / np.linalg.norm(metric, axis=-1, keepdims=True)
    a_rows, b_rows = list(range(0, len(x), 2)), list(range(1, len(x), 2))
    sim = m[a_rows] @ m[b_rows].T
    best = [-np.inf] + [float(sim[i].max()) for i in range(1, len(a_rows))]
    target = [0] + [int(np.flatnonzero(sim[i] == sim[i].max())[0]) for i in range(1, len(a_rows))]
    order = sorted(range(len(a_rows)), key=lambda i: (-best[i], i))
    sources, kept = order[:r], sorted(order[r:])
    rows = [x[a_rows[i]] * size[a_rows[i]] for i in kept] + [x[j] * size[j] for j in b_rows]
    sizes = [size[a_rows[i]] for i in kept] + [size[j] for j in b_rows]
    slot = np.zeros(len(x), np.int64)
    for s, i in enumerate(kept):
        slot[a_rows[i]] = s
    for jj, j in enumerate(b_rows):
        slot[j] = len(kept) + jj
    for i in sources:
        dst = len(kept) + target[i]
        rows[dst] = rows[dst] + x[a_rows[i]] * size[a_rows[i]]
        sizes[dst] = sizes[dst] + size[a_rows[i]]
        slot[a_rows[i]] = dst
    sizes = np.asarray(sizes)
    return np.asarray(rows) / sizes, sizes, slot


def _ours(x, size, metric, r):
    m = bipartite_match(torch.from_numpy(metric).float(), r)
    tokens, sizes = merge_tokens(torch.from_numpy(x).float(), torch.from_numpy(size).float(), m)
    return tokens.numpy(), sizes.numpy(), m.slot_map.long().numpy()


@pytest.mark.parametrize("t, r", [(9, 1), (9, 4), (16, 7), (65, 8), (65, 32), (197, 13)])
def test_matches_per_image_reference_on_random_tokens(t, r):
    rng = np.random.default_rng(t * 100 + r)
    x = rng.standard_normal((3, t, 12))
    size = rng.integers(1, 5, (3, t, 1)).astype(float)
    metric = rng.standard_normal((3, t, 8))
    got_x, got_s, got_slot = _ours(x, size, metric, r)
    assert got_x.shape == (3, t - r, 12)
    for i in range(3):
        ref_x, ref_s, ref_slot = reference_merge(x[i], size[i], metric[i], r)
        assert np.array_equal(got_slot[i], ref_slot)
        assert np.array_equal(got_s[i], ref_s)  # small integers: exact
        assert np.abs(got_x[i] - ref_x).max() <= MERGE_TOL


def test_exact_ties_follow_the_documented_rules():
    """One-hot metrics give similarities of exactly 0 or 1: many equal edges and many equal
    destinations. Sources go to the lowest B index, equal edges rank by the lower A index."""
    rng = np.random.default_rng(7)
    for _ in range(50):
        t, r = int(rng.integers(5, 40)), 0
        r = int(rng.integers(1, (t - 1) // 2 + 1))
        metric = np.eye(3)[rng.integers(0, 3, (2, t))]  # [2, t, 3], rows are one-hot
        x = rng.standard_normal((2, t, 5))
        size = np.ones((2, t, 1))
        got_x, _, got_slot = _ours(x, size, metric, r)
        for i in range(2):
            ref_x, _, ref_slot = reference_merge(x[i], size[i], metric[i], r)
            assert np.array_equal(got_slot[i], ref_slot)
            assert np.abs(got_x[i] - ref_x).max() <= MERGE_TOL


def test_cls_is_never_merged_and_image_alone_equals_batch():
    rng = np.random.default_rng(1)
    metric = rng.standard_normal((4, 65, 8))
    metric[:, 0] = metric[:, 1]  # CLS identical to a B token: still never a source
    m = bipartite_match(torch.from_numpy(metric).float(), 32)
    slots = m.slot_map.long()
    assert (slots[:, 0] == 0).all() and ((slots == 0).sum(-1) == 1).all()
    alone = bipartite_match(torch.from_numpy(metric[2:3]).float(), 32)
    assert torch.equal(alone.slot_map, m.slot_map[2:3])


def test_schedule_clamps_like_tome():
    assert merge_schedule(197, 13, 12) == [13] * 12
    assert merge_schedule(197, 16, 12) == [16] * 11 + [10]  # 21 tokens left: (21 - 1) // 2
    assert merge_schedule(65, 20, 4) == [20, 20, 12, 6]
    assert merge_schedule(9, 100, 3) == [4, 2, 1]


def test_model_records_groups_and_prop_attn():
    model = build_model(get_config("tiny_tome")).module
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits, slots, margin = model.forward_with_records(x, with_margin=True)
        assert torch.equal(logits, model(x))
        t = 65
        for layer, r in enumerate(model.schedule):
            t -= r
            for i in range(2):
                assert sorted(set(slots[i, layer].tolist())) == list(range(t))  # every row holds a token
                assert (slots[i, layer] == 0).sum() == 1 and slots[i, layer, 0] == 0  # CLS alone in row 0
        assert margin.shape == (2,) and (margin >= 0).all()
        for blk in model.blocks:
            blk.prop_attn = False
        assert (model(x) - logits).abs().max() > 1e-4  # proportional attention changes the result


def test_r_zero_is_dense_and_weights_match_dense():
    from dataclasses import replace

    cfg = get_config("tiny_tome")
    tome = build_model(replace(cfg, r=0)).module
    dense = build_model(get_config("tiny_dense")).module
    assert all(torch.equal(a, b) for a, b in zip(tome.state_dict().values(), dense.state_dict().values()))
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert (tome(x) - dense(x)).abs().max() <= 1e-5


@pytest.fixture(scope="module")
def tome_file(tiny_reduction_exports):
    return tiny_reduction_exports["tome"]  # r = 8


def _dims(value):
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


def test_export_contract_and_lint(tome_file):
    from tscli.export.lint import lint_model

    model = onnx.load(str(tome_file.path))
    onnx.checker.check_model(model, full_check=True)
    assert {i.name: _dims(i) for i in model.graph.input} == {C.INPUT_IMAGES: [C.DIM_BATCH, 3, 32, 32]}
    outputs = {o.name: _dims(o) for o in model.graph.output}
    assert outputs == {C.OUTPUT_LOGITS: [C.DIM_BATCH, 10], C.OUTPUT_MERGE_SLOTS: [C.DIM_BATCH, 4, 65]}
    meta = tome_file.metadata
    assert meta["family"] == C.FAMILY_TOME and meta["r"] == 8 and meta["merge_r"] == [8, 8, 8, 8]
    assert meta["prop_attn"] is True and meta["max_k"] is None
    assert lint_model(model).ok
    ops = {n.op_type for n in model.graph.node}
    # No scatter of any kind (ToMe's scatter_reduce has no ONNX operator; TensorRT 8.6 ignores a
    # ScatterElements reduction), and no order-dependent picking ops.
    assert not ops & {"ScatterElements", "ScatterND", "Scatter", "TopK", "ArgMax", "ArgMin", "NonZero", "Unique"}


def test_ort_matches_torch_with_the_same_groups(tome_file, sample_arrays):
    from tscli.models.factory import build_from_metadata
    from tscli.runtime import load
    from tscli.runtime.preprocess import preprocess
    from tscli.tools.parity import LOGIT_ATOL, run_parity

    meta = tome_file.metadata
    x = np.concatenate([preprocess(sample_arrays, meta),
                        np.random.default_rng(1).standard_normal((3, 3, 32, 32)).astype(np.float32)])
    report = run_parity(lambda k: load(tome_file.path), build_from_metadata(meta), x, [None])
    (row,) = report.rows
    assert row.execution == "tome" and row.max_abs_diff <= LOGIT_ATOL
    assert row.sets_agree + row.near_ties == row.images and row.near_ties <= 1, row
    for batch in (1, 4):
        out = load(tome_file.path).infer(x[:batch])
        assert out[C.OUTPUT_LOGITS].shape == (batch, 10) and out[C.OUTPUT_MERGE_SLOTS].shape == (batch, 4, 65)
        assert (out[C.OUTPUT_MERGE_SLOTS][:, -1].max(-1) == 65 - 4 * 8 - 1).all()


@pytest.mark.parametrize("opts, message", [
    (dict(model="tiny_tome", r=0), "--r 0 is out of range for tiny_tome; valid: 1..32"),
    (dict(model="tiny_tome", r=33), "valid: 1..32"),
    (dict(model="tiny_ats", r=4), "--r applies to ToMe models; 'tiny_ats' is ats"),
    (dict(model="tiny_tome", max_k=8), "--max-k applies to ATS models"),
    (dict(model="tiny_tome", form="plugin"), "plain form only"),
    (dict(model="tiny_tome", mode="trimmed"), "--mode trimmed applies to ATS models"),
])
def test_bad_options_refused_before_export(opts, message, tmp_path):
    from tscli.tools.checked_export import ExportOptions, export_onnx

    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        export_onnx(ExportOptions(output=str(tmp_path / "x.onnx"), **opts))
    assert list(tmp_path.iterdir()) == []
