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
# ToMe graphs: int64 [B, merging blocks, tokens]: after each merging block, the row holding each
# original token (CLS = 0, patch p = p + 1); tokens in one row were merged together.
OUTPUT_MERGE_SLOTS = "merge_slots"

# Model families. ``family`` in the metadata decides how every tool treats a file.
FAMILY_ATS = "ats"
FAMILY_DENSE = "dense"
FAMILY_TOME = "tome"  # token merging (ToMe): r tokens merged per block, r fixed at export
SEG_FAMILIES = ("dovit", "seg")  # segmentation: DoViT and its dense SETR baseline

# How bench/compare reference graphs are built (stamped as bench_graph_form): a cached graph of
# another form is exported again. 2: timm modules, TorchScript exporter, fusable GELU/attention.
BENCH_GRAPH_FORM = 2


def is_current_reference(meta: dict, graph: str) -> bool:
    """A cached bench/compare reference graph (``graph``: dense | ideal) built the current way."""
    return meta.get("bench_graph") == graph and meta.get("bench_graph_form") == BENCH_GRAPH_FORM


# ATS sampling schemes (docs/design.md, ATS step 4). The position is the scheme's code in the
# plugin's int attribute and in ats_sampling_core.h's enum.
SCHEMES = ("paper", "official")
# The ATS paper's top-K baseline: the same block and the same significance scores, but the K
# highest are kept (docs/design.md, "Top-K"). Plain form only: the plugin implements SCHEMES.
TOPK = "topk"
PICK_RULES = SCHEMES + (TOPK,)

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
    "weights", "dense_name", "embed_dim", "depth", "num_heads", "label_names", "pretrained",
)
# Written in addition by `tscli quantize` and the fp16 conversion: the precision, the island's node
# names (kept float32), what the file was made from and, for int8, how it was calibrated.
PRECISION_META_KEYS = ("precision", "island", "source", "quantization")
# Written in addition by segmentation exports (dovit / seg families).
SEG_META_KEYS = ("max_keep", "xi", "merge", "grid")
# Written in addition by ToMe exports: r (tokens merged per block), the r of each block after
# clamping (ToMe never merges more than half of the unprotected tokens), and proportional attention.
TOME_META_KEYS = ("r", "merge_r", "prop_attn")

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


# -- token reduction (DynamicViT, EViT): a keep rate chosen at load time ------------------------
# One input per reduction stage whose LENGTH is the number of patch tokens that stage keeps
# (float32 [K_s], values ignored, like k_select); its dim K_s is bounded by the count at the
# export's max_rate. The runner derives the counts from the rate with the method's own rule.
FAMILY_DYNAMICVIT = "dynamicvit"
FAMILY_EVIT = "evit"
REDUCTION_FAMILIES = (FAMILY_DYNAMICVIT, FAMILY_EVIT)
REDUCTION_META_KEYS = ("rate", "max_rate", "num_patches")  # rate: the default (DynamicViT: trained) rate


def keep_input(stage: int) -> str:
    return f"keep_{stage}"


def keep_dim(stage: int) -> str:
    return f"K{stage}"  # K0, K1, ...: the lint accepts dims made of K, digits and arithmetic


def fused_position(num_patches: int, stage: int) -> int:
    """kept_positions id of the token EViT fuses at ``stage`` (past every original position)."""
    return num_patches + 1 + stage


def is_reduction(meta: dict) -> bool:
    return meta.get("family") in REDUCTION_FAMILIES


def keep_counts(family: str, rate: float, num_patches: int, stages: int) -> list[int]:
    """Patch tokens kept per stage at ``rate``, by each release's own rounding (same float ops):
    DynamicViT keeps int(N * rate**s) of the ORIGINAL N at stage s = 1, 2, ...; EViT keeps
    ceil(rate * (n - 1)) of the n tokens entering the stage (CLS and the previous fused token
    included), then adds one fused token."""
    counts, n = [], num_patches + 1
    for s in range(stages):
        if family == FAMILY_DYNAMICVIT:
            counts.append(int(num_patches * rate ** (s + 1)))
        elif family == FAMILY_EVIT:
            counts.append(math.ceil(rate * (n - 1)))
            n = counts[-1] + 2
        else:
            raise ValueError(f"no keep rule for family {family!r}")
    return counts


def check_rate(rate, meta: dict) -> tuple[float, list[int]]:
    """A load-time keep rate -> (rate, kept counts per stage), or a UsageError naming the value
    and the valid range (0 < rate <= the file's max_rate, at least one token kept per stage;
    EViT: every stage must drop a token, else the release fuses nothing)."""
    max_rate, family = float(meta["max_rate"]), meta["family"]
    valid = f"valid: 0 < rate <= {max_rate:g} (max_rate chosen at export)"
    if isinstance(rate, bool):
        raise UsageError(f"rate={rate!r} is not a number; {valid}")
    try:
        value = float(rate)
    except (TypeError, ValueError):
        raise UsageError(f"rate={rate!r} is not a number; {valid}") from None
    if math.isnan(value) or not 0.0 < value <= max_rate:
        raise UsageError(f"rate={rate!r} is out of range for this file; {valid}")
    counts = keep_counts(family, value, int(meta["num_patches"]), len(meta["stages"]))
    if min(counts) < 1:
        raise UsageError(f"rate={rate!r} keeps no token at stage {counts.index(min(counts))} "
                         f"(counts {counts}); {valid}, keeping at least one token per stage")
    if family == FAMILY_EVIT:
        n = int(meta["num_patches"])
        for s, k in enumerate(counts):
            if k >= n:
                raise UsageError(f"rate={rate!r} drops no token at EViT stage {s} ({k} of {n} kept), where "
                                 f"the release would fuse nothing; give a smaller rate")
            n = k + 1
    return value, counts


def rate_caveat(meta: dict, rate: float) -> str | None:
    """DynamicViT's predictors are trained for one rate: a note when another one is used."""
    trained = meta.get("rate")
    if meta.get("family") == FAMILY_DYNAMICVIT and trained is not None and float(rate) != float(trained):
        return (f"note: DynamicViT trains its predictors for one rate, and {meta.get('model')}'s is {float(trained):g}; "
                f"at rate {float(rate):g} the kept counts follow int(N * rate^s), but accuracy may fall short of a "
                f"model trained for {float(rate):g}")
    return None


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
