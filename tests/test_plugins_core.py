"""The C++ sampling core (CPU build) against the PyTorch reference and the golden vectors.

The core is the arithmetic of the TensorRT plugin, so agreement here is the plugin's numerical
test on a machine without a GPU. Decisions whose reference margin is below 1e-6 are near-ties
(docs/design.md, "Tie bands"): they may flip, are counted and printed, and must stay rare.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tscli.errors import InputError, UsageError
from tscli.models.ops import ats_sample_reference
from tscli.models.sampling import SCHEMES, ats_pick, slot_indices
from tscli.plugins.core import (
    SCHEME_CODES,
    ats_sample_cpu,
    ats_sample_cpu_with_margin,
    build_cpu_library,
)

NS = (1, 2, 3, 9, 48, 120, 196)
KS = (1, 3, 9, 48, 96, 120, 196)
PER_CELL = 110  # 7 N x 7 K x 2 schemes x 110 = 10,780 score vectors
NEAR_TIE = 1e-6
KINDS = ("uniform", "heavy", "ties", "equal", "dominant", "zero", "one_valid", "cubed", "tiny")


def _scores(kind: str, rng: np.random.Generator, b: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """One family of score vectors [b, n] and a validity mask; every family hits one edge."""
    valid = rng.random((b, n)) >= rng.random((b, 1)) * 0.6  # 0-60 % of the tokens masked
    if kind == "uniform":
        s = rng.random((b, n))
    elif kind == "heavy":  # Pareto(1): a few tokens hold most of the mass
        s = rng.pareto(1.0, (b, n))
    elif kind == "ties":  # few distinct, exactly representable values: the stable rank decides
        s = rng.integers(0, 5, (b, n)) / 4.0
    elif kind == "equal":
        s = np.full((b, n), 0.25)
    elif kind == "dominant":
        s = rng.random((b, n)) * 1e-3
        s[np.arange(b), rng.integers(0, n, b)] = 1.0
    elif kind == "zero":  # the uniform fallback
        s = np.zeros((b, n))
    elif kind == "one_valid":
        s = rng.random((b, n))
        valid = np.zeros((b, n), dtype=bool)
        valid[np.arange(b), rng.integers(0, n, b)] = True
    elif kind == "cubed":
        s = rng.exponential(size=(b, n)) ** 3
    else:  # "tiny": small magnitudes, subnormal-adjacent sums
        s = rng.random((b, n)) * 1e-30
    return s.astype(np.float32), valid


def _cell(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    parts = [_scores(kind, rng, PER_CELL // len(KINDS) + 1, n) for kind in KINDS]
    s = np.concatenate([p[0] for p in parts])[:PER_CELL]
    v = np.concatenate([p[1] for p in parts])[:PER_CELL]
    return s, v


def test_random_and_adversarial_vectors_match_reference() -> None:
    rng = np.random.default_rng(20240605)
    total = mismatches = near_ties = 0
    worst_real: list[str] = []
    for scheme in SCHEMES:
        for n in NS:
            for k in KS:
                s, v = _cell(rng, n)
                keep, margin = ats_pick(torch.from_numpy(s), torch.from_numpy(v), torch.empty(k), scheme)
                ref_index, ref_mask = slot_indices(keep, torch.empty(k))
                index, mask = ats_sample_cpu(s, v, k, scheme)
                same = (ref_index.numpy() == index).all(axis=1) & (ref_mask.numpy() == mask).all(axis=1)
                bad = ~same
                near = bad & (margin.numpy() < NEAR_TIE)
                total += len(s)
                mismatches += int(bad.sum())
                near_ties += int(near.sum())
                worst_real += [f"{scheme} N={n} K={k} row={r}" for r in np.flatnonzero(bad & ~near)]
    print(f"core vs reference: {total} vectors, {mismatches} differ, {near_ties} of them near-ties (<{NEAR_TIE})")
    assert total >= 10_000
    assert not worst_real, f"real mismatches (margin >= {NEAR_TIE}): {worst_real[:10]}"
    assert near_ties <= total * 1e-3


def _outside_fast_premises(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows the fast path must hand back to the core's stages: negative, infinite, NaN scores."""
    s = rng.standard_normal((30, n))
    s[10:20, :: 3] = np.inf
    s[20:25, 1:: 4] = np.nan
    s[25:] = np.minimum(np.abs(s[25:]), 1.0) * 3e38  # finite (<= 3e38) scores whose sum overflows
    return s.astype(np.float32), rng.random((30, n)) > 0.2


def test_fast_path_is_bit_identical_to_core() -> None:
    """ats_sample_fast (the ONNX Runtime op) reorders loops but not arithmetic: same slots as the
    core on every vector of the families above, with no near-tie allowance, and on inputs outside
    its premises (where it runs the core's own stages)."""
    rng = np.random.default_rng(99)
    total = 0
    for scheme in SCHEMES:
        for n in NS:
            for k in KS:
                s, v = _cell(rng, n)
                odd_s, odd_v = _outside_fast_premises(rng, n)
                s, v = np.concatenate([s, odd_s]), np.concatenate([v, odd_v])
                index, mask = ats_sample_cpu(s, v, k, scheme)
                fast_index, fast_mask = ats_sample_cpu(s, v, k, scheme, fast=True)
                np.testing.assert_array_equal(fast_index, index, err_msg=f"{scheme} N={n} K={k}")
                np.testing.assert_array_equal(fast_mask, mask, err_msg=f"{scheme} N={n} K={k}")
                total += len(s)
    assert total >= 12_000


