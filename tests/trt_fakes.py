"""Fakes for LOGIC tests of the TensorRT code on a host without TensorRT or a GPU.

Nothing here runs TensorRT: a fake `tensorrt` module records the builder/runtime calls the code
makes (flags, profiles, shapes) so tests can check the API use per TensorRT version, and tiny ONNX
files with tscli metadata stand in for exported models. No test using these claims a GPU run.

The fake parser turns each node of the parsed model into one layer named after the node and
follows onnx-tensorrt's lookup order for a custom node as read in its sources (docs/jetson.md):
8.6 reads no local functions and finds only IPluginV2 creators (ours are IPluginV3: never);
10.0-10.6 import the node's local function first, then the plugin registry; 10.7+ prefer a
registered plugin, then the local function. A node that finds neither fails the parse. This is
a model of the parser, written from its sources, not the parser.
"""

from __future__ import annotations

import json
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


def sample_function() -> onnx.FunctionProto:
    """A local function tscli.ATSSample of standard ops with the node's signature (its numbers are
    not the sampling: these tests check where the node goes, not what it computes)."""
    nodes = [
        helper.make_node("Shape", ["scores"], ["b"], end=1),
        helper.make_node("Shape", ["k_like"], ["k"]),
        helper.make_node("Constant", [], ["one"], value=helper.make_tensor("one", TensorProto.INT64, [1], [1])),
        helper.make_node("Add", ["k", "one"], ["k1"]),
        helper.make_node("Concat", ["b", "k1"], ["shape"], axis=0),
        helper.make_node("ConstantOfShape", ["shape"], ["index"],
                         value=helper.make_tensor("z", TensorProto.INT32, [1], [0])),
        helper.make_node("Identity", ["index"], ["mask"]),
        helper.make_node("Abs", ["scores"], ["magnitude"]),  # one float layer (fp16 pinning tests)
    ]
    return helper.make_function(C.PLUGIN_DOMAIN, C.SAMPLE_OP, ["scores", "valid", "k_like"], ["index", "mask"], nodes,
                                [helper.make_opsetid("", 18)], attributes=["scheme", "plugin_version", "plugin_namespace"])


