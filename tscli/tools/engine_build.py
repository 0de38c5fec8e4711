"""`tscli build`: exported ONNX -> TensorRT engine + manifest (TensorRT 8.6 and 10.x/11.x).

Order of work: everything about the source file is checked first (without TensorRT, so a bad
file is reported even on the export host), then TensorRT is imported and its version decides the
plan (tools/build_plan.py: sampling path, parser input, precision flags; `--dry-run` stops there),
the plugin library is loaded, the network parsed and built, the engine asked whether plugin
layers run the sampling, and the engine + manifest written atomically.
"""

from __future__ import annotations

import datetime as _dt
import importlib.util
import time
from dataclasses import dataclass, field
from pathlib import Path

from .. import __version__
from .. import contract as C
from ..errors import (
    CheckFailed,
    MissingDependency,
    ModelFileError,
    UsageError,
)
from ..files import atomic_path, check_output_file, sha256_file
from ..plugins.locate import find_plugin_library
from ..runtime.trt import manifest as M
from ..runtime.trt.host import GpuInfo, check_trt_version, detect_gpu, import_tensorrt, version_tuple
from ..runtime.trt.opt_profiles import (
    DEFAULT_BATCH,
    Profile,
    batch_span,
    derive_profiles,
    k_span,
)
from ..runtime.trt.plugin_registry import check_plugin_ops, load_plugin_library
from . import build_plan as P
from .build_source import SourceInfo, read_source, refuse_unbuildable

__all__ = ["BuildOptions", "BuildPlan", "BuildResult", "SourceInfo", "build_engine", "dry_run", "plan_build",
           "read_source", "refuse_unbuildable"]

PRECISIONS = ("fp32", "fp16", "int8")  # int8: explicit quantization (a QDQ file) only


@dataclass
class BuildOptions:
    onnx: str
    output: str | None = None
    ks: list[int] | None = None
    k_ranges: list[str] | None = None
    batch: str = DEFAULT_BATCH
    precision: str = "fp32"
    plugins: str | None = None
    workspace_mb: int | None = None
    timing_cache: str | None = None
    verbose: bool = False
    dry_run: bool = False
    trt_version: str | None = None  # dry run: plan for this TensorRT instead of the installed one
    save_parser_input: str | None = None  # dry run: write the exact model bytes the parser would get


@dataclass
class BuildPlan:
    source: SourceInfo
    profiles: list[Profile]
    engine_path: Path
    plugin_library: Path | None
    plugin_explicit: bool = False  # given with --plugins (else found on the search path)
    plan: P.Plan | None = None  # set once the TensorRT version is known (finish_plan)
    parser_bytes: bytes | None = None  # None: the parser reads the file as it is


@dataclass
class BuildResult:
    engine_path: Path
    manifest_path: Path
    manifest: dict
    seconds: float
    warnings: list[str] = field(default_factory=list)


def plan_build(opts: BuildOptions) -> BuildPlan:
    """All checks that need no TensorRT: file, metadata, lint, options, profiles, plugin path."""
    if opts.precision not in PRECISIONS:
        raise UsageError(f"unknown --precision {opts.precision!r}; valid: {', '.join(PRECISIONS)}")
    if opts.workspace_mb is not None and opts.workspace_mb < 1:
        raise UsageError(f"--workspace {opts.workspace_mb} is invalid; give a size in MB >= 1")
    src = read_source(opts.onnx)
    refuse_unbuildable(src)
    if src.defaulted_inputs and src.model is None:  # known before TensorRT is imported
        raise MissingDependency(f"{src.path.name}: keeping {', '.join(src.defaulted_inputs)} selectable in the engine "
                                "needs the onnx package to drop its default first: pip install onnx")
    profiles = derive_profiles(src.meta, src.input_names, opts.ks, opts.k_ranges, opts.batch)
    engine = Path(opts.output) if opts.output else src.path.with_suffix(".engine")
    if opts.dry_run:  # a plan for another host: no engine is written, no library searched here
        return BuildPlan(src, profiles, engine, Path(opts.plugins) if opts.plugins else None, bool(opts.plugins))
    if not engine.parent.exists():
        raise UsageError(f"output folder {str(engine.parent)!r} does not exist")
    if opts.timing_cache:  # checked now: a bad path must not surface after a build of minutes
        cache = Path(opts.timing_cache)
        if cache.is_dir() or not cache.parent.is_dir():
            raise UsageError(f"--timing-cache {opts.timing_cache!r} must be a file in an existing folder")
    library = find_plugin_library(opts.plugins) if (opts.plugins or src.custom_ops) else None
    return BuildPlan(src, profiles, engine, library, bool(opts.plugins))


