"""PyTorch -> ONNX: the graph contract, the exporter, the lint and post-export validation."""
