"""ATS on timm's VisionTransformer: the block class is swapped, timm itself is not forked.

Tokens travel between blocks as a TokenState: the tokens, a validity mask over the slots and the
original position of each slot (CLS = 0, patch p = p + 1). Before the first ATS stage all slots
are valid; the first stage gathers K + 1 slots (CLS, K' kept tokens in ascending original order,
then padding with mask 0). Padding copies the CLS token, so it stays finite, and it is excluded
exactly (an additive -inf key bias), so it never changes a valid output.

Two executions: ``padded`` keeps those K + 1 slots (static shapes, what TensorRT needs); its
later stages only narrow the mask (``mask_stage``). ``trimmed`` gathers again at every stage and
cuts the slots to the batch maximum of K' + 1 (the released code's drop_tokens). They give the
same logits and keep the same token sets.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from timm.models.vision_transformer import Block, VisionTransformer
from torch import Tensor

from ..contract import TOPK
from . import ops  # also registers torch.ops.tscli.ats_sample
from .sampling import SamplingIsland, pick_tokens, slot_indices


@dataclass
class TokenState:
    x: Tensor  # [B, T, D]
    mask: Tensor | None = None  # [B, T] bool; None = all valid
    positions: Tensor | None = None  # [B, T] int64 original token positions; None = identity


@dataclass
class StageRecord:
    """What one ATS stage decided, for parity tools and the exported count/index outputs."""

    mask: Tensor  # [B, K+1] bool: the slots that hold a token after the stage (CLS included)
    slots: Tensor  # [B, K+1] original position of each slot's token (any value where not held)
    margin: Tensor | None = None  # [B] smallest decision margin (reference runs only)
    # Reference runs only: what the stage decided from, so parity tools can re-decide in float64
    # and tell a decision inside the tie band from a real mismatch (docs/design.md, "Tie bands").
    scores: Tensor | None = None  # [B, N] raw candidate scores s_j
    valid: Tensor | None = None  # [B, N] candidate validity
    candidates: Tensor | None = None  # [B, N] original position of each candidate

    @property
    def counts(self) -> Tensor:
        """[B] K' + 1 (CLS included)."""
        return self.mask.sum(dim=1)

    @property
    def positions(self) -> Tensor:
        """[B, K+1] original positions, -1 for padding."""
        return torch.where(self.mask, self.slots, -1)


def _record(mask: Tensor, slots: Tensor, margin, scores: Tensor, valid: Tensor, candidates: Tensor,
            detailed: bool) -> StageRecord:
    if not detailed:
        return StageRecord(mask, slots, margin)
    return StageRecord(mask, slots, margin, scores.detach(), valid, candidates)


def stack_records(records: list[StageRecord]) -> tuple[Tensor, Tensor]:
    """(kept counts [B, S], kept positions [B, S, K+1]) of all stages, int64, computed once on the
    stacked masks: per stage, the sum, the select and the stacking cost 5 graph nodes each.
    Stages that share their slots' positions (every padded stage after the first) share them
    here too, by broadcasting."""
    masks = torch.stack([r.mask for r in records], dim=1)  # [B, S, K+1]
    if all(r.slots is records[0].slots for r in records):
        slots = records[0].slots.unsqueeze(1)
    else:
        slots = torch.stack([r.slots for r in records], dim=1)
    return masks.to(torch.int64).sum(dim=-1), torch.where(masks, slots, -1).to(torch.int64)


