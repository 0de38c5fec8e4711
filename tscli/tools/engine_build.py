"""`tscli build`: exported ONNX -> TensorRT engine + manifest (TensorRT 8.6 and 10.x/11.x).

Order of work: everything about the source file is checked first (without TensorRT, so a bad
file is reported even on the export host), then TensorRT is imported, the plugin library loaded,
the network parsed and built, and the engine + manifest written atomically.
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
    first_line,
)
from ..files import atomic_path, sha256_file
from ..plugins.locate import find_plugin_library
from ..runtime.ort.session import OrtBackend
from ..runtime.trt import manifest as M
from ..runtime.trt.host import GpuInfo, check_trt_version, detect_gpu, import_tensorrt
from ..runtime.trt.opt_profiles import (
    DEFAULT_BATCH,
    Profile,
    batch_span,
    derive_profiles,
    k_span,
)
from ..runtime.trt.plugin_registry import check_plugin_ops, load_plugin_library

PRECISIONS = ("fp32", "fp16")


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


@dataclass
class SourceInfo:
    path: Path
    meta: dict
    input_names: list[str]
    input_types: dict[str, str]  # name -> "float32" / "float16"
    custom_ops: list[dict] = field(default_factory=list)  # [{"name", "namespace", "version"}]
    lint_error: str | None = None
    # Inputs that carry a default value (an initializer of the same name: DoViT's xi). TensorRT's
    # parser would fold such an input into a constant, freezing it in the engine.
    defaulted_inputs: list[str] = field(default_factory=list)
    # What TensorRT parses when defaulted inputs exist: the model without those defaults, so they
    # stay engine inputs (DoViT: xi chosen at load). Made where the file is read (needs onnx).
    parser_bytes: bytes | None = None


@dataclass
class BuildPlan:
    source: SourceInfo
    profiles: list[Profile]
    engine_path: Path
    plugin_library: Path | None


@dataclass
class BuildResult:
    engine_path: Path
    manifest_path: Path
    manifest: dict
    seconds: float
    warnings: list[str] = field(default_factory=list)


def _custom_ops_from_onnx(model) -> list[dict]:
    ops = {}
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx"):
            attrs = {a.name: a.s.decode() for a in node.attribute if a.name in ("plugin_version", "plugin_namespace")}
            key = (node.op_type, attrs.get("plugin_namespace", node.domain), attrs.get("plugin_version", C.PLUGIN_VERSION))
            ops[key] = {"name": key[0], "namespace": key[1], "version": key[2]}
    return list(ops.values())


def read_source(path: str | Path) -> SourceInfo:
    """Metadata, inputs and custom nodes of an exported file. With the onnx package (export host)
    the graph is linted too; a deploy host with only onnxruntime relies on the metadata."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"ONNX file {str(path)!r} does not exist")
    if importlib.util.find_spec("onnx") is not None:
        import onnx

        from ..export.lint import lint_model  # needs onnx, like the branch it is in

        try:
            model = onnx.load(str(path))
        except Exception as exc:  # noqa: BLE001 - protobuf raises several types
            raise ModelFileError(f"{str(path)!r} is not a readable ONNX file: {first_line(exc, 200)}") from None
        meta = C.decode_metadata({p.key: p.value for p in model.metadata_props})
        init = {i.name for i in model.graph.initializer}
        inputs = [i for i in model.graph.input if i.name not in init]
        types = {i.name: onnx.helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type).name for i in inputs}
        report = lint_model(model)
        defaulted = [i.name for i in model.graph.input if i.name in init]
        return SourceInfo(path, meta, [i.name for i in inputs], types, _custom_ops_from_onnx(model),
                          None if report.ok else report.first_error(), defaulted, _without_defaults(model, defaulted))
    backend = OrtBackend(path)
    meta = C.decode_metadata(backend.metadata_props)
    types = {i.name: i.type.replace("tensor(", "").rstrip(")").replace("float", "float32").replace("3216", "16")
             for i in backend.session.get_inputs()}
    ops = [{"name": C.SAMPLE_OP, "namespace": C.PLUGIN_DOMAIN, "version": C.PLUGIN_VERSION}] if meta.get("form") == "plugin" else []
    defaulted = [i.name for i in backend.session.get_overridable_initializers()]
    return SourceInfo(path, meta, backend.input_names, types, ops, defaulted_inputs=defaulted)


