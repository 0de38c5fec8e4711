"""The exported graph's contract (DESIGN.md section 3): tensor names, dims and metadata keys.

Shared by the exporter (writes it), the runtime (reads it, no torch/onnx needed) and the lint.
"""

from __future__ import annotations

import json

from ..errors import UsageError

INPUT_IMAGES = "images"
INPUT_K = "k_select"  # float32 [K]: only its length matters; K is chosen at load time
DIM_BATCH = "batch"
DIM_K = "K"

OUTPUT_LOGITS = "logits"
OUTPUT_COUNTS = "kept_counts"  # int64 [B, stages]: K' + 1 per stage (CLS included)
OUTPUT_POSITIONS = "kept_positions"  # int64 [B, stages, K+1]: original token positions, -1 = padding

# Segmentation (DoViT / dense SETR) graphs
INPUT_XI = "xi"  # float32 scalar: DoViT threshold; a default initializer of the same name holds the export value
OUTPUT_SEG = "seg_logits"  # float32 [B, classes, H, W]
# kept_counts (OUTPUT_COUNTS) for DoViT: int64 [B, decisions], patch tokens still active after each decision layer
OUTPUT_KEEP_MASKS = "kept_masks"  # bool [B, decisions, patches]: which patch tokens are still active
OUTPUT_SATURATED = "saturated"  # bool [B]: the capacity cut tokens that wanted to continue

# ATS sampling schemes (DESIGN.md section 2, step 4). The position is the scheme's code in the
# plugin's int attribute and in ats_sampling_core.h's enum.
SCHEMES = ("paper", "official")

PLUGIN_DOMAIN = "tscli"
SAMPLE_OP = "ATSSample"
PLUGIN_VERSION = "1"

META_PREFIX = "tscli."
# Keys written into metadata_props of every exported file (values JSON-encoded); the runtime
# reads them back instead of asking the user again.
META_KEYS = (
    "tool_version", "model", "family", "max_k", "stages", "scheme", "mode", "form", "input_size",
    "patch_size", "mean", "std", "crop_pct", "interpolation", "num_classes", "labels", "opset",
    "weights", "dense_name", "embed_dim", "depth", "num_heads", "label_names",
)
# Written in addition by segmentation exports (dovit / seg families).
SEG_META_KEYS = ("max_keep", "xi", "merge", "grid")


def encode_metadata(values: dict) -> dict[str, str]:
    return {META_PREFIX + k: json.dumps(v) for k, v in values.items()}


def decode_metadata(props: dict[str, str]) -> dict:
    """metadata_props (or ORT's custom_metadata_map) -> dict; keys without our prefix are ignored."""
    out = {}
    for key, raw in props.items():
        if key.startswith(META_PREFIX):
            try:
                out[key[len(META_PREFIX):]] = json.loads(raw)
            except json.JSONDecodeError:
                out[key[len(META_PREFIX):]] = raw
    return out


def check_xi(xi) -> float:
    """A DoViT threshold as a float in [0, 1] (NaN and non-numbers refused), or a UsageError."""
    try:
        value = float(xi)
    except (TypeError, ValueError):
        raise UsageError(f"xi={xi!r} is not a number; valid: 0 <= xi <= 1") from None
    if not 0.0 <= value <= 1.0:  # also rejects NaN
        raise UsageError(f"xi={xi!r} is out of range; valid: 0 <= xi <= 1 (1.0 = no token stops)")
    return value