def key_bias(mask: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """[B, 1, 1, T] additive bias: 0 for valid keys, -inf for padding (exactly zero weight)."""
    if mask is None:
        return None
    return torch.where(mask, 0.0, float("-inf")).to(dtype)[:, None, None, :]


def attend(q: Tensor, k: Tensor, v: Tensor, scale: float, bias: Tensor | None) -> Tensor:
    """softmax(q k^T * scale + bias) v for q [B,H,Q,d], k/v [B,H,T,d] -> [B,H,Q,d]."""
    logits = torch.matmul(q * scale, k.transpose(-2, -1))
    if bias is not None:
        logits = logits + bias
    return torch.matmul(logits.softmax(dim=-1), v)


def gather_tokens(x: Tensor, index: Tensor) -> Tensor:
    """x [B, T, C] rows at index [B, S] -> [B, S, C], as one Gather on the flattened [B*T, C]."""
    b, t = x.shape[0], x.shape[1]
    flat = (index + torch.arange(b, device=index.device).unsqueeze(1) * t).reshape(-1)
    return x.reshape(b * t, x.shape[2]).index_select(0, flat).reshape(b, index.shape[1], x.shape[2])


def gather_heads(q: Tensor, index: Tensor) -> Tensor:
    """q [B, H, T, d] rows at index [B, S] (per image, same for every head) -> [B, H, S, d].

    One Gather on the flattened [B*H*T, d]: no transpose to and from the token layout.
    """
    b, h, t, d = q.shape
    base = (torch.arange(b, device=index.device).unsqueeze(1) * h + torch.arange(h, device=index.device)) * t  # [B, H]
    flat = (index.unsqueeze(1) + base.unsqueeze(-1)).reshape(-1)
    return q.reshape(b * h * t, d).index_select(0, flat).reshape(b, h, index.shape[1], d)


class TokenSamplingBlock(Block):
    """A timm Block (same parameter names, so timm/DeiT checkpoints load) that understands
    TokenState and, when ``sampling`` is set, performs the ATS stage.

    Only the attention rows that are kept are computed: the CLS row first (to score), then the
    rows of the K + 1 output slots. The other query rows are never needed.
    """

    sampling: bool = False
    scheme: str = "paper"
    execution: str = "padded"
    use_custom_op: bool = False  # True while exporting: sampling becomes one ONNX node
    record_margin: bool = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.island = SamplingIsland()  # the scope of the sampling island (see SamplingIsland)

    def qkv_heads(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        attn = self.attn
        b, t, d = x.shape
        qkv = attn.qkv(self.norm1(x)).reshape(b, t, 3, attn.num_heads, d // attn.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        return attn.q_norm(q), attn.k_norm(k), v

    def token_qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """q, k, v of the sampling stages in the token layout [B, T, H, d], and v's rows [B, T, D].

        One Split of the qkv projection along its last axis, each part a run of contiguous rows:
        unbinding a [B, T, 3, H, d] view exported as three strided Slices, which ONNX Runtime
        fused into a Split only where T is static (not in the K + 1 slot stages). ||v_j|| is
        then taken over the rows' last axis, one contiguous reduction."""
        b, t, d = x.shape
        shape = (b, t, self.attn.num_heads, d // self.attn.num_heads)
        q_r, k_r, v_r = self.attn.qkv(self.norm1(x)).chunk(3, dim=-1)
        return q_r.reshape(shape), k_r.reshape(shape), v_r.reshape(shape), v_r

    def finish(self, x_in: Tensor, o: Tensor) -> Tensor:
        """Merge heads, proj, residual, MLP: the rest of a standard pre-norm block."""
        b, h, s, d = o.shape
        o = self.attn.proj(self.attn.norm(o.transpose(1, 2).reshape(b, s, h * d)))
        x = x_in + self.drop_path1(self.ls1(o))
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))

    def forward(self, state: TokenState, k_like: Tensor | None = None, records: list | None = None) -> TokenState:
        if self.sampling:
            return self.sample_stage(state, k_like, records)
        q, k, v = self.qkv_heads(state.x)
        o = attend(q, k, v, self.attn.scale, key_bias(state.mask, q.dtype))
        return TokenState(self.finish(state.x, o), state.mask, state.positions)

    def sample_stage(self, state: TokenState, k_like: Tensor, records: list | None) -> TokenState:
        """The ATS stage: a gathering stage when the slots change, a masking stage otherwise."""
        if state.mask is None or self.execution == "trimmed":
            return self.gather_stage(state, k_like, records)
        return self.mask_stage(state, k_like, records)

    def pick(self, scores: Tensor, valid: Tensor, k_like: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """-> (slot index [B, K+1] into the block input, slot mask [B, K+1], margin or None)."""
        if self.use_custom_op:
            index, slot_mask = ops.sample_slots(scores, valid, k_like, self.scheme)
            return index.long(), slot_mask, None
        # the same functions the op runs, without its int32 plugin contract
        keep, margin = pick_tokens(scores, valid, k_like, self.scheme, with_margin=self.record_margin)
        index, slot_mask = slot_indices(keep, k_like)
        return index, slot_mask, margin

    def score_and_pick(self, q_cls: Tensor, k: Tensor, v_rows: Tensor, bias: Tensor | None, mask: Tensor | None,
                       k_like: Tensor):
        """The island of a gathering stage: scores from the CLS attention row, then the pick."""
        attn = self.attn
        # Step 2: s_j = (sum_h A[h, 0, j]) * ||v_j||, over candidates j >= 1.
        cls_row = torch.matmul(attn.q_norm(q_cls) * attn.scale, k.transpose(-2, -1))
        if bias is not None:
            cls_row = cls_row + bias
        cls_attn = cls_row.softmax(dim=-1).sum(dim=1)[:, 0, 1:]  # [B, T-1]
        scores = cls_attn * torch.linalg.vector_norm(v_rows, dim=-1)[:, 1:]
        # Before the first stage every token is valid; scores are finite, so this is all-true
        # (one node, where a ones tensor of a symbolic shape costs three).
        valid = mask[:, 1:] if mask is not None else scores == scores
        return scores, valid, self.pick(scores, valid, k_like)

    def gather_stage(self, state: TokenState, k_like: Tensor, records: list | None) -> TokenState:
        """Score, pick, then compute attention rows / proj / MLP only for the K + 1 output slots.

        The first stage (all tokens in, K + 1 slots out) and every trimmed stage. Only the CLS
        query row is computed for scoring; q rows (in the head layout) and input rows are then
        taken with one flat Gather each (not GatherElements over an expanded index), and ||v_j||
        is reduced over v's rows (one reduction; in the head layout it took two).
        """
        attn, (b, t, _) = self.attn, state.x.shape
        q_t, k_t, v_t, v_rows = self.token_qkv(state.x)
        q, k, v = q_t.transpose(1, 2), k_t.transpose(1, 2), v_t.transpose(1, 2)
        k = attn.k_norm(k)
        bias = key_bias(state.mask, q.dtype)
        # Only the CLS query row enters the island (slicing is exact in any precision).
        scores, valid, (index, slot_mask, margin) = self.island(self.score_and_pick, q[:, :, :1], k, v_rows, bias,
                                                                state.mask, k_like)
        positions = index if state.positions is None else torch.gather(state.positions, 1, index)
        if records is not None:
            candidates = (torch.arange(1, t, device=scores.device).expand(b, -1) if state.positions is None
                          else state.positions[:, 1:])
            records.append(_record(slot_mask, positions, margin, scores, valid, candidates, self.record_margin))
        if self.execution == "trimmed":  # cut before the row work: trimmed pays only for the kept rows
            width = int(slot_mask.sum(dim=1).max())
            index, slot_mask, positions = index[:, :width], slot_mask[:, :width], positions[:, :width]
        o = attend(gather_heads(attn.q_norm(q), index), k, v, attn.scale, bias)
        x = self.finish(gather_tokens(state.x, index), o)
        return TokenState(x, slot_mask, positions)

    def score_and_mask(self, cls_attn: Tensor, v_rows: Tensor, slot_mask: Tensor, k_like: Tensor):
        """The island of a masking stage: scores from the CLS attention row [B, H, T] (CLS key
        included) and v's rows [B, T, D], then the narrowed mask. Returns the candidates' scores
        [B, T-1] (for records)."""
        # Masked keys get exactly zero weight, so dropped tokens score exactly 0.
        scores = cls_attn.sum(dim=1) * torch.linalg.vector_norm(v_rows, dim=-1)  # [B, T], slot 0 is CLS
        if self.use_custom_op:  # the plugin's slot index, turned into a mask over these slots;
            # its padding points at CLS, which is always kept: every write stores the same value
            index, _ = ops.sample_slots(scores[:, 1:], slot_mask[:, 1:], k_like, self.scheme)
            return scores[:, 1:], slot_mask.to(cls_attn.dtype).mul(0.0).scatter(1, index.long(), 1.0) > 0, None
        # CLS enters as an invalid candidate: the picking ignores invalid tokens entirely (same
        # kept set), and no slice of the scores and the mask, nor a concat back, is exported.
        is_cls = torch.arange(slot_mask.shape[1], device=slot_mask.device) == 0
        keep, margin = pick_tokens(scores, slot_mask & ~is_cls, k_like, self.scheme, with_margin=self.record_margin)
        return scores[:, 1:], keep | is_cls, margin

    def mask_stage(self, state: TokenState, k_like: Tensor, records: list | None) -> TokenState:
        """A padded stage after the first: K + 1 slots in, the same K + 1 slots out.

        The block runs on every slot, like a plain block with a key mask, and the stage only
        narrows the mask: the rows of dropped tokens are computed but never read again (their
        keys are masked from here on, and each row depends only on its own input row). This costs
        the same rows as gathering the K' + 1 kept ones into K + 1 slots, but needs no gathers,
        and the CLS attention row for scoring comes out of the full attention instead of being
        computed a second time. Kept tokens stay in their slots, so a stage's valid slots are
        not contiguous; the kept sets are those of the gathering form.
        """
        attn = self.attn
        # Split in the token layout, then one transpose each (as the gathering stage): with v also
        # read by the score norm, the plain block's permute-then-unbind exported as a transpose of
        # all of q, k and v, k's third wasted (measured in ONNX Runtime's optimised graph).
        q_t, k_t, v_t, v_rows = self.token_qkv(state.x)
        q, k, v = attn.q_norm(q_t.transpose(1, 2)), attn.k_norm(k_t.transpose(1, 2)), v_t.transpose(1, 2)
        a = (torch.matmul(q * attn.scale, k.transpose(-2, -1)) + key_bias(state.mask, q.dtype)).softmax(dim=-1)
        # Only the CLS attention row enters the island (slicing is exact in any precision).
        scores, mask, margin = self.island(self.score_and_mask, a[:, :, 0], v_rows, state.mask, k_like)
        if records is not None:
            records.append(_record(mask, state.positions, margin, scores, state.mask[:, 1:], state.positions[:, 1:],
                                   self.record_margin))
        x = self.finish(state.x, torch.matmul(a, v))
        return TokenState(x, mask, state.positions)


class ATSVisionTransformer(VisionTransformer):
    """timm VisionTransformer whose blocks are TokenSamplingBlocks, ATS at ``stages``.

    forward(images, k_like) -> logits; ``forward_with_records`` also returns what each stage kept.
    k_like is any tensor of length K (the exported graph takes K from an input's shape).
    """

    def __init__(self, *, stages: tuple[int, ...], scheme: str = "paper", **kwargs):
        super().__init__(block_fn=TokenSamplingBlock, **kwargs)
        self.stages = tuple(stages)
        for i in self.stages:
            self.blocks[i].sampling = True
        self.configure(scheme=scheme)

    def configure(self, *, scheme: str | None = None, execution: str | None = None, use_custom_op: bool | None = None,
                  record_margin: bool | None = None) -> "ATSVisionTransformer":
        if use_custom_op and (scheme or self.blocks[0].scheme) == TOPK:
            raise ValueError("the top-K rule has no sampling op (tscli.ATSSample implements ATS sampling only)")
        for blk in self.blocks:
            if scheme is not None:
                blk.scheme = scheme
            if execution is not None:
                blk.execution = execution
            if use_custom_op is not None:
                blk.use_custom_op = use_custom_op
            if record_margin is not None:
                blk.record_margin = record_margin
        return self

    def forward_with_records(self, images: Tensor, k_like: Tensor) -> tuple[Tensor, list[StageRecord]]:
        x = self.norm_pre(self.patch_drop(self._pos_embed(self.patch_embed(images))))
        state, records = TokenState(x), []
        for blk in self.blocks:
            state = blk(state, k_like, records)
        x = self.norm(state.x)
        return self.forward_head(x), records

    def forward(self, images: Tensor, k_like: Tensor) -> Tensor:
        return self.forward_with_records(images, k_like)[0]


class ExportWrapper(torch.nn.Module):
    """images [B,3,H,W], k_select [K] -> (logits, kept_counts [B,S], kept_positions [B,S,K+1])."""

    def __init__(self, model: ATSVisionTransformer):
        super().__init__()
        self.model = model

    def forward(self, images: Tensor, k_select: Tensor):
        logits, records = self.model.forward_with_records(images, k_select)
        counts, positions = stack_records(records)
        return logits, counts, positions
