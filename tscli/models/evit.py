"""EViT (Liang et al., ICLR 2022) on timm's VisionTransformer, as released for DeiT with token
fusion (docs/design.md, "EViT").

A stage block computes its attention over every token as usual and adds it to the residual.
Then, before the MLP, it keeps CLS and the K_s non-CLS tokens with the highest CLS attention
(averaged over the heads; ties to the lower index, models/reduction.py), and fuses every other
token into one: the sum of those tokens weighted by their CLS attention. The fused token goes
last and is an ordinary token for the later blocks (a later stage may keep it or fuse it again).
K_s is the length of a shape input; the runner derives it from a load-time rate with the
release's rule (contract.keep_counts).

EViT adds no parameters: a DeiT checkpoint (timm's key layout) loads as it is.
"""

from __future__ import annotations

import torch
from timm.models.vision_transformer import Block, VisionTransformer
from torch import Tensor

from .ats import gather_tokens
from .reduction import ReductionRecord, decision_margin, top_tokens


class EViTBlock(Block):
    """A timm Block (same parameter names); with ``stage`` set it is an EViT stage."""

    stage: int | None = None
    record_margin: bool = False

    def forward(self, x: Tensor, k_like: Tensor | None = None, positions: Tensor | None = None,
                records: list | None = None, num_patches: int = 0):
        if self.stage is None:
            return super().forward(x), positions
        attn, (b, t, d) = self.attn, x.shape
        qkv = attn.qkv(self.norm1(x)).reshape(b, t, 3, attn.num_heads, d // attn.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = attn.q_norm(q), attn.k_norm(k)
        a = ((q * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1)  # the weights are needed, not only a @ v
        o = (a @ v).transpose(1, 2).reshape(b, t, d)
        x = x + self.drop_path1(self.ls1(attn.proj(attn.norm(o))))
        cls_attn = a[:, :, 0, 1:].mean(dim=1)  # [B, t-1]
        index, keep = top_tokens(cls_attn, k_like)
        # The fused token: sum of the dropped tokens weighted by their CLS attention, as one
        # [B, 1, t-1] x [B, t-1, D] matmul (kept tokens weigh exactly 0).
        weights = torch.where(keep, 0.0, cls_attn).unsqueeze(1)
        fused = weights @ x[:, 1:]
        slots = torch.cat([torch.zeros_like(index[:, :1]), index + 1], dim=1)
        x = torch.cat([gather_tokens(x, slots), fused], dim=1)
        if positions is None:
            positions = torch.arange(t, device=x.device).unsqueeze(0).expand(b, t)
        fused_id = torch.full_like(index[:, :1], num_patches + 1 + self.stage)  # contract.fused_position
        positions = torch.cat([torch.gather(positions, 1, slots), fused_id], dim=1)
        if records is not None:
            margin = decision_margin(cls_attn, k_like.shape[0]) if self.record_margin else None
            records.append(ReductionRecord(torch.ones_like(positions).sum(dim=1), positions, margin))
        x = x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
        return x, positions


class EViT(VisionTransformer):
    """forward(images, *keep_likes) -> logits; keep_likes[s] is any tensor of length K_s."""

    def __init__(self, *, stages: tuple[int, ...], **kwargs):
        super().__init__(block_fn=EViTBlock, **kwargs)
        self.stages = tuple(stages)
        for s, i in enumerate(self.stages):
            self.blocks[i].stage = s

    @property
    def record_margin(self) -> bool:
        return self.blocks[self.stages[0]].record_margin

    @record_margin.setter
    def record_margin(self, value: bool) -> None:
        for blk in self.blocks:
            blk.record_margin = value

    def forward_with_records(self, images: Tensor, keep_likes) -> tuple[Tensor, list[ReductionRecord]]:
        x = self.norm_pre(self._pos_embed(self.patch_embed(images)))
        positions, records = None, []
        num_patches = self.patch_embed.num_patches
        for blk in self.blocks:
            k_like = keep_likes[blk.stage] if blk.stage is not None else None
            x, positions = blk(x, k_like, positions, records, num_patches)
        return self.forward_head(self.norm(x)), records

    def forward(self, images: Tensor, *keep_likes: Tensor) -> Tensor:
        return self.forward_with_records(images, keep_likes)[0]
