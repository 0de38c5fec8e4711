"""Pretrained ImageNet weights for the registered DeiT / ViT backbones, through timm's own hub
loading (``export --pretrained [TAG]``).

ATS has no parameters, so an off-the-shelf DeiT checkpoint is already a working ATS model: with
real weights the predictions and the kept tokens mean something. Only the hub's
``model.safetensors`` is ever read (timm's loader is pointed at that file), so loading never runs
code from a file.

Where the file comes from: huggingface_hub's cache (``$HF_HOME/hub/models--timm--NAME/snapshots/
REV/model.safetensors``, ``refs/main`` holding REV) is looked at first, without the network; only a
file missing there is downloaded. The snapshot's revision and the file's SHA-256 are recorded in
the exported file's metadata, so ``parity`` and ``bench`` rebuild the same model from the cache
(offline) and refuse a different file.
"""

from __future__ import annotations

import contextlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import contract as C
from ..errors import CheckpointError, UsageError, first_line
from ..files import sha256_file
from .registry import ViTConfig

WEIGHTS_FILE = "model.safetensors"
HUB_ORG = "timm"
# Registered backbone -> the timm pretrained weights that fit it exactly (same architecture and
# 1000 ImageNet classes); the first is what a bare --pretrained takes. A variant uses its own
# name or its dense baseline's (deit_s_ats -> deit_s).
BACKBONE_WEIGHTS = {
    "deit_t": ("deit_tiny_patch16_224.fb_in1k", "vit_tiny_patch16_224.augreg_in21k_ft_in1k"),
    "deit_s": ("deit_small_patch16_224.fb_in1k", "vit_small_patch16_224.augreg_in21k_ft_in1k",
               "vit_small_patch16_224.augreg_in1k"),
    "deit_b": ("deit_base_patch16_224.fb_in1k", "vit_base_patch16_224.augreg2_in21k_ft_in1k",
               "vit_base_patch16_224.augreg_in21k_ft_in1k", "vit_base_patch16_224.augreg_in1k"),
}
DEFAULT_TAG = "default"  # what a bare --pretrained means: the backbone's first entry
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_PREPROCESSING = ("mean", "std", "crop_pct", "interpolation")


@dataclass(frozen=True)
class PretrainedWeights:
    """What was loaded: recorded as metadata ``pretrained`` (this dict) and ``weights`` (the hash)."""

    name: str  # timm's name.tag, e.g. deit_small_patch16_224.fb_in1k
    revision: str | None  # the hub snapshot the file came from (a commit hash)
    sha256: str
    preprocessing: dict  # mean, std, crop_pct, interpolation the weights were trained with

    @property
    def hub_id(self) -> str:
        return f"{HUB_ORG}/{self.name}"

    def record(self) -> dict:
        return {"name": self.name, "hub_id": self.hub_id, "file": WEIGHTS_FILE, "revision": self.revision}


def backbone_of(cfg: ViTConfig) -> str | None:
    for name in (cfg.name, cfg.dense_name):
        if name in BACKBONE_WEIGHTS:
            return name
    return None


def resolve(cfg: ViTConfig, tag: str | None = DEFAULT_TAG) -> str:
    """--pretrained TAG for ``cfg`` -> timm's full weights name, or a UsageError listing the tags
    that fit. TAG: ``default``, a timm tag (fb_in1k) or a full name (deit_small_patch16_224.fb_in1k)."""
    if cfg.family in C.SEG_FAMILIES:
        raise UsageError(f"--pretrained loads ImageNet classification weights; {cfg.name!r} is a segmentation model "
                         "(its decoder has no pretrained weights here): pass a segmentation checkpoint with --checkpoint")
    backbone = backbone_of(cfg)
    if backbone is None:
        fits = ", ".join(sorted(BACKBONE_WEIGHTS))
        raise UsageError(f"no pretrained weights are known for {cfg.name!r}; --pretrained works for the {fits} "
                         "backbones and their variants (or pass --checkpoint FILE)")
    names = BACKBONE_WEIGHTS[backbone]
    tag = DEFAULT_TAG if tag in (None, "", DEFAULT_TAG) else tag
    if tag == DEFAULT_TAG:
        return names[0]
    for name in names:
        if tag in (name, name.split(".", 1)[1]):
            return name
    valid = ", ".join(f"{n.split('.', 1)[1]} ({n})" for n in names)
    raise UsageError(f"unknown --pretrained {tag!r} for {cfg.name}; valid: {valid}")


