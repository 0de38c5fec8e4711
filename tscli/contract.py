"""The exported graph's contract (docs/design.md, "Graph contract"): tensor names, dims, metadata
keys and the rules every layer applies to them (K, xi, families, weights, plugin op IDs).

This module is the root of the package's import graph: the models, the exporter, the torch-free
runtime and the plugins all read their names and rules from here and from nowhere else. It
imports nothing but the error hierarchy (no numpy, torch or onnx).
"""

from __future__ import annotations

import json
import math
import numbers

from .errors import UsageError

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

# Model families. ``family`` in the metadata decides how every tool treats a file.
FAMILY_ATS = "ats"
FAMILY_DENSE = "dense"
SEG_FAMILIES = ("dovit", "seg")  # segmentation: DoViT and its dense SETR baseline

# ATS sampling schemes (docs/design.md, ATS step 4). The position is the scheme's code in the
# plugin's int attribute and in ats_sampling_core.h's enum.
SCHEMES = ("paper", "official")

# The sampling step as one ONNX node / TensorRT plugin: domain = plugin namespace.
PLUGIN_DOMAIN = "tscli"
SAMPLE_OP = "ATSSample"
GATHER_OP = "ATSGather"
PLUGIN_VERSION = "1"

# The sampling island (docs/design.md, "Reduced precision"): the ONNX exporter records, on every
# node, the classes of the modules it was traced in under NODE_SCOPE_KEY; the nodes traced inside
# ISLAND_SCOPE (models/sampling.py) decide which tokens survive and always run in float32.
NODE_SCOPE_KEY = "pkg.torch.onnx.class_hierarchy"
ISLAND_SCOPE = "tscli.models.sampling.SamplingIsland"

# Numeric precision of a file's network (metadata "precision"; absent = fp32). int8 files hold
# QuantizeLinear/DequantizeLinear pairs (QDQ form); fp16 files keep float32 inputs and outputs.
PRECISIONS = ("fp32", "fp16", "int8")

META_PREFIX = "tscli."
# Keys written into metadata_props of every exported file (values JSON-encoded); the runtime
# reads them back instead of asking the user again.
META_KEYS = (
    "tool_version", "model", "family", "max_k", "stages", "scheme", "mode", "form", "input_size",
    "patch_size", "mean", "std", "crop_pct", "interpolation", "num_classes", "labels", "opset",
    "weights", "dense_name", "embed_dim", "depth", "num_heads", "label_names",
)
# Written in addition by `tscli quantize` and the fp16 conversion: the precision, the island's node
# names (kept float32), what the file was made from and, for int8, how it was calibrated.
PRECISION_META_KEYS = ("precision", "island", "source", "quantization")
# Written in addition by segmentation exports (dovit / seg families).
SEG_META_KEYS = ("max_keep", "xi", "merge", "grid")

_RANDOM_PREFIX = "random(seed="


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


def is_segmentation(meta: dict) -> bool:
    return meta.get("family") in SEG_FAMILIES


# -- K: the number of sample points per ATS stage, chosen at load time -------------------------


def check_k(k, max_k: int, source: str = "") -> int:
    """``k`` as an int in 1..max_k, or a UsageError naming the value, where it came from (e.g.
    "--k-grid") and the valid range.

    A bool or a float is not a K (True would silently run at K=1 and 2.7 at K=2), even when it
    compares equal to an integer; numpy integers are fine.
    """
    where = f" in {source}" if source else ""
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise UsageError(f"K={k!r}{where} is not an integer; valid: 1..{max_k} (max_k chosen at export)")
    if not 1 <= int(k) <= int(max_k):
        raise UsageError(f"K={k!r}{where} is out of range for this file; valid: 1..{max_k} (max_k chosen at export)")
    return int(k)


def default_ks(max_k: int) -> list[int]:
    """The K values a check uses when none are given: max_k and max_k // 2 (largest first)."""
    return sorted({int(max_k), max(1, int(max_k) // 2)}, reverse=True)


# -- xi: the DoViT threshold, chosen at load time ------------------------------------------------


def check_xi(xi) -> float:
    """A DoViT threshold as a float in [0, 1] (NaN and non-numbers refused), or a UsageError."""
    if isinstance(xi, bool):
        raise UsageError(f"xi={xi!r} is not a number; valid: 0 <= xi <= 1")
    try:
        value = float(xi)
    except (TypeError, ValueError):
        raise UsageError(f"xi={xi!r} is not a number; valid: 0 <= xi <= 1") from None
    if math.isnan(value) or not 0.0 <= value <= 1.0:
        raise UsageError(f"xi={xi!r} is out of range; valid: 0 <= xi <= 1 (1.0 = no token stops)")
    return value


# -- weights: where a file's weights came from (metadata "weights") ----------------------------


def random_weights(seed: int) -> str:
    """The metadata value of seeded random weights (parity re-creates them from it)."""
    return f"{_RANDOM_PREFIX}{int(seed)})"


def random_seed(weights: str | None) -> int | None:
    """The seed of a ``random(seed=N)`` weights value, or None for checkpoint weights."""
    text = str(weights or "")
    if not (text.startswith(_RANDOM_PREFIX) and text.endswith(")")):
        return None
    try:
        return int(text[len(_RANDOM_PREFIX):-1])
    except ValueError:
        return None
