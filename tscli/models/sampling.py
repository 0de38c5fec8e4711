"""ATS token picking (DESIGN.md section 2, steps 2-6) as plain tensor functions.

Written so that ``torch.onnx.export`` gives a static-shape graph made only of operators that
TensorRT parses: no sort, no NonZero/Unique, no CumSum, no ArgMin. The stable ascending sort is
expressed as a pairwise "comes before" matrix, from which each token's sorted position (rank) and
its CDF value (a MatMul) follow directly, in the tokens' own order. The nearest-point search
then only needs exact float comparisons and a min over ranks, which implements the rule "ties go
to the lowest sorted position" without reordering anything.

Every function here is also the reference for the plugin core in tscli/plugins (same names).
"""

from __future__ import annotations

import torch
from torch import Tensor

SCHEMES = ("paper", "official")

# Distances live in [0, 1]; anything above is "no candidate here".
_FAR = 4.0
# Larger than any rank; a constant (not N) so that N stays symbolic when exported.
_NO_RANK = float(2**24)


def normalise_scores(scores: Tensor, valid: Tensor) -> Tensor:
    """S_j = s_j / sum(s) over valid tokens; uniform over valid tokens if all scores are zero."""
    s = torch.where(valid, scores, torch.zeros_like(scores))
    total = s.sum(dim=-1, keepdim=True)
    n_valid = valid.to(scores.dtype).sum(dim=-1, keepdim=True)
    uniform = valid.to(scores.dtype) / n_valid.clamp_min(1.0)
    return torch.where(total > 0, s / torch.where(total > 0, total, torch.ones_like(total)), uniform)