def finish_plan(bp: BuildPlan, version: tuple[int, ...], version_text: str, precision: str) -> P.Plan:
    """The version-dependent part: sampling path, parser input, precision (build_plan.py)."""
    src, library = bp.source, bp.plugin_library
    note = None
    if library is not None and not bp.plugin_explicit and tuple(version[:2]) < P.FIRST_V3_PLUGINS:
        library, note = None, f"{library} found but not used: TensorRT {version_text} cannot load IPluginV3 plugins"
    bp.plugin_library = library
    plan = P.make_plan(tuple(version[:2]), version_text, src.meta, src.has_nodes, str(library) if library else None,
                       precision, src.input_types.get(C.INPUT_IMAGES, "float32"), src.path.name,
                       [p.to_dict() for p in bp.profiles], src.defaulted_inputs, src.qdq, len(src.island))
    if note:
        plan.notes.append(note)
    if plan.fp16_flag and not plan.strongly_typed and plan.sampling == P.STANDARD and src.model is None:
        plan.notes.append("without the onnx package the plain form's sampling island cannot be pinned to fp32: "
                          "it may run in fp16 (pip install onnx)")
    if src.node_problem and (plan.sampling == P.PLUGIN or plan.fp16_flag or plan.strongly_typed):
        raise UsageError(f"{src.path.name}: {src.node_problem}")
    if plan.edits:
        if src.model is None:
            raise P.need_onnx(src.path.name, plan)
        bp.parser_bytes = P.parser_model(src.model, plan, src.defaulted_inputs, src.island).SerializeToString()
    bp.plan = plan
    return plan


def dry_run(opts: BuildOptions) -> BuildPlan:
    """The plan a build would follow on --trt-version (or the installed TensorRT), without
    TensorRT; with --save-parser-input, the exact bytes the parser would get, written atomically."""
    if opts.trt_version:
        version, text = P.parse_trt_version(opts.trt_version), opts.trt_version.strip()
    elif importlib.util.find_spec("tensorrt") is not None:
        trt = import_tensorrt()
        version, text = check_trt_version(trt), trt.__version__
    else:
        raise UsageError("--dry-run needs --trt-version X.Y on a host without TensorRT (e.g. --trt-version 10.3)")
    if opts.save_parser_input:
        if not opts.save_parser_input.endswith(".onnx"):
            raise UsageError(f"--save-parser-input {opts.save_parser_input!r} must be an .onnx file")
        check_output_file(opts.save_parser_input, "--save-parser-input", [opts.onnx])
    bp = plan_build(opts)
    finish_plan(bp, version, text, opts.precision)
    if bp.plan.plugin_library and not Path(bp.plan.plugin_library).is_file():
        bp.plan.notes.append("the plugin library is not on this host (a dry run neither needs nor loads it)")
    if opts.save_parser_input:
        data = bp.parser_bytes if bp.parser_bytes is not None else bp.source.path.read_bytes()
        with atomic_path(opts.save_parser_input, suffix=".onnx") as tmp:
            tmp.write_bytes(data)
    return bp


def network_flags(trt, major: int) -> int:
    """TensorRT < 10 needs the explicit-batch flag (deprecated and ignored from 10 on); TensorRT 11
    networks are strongly typed (the flag is set when the enum still has it)."""
    flags = 0
    kinds = trt.NetworkDefinitionCreationFlag
    if major < 10:
        flags |= 1 << int(kinds.EXPLICIT_BATCH)
    if major >= 11 and hasattr(kinds, "STRONGLY_TYPED"):
        flags |= 1 << int(kinds.STRONGLY_TYPED)
    return flags


def configure_precision(trt, builder, config, plan: P.Plan) -> list[str]:
    """The plan's flags. TF32 is cleared on every version that has the flag (TensorRT, 11.x too,
    allows it by default on Ampere+ (Orin): ~1e-3 relative error): fp32 means fp32. Strongly
    typed networks (11.x) take fp16 from the file, so the FP16 flag is set only where it counts."""
    if not plan.tf32 and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)
    if plan.int8_flag:  # explicit quantization: lets the file's Q/DQ layers run; no calibrator is set
        config.set_flag(trt.BuilderFlag.INT8)
    if plan.fp16_flag:
        config.set_flag(trt.BuilderFlag.FP16)
        if not getattr(builder, "platform_has_fast_fp16", True):
            return ["this GPU has no fast fp16: the fp16 engine may be slower than fp32"]
    return []


