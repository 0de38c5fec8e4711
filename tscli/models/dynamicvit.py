"""DynamicViT (Rao et al., NeurIPS 2021) on timm's VisionTransformer, as the authors released it
for DeiT (docs/design.md, "DynamicViT").

Before each stage block a small predictor scores the patch tokens that are still there, and the
stage keeps the K_s tokens with the highest keep score (log-probability of "keep"), with ties to
the lower index (models/reduction.py); CLS always stays. K_s is the length of a shape input, so
the exported graph computes on exactly the kept tokens, and the runner derives K_s from a
load-time rate (contract.keep_counts: int(N * rho^s) of the original N patches).

Parameter names follow the released checkpoints: timm's (blocks, norm, head, ...) plus
``score_predictor.{i}.in_conv`` (LayerNorm, Linear, GELU) and ``score_predictor.{i}.out_conv``
(Linear, GELU, Linear, GELU, Linear, LogSoftmax), so a released state_dict loads strictly.

Training (``forward_train``) follows the paper: Gumbel-softmax hard keep decisions that only
ever drop further, and attention that masks the dropped keys of every query except its own.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Block, VisionTransformer
from torch import Tensor, nn

from .ats import gather_tokens
from .reduction import ReductionRecord, decision_margin, top_tokens


class KeepPredictor(nn.Module):
    """The released PredictorLG: per-token features, half of them local, half a mean over the
    tokens still kept (weighted by the keep policy while training), -> log p(keep), log p(drop)."""

    def __init__(self, dim: int):
        super().__init__()
        self.in_conv = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.GELU())
        self.out_conv = nn.Sequential(
            nn.Linear(dim, dim // 2), nn.GELU(), nn.Linear(dim // 2, dim // 4), nn.GELU(), nn.Linear(dim // 4, 2),
            nn.LogSoftmax(dim=-1),
        )

    def forward(self, x: Tensor, policy: Tensor | None = None) -> Tensor:
        """x [B, n, C] patch tokens, policy [B, n, 1] (None: every token kept) -> [B, n, 2]."""
        x = self.in_conv(x)
        half = x.shape[-1] // 2
        local, pooled = x[..., :half], x[..., half:]
        if policy is None:
            pooled = pooled.mean(dim=1, keepdim=True)
        else:
            pooled = (pooled * policy).sum(dim=1, keepdim=True) / policy.sum(dim=1, keepdim=True)
        return self.out_conv(torch.cat([local, pooled.expand_as(local)], dim=-1))


class DynamicViT(VisionTransformer):
    """forward(images, *keep_likes) -> logits; keep_likes[s] is any tensor of length K_s."""

    def __init__(self, *, stages: tuple[int, ...], **kwargs):
        super().__init__(**kwargs)
        self.stages = tuple(stages)
        # Random weights keep PyTorch's default Linear init in the predictors: the release's
        # std-0.02 init scores every token within ~1e-7 of the others, so a random-weight file
        # would decide by float noise alone (parity could then check nothing but ties).
        self.score_predictor = nn.ModuleList(KeepPredictor(self.embed_dim) for _ in self.stages)
        self.record_margin = False  # reference runs: also record how near each decision was to a tie

    def forward_with_records(self, images: Tensor, keep_likes) -> tuple[Tensor, list[ReductionRecord]]:
        x = self.norm_pre(self._pos_embed(self.patch_embed(images)))
        positions, records, stage = None, [], 0
        for i, blk in enumerate(self.blocks):
            if i in self.stages:
                x, positions = self._reduce(x, positions, stage, keep_likes[stage], records)
                stage += 1
            x = blk(x)
        return self.forward_head(self.norm(x)), records

    def _reduce(self, x: Tensor, positions: Tensor | None, stage: int, k_like: Tensor, records: list):
        """Keep CLS and the K_s best-scored patch tokens (ascending order), before the stage block."""
        scores = self.score_predictor[stage](x[:, 1:])[..., 0]  # log p(keep), [B, n]
        index, _ = top_tokens(scores, k_like)
        slots = torch.cat([torch.zeros_like(index[:, :1]), index + 1], dim=1)  # CLS first
        positions = slots if positions is None else torch.gather(positions, 1, slots)
        margin = decision_margin(scores, k_like.shape[0]) if self.record_margin else None
        records.append(ReductionRecord(torch.ones_like(slots).sum(dim=1), positions, margin))
        return gather_tokens(x, slots), positions

    def forward(self, images: Tensor, *keep_likes: Tensor) -> Tensor:
        return self.forward_with_records(images, keep_likes)[0]

    # -- training (tools/train_dynamicvit.py) -------------------------------------------------

    def forward_train(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor, list[Tensor]]:
        """-> (logits, final patch tokens [B, N, C] after the last norm, the last keep decision
        [B, N, 1] (detached), each stage's hard keep decisions [B, N]). Tokens are never removed
        while training: a dropped token stays in place and is masked as a key (the paper's
        attention masking), so the decisions stay differentiable through Gumbel-softmax."""
        x = self.norm_pre(self._pos_embed(self.patch_embed(images)))
        b, n = x.shape[0], x.shape[1] - 1
        decision = x.new_ones(b, n, 1)
        policy = x.new_ones(b, n + 1, 1)
        decisions, stage = [], 0
        for i, blk in enumerate(self.blocks):
            if i in self.stages:
                log_probs = self.score_predictor[stage](x[:, 1:], decision)
                decision = F.gumbel_softmax(log_probs, hard=True)[..., :1] * decision
                decisions.append(decision.reshape(b, n))
                policy = torch.cat([x.new_ones(b, 1, 1), decision], dim=1)
                stage += 1
            x = policy_block(blk, x, policy)
        x = self.norm(x)
        return self.forward_head(x), x[:, 1:], decision.detach(), decisions


def policy_block(blk: Block, x: Tensor, policy: Tensor, eps: float = 1e-6) -> Tensor:
    """A timm Block whose attention ignores the keys with policy 0, except each query's own key
    (a dropped token still attends to itself, so its row stays defined). The normalisation has
    the paper's eps: (w + eps/N) / (sum w + eps), for stable training."""
    attn, (b, t, d) = blk.attn, x.shape
    qkv = attn.qkv(blk.norm1(x)).reshape(b, t, 3, attn.num_heads, d // attn.num_heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    logits = (q * attn.scale) @ k.transpose(-2, -1)
    keys = policy.reshape(b, 1, 1, t)
    eye = torch.eye(t, dtype=keys.dtype, device=keys.device).view(1, 1, t, t)
    keys = keys + (1.0 - keys) * eye
    w = (logits - logits.amax(dim=-1, keepdim=True)).float().exp() * keys.float()
    w = ((w + eps / t) / (w.sum(dim=-1, keepdim=True) + eps)).to(logits.dtype)
    o = (w @ v).transpose(1, 2).reshape(b, t, d)
    x = x + blk.drop_path1(blk.ls1(attn.proj(attn.norm(o))))
    return x + blk.drop_path2(blk.ls2(blk.mlp(blk.norm2(x))))
