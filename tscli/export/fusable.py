"""Write the two hot patterns of a ViT the way ONNX Runtime (and TensorRT) fuse them.

Measured on deit_s (docs/design.md "Graph speed"): the dynamo exporter writes exact GELU as
``0.5 * (1 + erf(x / sqrt 2))`` times x, an operand order ONNX Runtime's Gelu fusion does not
match, so each MLP ran five elementwise passes over its widest tensor instead of one BiasGelu; and
``scaled_dot_product_attention`` comes out with k reshaped, transposed and reshaped back, both q
and k scaled, so the key transpose cannot fold into the MatMul. Together about 7 % of dense
DeiT-S at batch 8.

The cure is at the source, for the length of one export: exact-GELU modules compute
``(x * (erf(x / sqrt 2) + 1)) * 0.5`` (the order the fusion matches; same function), and timm's
attention takes its explicit path (``q * scale @ k^T``, softmax, ``@ v``: the key transpose and
the scale fold into one FusedMatMul). Both are standard operators, so files stay portable and
TensorRT-parseable. The modules are restored afterwards: the PyTorch reference is untouched.
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterator

import torch
from torch import Tensor

_SQRT2 = math.sqrt(2.0)


class ErfGelu(torch.nn.Module):
    """Exact GELU with the operand order ONNX Runtime's Gelu/BiasGelu fusion recognises."""

    def forward(self, x: Tensor) -> Tensor:
        return x * (torch.erf(x / _SQRT2) + 1.0) * 0.5


def _is_exact_gelu(module: torch.nn.Module) -> bool:
    # torch's nn.GELU (approximate="none") and timm's own GELU class (F.gelu, exact)
    if isinstance(module, torch.nn.GELU):
        return module.approximate == "none"
    return type(module).__name__ == "GELU" and type(module).__module__.startswith("timm.")


@contextlib.contextmanager
def fusable_forms(module: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Within the block, ``module`` exports GELU and attention in their fusable forms."""
    swapped: list[tuple[torch.nn.Module, str, torch.nn.Module]] = []
    unfused: list[torch.nn.Module] = []
    try:
        for parent in list(module.modules()):
            for name, child in list(parent.named_children()):
                if _is_exact_gelu(child):
                    swapped.append((parent, name, child))
                    setattr(parent, name, ErfGelu())
            if getattr(parent, "fused_attn", False) is True:
                unfused.append(parent)
                parent.fused_attn = False
        yield module
    finally:
        for parent, name, child in swapped:
            setattr(parent, name, child)
        for attn in unfused:
            attn.fused_attn = True
