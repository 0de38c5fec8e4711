"""ONNX Runtime backends: CPU (session.py) and the CUDA / TensorRT execution providers (gpu.py)."""

from .session import OrtBackend

__all__ = ["OrtBackend"]
