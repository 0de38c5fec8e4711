"""Safe checkpoint loading: never executes code from the file (weights_only / safetensors).

Accepts what users actually have: a timm state_dict (.pth/.pt/.bin/.safetensors) or the
official DeiT release format {"model": state_dict} (also {"state_dict": ...}, "module." prefixes).
A checkpoint that does not fit is an error naming the missing/unexpected/mis-shaped keys.
"""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import torch

from ..errors import CheckpointError, first_line
from ..files import sha256_file

_WRAPPER_KEYS = ("model", "state_dict", "model_ema", "module")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"checkpoint {str(path)!r} is a folder; give a .pth/.pt/.bin/.safetensors file")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist; give a .pth/.pt/.bin/.safetensors file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path), device="cpu")
        else:
            with warnings.catch_warnings():  # torch warns about old pickle protocols: the error below says it all
                warnings.simplefilter("ignore")
                sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # weights_only refused something that is not a tensor
        raise CheckpointError(_refusal(path, exc)) from None
    except Exception as exc:  # corrupt file, not a checkpoint, ...
        raise CheckpointError(f"cannot read checkpoint {str(path)!r}: {first_line(exc)}") from None
    for key in _WRAPPER_KEYS:
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
            break
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"checkpoint {str(path)!r} holds no state_dict (expected a dict of tensors or {{'model': ...}})")
    return {k.removeprefix("module."): v for k, v in sd.items()}


def _refusal(path: Path, exc: Exception) -> str:
    """Why torch's tensors-only unpickler refused the file, in tscli's words: never its advice to
    switch the check off (for a file that holds code, that advice is the dangerous part)."""
    text = str(exc)
    if "Unsupported operand" in text or "Unsupported class" in text:
        return (f"cannot read checkpoint {str(path)!r}: it is not a file a current torch.save wrote (not a checkpoint, "
                "or an old pickle format that tscli's tensors-only loader does not read); re-save it with "
                "torch.save(state_dict, ...) or as .safetensors")
    what = next((ln.strip() for ln in text.splitlines() if "GLOBAL" in ln or "Unsupported global" in ln), "")
    return (f"checkpoint {str(path)!r} holds Python objects besides tensors{f' ({what[:200]})' if what else ''}; "
            "tscli loads tensors only, because unpickling anything else can run code from the file. Re-save "
            "the weights with torch.save(model.state_dict(), ...) or as .safetensors")


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
    bad = sorted(k for k, v in sd.items() if v.is_floating_point() and not torch.isfinite(v).all())
    if bad:
        raise CheckpointError(f"checkpoint {str(path)!r} has NaN or infinite values in {_short(bad)}; "
                              "the weights are corrupt (or the training diverged)")
    model.load_state_dict(sd, strict=True)
    return sha256_file(path)
