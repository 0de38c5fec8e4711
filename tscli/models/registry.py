"""Model variants as data: frozen configs registered by name (torch-free).

A variant is a function returning a frozen config, registered with ``@register``; the configs
themselves live in models/variants.py, the lookups in models/catalog.py and the torch modules
that a config builds in models/factory.py. Nothing here imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from ..errors import UsageError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ViTConfig:
    """Architecture + preprocessing of a variant. ``family`` decides which builder runs."""

    name: str
    family: str  # "ats" | "dense" | "tome" | ... (contract.py)
    embed_dim: int
    depth: int
    num_heads: int
    img_size: int = 224
    patch_size: int = 16
    num_classes: int = 1000
    stages: tuple[int, ...] = ()
    scheme: str = "paper"  # ats: the picking rule, contract.PICK_RULES
    r: int = 0  # tome: tokens merged per block (export --r overrides)
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    crop_pct: float = 0.875
    interpolation: str = "bicubic"
    labels: str = "imagenet-1k"
    dense_name: str | None = None  # the dense baseline with the same weights
    description: str = ""
    extra: dict = field(default_factory=dict, hash=False, compare=False)

    @property
    def num_patches(self) -> int:
        return (self.img_size // self.patch_size) ** 2

    @property
    def max_k_limit(self) -> int:
        return self.num_patches


@dataclass(frozen=True)
class SegConfig(ViTConfig):
    """A segmentation variant. ``stages`` holds the decision layers (blocks after which the
    aux heads decide); ``img_hw`` the native input size (the pos-embed grid of a checkpoint)."""

    img_hw: tuple[int, int] = (512, 1024)
    xi: float = 0.985
    merge: str = "paper"
    label_names: tuple[str, ...] = ()

    @property
    def num_patches(self) -> int:
        return (self.img_hw[0] // self.patch_size) * (self.img_hw[1] // self.patch_size)

    @property
    def max_k_limit(self) -> int:
        return self.num_patches


REGISTRY: dict[str, Callable[[], ViTConfig]] = {}


def register(fn: Callable[[], ViTConfig]) -> Callable[[], ViTConfig]:
    REGISTRY[fn.__name__] = fn
    return fn


def parse_stages(text: str, depth: int) -> tuple[int, ...]:
    """'3-11' or '3,5,7' -> block indices; each in [0, depth)."""
    try:
        out: list[int] = []
        for part in text.split(","):
            if "-" in part:
                lo, hi = (int(p) for p in part.split("-"))
                out.extend(range(lo, hi + 1))
            else:
                out.append(int(part))
    except ValueError:
        raise UsageError(f"bad --stages {text!r}; expected block indices like '3-11' or '3,6,9'") from None
    if not out or any(i < 0 or i >= depth for i in out) or len(set(out)) != len(out):
        raise UsageError(f"bad --stages {text!r}; need distinct block indices in 0..{depth - 1}")
    return tuple(sorted(out))


def parse_hw(text: str, patch: int) -> tuple[int, int]:
    """'512x1024' (or '512') -> (512, 1024); both multiples of the patch size."""
    try:
        parts = [int(p) for p in str(text).lower().replace("*", "x").split("x")]
    except ValueError:
        raise UsageError(f"bad --input-size {text!r}; expected HxW like 512x1024") from None
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or any(p <= 0 or p % patch for p in parts):
        raise UsageError(f"bad --input-size {text!r}; need HxW, both positive multiples of the patch size {patch}")
    return parts[0], parts[1]