def pin_sampling_fp32(trt, network, config) -> int:
    """fp16 builds of inlined sampling (weakly typed networks): the layers the parser made from
    the sampling body (named build_plan.SAMPLING_PREFIX*) with float outputs run in fp32, and the
    builder must obey that. Returns how many layers were pinned."""
    floats = {trt.float32, trt.float16}
    pinned = 0
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if not str(layer.name).startswith(P.SAMPLING_PREFIX):
            continue
        outputs = [layer.get_output(j) for j in range(layer.num_outputs)]
        if outputs and all(o.dtype in floats for o in outputs):
            layer.precision = trt.float32
            for j in range(len(outputs)):
                layer.set_output_type(j, trt.float32)
            pinned += 1
    if pinned:
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
    return pinned


def set_workspace(trt, config, workspace_mb: int | None) -> None:
    if workspace_mb is None:
        return
    if hasattr(config, "set_memory_pool_limit"):  # TensorRT >= 8.4
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    else:
        config.max_workspace_size = workspace_mb << 20


def add_profiles(builder, config, profiles: list[Profile]) -> None:
    for p in profiles:
        profile = builder.create_optimization_profile()
        for name, s in p.shapes().items():
            profile.set_shape(name, s["min"], s["opt"], s["max"])
        config.add_optimization_profile(profile)


def parse_onnx(trt, network, logger, plan: BuildPlan) -> None:
    parser = trt.OnnxParser(network, logger)
    data = plan.parser_bytes
    # parse(bytes, path): the path only resolves external data; tscli files have none.
    ok = parser.parse_from_file(str(plan.source.path)) if data is None else parser.parse(data, str(plan.source.path))
    if ok:
        return
    errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
    first = errors[0].strip().splitlines()[0][:300] if errors and errors[0].strip() else "unknown parser error"
    hint = ""
    if plan.source.has_nodes and plan.plugin_library is None:
        # --plugins only where this TensorRT can load the plugins (>= 10)
        plugins = ("build libtscli_plugins.so and pass --plugins, or " if plan.plan is not None
                   and version_tuple(plan.plan.trt_version)[:2] >= P.FIRST_V3_PLUGINS else "")
        hint = f"; this is a plugin-form file: {plugins}export the plain form (`tscli export --form plain`)"
    raise ModelFileError(f"TensorRT's ONNX parser rejected {plan.source.path.name}: {first}{hint}")


def _timing_cache(config, path: str | None):
    if not path:
        return None
    data = Path(path).read_bytes() if Path(path).is_file() else b""
    cache = config.create_timing_cache(data)
    config.set_timing_cache(cache, False)
    return cache


def _save_timing_cache(config, path: str | None, warnings: list[str]) -> None:
    """Best effort, after the engine is safely written: losing the cache only costs the next build time."""
    if not path:
        return
    try:
        data = bytes(memoryview(config.get_timing_cache().serialize()))
        with atomic_path(path, suffix=".cache") as tmp:
            tmp.write_bytes(data)
    except OSError as exc:
        warnings.append(f"timing cache not saved to {path}: {exc.strerror or exc}")


def count_plugin_layers(network) -> int:
    return sum("PLUGIN" in str(network.get_layer(i).type) for i in range(network.num_layers))


def sampling_in_engine(trt, logger, serialized, network, plan: BuildPlan) -> dict:
    """Which path runs the sampling in the built engine: plugin layers in the engine inspector's
    layer list (TensorRT >= 8.2, engines built with DETAILED profiling verbosity), else in the
    parsed network's layer types."""
    if not plan.source.has_nodes:
        return {"path": plan.plan.sampling, "checked_by": "plan (no tscli.ATSSample nodes)", "plugin_layers": 0}
    layers, checked_by = None, "engine inspector"
    try:
        engine = trt.Runtime(logger).deserialize_cuda_engine(serialized)
        inspector = engine.create_engine_inspector()
        layers = P.plugin_layers_from_inspector(inspector.get_engine_information(trt.LayerInformationFormat.JSON))
    except Exception:  # noqa: BLE001 - an older binding or a failed deserialise: use the network
        layers = None
    if layers is None:
        layers, checked_by = count_plugin_layers(network), "network layers"
    return {"path": P.PLUGIN if layers else P.STANDARD, "checked_by": checked_by, "plugin_layers": layers}