def refuse_unbuildable(src: SourceInfo) -> None:
    """Trimmed graphs have data-dependent shapes; TensorRT would need output allocators and lose
    the point of a fixed K. One line says how to get a buildable file."""
    name = src.path.name
    if "model" not in src.meta:
        raise ModelFileError(f"{name} was not exported by tscli (no tscli.* metadata); export it with `tscli export`")
    if src.meta.get("mode") == "trimmed":
        raise UsageError(f"{name} is a trimmed graph (data-dependent shapes): TensorRT engines need the padded graph; "
                         "export it again with `tscli export` (padded is the default)")
    if src.lint_error:
        raise UsageError(f"{name} cannot become a TensorRT engine: {src.lint_error}")


def plan_build(opts: BuildOptions) -> BuildPlan:
    """All checks that need no TensorRT: file, metadata, lint, options, profiles, plugin path."""
    if opts.precision not in PRECISIONS:
        raise UsageError(f"unknown --precision {opts.precision!r}; valid: {', '.join(PRECISIONS)}")
    if opts.workspace_mb is not None and opts.workspace_mb < 1:
        raise UsageError(f"--workspace {opts.workspace_mb} is invalid; give a size in MB >= 1")
    src = read_source(opts.onnx)
    refuse_unbuildable(src)
    parser_input(src)  # a missing onnx package is known before TensorRT is imported
    profiles = derive_profiles(src.meta, src.input_names, opts.ks, opts.k_ranges, opts.batch)
    engine = Path(opts.output) if opts.output else src.path.with_suffix(".engine")
    if not engine.parent.exists():
        raise UsageError(f"output folder {str(engine.parent)!r} does not exist")
    if opts.timing_cache:  # checked now: a bad path must not surface after a build of minutes
        cache = Path(opts.timing_cache)
        if cache.is_dir() or not cache.parent.is_dir():
            raise UsageError(f"--timing-cache {opts.timing_cache!r} must be a file in an existing folder")
    library = find_plugin_library(opts.plugins) if (opts.plugins or src.custom_ops) else None
    return BuildPlan(src, profiles, engine, library)


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


def configure_precision(trt, builder, config, precision: str, major: int, src: SourceInfo) -> list[str]:
    images_type = src.input_types.get(C.INPUT_IMAGES, "float32")
    if major >= 11:
        if precision == "fp16" and images_type != "float16":
            raise UsageError(f"TensorRT {major} builds strongly typed networks: precision comes from the ONNX file, and "
                             f"{src.path.name} is {images_type}; --precision fp16 needs an fp16 ONNX (or use --precision fp32)")
        return []
    if precision == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
        # TensorRT allows TF32 by default on Ampere+ (Orin): ~1e-3 relative error. fp32 means fp32.
        config.clear_flag(trt.BuilderFlag.TF32)
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
        if not getattr(builder, "platform_has_fast_fp16", True):
            return ["this GPU has no fast fp16: the fp16 engine may be slower than fp32"]
    return []


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


def _without_defaults(model, defaulted: list[str]) -> bytes | None:
    """The serialized model minus the initializers that give ``defaulted`` inputs their default
    (the loaded model is edited: read_source is done with it). None when there is none."""
    if not defaulted:
        return None
    keep = [t for t in model.graph.initializer if t.name not in defaulted]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    return model.SerializeToString()


