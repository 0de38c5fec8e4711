"""The plan a TensorRT build follows on a given TensorRT version, made without TensorRT.

`tscli build --dry-run --trt-version X.Y` prints it on any host; a real build makes the same plan
with the installed version, prints it and records it in the manifest. What depends on the version
(docs/jetson.md has the table):

- where the sampling runs. A plugin-form file has tscli.ATSSample nodes and a local function of
  the same name holding their standard-operator body. TensorRT 8.6's parser reads no local
  functions and cannot load IPluginV3 plugins; 10.0-10.6 import a node's local function before
  looking for a plugin; 10.7+ prefer a registered plugin to the function. So, with a plugin
  library: 10.0-10.6 parse the model without the ATSSample function (the nodes then reach the
  plugin), 10.7+ parse the file as it is; 8.6 cannot use the plugin. Without one (or on 8.6)
  tscli inlines the local functions before parsing: the parser gets plain standard operators,
  the same on every version, and the bytes it gets can be checked in ONNX Runtime anywhere.
- precision. TF32 is cleared in every plan (TensorRT allows it by default on Ampere and newer,
  11.x too): fp32 means fp32. fp16 keeps the sampling in fp32: the plugin takes float32 only;
  inlined sampling layers and the plain form's sampling island (renamed SAMPLING_PREFIX* in the
  parser input) are pinned to fp32 with OBEY_PRECISION_CONSTRAINTS; TensorRT 11 networks are
  strongly typed, so the file's own types decide, and the node must be fed float32.
- int8 is explicit quantization only: the file must hold Q/DQ nodes with int8 values and zero
  points 0 (`tscli quantize --target tensorrt`); tscli never asks TensorRT for implicit,
  calibrator-based int8 (deprecated since 10.1). Weakly typed networks (8.6, 10.x) get the INT8
  builder flag, which lets the Q/DQ layers run (no calibrator; the flag is deprecated from 10.12
  but still read); strongly typed networks (11.x) take int8 from the Q/DQ nodes with no flag.
  The island holds no Q/DQ node, and without the FP16 flag the unquantized layers run in fp32.

onnx is imported only where a graph is read or edited.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

from .. import contract as C
from ..errors import MissingDependency, UsageError
from ..runtime.trt.host import MIN_TRT

PLUGIN = "plugin"
STANDARD = "standard ops"
NONE = "none"
SAMPLING_PREFIX = "tscli_sampling/"  # names of the inlined sampling nodes, hence of their TensorRT layers
FIRST_V3_PLUGINS = (10, 0)  # IPluginV3 and registry.load_library
PLUGIN_BEFORE_FUNCTION = (10, 7)  # onnx-tensorrt prefers a registered plugin to the local function
STRONGLY_TYPED = (11, 0)
INT8_FLAG_DEPRECATED = (10, 12)
TYPE_NAMES = {"fp32": "float32", "fp16": "float16", "int8": "int8 (Q/DQ)"}


def parse_trt_version(text: str) -> tuple[int, int]:
    """"10.3", "10.3.0.30" -> (10, 3); refuses other text and versions below MIN_TRT."""
    m = re.fullmatch(r"\s*(\d+)\.(\d+)(?:\.\d+)*\s*", str(text))
    if not m:
        raise UsageError(f"--trt-version {text!r} is not a TensorRT version; give MAJOR.MINOR, e.g. 10.3")
    version = (int(m.group(1)), int(m.group(2)))
    if version < MIN_TRT:
        raise UsageError(f"--trt-version {text}: tscli builds need TensorRT >= {'.'.join(map(str, MIN_TRT))} "
                         "(the ATS graph's TopK takes K at runtime); JetPack 5's TensorRT 8.5 is not supported")
    return version


@dataclass
class Plan:
    trt_version: str
    form: str  # "plain" | "plugin"
    sampling: str  # PLUGIN | STANDARD | NONE
    why: str
    edits: list[str]  # what is changed in the model before parsing; [] = the file's bytes as they are
    precision: str
    tf32: bool
    fp16_flag: bool
    strongly_typed: bool
    sampling_precision: str
    profiles: list[dict] = field(default_factory=list)
    int8_flag: bool = False
    plugin_library: str | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def lines(self) -> list[str]:
        shapes = "; ".join(", ".join(_shape_text(name, s) for name, s in p["shapes"].items()) for p in self.profiles)
        flags = [f"tf32 {'on' if self.tf32 else 'off'}", f"fp16 {'on' if self.fp16_flag else 'off'}",
                 f"int8 {'on (explicit: Q/DQ in the file)' if self.int8_flag else 'off'}"]
        if self.strongly_typed:
            flags.append("strongly typed (types from the ONNX file)")
        return [f"TensorRT {self.trt_version}, {self.form}-form file",
                f"sampling: {self.sampling}: {self.why}",
                f"parser input: {'; '.join(self.edits) if self.edits else 'the file as it is'}",
                f"precision: {self.precision} ({', '.join(flags)}); sampling in {self.sampling_precision}",
                f"profiles: {len(self.profiles)}: {shapes or 'static shapes'}",
                f"plugin library: {self.plugin_library or 'none'}",
                *(f"note: {n}" for n in self.notes)]


def _shape_text(name: str, s: dict) -> str:
    """K and batch as numbers (the dims that vary in tscli profiles), other inputs as shapes."""
    label, dim = {C.INPUT_K: ("K", 0), C.INPUT_IMAGES: ("batch", 0)}.get(name, (name, None))
    if dim is None or len(s["min"]) <= dim:
        return f"{name} {s['min']}..{s['max']} (opt {s['opt']})"
    return f"{label} {s['min'][dim]}..{s['max'][dim]} (opt {s['opt'][dim]})"


def choose_sampling(version: tuple[int, int], has_nodes: bool, samples: bool, library: bool) -> tuple[str, str, list[str]]:
    """(sampling path, why, edits) for a file with or without tscli.ATSSample nodes."""
    v = ".".join(map(str, version))
    if not has_nodes:
        if not samples:
            return NONE, "this model samples no tokens", []
        return STANDARD, "plain form: the sampling was exported as standard operators", []
    if library and version >= PLUGIN_BEFORE_FUNCTION:
        return PLUGIN, (f"TensorRT {v}'s parser prefers the registered tscli::ATSSample plugin to the node's local "
                        "function"), []
    if library:
        return PLUGIN, (f"TensorRT {v}'s parser (10.0-10.6) imports a node's local function before looking for a "
                        "plugin, so the ATSSample function is removed and the nodes reach the plugin"), \
            ["ATSSample local function removed"]
    if version < FIRST_V3_PLUGINS:
        why = (f"TensorRT {v}'s parser reads no local functions and cannot load the IPluginV3 plugins: the sampling "
               "function bodies are inlined into the graph by tscli")
    else:
        why = ("no plugin library: the sampling function bodies are inlined into the graph by tscli "
               "(pass --plugins for the fused plugin)")
    return STANDARD, why, [f"local functions inlined by tscli (nodes named {SAMPLING_PREFIX}*)"]


def file_precision(meta: dict, images_type: str, qdq: dict | None) -> str:
    """fp32 | fp16 | int8: the metadata of a tscli fp16/int8 file (inputs stay float32), else the
    graph itself (Q/DQ nodes, a float16 images input)."""
    if meta.get("precision") in TYPE_NAMES:
        return meta["precision"]
    return "int8" if qdq else ("fp16" if images_type == "float16" else "fp32")


def check_int8(precision: str, found: str, qdq: dict | None, file_name: str) -> None:
    """int8 builds take explicit quantization only, in the form TensorRT reads; a Q/DQ file
    builds only as int8 (one line each)."""
    if precision == "int8" and found != "int8":
        raise UsageError(f"--precision int8 needs explicit quantization, and {file_name} has no QuantizeLinear/"
                         "DequantizeLinear nodes; make a QDQ file with `tscli quantize FILE --calib DIR --target "
                         "tensorrt` (tscli does not do TensorRT's implicit, calibrator-based int8)")
    if found == "int8" and precision != "int8":
        raise UsageError(f"{file_name} holds Q/DQ nodes (int8): build it with --precision int8")
    if precision == "int8" and qdq and (qdq.get("nonzero_zero_points") or "uint8" in qdq.get("activation_types", [])):
        raise UsageError(f"{file_name} was quantized for the CPU (uint8 activations with zero points); TensorRT takes "
                         "int8 Q/DQ with zero points 0: quantize again with `--target tensorrt`")


def plan_precision(version: tuple[int, int], precision: str, sampling: str, found: str,
                   file_name: str) -> tuple[bool, bool, str, bool]:
    """(fp16 builder flag, strongly typed, how the sampling stays fp32, int8 builder flag);
    refuses what cannot hold. ``found``: the file's own precision (file_precision)."""
    strongly = version >= STRONGLY_TYPED
    if strongly:
        if found != precision:
            raise UsageError(f"TensorRT {version[0]} builds strongly typed networks: precision comes from the ONNX "
                             f"file, and {file_name} is {TYPE_NAMES[found]}; --precision {precision} needs a "
                             f"{TYPE_NAMES[precision]} ONNX (or use --precision {found})")
        how = "fp32 (strongly typed: the graph feeds it float32)" if sampling != NONE else "n/a"
        return False, True, how, False
    if found == "fp16" and precision != "fp16":
        raise UsageError(f"{file_name} is float16 (tscli convert): build it with --precision fp16")
    if precision == "int8":
        how = "fp32 (no Q/DQ in the sampling island; unquantized layers run fp32)" if sampling != NONE else "n/a"
        return False, False, how, True
    if precision == "fp32" or sampling == NONE:
        return precision == "fp16", False, "fp32" if sampling != NONE else "n/a", False
    if sampling == PLUGIN:
        return True, False, "fp32 (the plugin accepts float32 only)", False
    return True, False, f"fp32 (layers {SAMPLING_PREFIX}* pinned with OBEY_PRECISION_CONSTRAINTS)", False


