"""Analytic FLOPs of the exported graphs, from the file's metadata alone (no torch, no onnx).

What is counted, per image, with one multiply-add = 2 FLOPs:
- linear layers: patch embedding (as a matmul), qkv, attention proj, MLP fc1 + fc2, the head
  (on the CLS token only);
- the two attention matmuls, Q K^T and A V.
Not counted: biases, layer norms, softmax, GELU, residual adds, the ATS scoring (||v||, sums)
and the sampling itself (sort/CDF/picking), which are all O(T) or O(T^2) without a factor D and
are small next to the matmuls. Papers usually quote multiply-adds as "FLOPs" (DeiT-S: 4.6 G);
on this scale DeiT-S is 9.2 GFLOPs, so every table shows both, labelled: GFLOPs (2 per
multiply-add) and GMACs (= the papers' "GFLOPs").

Graphs (docs/design.md, ATS; T = patches + 1 tokens, S = K + 1 slots):
- dense: every block on T tokens.
- ATS padded at K (an upper bound: it ignores that K' <= K): blocks before the first stage on T
  tokens; the first ATS stage computes qkv for all T input tokens, the CLS attention row (Q K^T
  over T keys, to score), and attention rows (Q K^T and A V over T keys), proj and MLP for S
  slots only; every later block runs on S slots (a later ATS stage scores with the CLS row of
  its own attention: no extra row).
- ideal at K: the same minus the first stage's scoring row (what `tscli bench --ideal` runs).
- trimmed: per image, the slots after each stage are that image's own K' + 1 (measured counts),
  and the per-image mean is reported. Every trimmed stage gathers, so each computes its CLS row.
- ToMe (``merge_r`` = the r of each block after ToMe's clamp): block i runs qkv, attention and
  proj on its t_i input tokens and the MLP on t_i - r_i. Two matmuls of the merge are counted too,
  since they carry a channel factor: the matching similarities (Ta x Tb dot products of the
  head-averaged keys, Ta = ceil(t_i / 2), Tb = floor(t_i / 2)) and the one-hot assignment that adds
  the r sources into their destinations (Tb x r over D + 1 channels, the size riding along).
  The index bookkeeping (ranks, one-hot index picks) has no channel factor and is not counted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from ..contract import FAMILY_TOME

MLP_RATIO = 4.0  # every registered variant (timm's default); not in the metadata
FLOPS_PER_MAC = 2  # GMACs = GFLOPs / 2: the unit papers call "GFLOPs"


@dataclass(frozen=True)
class Arch:
    embed_dim: int
    depth: int
    num_patches: int
    patch_dim: int  # in_chans * patch * patch
    num_classes: int
    stages: tuple[int, ...] = ()
    mlp_ratio: float = MLP_RATIO
    num_heads: int = 1  # only ToMe's matching uses it (head-averaged keys: D / heads channels)

    @property
    def tokens(self) -> int:
        return self.num_patches + 1


def arch_from_meta(meta: dict) -> Arch:
    chans, h, w = meta["input_size"]
    p = int(meta["patch_size"])
    return Arch(int(meta["embed_dim"]), int(meta["depth"]), (h // p) * (w // p), chans * p * p,
                int(meta["num_classes"]), tuple(meta.get("stages") or ()), num_heads=int(meta.get("num_heads") or 1))


def block_flops(a: Arch, t_in: int, rows: int, score_row: bool = False) -> int:
    """One block: qkv on t_in tokens, attention/proj/MLP for ``rows`` query rows over t_in keys."""
    d = a.embed_dim
    hidden = int(a.mlp_ratio * d)
    qkv = 2 * t_in * d * 3 * d
    attn = 2 * 2 * rows * t_in * d  # Q K^T and A V over all heads
    cls = 2 * t_in * d if score_row else 0
    proj_mlp = 2 * rows * (d * d + 2 * d * hidden)
    return qkv + attn + cls + proj_mlp


def _ends(a: Arch) -> int:
    return 2 * a.num_patches * a.patch_dim * a.embed_dim + 2 * a.embed_dim * a.num_classes


def dense_flops(a: Arch) -> int:
    return _ends(a) + a.depth * block_flops(a, a.tokens, a.tokens)


def ats_flops(a: Arch, widths: Sequence[int], score_rows: int | None = None) -> int:
    """Forward FLOPs when stage i emits widths[i] slots (len(widths) == number of stages).

    ``score_rows``: how many stages (the first ones) compute a separate CLS scoring row; every
    stage when None (trimmed), 1 for padded, 0 for the ideal bound."""
    if len(widths) != len(a.stages):
        raise ValueError(f"need one width per stage ({len(a.stages)}), got {len(widths)}")
    score_rows = len(widths) if score_rows is None else score_rows
    total, t, out = _ends(a), a.tokens, iter(widths)
    for i in range(a.depth):
        if i in a.stages:
            s = int(next(out))
            total += block_flops(a, t, s, score_row=score_rows > 0)
            score_rows -= 1
            t = s
        else:
            total += block_flops(a, t, t)
    return total


def padded_flops(a: Arch, k: int) -> int:
    return ats_flops(a, [k + 1] * len(a.stages), score_rows=1)


def ideal_flops(a: Arch, k: int) -> int:
    return ats_flops(a, [k + 1] * len(a.stages), score_rows=0)


def trimmed_flops(a: Arch, counts) -> float:
    """Per-image mean; counts: rows of K'+1 per stage (the graph's kept_counts output)."""
    rows = [list(map(int, r)) for r in counts]
    if not rows:
        raise ValueError("no kept counts given")
    return sum(ats_flops(a, r) for r in rows) / len(rows)


def tome_flops(a: Arch, merge_r: Sequence[int]) -> int:
    """Forward FLOPs of ToMe when block i merges merge_r[i] tokens (len(merge_r) == depth)."""
    if len(merge_r) != a.depth:
        raise ValueError(f"need one r per block ({a.depth}), got {len(merge_r)}")
    d, hidden = a.embed_dim, int(a.mlp_ratio * a.embed_dim)
    total, t = _ends(a), a.tokens
    for r in map(int, merge_r):
        total += 2 * t * d * 3 * d + 2 * 2 * t * t * d + 2 * t * d * d  # qkv, QK^T + AV, proj
        if r > 0:
            ta, tb = (t + 1) // 2, t // 2
            total += 2 * ta * tb * (d // a.num_heads) + 2 * tb * r * (d + 1)  # matching, assignment
        t -= r
        total += 2 * t * 2 * d * hidden  # MLP on the merged tokens
    return total


def gflops(meta: dict, k: int | None = None, graph: str = "auto") -> float:
    """GFLOPs of a file (graph auto: dense if the file has no K, else padded at K or max_k;
    ToMe at its r)."""
    a = arch_from_meta(meta)
    if meta.get("family") == FAMILY_TOME and graph == "auto":
        return tome_flops(a, meta["merge_r"]) / 1e9
    if graph == "dense" or (graph == "auto" and (meta.get("family") != "ats" or not a.stages)):
        return dense_flops(a) / 1e9
    k = int(meta["max_k"] if k is None else k)
    return (ideal_flops(a, k) if graph == "ideal" else padded_flops(a, k)) / 1e9


def reduction_flops(a: Arch, family: str, counts: Sequence[int]) -> int:
    """DynamicViT / EViT when stage s keeps counts[s] patch tokens (contract.keep_counts).

    DynamicViT: the predictor (in_conv D x D, out_conv D x D/2, D/2 x D/4, D/4 x 2) on the tokens
    entering the stage, then the whole stage block on the K_s + 1 kept ones. EViT: the stage's
    qkv, attention and proj on every entering token, the fusing (one weight per token), then the
    MLP on K_s + 2 tokens (CLS, kept, fused)."""
    d, hidden = a.embed_dim, int(a.mlp_ratio * a.embed_dim)
    total, t, out = _ends(a), a.tokens, iter(counts)
    for i in range(a.depth):
        if i not in a.stages:
            total += block_flops(a, t, t)
            continue
        k = int(next(out))
        if family == "dynamicvit":
            total += 2 * (t - 1) * (d * d + d * (d // 2) + (d // 2) * (d // 4) + (d // 4) * 2)
            t = k + 1
            total += block_flops(a, t, t)
        elif family == "evit":
            total += 2 * t * d * 3 * d + 2 * 2 * t * t * d + 2 * t * d * d + 2 * (t - 1) * d
            t = k + 2
            total += 2 * t * 2 * d * hidden
        else:
            raise ValueError(f"no FLOP rule for family {family!r}")
    return total
