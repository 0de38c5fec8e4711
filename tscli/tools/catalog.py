"""``tscli list``: the registered variants as rows, and family questions about a model name."""

from __future__ import annotations

from .. import contract as C
from ..errors import UsageError
from ..models.catalog import families, get_config, list_models


def is_segmentation_model(name: str) -> bool:
    return get_config(name).family in C.SEG_FAMILIES


def is_reduction_model(name: str) -> bool:
    """DynamicViT / EViT: exported with a load-time keep rate (export/reduction_export.py)."""
    return get_config(name).family in C.REDUCTION_FAMILIES


def model_rows(family: str | None = None) -> list[dict]:
    """One row per variant (name, family, dim/depth/heads, input/patch, stages, description)."""
    known = families()
    if family is not None and family not in known:
        raise UsageError(f"unknown --family {family!r}; valid: {', '.join(known)}")
    rows = []
    for name in list_models(family):
        c = get_config(name)
        rows.append({"model": name, "family": c.family, "dim/depth/heads": f"{c.embed_dim}/{c.depth}/{c.num_heads}",
                     "input": f"{c.img_size}/{c.patch_size}",
                     "stages": f"{c.stages[0]}-{c.stages[-1]}" if c.stages else "-", "description": c.description})
    return rows
