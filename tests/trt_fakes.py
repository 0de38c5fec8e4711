"""Fakes for LOGIC tests of the TensorRT code on a host without TensorRT or a GPU.

Nothing here runs TensorRT: a fake `tensorrt` module records the builder/runtime calls the code
makes (flags, profiles, shapes) so tests can check the API use per TensorRT version, and tiny ONNX
files with tscli metadata stand in for exported models. No test using these claims a GPU run.
"""

from __future__ import annotations

import types
from enum import IntEnum
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from tscli import contract as C

BASE_META = {"tool_version": "0.1.0", "model": "tiny_ats", "family": "ats", "max_k": 32, "stages": [1, 2, 3],
             "scheme": "paper", "mode": "padded", "form": "plain", "input_size": [3, 32, 32], "patch_size": 4,
             "mean": [0.5] * 3, "std": [0.5] * 3, "num_classes": 10}


def make_onnx(path: Path, nonzero: bool = False, plugin_node: bool = False, k_input: bool = True,
              xi_default: float | None = None, **meta) -> Path:
    """logits = Flatten(GlobalAveragePool(images)) [batch, 3]; optionally a NonZero (data-dependent
    output), a tscli.ATSSample node, or a scalar input xi with a default (as DoViT files have it),
    with tscli.* metadata (overridable)."""
    inputs = [helper.make_tensor_value_info(C.INPUT_IMAGES, TensorProto.FLOAT, ["batch", 3, 32, 32])]
    if k_input:
        inputs.append(helper.make_tensor_value_info(C.INPUT_K, TensorProto.FLOAT, ["K"]))
    nodes = [helper.make_node("GlobalAveragePool", [C.INPUT_IMAGES], ["pooled"]),
             helper.make_node("Flatten", ["pooled"], [C.OUTPUT_LOGITS])]
    outputs = [helper.make_tensor_value_info(C.OUTPUT_LOGITS, TensorProto.FLOAT, ["batch", 3])]
    opsets = [helper.make_opsetid("", 18)]
    if nonzero:
        nodes.append(helper.make_node("NonZero", [C.OUTPUT_LOGITS], ["nz"]))
        outputs.append(helper.make_tensor_value_info("nz", TensorProto.INT64, [2, "nnz"]))
    if plugin_node:
        nodes.append(helper.make_node(C.SAMPLE_OP, [C.OUTPUT_LOGITS], ["picked"], domain=C.PLUGIN_DOMAIN,
                                      plugin_version="1", plugin_namespace="tscli"))
        outputs.append(helper.make_tensor_value_info("picked", TensorProto.FLOAT, ["batch", 3]))
        opsets.append(helper.make_opsetid(C.PLUGIN_DOMAIN, 1))
    defaults = []
    if xi_default is not None:
        inputs.append(helper.make_tensor_value_info(C.INPUT_XI, TensorProto.FLOAT, []))
        defaults.append(helper.make_tensor(C.INPUT_XI, TensorProto.FLOAT, [], [xi_default]))
        nodes.append(helper.make_node("Mul", [C.OUTPUT_LOGITS, C.INPUT_XI], ["scaled"]))
        outputs.append(helper.make_tensor_value_info("scaled", TensorProto.FLOAT, ["batch", 3]))
    # IR 9: the onnx package writes a newer IR than this onnxruntime reads
    model = helper.make_model(helper.make_graph(nodes, "g", inputs, outputs, initializer=defaults),
                              opset_imports=opsets, ir_version=9)
    for key, value in C.encode_metadata({**BASE_META, **meta}).items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))
    return path


class Recorder:
    def __init__(self):
        self.calls: list[tuple] = []

    def names(self) -> list[str]:
        return [c[0] for c in self.calls]