def make_plan(version: tuple[int, int], version_text: str, meta: dict, has_nodes: bool, library: str | None,
              precision: str, images_type: str, file_name: str, profiles: list[dict],
              defaulted: list[str], qdq: dict | None = None, island: int = 0) -> Plan:
    """``qdq``: the file's Q/DQ summary (tools/quantize.quantization_summary) or None; ``island``:
    how many plain-form sampling-island nodes the parser input renames for fp32 pinning."""
    samples = meta.get("family") != C.FAMILY_DENSE
    notes = []
    if library and has_nodes and version < FIRST_V3_PLUGINS:
        raise UsageError(f"--plugins: the tscli plugins are IPluginV3 and need TensorRT >= 10 (this is "
                         f"{version_text}); build without --plugins (the sampling function bodies are inlined)")
    sampling, why, edits = choose_sampling(version, has_nodes, samples, library is not None)
    if defaulted:
        edits = [f"default of {', '.join(defaulted)} dropped (stays an engine input)", *edits]
    if library and not has_nodes:
        notes.append("the plugin library is not used: this file has no tscli.ATSSample nodes")
    found = file_precision(meta, images_type, qdq)
    check_int8(precision, found, qdq, file_name)
    fp16_flag, strongly, how, int8_flag = plan_precision(version, precision, sampling, found, file_name)
    if int8_flag and version >= INT8_FLAG_DEPRECATED:
        notes.append("the INT8 builder flag is deprecated from TensorRT 10.12 (strong typing supersedes it); "
                     "it is still read there and only lets the file's Q/DQ layers run")
    if fp16_flag and not strongly and sampling == STANDARD and island:
        edits = [*edits, f"sampling-island nodes renamed {SAMPLING_PREFIX}* ({island}; pinned to fp32)"]
    return Plan(version_text, meta.get("form", "plain"), sampling, why, edits, precision, False, fp16_flag, strongly,
                how, profiles, int8_flag=int8_flag, plugin_library=library if has_nodes else None, notes=notes)