@pytest.mark.parametrize("scheme", SCHEMES)
def test_contract_of_reference_op(scheme: str) -> None:
    """Same numbers through the op-level reference (int32 index, int32 0/1 mask, CLS in slot 0);
    the CPU library keeps its bool API (the ctypes boundary is bytes)."""
    rng = np.random.default_rng(7)
    s = rng.random((64, 48)).astype(np.float32)
    v = rng.random((64, 48)) > 0.3
    ref_index, ref_mask = ats_sample_reference(torch.from_numpy(s), torch.from_numpy(v.astype(np.int32)),
                                               torch.empty(24), scheme)
    assert ref_mask.dtype == torch.int32
    index, mask = ats_sample_cpu(s, v, 24, SCHEME_CODES[scheme])
    assert index.dtype == np.int32 and mask.dtype == np.bool_ and index.shape == (64, 25)
    np.testing.assert_array_equal(index, ref_index.numpy())
    np.testing.assert_array_equal(mask, ref_mask.numpy() != 0)
    assert (index[:, 0] == 0).all() and mask[:, 0].all()
    assert (index[~mask] == 0).all()  # padding points at CLS
    # kept slots: ascending positions of valid tokens, then only padding
    for row_i, row_m, row_v in zip(index, mask, v):
        kept = row_i[row_m][1:]
        assert (np.diff(kept) > 0).all() and row_v[kept - 1].all()
        assert not row_m[1 + len(kept):].any()


def test_golden_vectors_exact(golden_cases) -> None:
    failures = []
    for case in golden_cases:
        index, mask, margin = ats_sample_cpu_with_margin(
            np.asarray([case["scores"]]), np.asarray([case["valid"]]), case["K"], case["scheme"])
        kept = sorted(int(i) - 1 for i in index[0][mask[0]][1:])
        if kept != case["kept"]:
            failures.append(case["name"])
        fast_index, fast_mask = ats_sample_cpu(
            np.asarray([case["scores"]]), np.asarray([case["valid"]]), case["K"], case["scheme"], fast=True)
        if not (np.array_equal(fast_index, index) and np.array_equal(fast_mask, mask)):
            failures.append(f"{case['name']} (fast path)")
        assert margin[0] == pytest.approx(case["min_margin"], abs=1e-5)
    assert len(golden_cases) == 82
    assert not failures, f"golden cases that differ: {failures}"


def test_edge_shapes_and_errors() -> None:
    index, mask = ats_sample_cpu(np.zeros((3, 0), np.float32), np.zeros((3, 0), bool), 4, "paper")
    assert index.shape == (3, 5) and (index == 0).all() and mask.sum() == 3  # only CLS
    index, mask = ats_sample_cpu(np.ones((2, 5)), np.zeros((2, 5), bool), 3, "official")
    assert mask.sum(axis=1).tolist() == [1, 1]  # nothing valid: CLS only, no NaN path
    index, mask = ats_sample_cpu(np.full((1, 4), 7.0), np.ones((1, 4), bool), 1, "paper")
    assert index.tolist() == [[0, 2]]  # all equal, point 0.5 hits CDF 0.5: position 1, index 2
    with pytest.raises(UsageError):
        ats_sample_cpu(np.ones((1, 4)), np.ones((1, 4), bool), 2, "nearest")
    with pytest.raises(UsageError):
        ats_sample_cpu(np.ones((1, 4)), np.ones((1, 4), bool), 0, "paper")
    with pytest.raises(InputError):
        ats_sample_cpu(np.ones((1, 4)), np.ones((1, 5), bool), 2, "paper")


def test_library_cache_is_keyed_and_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TSCLI_CACHE", str(tmp_path))
    first = build_cpu_library()
    assert first.parent == tmp_path / "plugins" and first.stat().st_size > 0
    assert build_cpu_library() == first  # cached: same sources -> same file
    assert [p.name for p in first.parent.iterdir()] == [first.name]  # no temp files left


def test_missing_compiler_is_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from tscli.errors import MissingDependency

    monkeypatch.setenv("TSCLI_CACHE", str(tmp_path))
    monkeypatch.setenv("CXX", "no-such-compiler-xyz")
    with pytest.raises(MissingDependency, match="no-such-compiler-xyz"):
        build_cpu_library()


def test_any_nonzero_valid_counts_as_valid() -> None:
    """The node contract's valid is int32 with nonzero = valid: 256 (whose low byte is 0) and -1
    must not be read as 0 when the flags are narrowed to the core's bytes."""
    rng = np.random.default_rng(3)
    s = rng.random((4, 30)).astype(np.float32)
    v = rng.random((4, 30)) > 0.4
    wide = np.where(v, np.array([256, -1, 1, 1 << 20], np.int32)[rng.integers(0, 4, v.shape)], 0).astype(np.int32)
    for fast in (False, True):
        want = ats_sample_cpu(s, v, 9, "paper", fast=fast)
        got = ats_sample_cpu(s, wide, 9, "paper", fast=fast)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