def fake_tensorrt(version: str = "10.3.0.30", rec: Recorder | None = None, creators=("ATSSample",),
                  parse_ok: bool = True, plugin_layers: int = 0) -> types.ModuleType:
    """A module object standing in for `tensorrt` (builder side + plugin registry)."""
    rec = rec or Recorder()
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.recorder = rec
    flags = {"EXPLICIT_BATCH": 0, "PREFER_PRECISION_CONSTRAINTS": 1}
    if int(version.split(".")[0]) >= 10:
        flags["STRONGLY_TYPED"] = 2
    trt.NetworkDefinitionCreationFlag = IntEnum("NetworkDefinitionCreationFlag", flags)
    trt.BuilderFlag = IntEnum("BuilderFlag", {"FP16": 0, "TF32": 1})
    trt.MemoryPoolType = IntEnum("MemoryPoolType", {"WORKSPACE": 0})

    class Logger:
        WARNING, VERBOSE = 2, 4

        def __init__(self, level):
            self.level = level

    class Layer:
        def __init__(self, kind):
            self.type = kind

    class Network:
        def __init__(self, flags):
            self.flags = flags
            layers = ["LayerType.REDUCE"] + ["LayerType.PLUGIN_V3"] * plugin_layers
            self._layers = [Layer(k) for k in layers]
            self.num_layers = len(self._layers)

        def get_layer(self, i):
            return self._layers[i]

    class Profile:
        def __init__(self):
            self.shapes = {}

        def set_shape(self, name, lo, opt, hi):
            self.shapes[name] = (list(lo), list(opt), list(hi))

    class TimingCache:
        def serialize(self):
            return b"timing-cache-v1"

    class Config:
        def __init__(self):
            self.flags, self.cleared, self.profiles, self.pool = set(), set(), [], {}

        def set_flag(self, flag):
            self.flags.add(flag)

        def clear_flag(self, flag):
            self.cleared.add(flag)

        def set_memory_pool_limit(self, pool, size):
            self.pool[pool] = size

        def add_optimization_profile(self, profile):
            self.profiles.append(profile)

        def create_timing_cache(self, data):
            rec.calls.append(("create_timing_cache", data))
            return TimingCache()

        def set_timing_cache(self, cache, ignore_mismatch):
            rec.calls.append(("set_timing_cache", ignore_mismatch))

        def get_timing_cache(self):
            return TimingCache()

    class Builder:
        platform_has_fast_fp16 = True

        def __init__(self, logger):
            rec.calls.append(("Builder", logger.level))

        def create_network(self, flags):
            rec.network = Network(flags)
            rec.calls.append(("create_network", flags))
            return rec.network

        def create_builder_config(self):
            rec.config = Config()
            return rec.config

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            rec.calls.append(("build_serialized_network",))
            return b"FAKE-ENGINE:" + repr([p.shapes for p in config.profiles]).encode()

    class OnnxParser:
        def __init__(self, network, logger):
            self.num_errors = 0 if parse_ok else 1

        def parse_from_file(self, path):
            rec.calls.append(("parse_from_file", path))
            return parse_ok

        def parse(self, model, path=None):
            rec.calls.append(("parse", bytes(model), path))
            return parse_ok

        def get_error(self, i):
            return "In node 3 (importFallbackPluginImporter): No importer registered for op: ATSSample"

    class Registry:
        def load_library(self, path):
            rec.calls.append(("load_library", path))
            return object()

        def get_creator(self, name, version, namespace):
            return object() if name in creators and namespace == "tscli" else None

    registry = Registry()
    trt.Logger, trt.Builder, trt.OnnxParser = Logger, Builder, OnnxParser
    trt.get_plugin_registry = lambda: registry
    return trt