def _unreachable(name: str, revision: str | None) -> str:
    from huggingface_hub import constants

    url = f"https://huggingface.co/{HUB_ORG}/{name}/resolve/{revision or 'main'}/{WEIGHTS_FILE}"
    return (f"pretrained weights {name} are not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and the hub "
            f"cannot be reached: fetch {url} into that cache on a connected machine (huggingface_hub's layout, e.g. "
            f"`hf download {HUB_ORG}/{name} {WEIGHTS_FILE}`), or pass the weights with --checkpoint FILE")


@contextlib.contextmanager
def _quiet_hub():
    """huggingface_hub logs a line per retry of an unreachable hub; the error below says it all."""
    log = logging.getLogger("huggingface_hub")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def locate(name: str, revision: str | None = None) -> Path:
    """The cached ``model.safetensors`` of ``name`` (at ``revision``, default the cached main),
    downloaded only when the cache lacks it."""
    from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import LocalEntryNotFoundError

    repo = f"{HUB_ORG}/{name}"
    cached = try_to_load_from_cache(repo, WEIGHTS_FILE, revision=revision)
    if isinstance(cached, str):
        return Path(cached)
    if constants.HF_HUB_OFFLINE:
        raise CheckpointError(_unreachable(name, revision))
    try:
        with _quiet_hub():
            return Path(hf_hub_download(repo, WEIGHTS_FILE, revision=revision))
    except LocalEntryNotFoundError:
        raise CheckpointError(_unreachable(name, revision)) from None
    except (OSError, ValueError) as exc:  # repository, revision or file not on the hub, HTTP errors
        raise CheckpointError(f"cannot fetch pretrained weights {repo} ({WEIGHTS_FILE}) from the hub: "
                              f"{first_line(exc, 200)}; pass the weights with --checkpoint FILE instead") from None


def load_pretrained_weights(module: torch.nn.Module, cfg: ViTConfig, tag: str | None = DEFAULT_TAG,
                            revision: str | None = None) -> PretrainedWeights:
    """Load the weights ``tag`` names into ``module`` (strictly) with timm's load_pretrained, from
    the hub snapshot ``revision`` (default: the cached main, else the hub's)."""
    from timm.models import get_pretrained_cfg, load_pretrained

    name = resolve(cfg, tag)
    pcfg = get_pretrained_cfg(name)
    if pcfg is None:  # a timm without these weights
        raise CheckpointError(f"this timm does not know the pretrained weights {name}; upgrade timm or use --checkpoint")
    pcfg = pcfg.to_dict()
    size = tuple(pcfg.get("input_size") or ())
    if pcfg.get("num_classes") != cfg.num_classes or size[1:] != (cfg.img_size, cfg.img_size):
        raise CheckpointError(f"pretrained weights {name} ({pcfg.get('num_classes')} classes, input {size}) do not fit "
                              f"{cfg.name} ({cfg.num_classes} classes, {cfg.img_size}x{cfg.img_size})")
    path = locate(name, revision)
    snapshot = path.parent.name if _COMMIT.match(path.parent.name) else None
    # timm's hub loading, pinned to the snapshot just located: it reads that very file from the
    # cache (a commit-hash revision needs no network), and only as safetensors.
    pcfg.update(source="hf-hub", hf_hub_id=f"{HUB_ORG}/{name}" + (f"@{snapshot}" if snapshot else ""),
                hf_hub_filename=WEIGHTS_FILE, custom_load=False, url="", file=None, state_dict=None)
    try:
        with _quiet_hub():
            load_pretrained(module, pretrained_cfg=pcfg, num_classes=cfg.num_classes, strict=True)
    except RuntimeError as exc:  # load_state_dict: missing / unexpected / mis-shaped keys, on several lines
        why = " ".join(str(exc).split()).replace(f"Error(s) in loading state_dict for {type(module).__name__}: ", "")
        raise CheckpointError(f"pretrained weights {name} do not fit {cfg.name}: {why[:250]}") from None
    except Exception as exc:  # the cached file is not a readable safetensors file (safetensors' own error type)
        raise CheckpointError(f"cannot read pretrained weights {name} from {str(path)!r}: {first_line(exc, 200)}") from None
    bad = [k for k, v in module.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"pretrained weights {name} ({str(path)!r}) have NaN or infinite values in {bad[0]}")
    prep = {k: (tuple(pcfg[k]) if isinstance(pcfg[k], (list, tuple)) else pcfg[k]) for k in _PREPROCESSING if pcfg.get(k)}
    return PretrainedWeights(name, snapshot, sha256_file(path), prep)
