"""Image preprocessing from the model's metadata (timm eval transform): resize the shorter side
to size / crop_pct, centre-crop, scale to [0, 1], normalise by mean/std, NCHW float32."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InputError

_RESAMPLE = {"bicubic": 3, "bilinear": 2, "nearest": 0}  # PIL.Image.Resampling values


def to_pil(image):
    from PIL import Image, UnidentifiedImageError

    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.is_file():
            raise InputError(f"image {str(path)!r} does not exist")
        try:
            with Image.open(path) as im:
                return im.convert("RGB")
        except (UnidentifiedImageError, OSError) as exc:
            raise InputError(f"cannot read image {str(path)!r}: {exc}") from None
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3, 4)):
            raise InputError(f"array image must be uint8 HxW or HxWx{{1,3,4}}; got {image.dtype} {image.shape}")
        return Image.fromarray(image.squeeze(-1) if image.ndim == 3 and image.shape[2] == 1 else image).convert("RGB")
    raise InputError(f"unsupported image type {type(image).__name__}; give a path, a PIL image or a uint8 array")


def preprocess(images, meta: dict) -> np.ndarray:
    """List of paths / PIL images / uint8 arrays -> float32 [B, 3, H, W]."""
    _, height, width = meta["input_size"]
    crop_pct = float(meta.get("crop_pct", 1.0))
    resample = _RESAMPLE.get(meta.get("interpolation", "bicubic"), 3)
    mean = np.asarray(meta["mean"], np.float32).reshape(3, 1, 1)
    std = np.asarray(meta["std"], np.float32).reshape(3, 1, 1)
    out = []
    for image in images:
        im = to_pil(image)
        scale = max(height, width) / crop_pct / min(im.size)
        size = (max(width, round(im.size[0] * scale)), max(height, round(im.size[1] * scale)))
        im = im.resize(size, resample=resample)
        left, top = (size[0] - width) // 2, (size[1] - height) // 2
        im = im.crop((left, top, left + width, top + height))
        arr = np.asarray(im, np.float32).transpose(2, 0, 1) / 255.0
        out.append((arr - mean) / std)
    if not out:
        raise InputError("no images given")
    return np.stack(out).astype(np.float32)
