"""The "ideal" bound of an ATS model: a plain timm ViT doing ATS's work minus all sampling.

Used only by ``tscli bench --ideal`` to show what fraction of the possible speed-up the exported
ATS graph reaches. Blocks before the first ATS stage run on all tokens; at that stage q/k/v are
computed for all tokens (ATS needs them to score) but attention rows, proj and MLP only for the
first K + 1 tokens; every later block is timm's own block on those K + 1 tokens. No scoring, no
picking, no masks, no gathers: which tokens survive is meaningless (the first K + 1), only the
cost is. It is built from timm's modules rather than tscli's ATS blocks, so nothing tscli writes
can make the bound slower than the plain model a user would write by hand.
"""

from __future__ import annotations

import torch
from timm.models.vision_transformer import Block, VisionTransformer
from torch import Tensor


def _first_rows(blk: Block, x: Tensor, rows: int) -> Tensor:
    """timm's block with q, the residual and the MLP cut to the first ``rows`` tokens."""
    attn, (b, t, _) = blk.attn, x.shape
    qkv = attn.qkv(blk.norm1(x)).reshape(b, t, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q, k = attn.q_norm(q[:, :, :rows]), attn.k_norm(k)
    o = ((q * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1) @ v  # timm's explicit path
    o = attn.proj(attn.norm(o.transpose(1, 2).reshape(b, rows, -1)))
    x = x[:, :rows] + blk.drop_path1(blk.ls1(o))
    return x + blk.drop_path2(blk.ls2(blk.mlp(blk.norm2(x))))


class IdealBound(torch.nn.Module):
    """images [B,3,H,W], k_select [K] -> logits [B, classes] of ``vit`` cut at block ``first``."""

    def __init__(self, vit: VisionTransformer, first: int):
        super().__init__()
        if not 0 <= first < len(vit.blocks):
            raise ValueError(f"the first ATS stage {first} is not a block of this model (0..{len(vit.blocks) - 1})")
        self.vit, self.first = vit, first

    def forward(self, images: Tensor, k_select: Tensor) -> Tensor:
        m = self.vit
        x = m.norm_pre(m.patch_drop(m._pos_embed(m.patch_embed(images))))
        rows = k_select.shape[0] + 1
        for i, blk in enumerate(m.blocks):
            x = _first_rows(blk, x, rows) if i == self.first else blk(x)
        return m.forward_head(m.norm(x))
