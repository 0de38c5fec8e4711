"""Token-reduction variants users compare ATS with: DynamicViT and EViT (configs only, torch-free).

Both reduce at blocks 3, 6 and 9 of DeiT (the released setups); the digits and tiny variants have
depth 4 and reduce at blocks 1, 2 and 3. ``rate`` is the default keep rate of an export (for
DynamicViT the rate its predictors are trained for); the rate is chosen again at load time
(contract.check_rate). models/dynamicvit.py and models/evit.py build them.
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import contract as C
from .registry import ViTConfig, register

RELEASED_RATE = 0.7  # both releases: DynamicViT rho = 0.7, EViT keep rate 0.7


@dataclass(frozen=True)
class ReductionConfig(ViTConfig):
    rate: float = RELEASED_RATE


def _deit(name: str, family: str, dim: int, heads: int, dense: str, desc: str) -> ReductionConfig:
    return ReductionConfig(name, family, dim, 12, heads, stages=(3, 6, 9), dense_name=dense, description=desc)


_DYVIT = "DynamicViT (predictors before blocks 3, 6, 9; keep int(N rho^s), rho 0.7)"
_EVIT = "EViT (top CLS-attention tokens at blocks 3, 6, 9, the rest fused; keep rate 0.7)"


@register
def dynamicvit_deit_t() -> ReductionConfig:
    return _deit("dynamicvit_deit_t", C.FAMILY_DYNAMICVIT, 192, 3, "deit_t", f"DeiT-Tiny + {_DYVIT}")


@register
def dynamicvit_deit_s() -> ReductionConfig:
    return _deit("dynamicvit_deit_s", C.FAMILY_DYNAMICVIT, 384, 6, "deit_s", f"DeiT-Small + {_DYVIT}")


@register
def dynamicvit_deit_b() -> ReductionConfig:
    return _deit("dynamicvit_deit_b", C.FAMILY_DYNAMICVIT, 768, 12, "deit_b", f"DeiT-Base + {_DYVIT}")


@register
def evit_deit_t() -> ReductionConfig:
    return _deit("evit_deit_t", C.FAMILY_EVIT, 192, 3, "deit_t", f"DeiT-Tiny + {_EVIT}")


@register
def evit_deit_s() -> ReductionConfig:
    return _deit("evit_deit_s", C.FAMILY_EVIT, 384, 6, "deit_s", f"DeiT-Small + {_EVIT}")


@register
def evit_deit_b() -> ReductionConfig:
    return _deit("evit_deit_b", C.FAMILY_EVIT, 768, 12, "deit_b", f"DeiT-Base + {_EVIT}")


def _small(name: str, family: str, dim: int, heads: int, dense: str, labels: str, desc: str) -> ReductionConfig:
    # 32x32 input, patch 4 -> 64 patches; depth 4, so the stages are blocks 1, 2, 3.
    return ReductionConfig(
        name, family, dim, 4, heads, img_size=32, patch_size=4, num_classes=10, stages=(1, 2, 3),
        dense_name=dense, labels=labels, crop_pct=1.0, interpolation="bilinear", mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5), description=desc,
    )


@register
def tiny_dynamicvit() -> ReductionConfig:
    return _small("tiny_dynamicvit", C.FAMILY_DYNAMICVIT, 48, 3, "tiny_dense", "digits-0-9", "tiny test variant")


@register
def tiny_evit() -> ReductionConfig:
    return _small("tiny_evit", C.FAMILY_EVIT, 48, 3, "tiny_dense", "digits-0-9", "tiny test variant")


@register
def digits_dynamicvit() -> ReductionConfig:
    return _small("digits_dynamicvit", C.FAMILY_DYNAMICVIT, 32, 2, "digits_dense", "digits-0-9",
                  "digits ViT + DynamicViT before blocks 1-3 (tscli train-digits --method dynamicvit)")


@register
def digits_evit() -> ReductionConfig:
    return _small("digits_evit", C.FAMILY_EVIT, 32, 2, "digits_dense", "digits-0-9",
                  "digits ViT + EViT at blocks 1-3 (the digits checkpoint; EViT adds no parameters)")