def sample_nodes(model) -> list:
    return [n for n in model.graph.node if n.domain == C.PLUGIN_DOMAIN and n.op_type == C.SAMPLE_OP]


def node_type_problem(model) -> str | None:
    """The first tscli.ATSSample node whose tensors break the plugin's types (float32 scores and
    k_like, int32 valid, index and mask), said in one line; None when all keep them."""
    import onnx
    from onnx import TensorProto as T

    want_in, want_out = (T.FLOAT, T.INT32, T.FLOAT), (T.INT32, T.INT32)
    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*g.value_info, *g.input, *g.output)}
    types.update({t.name: t.data_type for t in g.initializer})
    for node in sample_nodes(inferred):
        got_in = tuple(types.get(name, 0) for name in node.input)
        got_out = tuple(types.get(name, 0) for name in node.output)
        if got_in != want_in or got_out != want_out:
            def said(kinds):
                return ", ".join(onnx.helper.tensor_dtype_to_string(t).removeprefix("TensorProto.") if t else "?"
                                 for t in kinds)

            return (f"node {node.name or C.SAMPLE_OP} has (scores, valid, k_like -> index, mask) = ({said(got_in)} -> "
                    f"{said(got_out)}); the plugin takes (FLOAT, INT32, FLOAT -> INT32, INT32): a file exported "
                    "before the int32 contract has BOOL flags (export it again), a float16 graph needs a Cast to "
                    "float32 before the node")
    return None


