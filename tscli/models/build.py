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


# family -> function(cfg) -> nn.Module; other families (dovit, ...) add theirs with register_builder.
BUILDERS: dict = {
    "ats": lambda cfg: ATSVisionTransformer(stages=cfg.stages, scheme=cfg.scheme, **_vit_kwargs(cfg)),
    "dense": lambda cfg: VisionTransformer(**_vit_kwargs(cfg)),
}


def register_builder(family: str):
    def wrap(fn):
        BUILDERS[family] = fn
        return fn

    return wrap


def build_model(cfg: ViTConfig, checkpoint: str | None = None, seed: int = 0) -> BuiltModel:
    torch.manual_seed(seed)
    if cfg.family not in BUILDERS:
        raise ValueError(f"no builder for family {cfg.family!r}; known: {', '.join(BUILDERS)}")
    module = BUILDERS[cfg.family](cfg)
    weights = f"random(seed={seed})"
    if checkpoint:
        weights = "sha256:" + load_into(module, checkpoint, cfg.name)
    module.eval()
    return BuiltModel(cfg, module, weights)


def build_from_metadata(meta: dict, checkpoint: str | None = None) -> BuiltModel:
    """Rebuild the PyTorch model an exported file came from (for parity checks)."""
    from ..errors import CheckpointError
    from .registry import get_config

    overrides = {}
    if meta.get("family") == "ats":
        overrides = {"stages": tuple(meta["stages"]), "scheme": meta["scheme"]}
    cfg = get_config(meta["model"], **overrides)
    weights = str(meta.get("weights", "random(seed=0)"))
    if weights.startswith("random(seed="):
        if checkpoint:
            raise CheckpointError(f"this file was exported with random weights ({weights}); drop --checkpoint")
        return build_model(cfg, seed=int(weights[len("random(seed="):-1]))
    if not checkpoint:
        raise CheckpointError(f"this file was exported from a checkpoint ({weights[:19]}...); pass it with --checkpoint")
    built = build_model(cfg, checkpoint=checkpoint)
    if built.weights != weights:
        raise CheckpointError(f"checkpoint {checkpoint!r} is not the one this file was exported from "
                              f"(sha256 {built.weights[7:19]}... vs {weights[7:19]}...)")
    return built
