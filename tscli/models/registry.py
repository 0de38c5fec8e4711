"""Registry of model variants: name -> frozen config -> torch module (random init or checkpoint).

Variants are registered with ``@register``; tests parametrise over the tiny ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable

from ..errors import UsageError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ViTConfig:
    """Architecture + preprocessing of a variant. ``family`` decides which builder runs."""

    name: str
    family: str  # "ats" | "dense"
    embed_dim: int
    depth: int
    num_heads: int
    img_size: int = 224
    patch_size: int = 16
    num_classes: int = 1000
    stages: tuple[int, ...] = ()
    scheme: str = "paper"
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


_REGISTRY: dict[str, Callable[[], ViTConfig]] = {}
# Modules that register more variants (other families); imported on first registry use so that
# importing the registry stays cheap and free of import cycles.
_VARIANT_MODULES = ("tscli.models.dovit", "tscli.models.digits")
_loaded = False


def register(fn: Callable[[], ViTConfig]) -> Callable[[], ViTConfig]:
    _REGISTRY[fn.__name__] = fn
    return fn


def _load_variant_modules() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    import importlib
    import importlib.util

    for mod in _VARIANT_MODULES:
        if importlib.util.find_spec(mod) is not None:
            importlib.import_module(mod)


def list_models(family: str | None = None) -> list[str]:
    _load_variant_modules()
    names = sorted(_REGISTRY)
    return [n for n in names if family is None or _REGISTRY[n]().family == family]


def get_config(name: str, **overrides) -> ViTConfig:
    _load_variant_modules()
    if name not in _REGISTRY:
        raise UsageError(f"unknown model {name!r}; valid: {', '.join(list_models())}")
    cfg = _REGISTRY[name]()
    return replace(cfg, **overrides) if overrides else cfg


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


def _deit(name: str, family: str, dim: int, heads: int, dense: str | None, desc: str) -> ViTConfig:
    stages = tuple(range(3, 12)) if family == "ats" else ()
    return ViTConfig(name, family, dim, 12, heads, stages=stages, dense_name=dense, description=desc)


@register
def deit_t_ats() -> ViTConfig:
    return _deit("deit_t_ats", "ats", 192, 3, "deit_t", "DeiT-Tiny + ATS in blocks 3-11")


@register
def deit_s_ats() -> ViTConfig:
    return _deit("deit_s_ats", "ats", 384, 6, "deit_s", "DeiT-Small + ATS in blocks 3-11 (paper setup)")


@register
def deit_b_ats() -> ViTConfig:
    return _deit("deit_b_ats", "ats", 768, 12, "deit_b", "DeiT-Base + ATS in blocks 3-11")


@register
def deit_t() -> ViTConfig:
    return _deit("deit_t", "dense", 192, 3, None, "DeiT-Tiny dense baseline")


@register
def deit_s() -> ViTConfig:
    return _deit("deit_s", "dense", 384, 6, None, "DeiT-Small dense baseline")


@register
def deit_b() -> ViTConfig:
    return _deit("deit_b", "dense", 768, 12, None, "DeiT-Base dense baseline")


# Tiny variants: seconds to export, used by the tests. 32x32 input, patch 4 -> 64 patches.
def _tiny(name: str, family: str, dense: str | None, stages: tuple[int, ...]) -> ViTConfig:
    return ViTConfig(
        name, family, 48, 4, 3, img_size=32, patch_size=4, num_classes=10, stages=stages,
        dense_name=dense, labels="digits-0-9", crop_pct=1.0, interpolation="bilinear",
        mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), description="tiny test variant",
    )


@register
def tiny_ats() -> ViTConfig:
    return _tiny("tiny_ats", "ats", "tiny_dense", (1, 2, 3))


@register
def tiny_dense() -> ViTConfig:
    return _tiny("tiny_dense", "dense", None, ())
