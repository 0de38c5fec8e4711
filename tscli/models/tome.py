"""ToMe (token merging) on timm's VisionTransformer: the block class is swapped, timm is not forked.

In every block, after the attention and its residual and before the MLP, the block merges r of
its tokens into others by bipartite soft matching on its attention keys (models/merging.py), so
the MLP and every later block run on fewer tokens. Each token carries its size (how many patches
it holds); with proportional attention (ToMe's off-the-shelf setting, always on here) every
attention adds log(size) to the logits of each key, so a merged token weighs as the tokens it
replaced. r is fixed when the model is built (at export): all shapes are static.

The parameters are those of timm's VisionTransformer, so timm/DeiT checkpoints (and the digits
checkpoint) load unchanged, and the dense model with the same weights is the plain ViT.
"""

from __future__ import annotations

import torch
from timm.models.vision_transformer import Block, VisionTransformer
from torch import Tensor

from .merging import Matching, bipartite_match, merge_schedule, merge_tokens


class ToMeBlock(Block):
    """A timm Block (same parameter names) that merges ``r`` tokens between attention and MLP."""

    r: int = 0  # set by the model from its merge schedule
    prop_attn: bool = True

    def forward(self, x: Tensor, size: Tensor | None = None,
                with_margin: bool = False) -> tuple[Tensor, Tensor | None, Matching | None]:
        attn = self.attn
        b, t, d = x.shape
        qkv = attn.qkv(self.norm1(x)).reshape(b, t, 3, attn.num_heads, d // attn.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        q, k = attn.q_norm(q), attn.k_norm(k)
        # Scale after the product, as ToMe's attention does (timm scales q first): the two
        # round differently, and ToMe's is the reference these logits are compared with.
        logits = torch.matmul(q, k.transpose(-2, -1)) * attn.scale
        if size is not None and self.prop_attn:
            logits = logits + size.log().squeeze(-1)[:, None, None, :]
        o = torch.matmul(logits.softmax(dim=-1), v)
        o = attn.proj(attn.norm(o.transpose(1, 2).reshape(b, t, d)))
        x = x + self.drop_path1(self.ls1(o))
        matching = None
        if self.r > 0:
            matching = bipartite_match(k.mean(dim=1), self.r, with_margin)
            x, size = merge_tokens(x, size, matching)
        x = x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
        return x, size, matching


class ToMeVisionTransformer(VisionTransformer):
    """timm VisionTransformer whose blocks merge ``r`` tokens each (clamped as ToMe clamps:
    never more than half of the tokens other than CLS). forward(images) -> logits;
    ``forward_with_records`` also returns where every original token ended up after each block.
    """

    def __init__(self, *, r: int, prop_attn: bool = True, **kwargs):
        super().__init__(block_fn=ToMeBlock, **kwargs)
        if self.cls_token is None or self.num_prefix_tokens != 1:
            raise ValueError("ToMe here protects exactly one prefix token, the CLS token "
                             "(no distillation or register tokens)")
        self.r = int(r)
        self.schedule = merge_schedule(self.patch_embed.num_patches + 1, self.r, len(self.blocks))
        for blk, step in zip(self.blocks, self.schedule):
            blk.r, blk.prop_attn = step, prop_attn

    def forward_with_records(self, images: Tensor, with_margin: bool = False):
        """-> (logits [B, classes], slots [B, depth, T] int64: the row holding each original token
        after each block, margin [B] or None: the smallest decision margin of the image)."""
        x = self.norm_pre(self.patch_drop(self._pos_embed(self.patch_embed(images))))
        b, t = x.shape[0], x.shape[1]
        where = torch.arange(t, device=x.device).expand(b, t)
        size, history, margins = None, [], []
        for blk in self.blocks:
            x, size, m = blk(x, size, with_margin)
            if m is not None:
                where = torch.gather(m.slot_map, 1, where).long()
                if m.margin is not None:
                    margins.append(m.margin)
            history.append(where)
        logits = self.forward_head(self.norm(x))
        margin = torch.stack(margins, 1).amin(1) if margins else None
        return logits, torch.stack(history, dim=1), margin

    def forward(self, images: Tensor) -> Tensor:
        x = self.norm_pre(self.patch_drop(self._pos_embed(self.patch_embed(images))))
        size = None
        for blk in self.blocks:
            x, size, _ = blk(x, size)
        return self.forward_head(self.norm(x))


class ToMeExportWrapper(torch.nn.Module):
    """images [B,3,H,W] -> (logits, merge_slots [B, depth, T] int64)."""

    def __init__(self, model: ToMeVisionTransformer):
        super().__init__()
        self.model = model

    def forward(self, images: Tensor):
        logits, slots, _ = self.model.forward_with_records(images)
        return logits, slots
