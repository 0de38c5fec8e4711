"""Plugins for the ATS sampling step: one C++ core (csrc/ats_sampling_core.h) built three ways.

- core.py: CPU shared library via g++ + ctypes (``ats_sample_cpu``), used by the tests.
- ort_ops.py: the native ONNX Runtime op library (csrc/ats_ort_ops.cpp) that runs the plugin
  form's tscli.ATSSample nodes on the CPU (the core's stages, rearranged for one CPU thread in
  csrc/ats_sampling_fast.h).
- csrc/*.cu + CMakeLists.txt: CUDA kernels and the TensorRT IPluginV3 library (libtscli_plugins.so).
- nvcc_check.py: ``python -m tscli.plugins.nvcc_check --check-cuda`` compiles the kernels per GPU arch.
- locate.py: where the TensorRT plugin library is looked for.

The op names, namespace and version are the graph contract's (tscli/contract.py). Nothing here
imports torch; heavy imports stay inside functions.
"""
