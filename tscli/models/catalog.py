"""Looking up registered variants by name and family (torch-free: configs only)."""

from __future__ import annotations

from dataclasses import replace

from ..errors import UsageError
from . import method_variants, variants  # noqa: F401  (register every variant)
from .registry import REGISTRY, ViTConfig

TEST_PREFIX = "tiny_"  # test variants: seconds to export; the tests parametrise over them


def list_models(family: str | None = None) -> list[str]:
    return [n for n in sorted(REGISTRY) if family is None or REGISTRY[n]().family == family]


def families() -> list[str]:
    return sorted({fn().family for fn in REGISTRY.values()})


def get_config(name: str, **overrides) -> ViTConfig:
    if name not in REGISTRY:
        raise UsageError(f"unknown model {name!r}; valid: {', '.join(list_models())}")
    cfg = REGISTRY[name]()
    return replace(cfg, **overrides) if overrides else cfg


def tiny_variants() -> list[str]:
    """The tiny variants of every family (what the registry-parametrised tests export)."""
    return [n for n in list_models() if n.startswith(TEST_PREFIX)]
