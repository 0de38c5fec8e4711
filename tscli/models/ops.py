"""The ATS sampling step as one torch custom op, ``tscli::ats_sample``.

Why an op: the exporter turns it into a single ONNX node ``tscli.ATSSample`` (see
tscli/export/plugin_form.py). The plain graph gets that node's body inlined from standard
operators; the plugin form keeps the node so TensorRT can run the CUDA plugin of the same name
(tscli/plugins). Its contract is the plugin's contract:

    inputs   scores   float32 [B, N]   raw s_j of the candidates (CLS excluded)
             valid    bool    [B, N]
             k_like   float32 [K]      only its length K matters (the load-time K)
    attr     scheme   "paper" | "official"
    outputs  index    int32   [B, K+1] slot -> position in the block input (CLS = 0, padding = 0)
             mask     bool    [B, K+1] slot holds a token (CLS + K' kept, then padding)
"""

from __future__ import annotations

import torch
from torch import Tensor

from .sampling import ats_pick, slot_indices


def ats_sample_reference(scores: Tensor, valid: Tensor, k_like: Tensor, scheme: str) -> tuple[Tensor, Tensor]:
    """Pure-tensor implementation (also what gets exported as the node's body)."""
    keep, _ = ats_pick(scores, valid, k_like, scheme, with_margin=False)
    index, mask = slot_indices(keep, k_like)
    return index.to(torch.int32), mask


@torch.library.custom_op("tscli::ats_sample", mutates_args=())
def ats_sample(scores: Tensor, valid: Tensor, k_like: Tensor, scheme: str) -> tuple[Tensor, Tensor]:
    return ats_sample_reference(scores, valid, k_like, scheme)


@ats_sample.register_fake
def _(scores: Tensor, valid: Tensor, k_like: Tensor, scheme: str) -> tuple[Tensor, Tensor]:
    slots = k_like.shape[0] + 1
    b = scores.shape[0]
    return scores.new_empty((b, slots), dtype=torch.int32), scores.new_empty((b, slots), dtype=torch.bool)