def parser_input(src: SourceInfo) -> bytes | None:
    """What TensorRT parses: None = the file as it is; bytes = the model with the defaults of its
    defaulted inputs dropped, so that they stay engine inputs (DoViT: xi chosen at load, as with
    ONNX Runtime, instead of frozen at its export value). Called by plan_build, before TensorRT is
    imported, so a host without the onnx package (needed to edit the graph) learns it at once."""
    if src.defaulted_inputs and src.parser_bytes is None:
        raise MissingDependency(f"{src.path.name}: keeping {', '.join(src.defaulted_inputs)} selectable in the engine "
                                "needs the onnx package to drop its default first: pip install onnx")
    return src.parser_bytes


def parse_onnx(trt, network, logger, plan: BuildPlan) -> None:
    parser = trt.OnnxParser(network, logger)
    data = parser_input(plan.source)
    # parse(bytes, path): the path only resolves external data; tscli files have none.
    ok = parser.parse_from_file(str(plan.source.path)) if data is None else parser.parse(data, str(plan.source.path))
    if ok:
        return
    errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
    first = errors[0].strip().splitlines()[0][:300] if errors and errors[0].strip() else "unknown parser error"
    hint = ""
    if plan.source.custom_ops and plan.plugin_library is None:
        hint = ("; this is a plugin-form file: build libtscli_plugins.so and pass --plugins, "
                "or export the plain form (`tscli export --form plain`)")
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


def make_manifest(plan: BuildPlan, trt_version: str, gpu: GpuInfo | None, precision: str,
                  plugin_ops: list[dict], opts: BuildOptions) -> dict:
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
    }


def build_engine(opts: BuildOptions, progress=lambda msg: None) -> BuildResult:
    start = time.perf_counter()
    plan = plan_build(opts)
    trt = import_tensorrt()
    major = check_trt_version(trt)[0]
    logger = trt.Logger(trt.Logger.VERBOSE if opts.verbose else trt.Logger.WARNING)
    warnings: list[str] = []
    if plan.plugin_library is not None and major < 10:
        if opts.plugins:
            raise UsageError(f"--plugins: the tscli plugins are IPluginV3 and need TensorRT >= 10 (this host has "
                             f"{trt.__version__}); build without --plugins (the sampling body is inlined)")
        plan.plugin_library = None  # found on the search path but unusable here: the body is inlined
    if plan.plugin_library is not None:
        progress(f"loading plugins {plan.plugin_library.name}")
        load_plugin_library(trt, plan.plugin_library)
        check_plugin_ops(trt, plan.source.custom_ops, plan.plugin_library)
    elif plan.source.custom_ops:
        warnings.append("plugin-form file without a plugin library: TensorRT (>= 10.7) inlines the sampling "
                        "function body; build libtscli_plugins.so and pass --plugins for the fused plugin")
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt, major))
    config = builder.create_builder_config()
    warnings += configure_precision(trt, builder, config, opts.precision, major, plan.source)
    set_workspace(trt, config, opts.workspace_mb)
    progress("parsing the ONNX graph")
    parse_onnx(trt, network, logger, plan)
    n_plugins = count_plugin_layers(network)
    if plan.plugin_library is not None and plan.source.custom_ops and n_plugins == 0:
        warnings.append("the plugin library is loaded but TensorRT inlined the function bodies (no plugin layers)")
    plugin_ops = plan.source.custom_ops if n_plugins else []
    add_profiles(builder, config, plan.profiles)
    _timing_cache(config, opts.timing_cache)
    progress(f"building ({len(plan.profiles)} profile(s), {opts.precision}); this takes minutes on a Jetson")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise CheckFailed(f"TensorRT could not build an engine from {plan.source.path.name} (see its log above; "
                          "--verbose shows more)")
    gpu, _ = detect_gpu()
    manifest = make_manifest(plan, trt.__version__, gpu, opts.precision, plugin_ops, opts)
    engine_path, manifest_path, manifest = M.write_engine(plan.engine_path, bytes(memoryview(serialized)), manifest)
    _save_timing_cache(config, opts.timing_cache, warnings)
    return BuildResult(engine_path, manifest_path, manifest, time.perf_counter() - start, warnings)