def make_onnx(path: Path, nonzero: bool = False, plugin_node: bool = False, k_input: bool = True,
              xi_default: float | None = None, with_function: bool = False, bool_flags: bool = False,
              half: bool = False, **meta) -> Path:
    """logits = Flatten(GlobalAveragePool(images)) [batch, 3]; optionally a NonZero (data-dependent
    output), a tscli.ATSSample node on the logits (int32 valid from a Cast, int32 outputs; with
    its local function if ``with_function``; BOOL valid/mask as files exported before the int32
    contract if ``bool_flags``), or a scalar input xi with a default (as DoViT files have it),
    with tscli.* metadata (overridable). ``half``: float16 images, pooled in float16 and cast to
    float32 logits (the node is fed float32, as the plugin contract wants)."""
    images_type = TensorProto.FLOAT16 if half else TensorProto.FLOAT
    inputs = [helper.make_tensor_value_info(C.INPUT_IMAGES, images_type, ["batch", 3, 32, 32])]
    if k_input:
        inputs.append(helper.make_tensor_value_info(C.INPUT_K, TensorProto.FLOAT, ["K"]))
    nodes = [helper.make_node("GlobalAveragePool", [C.INPUT_IMAGES], ["pooled"]),
             helper.make_node("Flatten", ["pooled"], ["flat"]),
             helper.make_node("Cast", ["flat"], [C.OUTPUT_LOGITS], to=TensorProto.FLOAT)]
    outputs = [helper.make_tensor_value_info(C.OUTPUT_LOGITS, TensorProto.FLOAT, ["batch", 3])]
    opsets = [helper.make_opsetid("", 18)]
    if nonzero:
        nodes.append(helper.make_node("NonZero", [C.OUTPUT_LOGITS], ["nz"]))
        outputs.append(helper.make_tensor_value_info("nz", TensorProto.INT64, [2, "nnz"]))
    functions = []
    if plugin_node:
        flag = TensorProto.BOOL if bool_flags else TensorProto.INT32
        nodes += [helper.make_node("Cast", [C.OUTPUT_LOGITS], ["valid"], to=flag, name="valid_cast"),
                  helper.make_node(C.SAMPLE_OP, [C.OUTPUT_LOGITS, "valid", C.INPUT_K], ["index", "mask"],
                                   domain=C.PLUGIN_DOMAIN, name="node_ats_sample", scheme="paper",
                                   plugin_version="1", plugin_namespace="tscli")]
        outputs += [helper.make_tensor_value_info("index", TensorProto.INT32, ["batch", "K1"]),
                    helper.make_tensor_value_info("mask", flag, ["batch", "K1"])]
        opsets.append(helper.make_opsetid(C.PLUGIN_DOMAIN, 1))
        functions = [sample_function()] if with_function else []
    defaults = []
    if xi_default is not None:
        inputs.append(helper.make_tensor_value_info(C.INPUT_XI, TensorProto.FLOAT, []))
        defaults.append(helper.make_tensor(C.INPUT_XI, TensorProto.FLOAT, [], [xi_default]))
        nodes.append(helper.make_node("Mul", [C.OUTPUT_LOGITS, C.INPUT_XI], ["scaled"]))
        outputs.append(helper.make_tensor_value_info("scaled", TensorProto.FLOAT, ["batch", 3]))
    # IR 9: the onnx package writes a newer IR than this onnxruntime reads
    model = helper.make_model(helper.make_graph(nodes, "g", inputs, outputs, initializer=defaults),
                              opset_imports=opsets, ir_version=9, functions=functions)
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
                  parse_ok: bool = True, plugin_layers: int = 0, inspector: bool = True) -> types.ModuleType:
    """A module object standing in for `tensorrt` (builder side + plugin registry + a runtime
    whose engines have an engine inspector, unless ``inspector`` is False)."""
    rec = rec or Recorder()
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.recorder = rec
    major_minor = tuple(int(p) for p in version.split(".")[:2])
    flags = {"EXPLICIT_BATCH": 0, "PREFER_PRECISION_CONSTRAINTS": 1}
    if major_minor[0] >= 10:
        flags["STRONGLY_TYPED"] = 2
    trt.NetworkDefinitionCreationFlag = IntEnum("NetworkDefinitionCreationFlag", flags)
    trt.BuilderFlag = IntEnum("BuilderFlag", {"FP16": 0, "TF32": 1, "OBEY_PRECISION_CONSTRAINTS": 2, "INT8": 3})
    trt.MemoryPoolType = IntEnum("MemoryPoolType", {"WORKSPACE": 0})
    trt.ProfilingVerbosity = IntEnum("ProfilingVerbosity", {"LAYER_NAMES_ONLY": 0, "NONE": 1, "DETAILED": 2})
    trt.LayerInformationFormat = IntEnum("LayerInformationFormat", {"ONELINE": 0, "JSON": 1})
    trt.float32, trt.float16, trt.int32, trt.bool = "float32", "float16", "int32", "bool"
    rec.loaded = []  # plugin libraries in the registry

    class Logger:
        WARNING, VERBOSE = 2, 4

        def __init__(self, level):
            self.level = level

    class Tensor:
        def __init__(self, dtype):
            self.dtype = dtype

    class Layer:
        def __init__(self, kind, name="", outputs=()):
            self.type, self.name, self._outputs = kind, name, [Tensor(d) for d in outputs]
            self.num_outputs = len(self._outputs)
            self.precision, self.output_types = None, {}

        def get_output(self, i):
            return self._outputs[i]

        def set_output_type(self, i, dtype):
            self.output_types[i] = dtype

    class Network:
        def __init__(self, flags):
            self.flags = flags
            self._layers = [Layer("LayerType.REDUCE", "pool", ["float32"])]
            self._layers += [Layer("LayerType.PLUGIN_V3", f"extra_plugin_{i}") for i in range(plugin_layers)]

        @property
        def num_layers(self):
            return len(self._layers)

        def get_layer(self, i):
            return self._layers[i]

    def to_layers(model) -> list:
        """The fake parser: one layer per node, custom nodes resolved as the module docstring says."""
        inferred = onnx.shape_inference.infer_shapes(model)
        g = inferred.graph
        kinds = {TensorProto.FLOAT: "float32", TensorProto.FLOAT16: "float16", TensorProto.BOOL: "bool"}
        types = {v.name: kinds.get(v.type.tensor_type.elem_type, "int32") for v in (*g.value_info, *g.output)}
        functions = {(f.domain, f.name): f for f in model.functions}
        registered = bool(rec.loaded) and C.SAMPLE_OP in creators
        layers = []
        for node in model.graph.node:
            if node.domain in ("", "ai.onnx"):
                layers.append(Layer(f"LayerType.{node.op_type.upper()}", node.name,
                                    [types.get(o, "float32") for o in node.output]))
                continue
            body = functions.get((node.domain, node.op_type)) if major_minor >= (10, 0) else None
            plugin = registered and major_minor >= (10, 0)
            if body is not None and (major_minor < (10, 7) or not plugin):
                layers += [Layer(f"LayerType.{n.op_type.upper()}", n.name, ["int32"] * len(n.output)) for n in body.node]
            elif plugin:
                layers.append(Layer("LayerType.PLUGIN_V3", node.name, ["int32", "int32"]))
            else:
                rec.parse_error = f"In node {node.name} (importFallbackPluginImporter): No importer registered for op: {node.op_type}"
                return None
        return layers

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
            self.profiling_verbosity = trt.ProfilingVerbosity.LAYER_NAMES_ONLY

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
            rec.built = (network, config)
            return b"FAKE-ENGINE:" + repr([p.shapes for p in config.profiles]).encode()

    class OnnxParser:
        def __init__(self, network, logger):
            self.network, self.num_errors = network, 0

        def _parse(self, model) -> bool:
            rec.parse_error = "In node 3 (importFallbackPluginImporter): No importer registered for op: ATSSample"
            layers = to_layers(model) if parse_ok else None
            if layers is None:
                self.num_errors = 1
                return False
            self.network._layers += layers
            return True

        def parse_from_file(self, path):
            rec.calls.append(("parse_from_file", path))
            return self._parse(onnx.load(path))

        def parse(self, model, path=None):
            rec.calls.append(("parse", bytes(model), path))
            return self._parse(onnx.load_from_string(bytes(model)))

        def get_error(self, i):
            return rec.parse_error

    class Inspector:
        def get_engine_information(self, fmt):
            network, config = rec.built
            layers = [network.get_layer(i) for i in range(network.num_layers)]
            if config.profiling_verbosity != trt.ProfilingVerbosity.DETAILED:
                return json.dumps({"Layers": [layer.name for layer in layers], "Bindings": []})
            kinds = {"LayerType.PLUGIN_V3": "PluginV3"}
            return json.dumps({"Layers": [{"Name": layer.name, "LayerType": kinds.get(layer.type, "Reformat")}
                                          for layer in layers], "Bindings": []})

    class BuiltEngine:
        def create_engine_inspector(self):
            rec.calls.append(("create_engine_inspector",))
            return Inspector()

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            return BuiltEngine() if inspector else object()

    class Registry:
        def load_library(self, path):
            rec.calls.append(("load_library", path))
            rec.loaded.append(path)
            return object()

        def get_creator(self, name, version, namespace):
            return object() if name in creators and namespace == "tscli" else None

    registry = Registry()
    trt.Logger, trt.Builder, trt.OnnxParser, trt.Runtime = Logger, Builder, OnnxParser, Runtime
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
            self.nvtx_verbosity = None

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
