"""Sample images from scikit-image (bundled with the package: no download)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import require

# Varied content on purpose: faces, objects, texture, microscopy, grayscale, a huge sky.
SAMPLE_NAMES = ("astronaut", "coffee", "chelsea", "rocket", "camera", "immunohistochemistry",
                "hubble_deep_field", "coins", "colorwheel", "brick", "page", "retina")


def sample_images(n: int | None = None) -> list[tuple[str, np.ndarray]]:
    data = require("skimage.data", "pip install scikit-image")
    names = SAMPLE_NAMES[: n or len(SAMPLE_NAMES)]
    return [(name, getattr(data, name)()) for name in names]


def write_samples(folder: str | Path, n: int | None = None) -> list[Path]:
    """Save the sample images as PNG files (for `tscli run` demos)."""
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, arr in sample_images(n):
        path = folder / f"{name}.png"
        Image.fromarray(arr).save(path)
        paths.append(path)
    return paths
