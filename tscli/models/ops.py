"""The ATS sampling step as one torch custom op, ``tscli::ats_sample``.

Why an op: the exporter turns it into a single ONNX node ``tscli.ATSSample`` (see
tscli/export/plugin_form.py). The plain graph gets that node's body inlined from standard
operators; the plugin form keeps the node so TensorRT can run the CUDA plugin of the same name
(tscli/plugins). Its contract is the plugin's contract:

    inputs   scores   float32 [B, N]   raw s_j of the candidates (CLS excluded)
             valid    int32   [B, N]   1 = candidate, 0 = not (any nonzero counts as 1)
             k_like   float32 [K]      only its length K matters (the load-time K)
    attr     scheme   "paper" | "official"
    outputs  index    int32   [B, K+1] slot -> position in the block input (CLS = 0, padding = 0)
             mask     int32   [B, K+1] 1 = slot holds a token (CLS + K' kept, then padding), else 0

int32 rather than bool for valid and mask, and float32 only for scores: TensorRT plugins cannot
take or produce BOOL/UINT8 tensors, and the plugin accepts float32 scores only (a strongly typed
TensorRT 11 network takes the node's types from the graph). ``sample_slots`` is the one place the
model calls the op: it casts bool -> int32 and scores -> float32 before the node, int32 -> bool
after it, so those casts are graph nodes around tscli.ATSSample.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .sampling import ats_pick, slot_indices


def ats_sample_reference(scores: Tensor, valid: Tensor, k_like: Tensor, scheme: str) -> tuple[Tensor, Tensor]:
    """Pure-tensor implementation of the contract above (also what gets exported as the node's
    body): int32 valid in, int32 index and mask out."""
    keep, _ = ats_pick(scores, valid != 0, k_like, scheme, with_margin=False)
    index, mask = slot_indices(keep, k_like)
    return index.to(torch.int32), mask.to(torch.int32)


@torch.library.custom_op("tscli::ats_sample", mutates_args=())
def ats_sample(scores: Tensor, valid: Tensor, k_like: Tensor, scheme: str) -> tuple[Tensor, Tensor]:
    return ats_sample_reference(scores, valid, k_like, scheme)


@ats_sample.register_fake
def _(scores: Tensor, valid: Tensor, k_like: Tensor, scheme: str) -> tuple[Tensor, Tensor]:
    slots = k_like.shape[0] + 1
    b = scores.shape[0]
    return scores.new_empty((b, slots), dtype=torch.int32), scores.new_empty((b, slots), dtype=torch.int32)


def sample_slots(scores: Tensor, valid: Tensor, k_like: Tensor, scheme: str) -> tuple[Tensor, Tensor]:
    """The op on the model's own types: scores of any float dtype and a bool valid in, (index int32,
    mask bool) out. The casts are what the exported graph holds around the node: the node itself
    always sees float32 scores and int32 flags (in an fp16 graph too)."""
    index, mask = torch.ops.tscli.ats_sample(scores.float(), valid.to(torch.int32), k_like.float(), scheme)
    return index, mask != 0
