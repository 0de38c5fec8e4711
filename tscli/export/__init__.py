"""PyTorch -> ONNX: the exporters per family, the plugin form, the TensorRT lint, reference graphs."""
