"""ATS token picking (docs/design.md, ATS steps 2-6) as plain tensor functions.

Written so that ``torch.onnx.export`` gives a static-shape graph made only of operators that
TensorRT parses: no sort, no NonZero/Unique, no CumSum. The stable ascending sort is expressed
as a pairwise "comes before" matrix, from which each token's sorted position (rank) and its CDF
value (a MatMul) follow directly, in the tokens' own order. ``nearest_picks`` (the literal rule,
which also measures decision margins) then needs only exact float comparisons and a min over
ranks. ``cell_picks`` (what the exported graph and the plugin core run) moves the CDF to sorted
order with a scatter, where the points nearest to a position are those between the midpoints to
its neighbours: one comparison of every point with every midpoint replaces distances, minima
and tie-breaks. No ArgMin/TopK either: TensorRT does not promise which of several equal minima
they return.

The exported graph runs these at every ATS stage, so they are written to give few ONNX nodes:
scalars instead of ``*_like`` tensors (each of those costs a Shape and an Expand), broadcasting
instead of expand, and no [B, K, N] op that is not needed.

Every function here is also the reference for the plugin core in tscli/plugins (same names).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..contract import SCHEMES, TOPK  # noqa: F401  (SCHEMES re-exported: the models' callers use it from here)

# Distances live in [0, 1]; anything above is "no candidate here".
_FAR = 4.0
# Larger than any rank; a constant (not N) so that N stays symbolic when exported.
_NO_RANK = float(2**24)


def normalise_scores(scores: Tensor, valid: Tensor) -> Tensor:
    """S_j = s_j / sum(s) over valid tokens; uniform over valid tokens if all scores are zero.

    (A row without any valid token comes out NaN: callers never read S at invalid tokens.)
    """
    s = torch.where(valid, scores, 0.0)
    positive = s.sum(dim=-1, keepdim=True) > 0
    # One sum and one division serve both cases: s / sum(s), or valid / (number of valid).
    u = torch.where(positive, s, valid.to(scores.dtype))
    return u / u.sum(dim=-1, keepdim=True)


def stable_order(s: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
    """Sorted position (rank) of each token in ascending order of ``s``, and its CDF value.

    The order is the stable one (equal scores by index), except for the valid tokens whose score
    is exactly 0, which sort first in *descending* index order. They are the only run of equal CDF
    values (see ``cell_picks``), the cell rule credits such a run's points to its last position,
    and the nearest-point rule gives them to the run's lowest index: so the token that must win is
    placed there. Their CDF values (all 0) do not depend on their order, nor does any other rank.
    ``stable_position`` turns a rank back into the stable position, for tie-breaks.

    before[b, j, i] is true when token i comes strictly before token j. rank_j = count of such
    i; CDF_j = S_j + their sum. Invalid tokens weigh 2 here: they sort after every valid token
    (S <= 1), so no valid rank or CDF changes, and their CDF values are >= 3, beyond every sample
    point (``cell_picks`` relies on that). The validity mask thus costs [B, N] ops, not [B, N, N].
    """
    n = s.shape[-1]
    idx = torch.arange(n, device=s.device)
    lower_index = idx.unsqueeze(1) > idx.unsqueeze(0)  # [j, i]: i < j
    s = torch.where(valid, s, 2.0)
    # Keys: positive S (and the invalid 2) as they are; valid zeros -index: distinct, below every
    # positive S, in descending index order.
    key = torch.where(s > 0, s, -idx.to(s.dtype))
    si = key.unsqueeze(-2)  # [B, 1, N] -> indexed by i
    sj = key.unsqueeze(-1)  # [B, N, 1] -> indexed by j
    # i < j: ties count as "before" (stable); i >= j: only strictly smaller keys.
    # (Not a Where over bools: ONNX Runtime's CPU Where has no bool kernel.)
    before = (si < sj) | ((si <= sj) & lower_index)
    before_f = before.to(s.dtype)
    rank = before_f.sum(dim=-1)
    cdf = s + torch.matmul(before_f, s.unsqueeze(-1)).squeeze(-1)
    return rank, cdf


def stable_position(rank: Tensor, cdf: Tensor) -> Tensor:
    """A key in the stable ascending order (equal scores by index) from ``stable_order``'s rank:
    the zero run (CDF 0, the only tokens out of stable order) turned back to ascending index.
    For tie-breaks by "lowest sorted position"; ``cdf`` is any axis that is 0 exactly on the run
    (the CDF, or the official scheme's normalised CDF)."""
    return torch.where(cdf == 0, -rank, rank)


def sample_points(num_points_like: Tensor, cdf: Tensor, valid: Tensor, scheme: str) -> tuple[Tensor, Tensor]:
    """The K points on the CDF axis and the CDF values they are compared with.

    ``num_points_like`` is any 1-D tensor of length K: K stays a symbolic shape in the exported
    graph, so one file serves every K. Returns (points, cdf_for_distance [B, N]); points are
    [B, K], or [K] for the paper scheme, where they are the same for every image.
    """
    steps = torch.arange(num_points_like.shape[0], dtype=cdf.dtype, device=cdf.device)  # 0..K-1
    k = steps[-1:] + 1.0
    if scheme == "paper":
        # (i + 1/2) / K is (2i - 1) / (2K) for i = 1..K, to the last bit: both are the correctly
        # rounded quotient of the same real number (scaling by 2 is exact).
        return (steps + 0.5) / k, cdf
    if scheme != "official":
        raise ValueError(f"unknown sampling scheme {scheme!r}; valid: {', '.join(SCHEMES)}")
    # Released code: min-max normalised CDF, K points linspace(y0, 1, K), y0 = smallest ncdf > 0.
    # Unlike the released code, min/max/y0 are over this image's valid tokens only.
    lo = torch.where(valid, cdf, _FAR).amin(dim=-1, keepdim=True)
    hi = torch.where(valid, cdf, -_FAR).amax(dim=-1, keepdim=True)
    span = hi - lo
    span = torch.where(span > 0, span, 1.0)
    ncdf = (cdf - lo) / span
    y0 = torch.where(valid & (ncdf > 0), ncdf, _FAR).amin(dim=-1, keepdim=True)
    y0 = y0.clamp_max(1.0)
    step = (1.0 - y0) / (k - 1.0).clamp_min(1.0)
    points = y0 + steps.unsqueeze(0) * step
    return points, ncdf


def nearest_picks(points: Tensor, cdf: Tensor, rank: Tensor, valid: Tensor,
                  with_margin: bool = True) -> tuple[Tensor, Tensor | None]:
    """Keep mask [B, N] of the tokens nearest to any point, and each image's smallest margin [B].

    For each point, the nearest valid CDF value wins; among exactly equal distances the lowest
    position in the stable order wins (``stable_position``). The margin is the gap to the
    second-nearest position: decisions with a margin below ~1e-6 may legitimately flip between
    float implementations. The literal rule: reference runs (margins) and tests use it; the
    exported graph runs ``cell_picks``.
    """
    # Invalid tokens sit far beyond [0, 1], so they are never nearest (distance >= 2 * _FAR - 1).
    cdf = torch.where(valid, cdf, torch.full_like(cdf, 2.0 * _FAR))
    dist = (cdf.unsqueeze(-2) - points.unsqueeze(-1)).abs()  # [B, K, N]
    dmin = dist.amin(dim=-1, keepdim=True)
    rank_i = stable_position(rank, cdf).unsqueeze(-2)  # [B, 1, N], broadcast over the points
    no_rank = torch.full_like(rank_i, _NO_RANK)
    chosen_rank = torch.where(dist == dmin, rank_i, no_rank).amin(dim=-1, keepdim=True)  # [B, K, 1]
    hit = rank_i == chosen_rank  # [B, K, N]
    keep = hit.any(dim=-2) & valid
    if not with_margin:
        return keep, None
    hit = hit & valid.unsqueeze(-2)
    second = torch.where(hit | ~valid.unsqueeze(-2), torch.full_like(dist, _FAR), dist).amin(dim=-1)
    margin = (second - dmin.squeeze(-1)).amin(dim=-1)
    return keep, margin


def _neighbour_matrices(n, dtype: torch.dtype, device) -> tuple[Tensor, Tensor, Tensor]:
    """[N, N] matrices that combine neighbouring sorted positions in one MatMul each (a Slice,
    Slice, Pad chain at every stage otherwise): ``c @ mid`` is (c[r] + c[r+1]) / 2, 0 at the last
    position; ``counts @ step`` is counts[r] - counts[r-1] (counts[0] at r = 0); ``last`` is 1 at
    the last position only. Each output sums two exact products (halves, or +-1 times integers)
    and zeros, so it is rounded once, as the elementwise form is. They depend on N only, so an
    exported graph computes them once for all stages of the same width."""
    idx = torch.arange(n, device=device)
    row, col = idx.unsqueeze(1), idx.unsqueeze(0)
    same = row == col
    last = (idx == n - 1).to(dtype)
    mid = (same | (row == col + 1)).to(dtype) * (0.5 - 0.5 * last)  # no neighbour after the last
    step = same.to(dtype) - (col == row + 1).to(dtype)
    return mid, step, last


def cell_picks(points: Tensor, cdf: Tensor, rank: Tensor, valid: Tensor) -> Tensor:
    """Keep mask [B, N]: the nearest-point rule of ``nearest_picks`` with O(N) [B, K, .] work.

    In sorted order the CDF is non-decreasing, so the points nearest to sorted position r are
    exactly those in its cell (mid(c[r-1], c[r]), mid(c[r], c[r+1])]: a point on a midpoint is
    equally near both and goes to the lower position. A position is kept when its cell holds a
    point, i.e. when the number of points at or below its upper bound grows from the previous
    bound: one [B, K, N] comparison and one sum, instead of distances, minima and a tie-break.

    Equal CDF values (a run) share one cell, which the counts credit to the run's last position
    (the others' cells are empty). Only one run can occur: the valid tokens whose score is
    exactly 0 (CDF 0). Every positive S_(r+1) is at least CDF_r / N (ascending order), far above
    CDF_r's rounding step for N < 2**24, so it always raises the CDF. ``stable_order`` puts the
    run's lowest index, the token the nearest-point rule picks, at that last position.
    ``cdf`` must lie beyond every point at invalid tokens (``stable_order``'s CDF and the official
    scheme's normalised one do): they then sort last and their cells hold no point.

    Decisions equal ``nearest_picks`` except where a point is within float rounding of a midpoint
    (a decision margin of about 1e-7): such near-ties may go either way (docs/design.md,
    "Tie bands"). This is what the exported graph and the C++ core run.
    """
    order = rank.to(torch.int64)
    c = cdf.scatter(-1, order, cdf)  # [B, N] ascending; a permutation writes every position
    mid, step, last = _neighbour_matrices(c.shape[-1], cdf.dtype, cdf.device)
    # Upper cell bounds; the last one is above every point.
    upper = torch.matmul(c, mid) + last * (4.0 * _FAR)
    # Points at or below each bound: [B, N, K], summed over its last (contiguous) axis.
    below = (points.unsqueeze(-2) <= upper.unsqueeze(-1)).to(cdf.dtype).sum(dim=-1)  # [B, N]
    in_cell = torch.matmul(below, step)  # points in each cell (exact counts)
    # The gather stays in float, as the counts are.
    return (torch.gather(in_cell, -1, order) > 0) & valid


def ats_pick(scores: Tensor, valid: Tensor, num_points_like: Tensor, scheme: str = "paper",
             with_margin: bool = True) -> tuple[Tensor, Tensor | None]:
    """Steps 2-6 of docs/design.md (ATS) for candidate tokens (CLS excluded).

    scores: raw s_j [B, N]; valid: [B, N] bool; num_points_like: any tensor of length K.
    Returns (keep [B, N] bool, min decision margin [B]). ``cell_picks`` decides (what the
    exported graph runs); with ``with_margin`` the margin comes from ``nearest_picks``, the
    literal rule, which measures how close each decision was. Without it the margin is None.
    K' = keep.sum(-1) <= min(K, valid count).
    """
    s = normalise_scores(scores, valid)
    rank, cdf = stable_order(s, valid)
    points, cdf_d = sample_points(num_points_like, cdf, valid, scheme)
    keep = cell_picks(points, cdf_d, rank, valid)
    if not with_margin:
        return keep, None
    return keep, nearest_picks(points, cdf_d, rank, valid)[1]


def topk_pick(scores: Tensor, valid: Tensor, num_points_like: Tensor,
              with_margin: bool = True) -> tuple[Tensor, Tensor | None]:
    """The ATS paper's top-K baseline: keep the K valid candidates with the highest normalised
    significance S_j (the scores ATS samples from), ties to the lower index; K' = min(K, valid).

    Same static form as ``stable_order``: token i is ahead of j when S_i > S_j, or S_i == S_j and
    i < j; j's place is the number of tokens ahead of it, and j is kept when its place is below K.
    No TopK operator: TensorRT does not promise which of several equal values it returns.
    The margin (with_margin) is the smallest kept S minus the largest dropped valid S, so an
    exact tie at the K-th place has margin 0 (docs/design.md, "Tie bands").
    """
    s = normalise_scores(scores, valid)
    n = s.shape[-1]
    idx = torch.arange(n, device=s.device)
    lower_index = idx.unsqueeze(1) > idx.unsqueeze(0)  # [j, i]: i < j
    key = torch.where(valid, s, -1.0)  # invalid tokens below every valid S (S >= 0): never ahead of one
    si = key.unsqueeze(-2)  # [B, 1, N] -> indexed by i
    sj = key.unsqueeze(-1)  # [B, N, 1] -> indexed by j
    ahead = (si > sj) | ((si >= sj) & lower_index)
    place = ahead.to(s.dtype).sum(dim=-1)  # [B, N], 0 for the highest
    k = torch.arange(num_points_like.shape[0], dtype=s.dtype, device=s.device)[-1:] + 1.0  # K, from the length
    keep = (place < k) & valid
    if not with_margin:
        return keep, None
    worst_kept = torch.where(keep, s, _FAR).amin(dim=-1)
    best_dropped = torch.where(valid & ~keep, s, -_FAR).amax(dim=-1)
    return keep, (worst_kept - best_dropped).clamp_max(_FAR)


def pick_tokens(scores: Tensor, valid: Tensor, num_points_like: Tensor, scheme: str = "paper",
                with_margin: bool = True) -> tuple[Tensor, Tensor | None]:
    """The picking rule of an ATS block: ATS sampling (``ats_pick``) or, for ``topk``, the top-K
    baseline (``topk_pick``). Same arguments and returns."""
    if scheme == TOPK:
        return topk_pick(scores, valid, num_points_like, with_margin)
    return ats_pick(scores, valid, num_points_like, scheme, with_margin)


def slot_indices(keep: Tensor, num_slots_like: Tensor) -> tuple[Tensor, Tensor]:
    """Place CLS in slot 0 and kept candidates in slots 1..K' in ascending index order.

    keep: [B, N] bool over candidates (token j+1 of the block input). num_slots_like: length K.
    Returns (index [B, K+1] into the block input, 0 for padding; slot mask [B, K+1] bool).
    The slot of a kept token is 1 + the number of kept tokens before it (a MatMul, not CumSum);
    each kept token is then scattered into its slot. Tokens that are not kept all write 0 (= CLS)
    into slot 0: every slot receives one value, or only equal ones, so the scatter needs no
    reduction and its result does not depend on the write order.
    """
    n = keep.shape[-1]
    idx = torch.arange(n, device=keep.device)
    earlier = (idx.unsqueeze(1) < idx.unsqueeze(0)).to(torch.float32)  # [i, j]: i < j
    keep_f = keep.to(torch.float32)
    slot = torch.matmul(keep_f.unsqueeze(-2), earlier).squeeze(-2) + 1.0  # [B, N]
    target = torch.where(keep, slot, 0.0).to(torch.int64)
    token = torch.where(keep, idx + 1, 0)  # [B, N]
    # Kept tokens fill slots 1..K' contiguously, so slot s is used exactly when s <= K' (and
    # slot 0, CLS, always is).
    slots = torch.arange(num_slots_like.shape[0] + 1, dtype=torch.float32, device=keep.device)  # 0..K
    mask = slots <= keep_f.sum(dim=-1, keepdim=True)  # [B, K+1]
    index = (mask.to(torch.int64) * 0).scatter(1, target, token)
    return index, mask


def decision_contest(scores: Tensor, valid: Tensor, num_points_like: Tensor, scheme: str) -> Tensor:
    """For parity tools (any float dtype; they use float64): per candidate [B, N], the smallest
    margin of a decision in which it is the nearest or the second-nearest position, +inf where
    it is neither for any point. Same rule as ``nearest_picks`` (lower stable position wins exact ties)."""
    s = normalise_scores(scores, valid)
    rank, cdf = stable_order(s, valid)
    points, cdf_d = sample_points(num_points_like.to(scores.dtype), cdf, valid, scheme)
    far = torch.where(valid, cdf_d, torch.full_like(cdf_d, 2.0 * _FAR))
    dist = (far.unsqueeze(-2) - points.unsqueeze(-1)).abs()  # [B, K, N]
    ranks = stable_position(rank, far).unsqueeze(-2).expand_as(dist)
    no_rank = torch.full_like(dist, _NO_RANK)
    inf = torch.full_like(dist, float("inf"))
    d1 = dist.amin(dim=-1, keepdim=True)
    first = ranks == torch.where(dist == d1, ranks, no_rank).amin(dim=-1, keepdim=True)
    rest = torch.where(first, inf, dist)
    d2 = rest.amin(dim=-1, keepdim=True)
    second = (ranks == torch.where(rest == d2, ranks, no_rank).amin(dim=-1, keepdim=True)) & ~first
    involved = (first | second) & valid.unsqueeze(-2)
    return torch.where(involved, (d2 - d1).expand_as(dist), inf).amin(dim=-2)


class SamplingIsland(torch.nn.Module):
    """A scope, not a layer (no parameters, so checkpoints are unchanged): ``island(fn, *args)``
    runs ``fn(*args)``, and the ONNX exporter records this module's class and path on every node
    it traces inside (node metadata ``pkg.torch.onnx.class_hierarchy`` / ``name_scopes``).

    What an ATS stage runs in here is its sampling island: the significance scores, the
    normalisation, CDF, sample points, picks and the slot index / mask (docs/design.md, "Reduced
    precision"). Reduced-precision tools find the island by this class name and keep it in
    float32, since a pick is a discrete decision that a small numeric change can flip.
    """

    def forward(self, fn, *args):
        return fn(*args)
