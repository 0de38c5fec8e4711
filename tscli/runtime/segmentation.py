"""Segmentation files (DoViT / dense SETR) at run time: class maps, colourised overlays, GFLOPs.

numpy + Pillow only (no torch). The overlay is drawn on the network's input view of the image
(resized and centre-cropped as preprocessing did), so every pixel of the class map has its pixel.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import contract as C
from ..errors import InputError
from ..files import atomic_path
from .flops import arch_from_meta, block_flops
from .preprocess import preprocess, resized_size


@dataclass
class Segmentation:
    source: str
    class_map: np.ndarray  # [H, W] int32 argmax class per pixel
    view: np.ndarray  # [H, W, 3] uint8: the input as the network saw it (for overlays)
    kept_counts: list[int] = field(default_factory=list)  # patch tokens active after each decision
    saturated: bool = False
    kept_fraction: float = 1.0  # tokens still active after the last decision / patches
    gflops: float | None = None  # token-pass equivalent for this image's kept counts
    kept_masks: np.ndarray | None = None  # [decisions, patches] bool: patch tokens still active (DoViT)
    source_size: tuple[int, int] | None = None  # the image's own (width, height)
    cropped: bool = False  # the centre crop cut part of the image (its aspect differs from the input's)


def palette(n: int) -> np.ndarray:
    """n distinct RGB colours (uint8 [n, 3]); fixed, so maps of different runs compare by eye."""
    rng = np.random.default_rng(12345)
    cols = rng.integers(40, 256, size=(max(n, 1), 3)).astype(np.uint8)
    return cols[:n]


def colourise(class_map: np.ndarray, n_classes: int) -> np.ndarray:
    return palette(n_classes)[np.clip(class_map, 0, n_classes - 1)]


def overlay(view: np.ndarray, class_map: np.ndarray, n_classes: int, alpha: float = 0.5) -> np.ndarray:
    mixed = (1 - alpha) * view.astype(np.float32) + alpha * colourise(class_map, n_classes).astype(np.float32)
    return np.clip(mixed + 0.5, 0, 255).astype(np.uint8)


def input_view(x: np.ndarray, meta: dict) -> np.ndarray:
    """Undo the normalisation of one preprocessed image [3, H, W] -> uint8 [H, W, 3]."""
    mean = np.asarray(meta["mean"], np.float32).reshape(3, 1, 1)
    std = np.asarray(meta["std"], np.float32).reshape(3, 1, 1)
    return np.clip((x * std + mean) * 255.0 + 0.5, 0, 255).astype(np.uint8).transpose(1, 2, 0)


def segment(runner, images) -> list[Segmentation]:
    """Runner of a segmentation file + images (paths / PIL / uint8 arrays) -> one result per image."""
    meta = runner.meta
    if not C.is_segmentation(meta):
        raise InputError(f"{meta.get('model')} is a {meta.get('family')} model, not a segmentation model")
    images = list(images) if isinstance(images, (list, tuple)) else [images]
    sizes: list = []
    x = preprocess(images, meta, sizes)
    out = runner.infer(x)
    target = (int(meta["input_size"][2]), int(meta["input_size"][1]))
    class_maps = out[C.OUTPUT_SEG].argmax(axis=1).astype(np.int32)
    patches = int(np.prod(meta.get("grid") or [1]))
    results = []
    for i, image in enumerate(images):
        counts = [int(c) for c in out[C.OUTPUT_COUNTS][i]] if out[C.OUTPUT_COUNTS].size else []
        source = str(image) if isinstance(image, (str, Path)) else f"<{type(image).__name__} #{i}>"
        saturated = bool(out[C.OUTPUT_SATURATED][i]) if C.OUTPUT_SATURATED in out else False
        masks = out[C.OUTPUT_KEEP_MASKS][i].astype(bool) if C.OUTPUT_KEEP_MASKS in out else None
        results.append(Segmentation(
            source, class_maps[i], input_view(x[i], meta), counts, saturated,
            counts[-1] / patches if counts else 1.0, seg_gflops(meta, counts or None), masks,
            tuple(sizes[i]), resized_size(sizes[i], meta) != target,
        ))
    return results


def output_stems(files: list[Path]) -> dict[Path, str]:
    """A distinct output name per input file: its stem, qualified by its folders only where two
    inputs share a stem (a/r0.png and b/r0.png -> a_r0, b_r0), so no output overwrites another."""
    stems: dict[Path, str] = {}
    taken: set[str] = set()
    for f in files:
        stem, parents = f.stem, list(f.resolve().parent.parts[::-1])
        clash = sum(g.stem == f.stem for g in files) > 1
        while (clash or stem in taken) and parents:
            stem = f"{parents.pop(0)}_{stem}".strip("/")
            clash = False
        base, n = stem, 2
        while stem in taken:
            stem, n = f"{base}-{n}", n + 1
        stems[f] = stem
        taken.add(stem)
    return stems


def write_outputs(result: Segmentation, folder: str | Path, n_classes: int, stem: str | None = None) -> tuple[Path, Path]:
    """Write STEM_classes.png (class index per pixel, 8/16-bit grey) and STEM_overlay.png."""
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if stem is None:
        stem = Path(result.source).stem if not result.source.startswith("<") else "image"
    dtype = np.uint8 if n_classes <= 256 else np.uint16
    paths = (folder / f"{stem}_classes.png", folder / f"{stem}_overlay.png")
    for path, image in zip(paths, (Image.fromarray(result.class_map.astype(dtype)),
                                   Image.fromarray(overlay(result.view, result.class_map, n_classes)))):
        with atomic_path(path, suffix=".png") as tmp:  # no half-written PNG on Ctrl-C
            image.save(tmp, format="PNG")
    return paths


# -- analytic GFLOPs (same conventions as runtime/flops.py: 1 multiply-add = 2 FLOPs) ----------


def seg_flops(meta: dict, widths: list[int] | None) -> int:
    """Patch embedding + blocks + decoder and aux heads (1x1 on all patches; upsampling not
    counted). widths: kept patch tokens after each decision layer (None = dense). Blocks after
    decision i run on widths[i] + 1 tokens (CLS); the aux heads always see the full map."""
    a = arch_from_meta(meta)
    heads = 1 + (len(a.stages) if widths is not None else 0)
    total = 2 * a.num_patches * a.patch_dim * a.embed_dim + heads * 2 * a.num_patches * a.embed_dim * a.num_classes
    t = a.tokens
    for i in range(a.depth):
        total += block_flops(a, t, t)
        if widths is not None and i in a.stages:
            t = int(widths[a.stages.index(i)]) + 1
    return total


def seg_gflops(meta: dict, widths: list[int] | None = None) -> float | None:
    try:
        if meta.get("family") == "dovit" and widths is None and meta.get("max_keep"):
            widths = [int(meta["max_keep"])] * len(meta.get("stages") or ())
        return seg_flops(meta, widths if meta.get("family") == "dovit" else None) / 1e9
    except (KeyError, TypeError, ValueError):
        return None


def seg_gflops_table(meta: dict) -> dict:
    """For `inspect`: dense, the padded graph at its capacity C (what runs, an upper bound for any
    xi) and at C/2, C/4 (what smaller capacities would cost)."""
    try:
        table = {"dense": seg_flops(meta, None) / 1e9}
    except (KeyError, TypeError, ValueError):
        return {}
    cap, n = meta.get("max_keep"), len(meta.get("stages") or ())
    if meta.get("family") == "dovit" and cap and n:
        for c in sorted({int(cap), max(1, int(cap) // 2), max(1, int(cap) // 4)}, reverse=True):
            table[f"C={c}"] = seg_flops(meta, [c] * n) / 1e9
    return table
