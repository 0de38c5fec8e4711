"""DoViT (dynamic token-pass) segmentation ViTs and their dense SETR baselines (docs/design.md, DoViT).

One module class serves both families, so a checkpoint of one loads into the other and
``xi = 1.0`` can be checked against the dense model with the same weights:

- a timm VisionTransformer backbone (blocks unchanged, timm/DeiT parameter names);
- SETR-naive style decoder: final norm, one 1x1 projection (a Linear on the token map) to the
  classes, bilinear upsampling to the input size;
- one auxiliary 1x1 head per decision layer (after blocks 2, 5, 8 for S/B). Confidence
  q = max softmax of the head on the full token map; a token with q > xi stops, masks are
  cumulative, stopped tokens are neither queries nor keys in later blocks and keep their value
  (they pass straight to the decoder). Optional class-token merge (paper eq. 8).

Two executions of the same decisions:

- ``forward_reference``: per image, the blocks run on that image's own kept tokens (a truly
  variable-length sequence through unmodified timm blocks). This is the ground truth.
- ``forward_padded``: static shapes for ONNX/TensorRT. A capacity C bounds the kept tokens; at
  each decision layer the C least-confident still-active tokens are gathered (TopK, ties -> lower
  token index, slots with no candidate are masked), blocks run on C + 1 slots (CLS first) with an
  additive -inf key bias, and the results are scattered back (no reduction: indices are distinct).
  When more tokens want to continue than C allows, the C least confident continue, the rest stop,
  and the image's ``saturated`` flag is raised. The reference applies the same capacity rule.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from ..errors import UsageError
from .registry import SegConfig

MERGES = ("none", "paper", "released")
# paper eq. 8: CLS <- CLS/2 + mean(stopped). The released code averages the two:
# (CLS + mean(stopped)) / 2 (and only when > 10 % of tokens stopped, which tscli does not copy).
_MERGE_COEF = {"paper": (0.5, 1.0), "released": (0.5, 0.5)}

@dataclass
class SegOutput:
    logits: Tensor  # [B, classes, H, W]
    kept_counts: Tensor  # [B, decisions] int64: patch tokens still active after each decision
    kept_masks: Tensor  # [B, decisions, N] bool: which patch tokens are active after each decision
    saturated: Tensor  # [B] bool: capacity C cut tokens that wanted to continue
    margin: Tensor | None = None  # [B] smallest |q - xi| / capacity-boundary gap (reference only)
    # Reference only, so parity tools can tell a decision inside the tie band from a mismatch:
    confidences: Tensor | None = None  # [B, decisions, N] q of every patch token at each decision
    boundary: Tensor | None = None  # [B, decisions] q at the capacity cut (NaN where it did not cut)


class SegViT(VisionTransformer):
    """timm VisionTransformer + SETR-naive decoder + DoViT aux heads (see the module docstring)."""

    def __init__(self, *, seg_classes: int, decisions: tuple[int, ...], merge: str = "paper", **kwargs):
        super().__init__(num_classes=0, global_pool="", **kwargs)
        if merge not in MERGES:
            raise UsageError(f"unknown merge {merge!r}; valid: {', '.join(MERGES)}")
        depth = len(self.blocks)
        if any(not 0 <= d < depth - 1 for d in decisions) or len(set(decisions)) != len(decisions):
            raise UsageError(f"decision layers {decisions} must be distinct blocks in 0..{depth - 2} (a block must follow)")
        self.decisions = tuple(sorted(decisions))
        self.merge = merge
        dim = self.embed_dim
        self.decode_head = nn.Linear(dim, seg_classes)  # a 1x1 conv on the token map
        self.aux_heads = nn.ModuleList(nn.Linear(dim, seg_classes) for _ in self.decisions)

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(self.patch_embed.grid_size)

    def resize_input(self, hw: tuple[int, int]) -> "SegViT":
        """Serve another input size: timm resamples the position embeddings (bicubic)."""
        if tuple(hw) != tuple(self.patch_embed.img_size):
            self.set_input_size(img_size=tuple(hw))
        return self

    def embed(self, images: Tensor) -> Tensor:
        return self.norm_pre(self.patch_drop(self._pos_embed(self.patch_embed(images))))

    def confidence(self, d: int, x: Tensor) -> Tensor:
        """Max softmax of aux head d on the patch tokens of the full map x [B, 1+N, D] -> [B, N]."""
        return self.aux_heads[d](x[:, 1:]).softmax(dim=-1).amax(dim=-1)

    def decode(self, x: Tensor, hw: tuple[int, int]) -> Tensor:
        """Full token map [B, 1+N, D] -> logits [B, classes, H, W] (CLS dropped)."""
        b = x.shape[0]
        gh, gw = self.grid
        logits = self.decode_head(self.norm(x)[:, 1:]).transpose(1, 2).reshape(b, -1, gh, gw)
        return F.interpolate(logits, size=hw, mode="bilinear", align_corners=False)

    def merged_cls(self, x: Tensor, stopped: Tensor) -> Tensor:
        """Eq. 8 on x [B, 1+N, D] with stopped [B, N] float 0/1 -> new CLS [B, D] (unchanged if none stopped)."""
        a, b = _MERGE_COEF[self.merge]
        n = stopped.sum(dim=1, keepdim=True)
        mean = (x[:, 1:] * stopped[..., None]).sum(dim=1) / n.clamp(min=1.0)
        return torch.where(n > 0, a * x[:, 0] + b * mean, x[:, 0])

    def forward(self, images: Tensor) -> Tensor:
        """Dense SETR: every token through every block (what family "seg" exports)."""
        x = self.embed(images)
        for blk in self.blocks:
            x = blk(x)
        return self.decode(x, images.shape[-2:])

    # -- ground truth: variable-length kept tokens per image ------------------------------------
    def forward_reference(self, images: Tensor, xi: float, capacity: int | None = None) -> SegOutput:
        outs = [self._reference_one(images[i : i + 1], xi, capacity) for i in range(images.shape[0])]
        return SegOutput(*(torch.cat([getattr(o, f) for o in outs]) for f in
                           ("logits", "kept_counts", "kept_masks", "saturated", "margin", "confidences", "boundary")))

    def _reference_one(self, image: Tensor, xi: float, capacity: int | None) -> SegOutput:
        x = self.embed(image)
        n = x.shape[1] - 1
        active = torch.ones(n, dtype=torch.bool)
        keep = None  # token rows (CLS = 0) that run the blocks; None = all
        counts, masks, saturated, margin = [], [], False, float("inf")
        confidences, boundary = [], []
        for i, blk in enumerate(self.blocks):
            if keep is None:
                x = blk(x)
            else:
                x = x.clone()
                x[:, keep] = blk(x[:, keep])
            if i not in self.decisions:
                continue
            q = self.confidence(self.decisions.index(i), x)[0]
            confidences.append(q.clone())
            boundary.append(float("nan"))
            cand = active & (q <= xi)
            margin = min(margin, float((q[active] - xi).abs().min()) if active.any() else margin)
            if capacity is not None and int(cand.sum()) > capacity:
                order = torch.nonzero(cand).squeeze(1)
                order = order[torch.sort(q[order], stable=True).indices]  # least confident first
                qs = q[order]
                margin = min(margin, float(qs[capacity] - qs[capacity - 1]))
                boundary[-1] = float(qs[capacity - 1] + qs[capacity]) / 2  # between the last kept and the first cut
                cand = torch.zeros_like(cand)
                cand[order[:capacity]] = True
                saturated = True
            active = cand
            if self.merge != "none":
                x = x.clone()
                x[:, 0] = self.merged_cls(x, (~active).float()[None])
            keep = torch.cat([torch.zeros(1, dtype=torch.long), torch.nonzero(active).squeeze(1) + 1])
            counts.append(int(active.sum()))
            masks.append(active.clone())
        return SegOutput(
            self.decode(x, image.shape[-2:]), torch.tensor([counts], dtype=torch.int64),
            torch.stack(masks)[None] if masks else torch.zeros(1, 0, n, dtype=torch.bool),
            torch.tensor([saturated]), torch.tensor([margin], dtype=torch.float64),
            torch.stack(confidences)[None] if confidences else torch.zeros(1, 0, n),
            torch.tensor([boundary], dtype=torch.float64).reshape(1, len(boundary)),
        )

    # -- static shapes: capacity C, masks, gather/scatter ----------------------------------------
    def forward_padded(self, images: Tensor, xi: Tensor, capacity: int) -> SegOutput:
        x = self.embed(images)
        b, t, d = x.shape
        active = torch.ones(b, t - 1, dtype=x.dtype, device=x.device)  # float 0/1: scatter-friendly
        saturated = torch.zeros(b, dtype=torch.bool, device=x.device)
        slots = None  # (positions [B,C+1], slot inputs [B,C+1,D], valid [B,C+1] bool, key bias)
        counts, masks = [], []
        s = x
        for i, blk in enumerate(self.blocks):
            s = blk(s) if slots is None else blk(s, attn_mask=slots[3])
            if i not in self.decisions:
                continue
            x = s if slots is None else scatter_back(x, slots, s)
            q = self.confidence(self.decisions.index(i), x)
            cand = active * (q <= xi).to(x.dtype)
            saturated = saturated | (cand.sum(dim=1) > capacity)
            # C least-confident candidates; non-candidates sort last (key 2 > any probability).
            key = torch.where(cand > 0, q, torch.full_like(q, 2.0))
            idx = torch.topk(key, capacity, dim=1, largest=False, sorted=True).indices
            valid = torch.gather(cand, 1, idx)
            active = torch.zeros_like(active).scatter(1, idx, valid)
            counts.append(valid.sum(dim=1).to(torch.int64))
            masks.append(active > 0)
            if self.merge != "none":
                x = torch.cat([self.merged_cls(x, 1.0 - active)[:, None], x[:, 1:]], dim=1)
            slots = make_slots(x, idx, valid)
            s = slots[1]
        if slots is not None:
            x = scatter_back(x, slots, s)
        return SegOutput(self.decode(x, images.shape[-2:]), torch.stack(counts, 1), torch.stack(masks, 1), saturated)


def make_slots(x: Tensor, idx: Tensor, valid: Tensor):
    """CLS + the C chosen patch rows of x -> (positions, slot inputs, valid mask, additive key bias)."""
    b, _, d = x.shape
    pos = torch.cat([torch.zeros_like(idx[:, :1]), idx + 1], dim=1)
    s_in = torch.gather(x, 1, pos[..., None].expand(-1, -1, d))
    ok = torch.cat([torch.ones_like(valid[:, :1]), valid], dim=1) > 0
    zero = torch.zeros((), dtype=x.dtype, device=x.device)
    # -inf, not a large negative: masked keys get exactly zero weight (CLS is always valid, so no
    # row is all -inf).
    bias = torch.where(ok, zero, torch.full_like(zero, float("-inf")))[:, None, None, :]
    return pos, s_in, ok, bias


def scatter_back(x: Tensor, slots, s: Tensor) -> Tensor:
    """Token reconstruction: write valid slot outputs back to their original rows; masked slots
    write back their unchanged input, so every index is written once with the right value."""
    pos, s_in, ok, _ = slots
    d = x.shape[-1]
    src = torch.where(ok[..., None], s, s_in)
    return x.scatter(1, pos[..., None].expand(-1, -1, d), src)


class PaddedExport(nn.Module):
    """images [B,3,H,W], xi [] -> (seg_logits, kept_counts [B,D], kept_masks [B,D,N], saturated [B])."""

    def __init__(self, model: SegViT, capacity: int):
        super().__init__()
        self.model, self.capacity = model, int(capacity)

    def forward(self, images: Tensor, xi: Tensor):
        o = self.model.forward_padded(images, xi, self.capacity)
        return o.logits, o.kept_counts, o.kept_masks, o.saturated


def build_segvit(cfg: SegConfig) -> SegViT:
    """The torch module of a ``dovit`` or ``seg`` config (models/factory.py calls it)."""
    model = SegViT(
        seg_classes=cfg.num_classes, decisions=cfg.stages, merge=cfg.merge, img_size=tuple(cfg.img_hw),
        patch_size=cfg.patch_size, embed_dim=cfg.embed_dim, depth=cfg.depth, num_heads=cfg.num_heads,
        qkv_bias=True, mlp_ratio=4.0,
    )
    for blk in model.blocks:
        # Explicit matmul/softmax attention: the additive -inf key bias exports as plain ops
        # (TensorRT-friendly) and gives exactly zero weight; same math as the fused kernel.
        blk.attn.fused_attn = False
    return model

