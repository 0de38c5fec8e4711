"""The "ideal" bound of an ATS model: the same work as the padded ATS graph minus all sampling.

Used only by ``tscli bench --ideal`` to show what fraction of the possible speed-up the exported
ATS graph reaches. At the first ATS stage q/k/v are computed for all tokens (ATS needs them to
score), but attention rows, proj and MLP only for the first K + 1 tokens; every later block is a
plain block on those K + 1 tokens. No scoring, no picking, no gathers: which tokens survive is
meaningless (the first K + 1), only the cost is. Same weights as the wrapped ATS model.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .ats import ATSVisionTransformer, TokenSamplingBlock, attend


def _plain(blk: TokenSamplingBlock, x: Tensor, rows: int | None = None) -> Tensor:
    q, k, v = blk.qkv_heads(x)
    if rows is not None:
        q, x = q[:, :, :rows], x[:, :rows]
    return blk.finish(x, attend(q, k, v, blk.attn.scale, None))


class IdealATS(torch.nn.Module):
    """images [B,3,H,W], k_select [K] -> logits [B, classes]; reuses the ATS model's blocks."""

    def __init__(self, model: ATSVisionTransformer):
        super().__init__()
        if not model.stages:
            raise ValueError("the ideal bound needs an ATS model with at least one stage")
        self.model = model
        self.first = min(model.stages)

    def forward(self, images: Tensor, k_select: Tensor) -> Tensor:
        m = self.model
        x = m.norm_pre(m.patch_drop(m._pos_embed(m.patch_embed(images))))
        slots = k_select.shape[0] + 1
        for i, blk in enumerate(m.blocks):
            x = _plain(blk, x, slots if i == self.first else None)
        return m.forward_head(m.norm(x))
