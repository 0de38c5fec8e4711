"""TensorRT runtime backend of tscli: engines and their manifests, optimization profiles, the plugin
registry and host probing (the engine builder is tscli/tools/engine_build.py).

Nothing here imports tensorrt or the CUDA bindings at module import; each function that needs them
imports them lazily and turns a missing package into one line that says what to install.
"""
