"""What DynamicViT and EViT share: keeping the K best-scored tokens, with ties to the lower index.

K comes from the length of a shape input (``k_like``, contract.keep_input), so one exported graph
serves every keep rate up to the export maximum, and every shape is bounded by it.

TopK's order among equal values is not the same everywhere (torch.topk on the CPU does not
promise one; TensorRT documents none), so ties are broken explicitly: a token's rank is the
number of tokens that beat it, where a token beats another when its score is higher, or equal
and its index lower. Ranks are distinct, so "rank < K" is one exact set in every backend. The
kept tokens are then listed in ascending index order with a TopK over distinct keys (again no
tie for TopK to break). The rank costs one [n, n] comparison per image: no factor D, small next
to a block's matmuls.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass
class ReductionRecord:
    """What one stage kept, for parity tools and the exported count/position outputs."""

    counts: Tensor  # [B] tokens after the stage (CLS, kept tokens and, for EViT, the fused token)
    positions: Tensor  # [B, width] original positions (CLS 0, patch p -> p + 1, fused tokens past N)
    margin: Tensor | None = None  # [B] relative gap, last kept vs first dropped score (reference runs)


def keep_mask(scores: Tensor, k: int) -> Tensor:
    """[B, n] scores -> [B, n] bool: the k best, ties to the lower index (see the module doc)."""
    n = scores.shape[1]
    index = torch.arange(n, device=scores.device)
    lower = index.unsqueeze(0) < index.unsqueeze(1)  # [i, j]: j comes before i
    s_i, s_j = scores.unsqueeze(2), scores.unsqueeze(1)
    beaten_by = (s_j > s_i) | ((s_j == s_i) & lower)
    return beaten_by.sum(dim=2) < k


def top_tokens(scores: Tensor, k_like: Tensor) -> tuple[Tensor, Tensor]:
    """-> (index [B, K] of the kept tokens in ascending order, keep mask [B, n]); K = len(k_like)."""
    n, k = scores.shape[1], k_like.shape[0]
    keep = keep_mask(scores, k)
    # key n - j for a kept token j (distinct, larger for lower j), 0 for a dropped one: the K
    # largest keys are exactly the kept tokens, and sorted descending they ascend in j.
    key = torch.where(keep, (n - torch.arange(n, device=scores.device)).to(scores.dtype), 0.0)
    return key.topk(k, dim=1).indices, keep


def decision_margin(scores: Tensor, k: int) -> Tensor:
    """[B] relative gap between the k-th and (k+1)-th best score, |a - b| / max(|a|, |b|) in
    float64 (inf when every token is kept): how near the kept set was to a tie, compared with
    parity's score-order band (tools/tie_band.order_band)."""
    if k >= scores.shape[1]:
        return torch.full(scores.shape[:1], float("inf"), dtype=torch.float64)
    top = scores.double().topk(k + 1, dim=1).values
    a, b = top[:, k - 1], top[:, k]
    return (a - b) / torch.maximum(a.abs(), b.abs()).clamp_min(1e-300)


def stack_positions(records: list[ReductionRecord]) -> Tensor:
    """Per-stage positions -> int64 [B, stages, W], -1 padding. W is the first stage's width, the
    widest: kept counts never grow from stage to stage (contract.check_rate).

    Padding is a gather from [positions, -1] with the index clamped at the -1 column, not a Pad
    with a computed width: the output width then follows the first stage's shape only.
    """
    w = records[0].positions.shape[1]
    out = []
    for r in records:
        pos = r.positions
        filler = torch.full_like(pos[:, :1], -1)
        padded = torch.cat([pos, filler], dim=1)
        cols = torch.arange(w, device=pos.device).clamp(max=pos.shape[1])
        out.append(padded.index_select(1, cols))
    return torch.stack(out, dim=1).to(torch.int64)


class ReductionExportWrapper(nn.Module):
    """images, keep_0..keep_{S-1} -> (logits, kept_counts [B, S], kept_positions [B, S, W]).

    Shared by DynamicViT and EViT (both have ``forward_with_records(images, keep_likes)``). The
    forward takes the keep inputs one by one, so each becomes a named graph input."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: Tensor, *keeps: Tensor):
        logits, records = self.model.forward_with_records(images, keeps)
        counts = torch.stack([r.counts for r in records], dim=1).to(torch.int64)
        return logits, counts, stack_positions(records)