def stable_order(s: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
    """Rank of each valid token in the stable ascending order of ``s``, and its CDF value.

    before[b, j, i] is true when valid token i comes strictly before token j: a smaller score,
    or an equal score and a lower index. rank_j = count of such i; CDF_j = S_j + their sum.
    """
    n = s.shape[-1]
    idx = torch.arange(n, device=s.device)
    lower_index = idx.unsqueeze(1) > idx.unsqueeze(0)  # [j, i]: i < j
    si = s.unsqueeze(-2)  # [B, 1, N] -> indexed by i
    sj = s.unsqueeze(-1)  # [B, N, 1] -> indexed by j
    before = ((si < sj) | ((si == sj) & lower_index)) & valid.unsqueeze(-2)
    before_f = before.to(s.dtype)
    rank = before_f.sum(dim=-1)
    cdf = s + torch.matmul(before_f, s.unsqueeze(-1)).squeeze(-1)
    return rank, cdf


def sample_points(num_points_like: Tensor, cdf: Tensor, valid: Tensor, scheme: str) -> tuple[Tensor, Tensor]:
    """The K points on the CDF axis and the CDF values they are compared with.

    ``num_points_like`` is any 1-D tensor of length K: K stays a symbolic shape in the exported
    graph, so one file serves every K. Returns (points [B, K], cdf_for_distance [B, N]).
    """
    steps = torch.arange(num_points_like.shape[0], dtype=cdf.dtype, device=cdf.device)  # 0..K-1
    k = steps[-1:] + 1.0
    if scheme == "paper":
        points = ((2.0 * steps + 1.0) / (2.0 * k)).unsqueeze(0).expand(cdf.shape[0], -1)
        return points, cdf
    if scheme != "official":
        raise ValueError(f"unknown sampling scheme {scheme!r}; valid: {', '.join(SCHEMES)}")
    # Released code: min-max normalised CDF, K points linspace(y0, 1, K), y0 = smallest ncdf > 0.
    # Unlike the released code, min/max/y0 are over this image's valid tokens only.
    lo = torch.where(valid, cdf, torch.full_like(cdf, _FAR)).amin(dim=-1, keepdim=True)
    hi = torch.where(valid, cdf, torch.full_like(cdf, -_FAR)).amax(dim=-1, keepdim=True)
    span = hi - lo
    span = torch.where(span > 0, span, torch.ones_like(span))
    ncdf = (cdf - lo) / span
    y0 = torch.where(valid & (ncdf > 0), ncdf, torch.full_like(ncdf, _FAR)).amin(dim=-1, keepdim=True)
    y0 = y0.clamp_max(1.0)
    step = (1.0 - y0) / (k - 1.0).clamp_min(1.0)
    points = y0 + steps.unsqueeze(0) * step
    return points, ncdf


def nearest_picks(points: Tensor, cdf: Tensor, rank: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
    """Keep mask [B, N] of the tokens nearest to any point, and each image's smallest margin [B].

    For each point, the nearest valid CDF value wins; among exactly equal distances the lowest
    sorted position (rank) wins. The margin is the gap to the second-nearest position: decisions
    with a margin below ~1e-6 may legitimately flip between float implementations.
    """
    dist = (cdf.unsqueeze(-2) - points.unsqueeze(-1)).abs()  # [B, K, N]
    dist = torch.where(valid.unsqueeze(-2), dist, torch.full_like(dist, _FAR))
    dmin = dist.amin(dim=-1, keepdim=True)
    rank_b = rank.unsqueeze(-2).expand_as(dist)
    tied = dist == dmin
    chosen_rank = torch.where(tied, rank_b, torch.full_like(rank_b, _NO_RANK)).amin(dim=-1, keepdim=True)
    hit = (rank_b == chosen_rank) & valid.unsqueeze(-2)  # [B, K, N]
    keep = hit.any(dim=-2)
    second = torch.where(hit, torch.full_like(dist, _FAR), dist).amin(dim=-1)
    margin = (second - dmin.squeeze(-1)).amin(dim=-1)
    return keep, margin


def ats_pick(scores: Tensor, valid: Tensor, num_points_like: Tensor, scheme: str = "paper") -> tuple[Tensor, Tensor]:
    """Steps 2-6 of DESIGN.md section 2 for candidate tokens (CLS excluded).

    scores: raw s_j [B, N]; valid: [B, N] bool; num_points_like: any tensor of length K.
    Returns (keep [B, N] bool, min decision margin [B]). K' = keep.sum(-1) <= min(K, valid count).
    """
    s = normalise_scores(scores, valid)
    rank, cdf = stable_order(s, valid)
    points, cdf_d = sample_points(num_points_like, cdf, valid, scheme)
    return nearest_picks(points, cdf_d, rank, valid)


def slot_indices(keep: Tensor, num_slots_like: Tensor) -> tuple[Tensor, Tensor]:
    """Place CLS in slot 0 and kept candidates in slots 1..K' in ascending index order.

    keep: [B, N] bool over candidates (token j+1 of the block input). num_slots_like: length K.
    Returns (index [B, K+1] into the block input, 0 for padding; slot mask [B, K+1] bool).
    The slot of a kept token is 1 + the number of kept tokens before it (a MatMul, not CumSum).
    """
    n = keep.shape[-1]
    idx = torch.arange(n, device=keep.device)
    earlier = (idx.unsqueeze(1) < idx.unsqueeze(0)).to(torch.float32)  # [i, j]: i < j
    keep_f = keep.to(torch.float32)
    slot = 1.0 + torch.matmul(keep_f.unsqueeze(-2), earlier).squeeze(-2)  # [B, N]
    slot = torch.where(keep, slot, torch.zeros_like(slot))
    slots = torch.arange(num_slots_like.shape[0], dtype=torch.float32, device=keep.device) + 1.0  # 1..K
    match = slot.unsqueeze(-2) == slots.view(1, -1, 1)  # [B, K, N]
    token = (idx + 1).to(torch.float32)
    index = (match.to(torch.float32) * token).sum(dim=-1)  # 0 where the slot is empty
    cls = torch.zeros_like(index[:, :1])
    index = torch.cat([cls, index], dim=1).to(torch.int64)
    mask = torch.cat([torch.ones_like(keep[:, :1]), match.any(dim=-1)], dim=1)
    return index, mask
