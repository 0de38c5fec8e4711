"""Tie bands: how close to a tie a token decision may be before two correct implementations may
legitimately decide it differently (docs/design.md, "Tie bands", has the derivation).

ATS: a sample point x picks the sorted position whose CDF value is nearest; its margin is the gap
between the nearest and the second-nearest distance, i.e. twice the distance from x to the
midpoint between the two CDF values. Each CDF value is a float sum of at most n normalised
scores (n = valid candidates), so one implementation's CDF is within n*u_s (summation in any
order plus the normalising division, u_s the unit roundoff of the sampling arithmetic, which is
always float32) plus u_a (the relative error the scores inherit from the network's activations:
float32, float16 in an fp16 file or engine, int8 in a QDQ file: half a quantization step
relative to the calibrated range, 2**-8) of the exact value; two implementations are within twice
that of each other, and the midpoint moves by as much. A decision can flip only when
|x - midpoint| <= 2 (n u_s + u_a), that is when its margin is below

    band = 4 * (n * u_s + u_a)        (fp32: 4.7e-5 for n = 196; 1.5e-5 for n = 64;
                                       fp16: 2.0e-3; int8: 1.6e-2 for n = 196)

DoViT: a token stops when q = max softmax of an aux head > xi; q comes from dot products of
length D (embed dim) and a softmax over C classes, so each implementation's q is within
(D + C) u_a of the exact value and two implementations within band = 2 (D + C) u_a of each other
(fp32, DeiT-S, 19 classes: 4.8e-5). The xi decision of a token flips only when |q - xi| <= band;
at the capacity cut two q values swap only when each is within band of the midpoint between
the last kept and the first cut value.

Score order: the picks are positions in the stable ascending order of the scores, so two tokens
whose scores are nearly equal may swap positions between implementations (one is kept where the
other was). A score s_j = (sum over H heads of a softmax probability over T keys, each from a
dot product of length D/H) * ||v_j|| (a norm over D values) carries a relative error of about
(T + D) u_a in each implementation; two scores can swap order between implementations only when
their relative gap is within order band = 4 (T + D) u_a (fp32, DeiT-S first stage: 1.4e-4).

The band only excuses a *divergence*: an image whose kept sets differ is a near-tie when every
token that differs took part (as nearest or second nearest) in a decision whose float64 margin
is within the band; any other divergence is a mismatch, and every image whose sets agree is
checked on its logits as usual.
"""

from __future__ import annotations

import numpy as np
import torch

from ..contract import TOPK
from ..errors import UsageError
from ..models.sampling import decision_contest, normalise_scores

# int8: symmetric int8 has 127 steps per sign over the calibrated |range|, half a step is
# range/254 < 2**-7.99 of it; uint8 has 255 steps over max - min <= 2 |range|: the same bound.
UNIT_ROUNDOFF = {"fp32": 2.0 ** -24, "fp16": 2.0 ** -11, "int8": 2.0 ** -8}
SAMPLING_ROUNDOFF = UNIT_ROUNDOFF["fp32"]  # the sampling step always runs in float32


def check_precision(precision: str) -> float:
    if precision not in UNIT_ROUNDOFF:
        raise UsageError(f"unknown precision {precision!r}; valid: {', '.join(UNIT_ROUNDOFF)}")
    return UNIT_ROUNDOFF[precision]


def ats_band(n_valid: int, precision: str = "fp32") -> float:
    """Margin below which an ATS decision over ``n_valid`` candidates may legitimately flip."""
    return 4.0 * (int(n_valid) * SAMPLING_ROUNDOFF + check_precision(precision))


def dovit_band(embed_dim: int, num_classes: int, precision: str = "fp32") -> float:
    """|q - xi| (or |q - the capacity cut|) below which a DoViT decision may flip."""
    return 2.0 * (int(embed_dim) + int(num_classes)) * check_precision(precision)


def order_band(tokens: int, embed_dim: int, precision: str = "fp32") -> float:
    """Relative score gap below which two tokens may swap places in the score order."""
    return 4.0 * (int(tokens) + int(embed_dim)) * check_precision(precision)


def ats_band_formula(precision: str = "fp32") -> str:
    return (f"point decision margin <= 4*(n*u_fp32 + u_{precision}) (n = valid candidates), or a swap of two tokens "
            f"whose scores differ by <= 4*(T + D)*u_{precision} relative (T tokens, D embed dim); u = unit roundoff "
            "(docs/design.md, Tie bands)")


def dovit_band_formula(precision: str = "fp32") -> str:
    return f"|q - xi| or |q - capacity cut| <= 2*(D + C)*u_{precision}, D = embed dim, C = classes"


def normalised(scores, valid) -> np.ndarray:
    """The normalised scores S in float64 (what the order is decided on)."""
    s = torch.as_tensor(np.asarray(scores), dtype=torch.float64)
    v = torch.as_tensor(np.asarray(valid), dtype=torch.bool)
    return normalise_scores(s, v).numpy()


def explain(mine: set, theirs: set, candidates, scores, valid, k: int, scheme: str, embed_dim: int,
            precision: str) -> tuple[float, float, str]:
    """Why two kept sets of one stage differ: (margin, band, kind) of the least explicable
    differing token, kind "point decision" or "score order"; inside its band means a near-tie.

    mine/theirs: original token positions; candidates [N], scores [N], valid [N] of one image."""
    if scheme == TOPK:  # no sample points: a top-K pick is an order decision only
        contest = np.full(len(np.asarray(scores)), np.inf)
    else:
        contest = contest_margins(np.asarray(scores)[None], np.asarray(valid)[None], k, scheme)[0]
    S = normalised(np.asarray(scores)[None], np.asarray(valid)[None])[0]
    index = {int(p): j for j, p in enumerate(np.asarray(candidates))}
    band_point = ats_band(int(np.asarray(valid).sum()), precision)
    band_order = order_band(len(index) + 1, embed_dim, precision)
    worst = (-1.0, 0.0, 0.0, "point decision")  # (ratio, margin, band, kind)
    for token in mine ^ theirs:
        j = index.get(token)
        if j is None:  # a position that was not a candidate of this stage: nothing explains it
            return float("inf"), band_point, "point decision"
        options = [(contest[j] / band_point, contest[j], band_point, "point decision")]
        partners = [index[p] for p in ((theirs - mine) if token in mine else (mine - theirs)) if p in index]
        if partners:
            gap = min(abs(S[j] - S[i]) / max(S[j], S[i], 1e-300) for i in partners)
            options.append((gap / band_order, gap, band_order, "score order"))
        best = min(options)
        worst = max(worst, best)
    return worst[1], worst[2], worst[3]


def contest_margins(scores, valid, k: int, scheme: str) -> np.ndarray:
    """For each candidate of one stage, the smallest float64 margin of a decision in which it was
    the nearest or the second-nearest position (inf where it took part in none): a token whose
    value is below the band could have been picked, or not, by a correct implementation.

    scores/valid: [B, N] (the reference's raw candidate scores and validity); returns [B, N]."""
    s = torch.as_tensor(np.asarray(scores), dtype=torch.float64)
    v = torch.as_tensor(np.asarray(valid), dtype=torch.bool)
    return decision_contest(s, v, torch.zeros(int(k), dtype=torch.float64), scheme).numpy()
