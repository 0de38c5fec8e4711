"""Config -> torch module. Random init (seeded, so parity can rebuild the same weights) or a checkpoint."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from timm.models.vision_transformer import VisionTransformer

from .. import contract as C
from ..errors import CheckpointError
from .ats import ATSVisionTransformer
from .catalog import get_config
from .checkpoints import load_into
from .dovit import build_segvit
from .dynamicvit import DynamicViT
from .evit import EViT
from .registry import ViTConfig
from .tome import ToMeVisionTransformer


@dataclass
class BuiltModel:
    config: ViTConfig
    module: torch.nn.Module
    weights: str  # contract.random_weights(seed) or "sha256:<hex>" of the checkpoint


def vit_kwargs(cfg: ViTConfig) -> dict:
    """timm VisionTransformer arguments of a registered config (every family builds on them)."""
    return dict(
        img_size=cfg.img_size, patch_size=cfg.patch_size, embed_dim=cfg.embed_dim, depth=cfg.depth,
        num_heads=cfg.num_heads, num_classes=cfg.num_classes, qkv_bias=True, mlp_ratio=4.0,
    )


# family -> function(cfg) -> nn.Module
BUILDERS: dict = {
    C.FAMILY_ATS: lambda cfg: ATSVisionTransformer(stages=cfg.stages, scheme=cfg.scheme, **vit_kwargs(cfg)),
    C.FAMILY_DENSE: lambda cfg: VisionTransformer(**vit_kwargs(cfg)),
    C.FAMILY_TOME: lambda cfg: ToMeVisionTransformer(r=cfg.r, **vit_kwargs(cfg)),
    "dovit": build_segvit,
    "seg": build_segvit,
    C.FAMILY_DYNAMICVIT: lambda cfg: DynamicViT(stages=cfg.stages, **vit_kwargs(cfg)),
    C.FAMILY_EVIT: lambda cfg: EViT(stages=cfg.stages, **vit_kwargs(cfg)),
}


def build_model(cfg: ViTConfig, checkpoint: str | None = None, seed: int = 0) -> BuiltModel:
    torch.manual_seed(seed)
    if cfg.family not in BUILDERS:
        raise ValueError(f"no builder for family {cfg.family!r}; known: {', '.join(BUILDERS)}")
    module = BUILDERS[cfg.family](cfg)
    weights = C.random_weights(seed)
    if checkpoint:
        weights = "sha256:" + load_into(module, checkpoint, cfg.name)
    module.eval()
    return BuiltModel(cfg, module, weights)


def build_from_metadata(meta: dict, checkpoint: str | None = None) -> BuiltModel:
    """Rebuild the PyTorch model an exported file came from (for parity checks)."""
    overrides = {}
    if meta.get("family") == C.FAMILY_ATS:
        overrides = {"stages": tuple(meta["stages"]), "scheme": meta["scheme"]}
    elif meta.get("family") == C.FAMILY_TOME:
        overrides = {"r": int(meta["r"])}
    cfg = get_config(meta["model"], **overrides)
    weights = str(meta.get("weights", C.random_weights(0)))
    seed = C.random_seed(weights)
    if seed is not None:
        if checkpoint:
            raise CheckpointError(f"this file was exported with random weights ({weights}); drop --checkpoint")
        return build_model(cfg, seed=seed)
    if not checkpoint:
        raise CheckpointError(f"this file was exported from a checkpoint ({weights[:19]}...); pass it with --checkpoint")
    built = build_model(cfg, checkpoint=checkpoint)
    if built.weights != weights:
        raise CheckpointError(f"checkpoint {checkpoint!r} is not the one this file was exported from "
                              f"(sha256 {built.weights[7:19]}... vs {weights[7:19]}...)")
    return built
