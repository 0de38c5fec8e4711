"""Plugins for the ATS sampling step: one C++ core (csrc/ats_sampling_core.h) built three ways.

- core.py: CPU shared library via g++ + ctypes (``ats_sample_cpu``), used by tests and ORT.
- ort_custom_op.py: the plugin-form ONNX node run in ONNX Runtime through onnxruntime-extensions.
- csrc/*.cu + CMakeLists.txt: CUDA kernels and the TensorRT IPluginV3 library (libtscli_plugins.so).
- build.py: ``python -m tscli.plugins.build --check-cuda`` compiles the kernels per GPU arch.

Nothing here imports torch; heavy imports stay inside functions.
"""

PLUGIN_NAMESPACE = "tscli"
PLUGIN_VERSION = "1"
SAMPLE_PLUGIN = "ATSSample"
GATHER_PLUGIN = "ATSGather"
