"""Every registered model variant (configs only, torch-free; models/factory.py builds them).

Families: ``ats`` (DeiT + ATS, and with scheme ``topk`` the ATS paper's top-K baseline),
``tome`` (token merging, r per block), ``dense`` (the baselines with the same weights), ``dovit``
and ``seg`` (segmentation, DoViT and dense SETR-naive), and the small digits models trained
offline by ``tscli train-digits``. Names starting with ``tiny_`` are test variants: seconds to export,
and the tests parametrise over all of them.
"""

from __future__ import annotations

from .registry import SegConfig, ViTConfig, register


def _deit(name: str, family: str, dim: int, heads: int, dense: str | None, desc: str, **more) -> ViTConfig:
    stages = tuple(range(3, 12)) if family == "ats" else ()
    return ViTConfig(name, family, dim, 12, heads, stages=stages, dense_name=dense, description=desc, **more)


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


# The ATS paper's top-K baseline: the ATS block and scores, the K highest kept (K at load, as ATS).
@register
def deit_t_topk() -> ViTConfig:
    return _deit("deit_t_topk", "ats", 192, 3, "deit_t", "DeiT-Tiny + top-K (ATS scores) in blocks 3-11", scheme="topk")


@register
def deit_s_topk() -> ViTConfig:
    return _deit("deit_s_topk", "ats", 384, 6, "deit_s", "DeiT-Small + top-K (ATS scores) in blocks 3-11", scheme="topk")


@register
def deit_b_topk() -> ViTConfig:
    return _deit("deit_b_topk", "ats", 768, 12, "deit_b", "DeiT-Base + top-K (ATS scores) in blocks 3-11", scheme="topk")


# ToMe: r tokens merged in every block (r fixed at export; 13 is ToMe's usual off-the-shelf setting).
@register
def tome_deit_t() -> ViTConfig:
    return _deit("tome_deit_t", "tome", 192, 3, "deit_t", "DeiT-Tiny + ToMe, r=13 per block (--r at export)", r=13)


@register
def tome_deit_s() -> ViTConfig:
    return _deit("tome_deit_s", "tome", 384, 6, "deit_s", "DeiT-Small + ToMe, r=13 per block (--r at export)", r=13)


@register
def tome_deit_b() -> ViTConfig:
    return _deit("tome_deit_b", "tome", 768, 12, "deit_b", "DeiT-Base + ToMe, r=13 per block (--r at export)", r=13)


# Tiny variants: seconds to export, used by the tests. 32x32 input, patch 4 -> 64 patches.
def _tiny(name: str, family: str, dense: str | None, stages: tuple[int, ...], desc: str = "tiny test variant",
          **more) -> ViTConfig:
    return ViTConfig(
        name, family, 48, 4, 3, img_size=32, patch_size=4, num_classes=10, stages=stages,
        dense_name=dense, labels="digits-0-9", crop_pct=1.0, interpolation="bilinear",
        mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), description=desc, **more,
    )


@register
def tiny_ats() -> ViTConfig:
    return _tiny("tiny_ats", "ats", "tiny_dense", (1, 2, 3))


@register
def tiny_dense() -> ViTConfig:
    return _tiny("tiny_dense", "dense", None, ())


@register
def tiny_topk() -> ViTConfig:
    return _tiny("tiny_topk", "ats", "tiny_dense", (1, 2, 3), "tiny test variant: top-K", scheme="topk")


@register
def tiny_tome() -> ViTConfig:
    return _tiny("tiny_tome", "tome", "tiny_dense", (), "tiny test variant: ToMe, r=8", r=8)


# -- segmentation: DoViT and SETR-naive (docs/design.md, DoViT) --------------------

CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)


def _setr(name: str, family: str, dim: int, heads: int, other: str, desc: str) -> SegConfig:
    return SegConfig(
        name, family, dim, 12, heads, img_size=512, patch_size=16, num_classes=19, stages=(2, 5, 8),
        crop_pct=1.0, interpolation="bilinear", labels="cityscapes-19", dense_name=other if family == "dovit" else None,
        description=desc, img_hw=(512, 1024), label_names=CITYSCAPES_CLASSES,
    )


@register
def dovit_setr_deit_s() -> SegConfig:
    return _setr("dovit_setr_deit_s", "dovit", 384, 6, "setr_deit_s", "SETR-naive DeiT-S + DoViT (decisions after 2,5,8)")


@register
def dovit_setr_deit_b() -> SegConfig:
    return _setr("dovit_setr_deit_b", "dovit", 768, 12, "setr_deit_b", "SETR-naive DeiT-B + DoViT (decisions after 2,5,8)")


@register
def setr_deit_s() -> SegConfig:
    return _setr("setr_deit_s", "seg", 384, 6, "", "SETR-naive DeiT-S dense segmentation baseline")


@register
def setr_deit_b() -> SegConfig:
    return _setr("setr_deit_b", "seg", 768, 12, "", "SETR-naive DeiT-B dense segmentation baseline")


def _tiny_seg(name: str, family: str, dense: str | None) -> SegConfig:
    # 32x64 input, patch 4 -> 8x16 = 128 tokens; a decision after every block but the last.
    return SegConfig(
        name, family, 48, 4, 3, img_size=32, patch_size=4, num_classes=5, stages=(0, 1, 2), crop_pct=1.0,
        interpolation="bilinear", labels="synthetic-5", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
        dense_name=dense, description="tiny segmentation test variant", img_hw=(32, 64),
    )


@register
def tiny_dovit() -> SegConfig:
    return _tiny_seg("tiny_dovit", "dovit", "tiny_seg")


@register
def tiny_seg() -> SegConfig:
    return _tiny_seg("tiny_seg", "seg", None)


# -- digits (scikit-learn's digits, trained on the CPU by `tscli train-digits`) ------


def _digits(name: str, family: str, dense: str | None, stages: tuple[int, ...], desc: str, **more) -> ViTConfig:
    return ViTConfig(
        name, family, 32, 4, 2, img_size=32, patch_size=4, num_classes=10, stages=stages, dense_name=dense,
        labels="digits-0-9", crop_pct=1.0, interpolation="bilinear", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
        description=desc, **more,
    )


@register
def digits_ats() -> ViTConfig:
    return _digits("digits_ats", "ats", "digits_dense", (1, 2, 3), "digits ViT + ATS in blocks 1-3 (tscli train-digits)")


@register
def digits_dense() -> ViTConfig:
    return _digits("digits_dense", "dense", None, (), "digits ViT, dense (tscli train-digits)")


# Top-K and ToMe add no parameters: the digits_ats checkpoint serves them unchanged.
@register
def digits_topk() -> ViTConfig:
    return _digits("digits_topk", "ats", "digits_dense", (1, 2, 3), "digits ViT + top-K in blocks 1-3 (digits_ats weights)",
                   scheme="topk")


@register
def digits_tome() -> ViTConfig:
    return _digits("digits_tome", "tome", "digits_dense", (), "digits ViT + ToMe, r=8 per block (digits_ats weights)", r=8)
