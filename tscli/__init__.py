"""tscli: export token-sampling vision transformers (ATS, DoViT, DynamicViT) to ONNX and TensorRT."""

__version__ = "0.1.0"
