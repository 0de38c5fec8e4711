"""Config -> torch module. Random init (seeded, so parity can rebuild the same weights) or a checkpoint."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from timm.models.vision_transformer import VisionTransformer

from .ats import ATSVisionTransformer
from .checkpoints import load_into
from .registry import ViTConfig


@dataclass
class BuiltModel:
    config: ViTConfig
    module: torch.nn.Module
    weights: str  # "random(seed=N)" or "sha256:<hex>" of the checkpoint


def _vit_kwargs(cfg: ViTConfig) -> dict:
    return dict(
        img_size=cfg.img_size, patch_size=cfg.patch_size, embed_dim=cfg.embed_dim, depth=cfg.depth,
        num_heads=cfg.num_heads, num_classes=cfg.num_classes, qkv_bias=True, mlp_ratio=4.0,
    )


def build_model(cfg: ViTConfig, checkpoint: str | None = None, seed: int = 0) -> BuiltModel:
    torch.manual_seed(seed)
    if cfg.family == "ats":
        module = ATSVisionTransformer(stages=cfg.stages, scheme=cfg.scheme, **_vit_kwargs(cfg))
    elif cfg.family == "dense":
        module = VisionTransformer(**_vit_kwargs(cfg))
    else:  # other families register their own builders
        raise ValueError(f"no builder for family {cfg.family!r}")
    weights = f"random(seed={seed})"
    if checkpoint:
        weights = "sha256:" + load_into(module, checkpoint, cfg.name)
    module.eval()
    return BuiltModel(cfg, module, weights)
