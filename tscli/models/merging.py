"""ToMe's bipartite soft matching and size-weighted merge (docs/design.md, "ToMe") as static
tensor functions.

ToMe's release sorts the edges (argsort), gathers with data-dependent index lists it built by
sorting, and merges with ``scatter_reduce``, which has no ONNX operator. Here every step has a
shape fixed by (T, r), both known at export, and uses only operators TensorRT parses:

- the edge order is a pairwise "ranked ahead" matrix (a higher best similarity, or an equal one
  and a lower index), each token's place a row sum of it; no sort, no TopK;
- each token's best destination is the lowest index among its row's maxima (a ReduceMax, an
  Equal and a ReduceMin), not an ArgMax: TensorRT does not promise which of equal values ArgMax
  returns;
- the index lists (unmerged tokens in ascending order, sources in edge order) come out of a
  one-hot matrix times the index vector, so no scatter writes to a place twice;
- sources are added into their destinations by a one-hot [Tb, r] assignment MatMul: no scatter
  with a reduction. The token sizes travel as one extra channel, so one Gather and one MatMul
  merge the size-weighted tokens and their sizes together.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .ats import gather_tokens

# Above any |cosine similarity|; a finite stand-in for "no second candidate".
_FAR = 4.0


def merge_schedule(tokens: int, r: int, depth: int, protected: int = 1) -> list[int]:
    """The r of each block: ToMe's clamp, at most half of the unprotected tokens, in every block."""
    out = []
    for _ in range(depth):
        step = max(0, min(int(r), (tokens - protected) // 2))
        out.append(step)
        tokens -= step
    return out


@dataclass
class Matching:
    """One block's merge decisions (A = even rows of the block input, B = odd rows)."""

    unmerged: Tensor  # [Bt, Ta - r] A rows that stay, ascending (CLS, A row 0, first)
    sources: Tensor  # [Bt, r] A rows merged away, in edge order (most similar first)
    targets: Tensor  # [Bt, r] the B row each source is added into
    slot_map: Tensor  # [Bt, T] float: the output row of every input row
    margin: Tensor | None  # [Bt] smallest decision margin (reference runs only)


def _one_hot_pick(selector: Tensor, values: Tensor) -> Tensor:
    """selector [B, S, N] with exactly one 1 per row, values [N] or [B, N] -> [B, S]: the value
    each row selects, as a MatMul (exact: one product is 1 * value, the others add 0)."""
    if values.dim() == 1:
        return torch.matmul(selector, values)
    return torch.matmul(selector, values.unsqueeze(-1)).squeeze(-1)


def bipartite_match(metric: Tensor, r: int, with_margin: bool = False) -> Matching:
    """ToMe's matching for metric [Bt, T, C] (the block's keys averaged over heads) and a static
    r >= 1 (already clamped: r <= (T - 1) // 2). Row 0 is the CLS token: it is in A, and its
    similarities are -inf, so it ranks last and is never merged (r leaves it out).

    Ties (docs/design.md, "ToMe"): a source with several equally similar destinations goes to the
    lowest B index; equally similar sources are ranked by ascending A index.
    """
    t = metric.shape[1]
    metric = metric / metric.norm(dim=-1, keepdim=True)
    a, b = metric[:, ::2], metric[:, 1::2]
    ta, tb = (t + 1) // 2, t // 2
    dev, dt = metric.device, metric.dtype
    a_idx = torch.arange(ta, device=dev)
    b_idx = torch.arange(tb, device=dev, dtype=dt)
    scores = torch.matmul(a, b.transpose(-1, -2))  # [Bt, Ta, Tb]
    scores = torch.where((a_idx == 0).unsqueeze(-1), float("-inf"), scores)  # CLS: never a source
    best = scores.amax(dim=-1)  # [Bt, Ta]
    # Lowest index among the maxima (the CLS row, all -inf, gets 0; it is never merged).
    target_of = torch.where(scores == best.unsqueeze(-1), b_idx, float(tb)).amin(dim=-1)  # [Bt, Ta]
    lower_index = a_idx.unsqueeze(1) > a_idx.unsqueeze(0)  # [j, i]: i < j
    bi, bj = best.unsqueeze(-2), best.unsqueeze(-1)
    ahead = (bi > bj) | ((bi >= bj) & lower_index)  # i ranks ahead of j
    place = ahead.to(dt).sum(dim=-1)  # [Bt, Ta]: 0 = the most similar pair
    merged = place < r
    kept_f = (~merged).to(dt)
    # Output row of an unmerged A token: the number of unmerged A tokens before it (a
    # triangular MatMul, not CumSum).
    earlier = (a_idx.unsqueeze(1) < a_idx.unsqueeze(0)).to(dt)  # [i', i]: i' < i
    unm_slot = torch.matmul(kept_f.unsqueeze(-2), earlier).squeeze(-2)  # [Bt, Ta]
    keep_rows = torch.arange(ta - r, device=dev, dtype=dt)
    pick_unm = (unm_slot.unsqueeze(-2) == keep_rows.unsqueeze(-1)) & ~merged.unsqueeze(-2)  # [Bt, Ta-r, Ta]
    a_pos = a_idx.to(dt)
    unmerged = _one_hot_pick(pick_unm.to(dt), a_pos)
    src_rows = torch.arange(r, device=dev, dtype=dt)
    pick_src = (place.unsqueeze(-2) == src_rows.unsqueeze(-1)).to(dt)  # [Bt, r, Ta]: the source of edge q
    sources = _one_hot_pick(pick_src, a_pos)
    targets = _one_hot_pick(pick_src, target_of)
    slot_map = _interleave(torch.where(merged, (ta - r) + target_of, unm_slot), (ta - r) + b_idx, t)
    margin = _margin(scores, best, target_of, merged, a_idx) if with_margin else None
    return Matching(unmerged.long(), sources.long(), targets.long(), slot_map, margin)


def _interleave(even: Tensor, odd: Tensor, t: int) -> Tensor:
    """even [Bt, Ta], odd [Tb] -> [Bt, T] in token order (row 2i = even i, row 2i+1 = odd i)."""
    odd = odd.expand(even.shape[0], odd.shape[-1])
    if odd.shape[-1] < even.shape[-1]:
        odd = torch.cat([odd, odd[:, :1]], dim=-1)  # T odd: one filler, cut below
    return torch.stack([even, odd], dim=-1).reshape(even.shape[0], -1)[:, :t]


def _margin(scores: Tensor, best: Tensor, target_of: Tensor, merged: Tensor, a_idx: Tensor) -> Tensor:
    """Per image: the smaller of (a) the gap between the r-th and the (r+1)-th best similarity
    (which sources are merged) and (b) each source's gap to its second-best destination."""
    candidate = a_idx != 0  # CLS never competes
    worst_in = torch.where(merged, best, _FAR).amin(dim=-1)
    best_out = torch.where(~merged & candidate, best, -_FAR).amax(dim=-1)
    b_pos = torch.arange(scores.shape[-1], device=scores.device, dtype=scores.dtype)
    second = torch.where(b_pos == target_of.unsqueeze(-1), -_FAR, scores).amax(dim=-1)
    choice = torch.where(merged, best - second, _FAR).amin(dim=-1)
    return torch.minimum(worst_in - best_out, choice).clamp_max(_FAR)


def merge_tokens(x: Tensor, size: Tensor | None, m: Matching) -> tuple[Tensor, Tensor]:
    """ToMe's size-weighted average: (x [B, T, D], size [B, T, 1] or None = all 1) -> the merged
    tokens [B, T - r, D] (unmerged A rows ascending, then every B row) and their sizes.

    Like ToMe's merge_wavg: x * size and size are summed per output row, then divided, so every
    row (merged or not) is (sum of x * size) / (sum of size).
    """
    if size is None:
        size = torch.ones_like(x[..., :1])
    d = x.shape[-1]
    weighted = torch.cat([x * size, size], dim=-1)  # [B, T, D + 1]: one gather / matmul for both
    a, b = weighted[:, ::2], weighted[:, 1::2]
    unmerged = gather_tokens(a, m.unmerged)
    sources = gather_tokens(a, m.sources)  # [B, r, D + 1]
    b_pos = torch.arange(b.shape[1], device=x.device)
    assign = (m.targets.unsqueeze(-2) == b_pos.unsqueeze(-1)).to(x.dtype)  # [B, Tb, r]
    dst = b + torch.matmul(assign, sources)
    out = torch.cat([unmerged, dst], dim=1)
    total = out[..., d:]
    return out[..., :d] / total, total
