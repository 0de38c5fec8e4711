"""Config -> torch module. Random init (seeded, so parity can rebuild the same weights), a
checkpoint, or timm's pretrained weights (models/pretrained.py)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from timm.models.vision_transformer import VisionTransformer

from .. import contract as C
from ..errors import CheckpointError, UsageError
from .ats import ATSVisionTransformer
from .catalog import get_config
from .checkpoints import load_into
from .dovit import build_segvit
from .dynamicvit import DynamicViT
from .evit import EViT
from .pretrained import load_pretrained_weights
from .registry import ViTConfig
from .tome import ToMeVisionTransformer


@dataclass
class BuiltModel:
    config: ViTConfig
    module: torch.nn.Module
    weights: str  # contract.random_weights(seed) or "sha256:<hex>" of the checkpoint / pretrained file
    pretrained: dict | None = None  # PretrainedWeights.record(): which hub weights, at which revision


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


def build_model(cfg: ViTConfig, checkpoint: str | None = None, seed: int = 0, pretrained: str | None = None,
                revision: str | None = None) -> BuiltModel:
    """``pretrained``: a --pretrained tag (models/pretrained.py), loaded from the hub snapshot
    ``revision`` (default: the cached main); the config then takes the weights' preprocessing."""
    torch.manual_seed(seed)
    if cfg.family not in BUILDERS:
        raise ValueError(f"no builder for family {cfg.family!r}; known: {', '.join(BUILDERS)}")
    if checkpoint and pretrained is not None:
        raise UsageError("give either --checkpoint or --pretrained, not both")
    module = BUILDERS[cfg.family](cfg)
    weights, record = C.random_weights(seed), None
    if checkpoint:
        weights = "sha256:" + load_into(module, checkpoint, cfg.name)
    elif pretrained is not None:
        loaded = load_pretrained_weights(module, cfg, pretrained, revision)
        weights, record = "sha256:" + loaded.sha256, loaded.record()
        cfg = replace(cfg, **loaded.preprocessing)
    module.eval()
    return BuiltModel(cfg, module, weights, record)


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
    record = meta.get("pretrained")
    if isinstance(record, dict) and record.get("name") and not checkpoint:
        # The same hub weights at the same snapshot, from the cache (no network needed once cached).
        built = build_model(cfg, pretrained=str(record["name"]), revision=record.get("revision"))
        if built.weights != weights:
            raise CheckpointError(f"the cached pretrained weights {record['name']} (sha256 {built.weights[7:19]}...) are "
                                  f"not the ones this file was exported from (sha256 {weights[7:19]}...); "
                                  "pass the original file with --checkpoint")
        return built
    if not checkpoint:
        raise CheckpointError(f"this file was exported from a checkpoint ({weights[:19]}...); pass it with --checkpoint")
    built = build_model(cfg, checkpoint=checkpoint)
    if built.weights != weights:
        raise CheckpointError(f"checkpoint {checkpoint!r} is not the one this file was exported from "
                              f"(sha256 {built.weights[7:19]}... vs {weights[7:19]}...)")
    return built