def make_manifest(plan: BuildPlan, trt_version: str, gpu: GpuInfo | None, precision: str,
                  plugin_ops: list[dict], opts: BuildOptions, sampling: dict) -> dict:
    lib = plan.plugin_library
    return {
        "format": M.FORMAT, "manifest_version": M.VERSION,
        "engine": plan.engine_path.name, "engine_sha256": "",
        "tensorrt_version": trt_version,
        "cuda": {"runtime": gpu.cuda_runtime if gpu else None, "driver": gpu.driver if gpu else None},
        "gpu": {"name": gpu.name, "compute_capability": gpu.compute_capability, "source": gpu.source} if gpu else None,
        "precision": precision,
        "profiles": [p.to_dict() for p in plan.profiles],
        "k_range": k_span(plan.profiles), "batch_range": batch_span(plan.profiles),
        "plugin_library": {"path": str(lib), "sha256": sha256_file(lib)} if lib and plugin_ops else None,
        "plugin_ops": plugin_ops,
        "source_onnx": {"path": str(plan.source.path.resolve()), "sha256": sha256_file(plan.source.path)},
        "tscli_version": __version__,
        "model_metadata": plan.source.meta,
        "input_names": plan.source.input_names,
        "workspace_mb": opts.workspace_mb, "timing_cache": opts.timing_cache,
        "built_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "sampling": sampling,
        "build_plan": plan.plan.to_dict(),
    }


def build_engine(opts: BuildOptions, progress=lambda msg: None, show_plan=lambda plan: None) -> BuildResult:
    start = time.perf_counter()
    bp = plan_build(opts)
    trt = import_tensorrt()
    version = check_trt_version(trt)
    plan = finish_plan(bp, version, trt.__version__, opts.precision)
    show_plan(plan)
    logger = trt.Logger(trt.Logger.VERBOSE if opts.verbose else trt.Logger.WARNING)
    warnings: list[str] = []
    if bp.plugin_library is not None and bp.source.custom_ops:
        progress(f"loading plugins {bp.plugin_library.name}")
        load_plugin_library(trt, bp.plugin_library)
        check_plugin_ops(trt, bp.source.custom_ops, bp.plugin_library)
    elif bp.source.has_nodes and version[:2] >= P.FIRST_V3_PLUGINS:
        warnings.append("plugin-form file without a plugin library: the sampling runs as standard ops; build "
                        "libtscli_plugins.so and pass --plugins for the fused plugin")
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt, version[0]))
    config = builder.create_builder_config()
    warnings += configure_precision(trt, builder, config, plan)
    set_workspace(trt, config, opts.workspace_mb)
    if bp.source.has_nodes and hasattr(trt, "ProfilingVerbosity"):  # layer types in the engine inspector
        config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    progress("parsing the ONNX graph")
    parse_onnx(trt, network, logger, bp)
    if plan.fp16_flag and plan.sampling == P.STANDARD and (bp.source.has_nodes or bp.source.island):
        if not pin_sampling_fp32(trt, network, config):
            warnings.append(f"no layer named {P.SAMPLING_PREFIX}* found: the inlined sampling may run in fp16")
    add_profiles(builder, config, bp.profiles)
    _timing_cache(config, opts.timing_cache)
    progress(f"building ({len(bp.profiles)} profile(s), {opts.precision}); this takes minutes on a Jetson")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise CheckFailed(f"TensorRT could not build an engine from {bp.source.path.name} (see its log above; "
                          "--verbose shows more)")
    sampling = sampling_in_engine(trt, logger, serialized, network, bp)
    if plan.sampling == P.PLUGIN and sampling["path"] != P.PLUGIN:
        warnings.append(f"the plan chose the plugin, but the engine has no plugin layers ({sampling['checked_by']}): "
                        "the sampling runs as standard ops")
    plugin_ops = bp.source.custom_ops if sampling["path"] == P.PLUGIN else []
    gpu, _ = detect_gpu()
    manifest = make_manifest(bp, trt.__version__, gpu, opts.precision, plugin_ops, opts, sampling)
    engine_path, manifest_path, manifest = M.write_engine(bp.engine_path, bytes(memoryview(serialized)), manifest)
    _save_timing_cache(config, opts.timing_cache, warnings)
    return BuildResult(engine_path, manifest_path, manifest, time.perf_counter() - start, warnings)