def add_fake_runtime(trt: types.ModuleType) -> types.ModuleType:
    """Runtime side of the fake: an 'engine' whose profiles are read back from the fake engine bytes
    and whose 'execution' computes logits = mean over H, W (the graph of make_onnx) and
    kept_counts = K + 1 (int32, as TensorRT 8.6 would give) through the host-memory fake CUDA."""
    import ast
    import ctypes

    rec = trt.recorder
    trt.TensorIOMode = IntEnum("TensorIOMode", {"INPUT": 1, "OUTPUT": 2})
    trt.DataType = IntEnum("DataType", {"FLOAT": 1, "INT32": 2})
    trt.nptype = lambda dt: {trt.DataType.FLOAT: np.float32, trt.DataType.INT32: np.int32}[dt]
    io = {"images": (0, 0), "k_select": (0, 0), "logits": (1, 0), "kept_counts": (1, 1)}

    class Context:
        def __init__(self, engine):
            self.engine, self.shapes, self.addr = engine, {}, {}

        def set_optimization_profile_async(self, index, stream):
            rec.calls.append(("set_optimization_profile_async", index))
            self.profile = index
            return True

        def set_input_shape(self, name, shape):
            rec.calls.append(("set_input_shape", name, tuple(shape)))
            self.shapes[name] = tuple(shape)
            return True

        def get_tensor_shape(self, name):
            b = self.shapes["images"][0]
            return {"logits": (b, 3), "kept_counts": (b, 3)}.get(name, self.shapes.get(name))

        def set_tensor_address(self, name, ptr):
            self.addr[name] = ptr

        def execute_async_v3(self, stream):
            shape = self.shapes["images"]
            n = int(np.prod(shape))
            images = np.frombuffer((ctypes.c_float * n).from_address(self.addr["images"]), np.float32).reshape(shape)
            logits = images.mean(axis=(2, 3)).astype(np.float32)
            counts = np.full((shape[0], 3), self.shapes["k_select"][0] + 1, np.int32)
            ctypes.memmove(self.addr["logits"], logits.ctypes.data, logits.nbytes)
            ctypes.memmove(self.addr["kept_counts"], counts.ctypes.data, counts.nbytes)
            return True

    class Engine:
        def __init__(self, profiles):
            self.profiles = profiles
            self.num_optimization_profiles = len(profiles)
            self.num_io_tensors = len(io)

        def get_tensor_name(self, i):
            return list(io)[i]

        def get_tensor_mode(self, name):
            return trt.TensorIOMode(io[name][0] + 1)

        def get_tensor_dtype(self, name):
            return trt.DataType(io[name][1] + 1)

        def get_tensor_profile_shape(self, name, index):
            return self.profiles[index][name]

        def create_execution_context(self):
            return Context(self)

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            rec.calls.append(("deserialize_cuda_engine",))
            return Engine(ast.literal_eval(data.decode().split(":", 1)[1]))

    trt.Runtime = Runtime
    return trt


def fake_cudart() -> types.ModuleType:
    """cuda-python's runtime API over host memory: 'device' pointers are ctypes buffers."""
    import ctypes

    rt = types.ModuleType("fake_cudart")
    rt.buffers = {}
    rt.cudaMemcpyKind = IntEnum("cudaMemcpyKind", {"cudaMemcpyHostToDevice": 1, "cudaMemcpyDeviceToHost": 2})

    def malloc(n):
        buf = ctypes.create_string_buffer(n)
        rt.buffers[ctypes.addressof(buf)] = buf
        return 0, ctypes.addressof(buf)

    def memcpy(dst, src, n, kind, stream):
        ctypes.memmove(dst, src, n)
        return (0,)

    rt.cudaMalloc = malloc
    rt.cudaMemcpyAsync = memcpy
    rt.cudaStreamCreate = lambda: (0, 7)
    rt.destroyed_streams = []
    rt.cudaStreamDestroy = lambda stream: (rt.destroyed_streams.append(stream), 0)[1:]
    rt.cudaStreamSynchronize = lambda stream: (0,)
    rt.cudaFree = lambda ptr: (rt.buffers.pop(ptr, None), 0)[1:]
    rt.cudaGetErrorString = lambda err: (0, b"fake error")
    return rt
