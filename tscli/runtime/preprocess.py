"""Image preprocessing from the model's metadata (timm eval transform): resize, aspect kept, to
the smallest size covering the input size / crop_pct (for a square input: the shorter side to
size / crop_pct; a 2:1 segmentation input takes a 2:1 photo whole), centre-crop, scale to [0, 1],
normalise by mean/std, NCHW float32.

What happens to images that are not plain 8-bit RGB (the same rules for files, PIL images and
arrays):
- EXIF orientation is applied first, so a photo is seen upright, as viewers show it;
- 16-bit images (PNG/TIFF modes I;16*, or uint16 arrays) are scaled by 255/65535, 32-bit
  integer ones (mode I) likewise when their values fit 16 bits, else by their maximum, float
  ones (mode F) are taken as [0, 1] (values outside are clipped): no bright image turns white;
- grey and palette images become RGB through their palette; CMYK through Pillow's conversion;
- alpha is dropped (the colour channels are kept as stored, as timm's loaders do): composite
  the image yourself first if its transparent pixels matter.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from ..errors import InputError

_RESAMPLE = {"bicubic": 3, "bilinear": 2, "nearest": 0}  # PIL.Image.Resampling values
_HIGH_DEPTH = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def _scale_to_8bit(values: np.ndarray, mode: str) -> np.ndarray:
    """A 16/32-bit integer or float grey image as uint8 (see the module docstring)."""
    values = values.astype(np.float64)
    if mode == "F" or values.dtype.kind == "f" and mode not in _HIGH_DEPTH:
        scaled = values * 255.0
    else:
        top = 65535.0 if values.size == 0 or values.max() <= 65535 else float(values.max())
        scaled = values * (255.0 / top)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _rgb(im):
    """Any PIL image -> an upright 8-bit RGB image."""
    from PIL import Image, ImageOps

    im = ImageOps.exif_transpose(im)
    if im.mode in _HIGH_DEPTH or im.mode == "F":
        im = Image.fromarray(_scale_to_8bit(np.asarray(im), im.mode))
    elif im.mode == "P":
        im = im.convert("RGBA")  # through the palette (and its transparency), then alpha dropped below
    return im.convert("RGB")


def to_pil(image):
    from PIL import Image, UnidentifiedImageError

    if isinstance(image, (str, Path)):
        path = Path(image)
        if path.is_dir():
            raise InputError(f"image {str(path)!r} is a folder; give an image file (or the folder to `tscli run`)")
        if not path.is_file():
            raise InputError(f"image {str(path)!r} does not exist")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)  # refuse, don't just warn
                with Image.open(path) as im:
                    return _rgb(im)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise InputError(f"image {str(path)!r} is too large to decode safely ({exc}); "
                             f"downscale it below {Image.MAX_IMAGE_PIXELS} pixels") from None
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise InputError(f"cannot read image {str(path)!r}: {exc}") from None
    if isinstance(image, Image.Image):
        return _rgb(image)
    if isinstance(image, np.ndarray):
        shape_ok = image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (1, 3, 4))
        if image.dtype not in (np.uint8, np.uint16) or not shape_ok:
            raise InputError(f"array image must be uint8 or uint16, HxW or HxWx{{1,3,4}}; got {image.dtype} {image.shape}")
        if image.dtype == np.uint16:
            image = _scale_to_8bit(image, "I;16")
        return Image.fromarray(image.squeeze(-1) if image.ndim == 3 and image.shape[2] == 1 else image).convert("RGB")
    raise InputError(f"unsupported image type {type(image).__name__}; give a path, a PIL image or a uint8 array")


def resized_size(size: tuple[int, int], meta: dict) -> tuple[int, int]:
    """The (width, height) an image of ``size`` is resized to before the centre crop: the smallest
    that covers the input size / crop_pct, aspect kept (for a square input: the shorter side to
    size / crop_pct, timm's eval transform). Larger than the input size on a side = cropped there."""
    _, height, width = meta["input_size"]
    scale = max(height / size[1], width / size[0]) / float(meta.get("crop_pct", 1.0))
    return max(width, round(size[0] * scale)), max(height, round(size[1] * scale))


def preprocess(images, meta: dict, sizes: list | None = None) -> np.ndarray:
    """List of paths / PIL images / uint8 arrays -> float32 [B, 3, H, W]. ``sizes``, when given,
    receives each image's own (width, height) (to tell the user what the crop cut)."""
    _, height, width = meta["input_size"]
    resample = _RESAMPLE.get(meta.get("interpolation", "bicubic"), 3)
    mean = np.asarray(meta["mean"], np.float32).reshape(3, 1, 1)
    std = np.asarray(meta["std"], np.float32).reshape(3, 1, 1)
    out = []
    for image in images:
        im = to_pil(image)
        if sizes is not None:
            sizes.append(im.size)
        size = resized_size(im.size, meta)
        im = im.resize(size, resample=resample)
        left, top = (size[0] - width) // 2, (size[1] - height) // 2
        im = im.crop((left, top, left + width, top + height))
        arr = np.asarray(im, np.float32).transpose(2, 0, 1) / 255.0
        out.append((arr - mean) / std)
    if not out:
        raise InputError("no images given")
    return np.stack(out).astype(np.float32)
