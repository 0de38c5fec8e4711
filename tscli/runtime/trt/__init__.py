"""TensorRT side of tscli: engine builder, manifest, runtime backend, host probing.

Nothing here imports tensorrt or the CUDA bindings at module import; each function that needs them
imports them lazily and turns a missing package into one line that says what to install.
"""
