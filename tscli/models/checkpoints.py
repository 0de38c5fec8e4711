"""Safe checkpoint loading: never executes code from the file (weights_only / safetensors).

Accepts what users actually have: a timm state_dict (.pth/.pt/.bin/.safetensors) or the
official DeiT release format {"model": state_dict} (also {"state_dict": ...}, "module." prefixes).
A checkpoint that does not fit is an error naming the missing/unexpected/mis-shaped keys.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import CheckpointError, first_line
from ..files import sha256_file

_WRAPPER_KEYS = ("model", "state_dict", "model_ema", "module")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist; give a .pth/.pt/.bin/.safetensors file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path), device="cpu")
        else:
            sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file, pickle with code (refused by weights_only), ...
        raise CheckpointError(f"cannot read checkpoint {str(path)!r}: {first_line(exc)}") from None
    for key in _WRAPPER_KEYS:
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
            break
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"checkpoint {str(path)!r} holds no state_dict (expected a dict of tensors or {{'model': ...}})")
    return {k.removeprefix("module."): v for k, v in sd.items()}


def _short(keys: list[str], n: int = 6) -> str:
    return ", ".join(keys[:n]) + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


def load_into(model: torch.nn.Module, path: str | Path, model_name: str) -> str:
    """Load strictly; returns the file's sha256. Raises CheckpointError naming what does not fit."""
    sd = read_state_dict(path)
    own = model.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    shapes = sorted(k for k in set(own) & set(sd) if tuple(own[k].shape) != tuple(sd[k].shape))
    problems = []
    if missing:
        problems.append(f"missing keys: {_short(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_short(unexpected)}")
    if shapes:
        k = shapes[0]
        problems.append(f"shape mismatch: {_short(shapes)} (e.g. {k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)})")
    if problems:
        raise CheckpointError(f"checkpoint {str(path)!r} does not fit {model_name}: " + "; ".join(problems))
    model.load_state_dict(sd, strict=True)
    return sha256_file(path)
