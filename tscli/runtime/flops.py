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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

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

    @property
    def tokens(self) -> int:
        return self.num_patches + 1


def arch_from_meta(meta: dict) -> Arch:
    chans, h, w = meta["input_size"]
    p = int(meta["patch_size"])
    return Arch(int(meta["embed_dim"]), int(meta["depth"]), (h // p) * (w // p), chans * p * p,
                int(meta["num_classes"]), tuple(meta.get("stages") or ()))


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


def gflops(meta: dict, k: int | None = None, graph: str = "auto") -> float:
    """GFLOPs of a file (graph auto: dense if the file has no K, else padded at K or max_k)."""
    a = arch_from_meta(meta)
    if graph == "dense" or (graph == "auto" and (meta.get("family") != "ats" or not a.stages)):
        return dense_flops(a) / 1e9
    k = int(meta["max_k"] if k is None else k)
    return (ideal_flops(a, k) if graph == "ideal" else padded_flops(a, k)) / 1e9
