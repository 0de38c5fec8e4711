"""The one small interface every execution backend implements (runner.open_backend opens one).

A backend runs one exported file (an ONNX file, or a TensorRT engine and its manifest) and knows
nothing of images, labels or K rules: the Runner (runner.py) does that on top of any backend.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

# "ort": ONNX Runtime on the CPU; "trt": a TensorRT engine built by `tscli build`;
# "ort-cuda" / "ort-trt": onnxruntime-gpu's CUDA / TensorRT execution providers.
BACKENDS = ("ort", "trt", "ort-cuda", "ort-trt")


@runtime_checkable
class Backend(Protocol):
    name: str  # one of BACKENDS
    input_names: list[str]
    output_names: list[str]
    metadata_props: dict[str, str]  # the file's metadata_props (contract.decode_metadata reads them)

    @property
    def provider(self) -> str:
        """What really runs (e.g. CPUExecutionProvider, or 'TensorRT 10.3.0')."""

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Inputs by name -> outputs by name (feeds the file does not take are ignored)."""

    def close(self) -> None:
        """Free the backend's sessions, device memory and streams (idempotent)."""


class BackendBase:
    """Context-manager behaviour shared by the backends: ``with open_backend(...) as b:``."""

    def close(self) -> None:  # pragma: no cover - every backend overrides it
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
