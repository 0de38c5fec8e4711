"""Real labelled data that installs offline: scikit-learn's digits (1797 handwritten 8x8 images,
10 classes), upscaled to a model's input and written as an ImageFolder (``<split>/<class>/*.png``).

Used to train the small digits ViT (tscli/tools/train_digits.py) and to measure accuracy vs K
(``tscli tune``): on a trained model token selection matters, on random weights it does not.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

from ..errors import InputError, UsageError, require
from ..files import temporary_dir_beside
from ..runtime.images import IMAGE_SUFFIXES

CLASSES = tuple(str(i) for i in range(10))


def digits_arrays(size: int = 32, val_fraction: float = 0.25, seed: int = 0):
    """-> (train_images uint8 [N, size, size], train_labels, val_images, val_labels).

    The split is stratified-free but seeded, so every caller sees the same images in val.
    """
    datasets = require("sklearn.datasets", "pip install scikit-learn")
    from PIL import Image

    if not 0.0 < val_fraction < 1.0:
        raise UsageError(f"val fraction {val_fraction} must be in (0, 1)")
    digits = datasets.load_digits()
    raw = np.clip(digits.images * (255.0 / 16.0), 0, 255).astype(np.uint8)  # values 0..16 -> 0..255
    images = np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.BILINEAR)) for im in raw])
    labels = digits.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(images))
    n_val = int(round(len(images) * val_fraction))
    val, train = order[:n_val], order[n_val:]
    return images[train], labels[train], images[val], labels[val]


def write_imagefolder(folder: str | Path, size: int = 32, val_fraction: float = 0.25, seed: int = 0) -> dict[str, int]:
    """Write ``folder/train/<digit>/*.png`` and ``folder/val/<digit>/*.png``; returns counts.

    Written to a temporary folder beside the target and renamed into place, so an interrupted
    run leaves nothing half-written; an existing non-empty folder is an error.
    """
    from PIL import Image

    folder = Path(folder)
    if size < 1:
        raise UsageError(f"--size {size} is invalid; give the image side in pixels (>= 1)")
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{str(folder)!r} is a file; give a new folder path")
    if folder.exists() and any(folder.iterdir()):
        raise UsageError(f"output folder {str(folder)!r} exists and is not empty; give a new path")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tx, ty, vx, vy = digits_arrays(size, val_fraction, seed)
    tmp = temporary_dir_beside(folder)
    try:
        for split, xs, ys in (("train", tx, ty), ("val", vx, vy)):
            for c in CLASSES:
                (tmp / split / c).mkdir(parents=True)
            for i, (x, y) in enumerate(zip(xs, ys)):
                Image.fromarray(x).convert("RGB").save(tmp / split / CLASSES[y] / f"{i:04d}.png")
        if folder.exists():
            folder.rmdir()
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"train": len(tx), "val": len(vx)}


def read_imagefolder(folder: str | Path) -> tuple[list[Path], np.ndarray, list[str]]:
    """An ImageFolder (one sub-folder per class, classes in sorted order) -> (files, labels, classes)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"data folder {str(folder)!r} does not exist")
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    files, labels = [], []
    for index, name in enumerate(classes):
        for f in sorted((folder / name).rglob("*")):
            if f.suffix.lower() in IMAGE_SUFFIXES:
                files.append(f)
                labels.append(index)
    if not classes or not files:
        raise InputError(f"{str(folder)!r} is not an ImageFolder (class sub-folders with images)")
    return files, np.asarray(labels, np.int64), classes