def parser_model(model, plan: Plan, defaulted: list[str], island: list[str] | None = None):
    """The model TensorRT's parser gets under ``plan`` (``model`` itself is edited), or None when
    the file's bytes go as they are. ``island``: the sampling island's node names (renamed when
    the plan says so, so that an fp16 build pins their layers to fp32)."""
    if not plan.edits:
        return None
    if island and any("sampling-island nodes renamed" in e for e in plan.edits):
        members = set(island)
        for node in model.graph.node:
            if node.name in members:
                node.name = f"{SAMPLING_PREFIX}island/{node.name}"
    if defaulted:
        keep = [t for t in model.graph.initializer if t.name not in defaulted]
        del model.graph.initializer[:]
        model.graph.initializer.extend(keep)
    if plan.sampling == PLUGIN and any("removed" in e for e in plan.edits):
        keep = [f for f in model.functions if not (f.domain == C.PLUGIN_DOMAIN and f.name == C.SAMPLE_OP)]
        del model.functions[:]
        model.functions.extend(keep)
    if plan.sampling == STANDARD and model.functions:
        model = _inline(model)
    return model


def _inline(model):
    import onnx.inliner

    for function in model.functions:
        for i, node in enumerate(function.node):
            node.name = f"{SAMPLING_PREFIX}{function.name}/{node.name or node.op_type}_{i}"
    model = onnx.inliner.inline_local_functions(model)
    used = {n.domain for n in model.graph.node}
    keep = [o for o in model.opset_import if o.domain in ("", "ai.onnx") or o.domain in used]
    del model.opset_import[:]
    model.opset_import.extend(keep)
    return model


def need_onnx(file_name: str, plan: Plan) -> MissingDependency:
    return MissingDependency(f"{file_name}: the parser input needs edits on TensorRT {plan.trt_version} "
                             f"({'; '.join(plan.edits)}), which need the onnx package: pip install onnx "
                             "(or export the plain form: `tscli export --form plain`)")


def plugin_layers_from_inspector(info: str) -> int | None:
    """Plugin layers in an engine's IEngineInspector JSON (built with DETAILED profiling
    verbosity), or None when the JSON does not say (layer names only)."""
    import json

    try:
        layers = json.loads(info).get("Layers", [])
    except (ValueError, AttributeError):
        return None
    if not layers or not all(isinstance(layer, dict) for layer in layers):
        return None
    kinds = [str(layer.get("LayerType", "")) + " " + str(layer.get("ParameterType", "")) for layer in layers]
    return sum("plugin" in kind.lower() for kind in kinds)
