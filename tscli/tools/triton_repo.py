"""``tscli triton-repo``: a Triton Inference Server model repository for tscli files, with the K
(and DoViT xi) each device chose carried in.

Layout per file: REPO/NAME/config.pbtxt and REPO/NAME/1/ (NAME = file stem + _kK), plus
REPO/serve.sh (tritonserver on this repository, loopback only). Backends:

- onnxruntime: 1/model.onnx is a copy of the file with K and xi frozen: k_select becomes a
  constant [K] tensor and xi a constant, so ``images`` is the only input and dynamic batching
  works. Triton cannot feed K from the config: with max_batch_size > 0 every input gets a batch
  dimension, and the ONNX Runtime backend refuses inputs with defaults when batching. With
  ``keep_k_input`` the file keeps its k_select [K] input instead, and the model is not batched
  (max_batch_size 0, the client sends k_select).
- tensorrt: the same frozen file as NAME/source.onnx and NAME/build_engine.sh, which builds
  1/model.plan with trtexec on the serving device (engines are not portable). A plugin-form
  file needs tscli's TensorRT plugin library, which Triton loads per server
  (``--backend-config=tensorrt,plugins=LIB``, in serve.sh), not per model.
- python: 1/model.py (runtime/triton_model.py) runs tscli.runtime on the unchanged file, K
  and xi from the config's parameters; needs tscli in the Triton server's Python.

Every frozen file is checked against ``tscli.runtime.load(FILE, k=K).infer`` before anything is
moved into REPO, and every config.pbtxt against Triton's protobuf (tools/triton_config.py). A
model folder is written beside its final place and renamed into it, so an interrupted run leaves
the repository as it was.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import contract as C
from ..errors import CheckFailed, ModelFileError, UsageError, require
from ..files import atomic_path, sha256_file
from ..runtime import device_profiles as P
from ..runtime import triton_model
from ..runtime.ort.session import OrtBackend
from ..runtime.runner import Runner, load
from . import triton_config as T

BACKENDS = ("onnxruntime", "tensorrt", "python")
TOLERANCE = 1e-5  # frozen file vs the runtime at the same K (measured: 0, the same graph)
KIND = {"onnxruntime": "KIND_AUTO", "tensorrt": "KIND_GPU", "python": "KIND_CPU"}
PROFILE_BACKEND = {"onnxruntime": "ort", "python": "ort", "tensorrt": "trt"}


@dataclass
class RepoOptions:
    files: list[str]
    output: str
    k: int | str | None = None  # None: max_k; "auto": a device profile
    xi: float | None = None
    backend: str = "onnxruntime"
    max_batch: int = 8
    instances: int = 1
    delay_us: int = 0
    keep_k_input: bool = False
    threads: int | None = None
    plugins: str | None = None  # tensorrt: libtscli_plugins.so, copied into REPO/plugins/
    profiles: str | None = None  # --k auto: the profile store (default: next to each file)
    device: str | None = None  # --k auto: a device named in the store (default: this device)
    name: str | None = None  # one file: the model's name (default: file stem + _kK)


def check_options(opts: RepoOptions) -> None:
    if opts.backend not in BACKENDS:
        raise UsageError(f"unknown --backend {opts.backend!r}; valid: {', '.join(BACKENDS)}")
    for value, option, low in ((opts.max_batch, "--max-batch", 0), (opts.instances, "--instances", 1),
                               (opts.delay_us, "--delay-us", 0)):
        if value < low:
            raise UsageError(f"{option} {value} is invalid; give an integer >= {low}")
    if opts.keep_k_input and opts.backend == "python":
        raise UsageError("--keep-k-input applies to the onnxruntime and tensorrt backends (python fixes K at load)")
    if opts.plugins is not None and opts.backend != "tensorrt":
        raise UsageError(f"--plugins applies to --backend tensorrt; --backend is {opts.backend!r}")
    if opts.plugins is not None and not Path(opts.plugins).is_file():
        raise UsageError(f"--plugins {opts.plugins!r} is not a file; give libtscli_plugins.so")
    if opts.name is not None and (len(opts.files) != 1 or not re.fullmatch(r"[A-Za-z0-9._-]+", opts.name)):
        raise UsageError(f"--name {opts.name!r} is invalid; give one file and a name of letters, digits, '.', '_', '-'")
    if opts.device is not None and opts.k != "auto":
        raise UsageError("--device selects whose profile --k auto uses; give --k auto with it")
    out = Path(opts.output)
    if out.exists() and not out.is_dir():
        raise UsageError(f"-o {opts.output!r} is a file; give a folder for the model repository")
    if not out.parent.is_dir():
        raise UsageError(f"the folder {str(out.parent)!r} of -o does not exist")
    T.model_config_pb2()  # the validator must be there before anything is written


def profile_k(path: str, meta: dict, opts: RepoOptions) -> int:
    """K of ``--k auto``: this device's profile, or with ``device`` the profile of the device in
    the store whose CPU or GPU name contains it (the repository is usually for another device)."""
    if opts.device is None:
        return P.auto_k(path, meta, "ort", "CPUExecutionProvider", opts.profiles)[0]
    store = Path(opts.profiles) if opts.profiles else P.default_store(path)
    ident = P.model_identity(meta)
    mine = [p for p in P.read_store(store) if p.get("model") == ident]
    named = [p for p in mine if any(opts.device.lower() in str(p.get("fingerprint", {}).get(key) or "").lower()
                                    for key in ("cpu", "gpu"))]
    devices = {_device(p) for p in named}  # one device may have profiles for several backends
    if len(devices) != 1:
        known = "; ".join(sorted({_device(p) for p in mine})) or "none"
        what = "no device" if not devices else f"{len(devices)} devices"
        raise UsageError(f"--device {opts.device!r} matches {what} in {str(store)!r} for {Path(path).name}; "
                         f"devices there: {known}")
    same_backend = [p for p in named if p["fingerprint"].get("backend") == PROFILE_BACKEND[opts.backend]]
    return int(min(same_backend or named, key=lambda p: p.get("batch", 1))["chosen_k"])


def _device(profile: dict) -> str:
    fp = profile.get("fingerprint", {})
    return f"cpu={fp.get('cpu')}, gpu={fp.get('gpu')}"


def resolve(path: str, opts: RepoOptions) -> tuple[Runner, bool, bool]:
    """The runner at the K (and xi) the repository carries, and whether the file takes K and xi.
    --k applies to the files that take K, --xi to those that take xi (a repository may mix ATS
    and DoViT files); the runner checks the values against the file."""
    probe = OrtBackend(path)
    meta = C.decode_metadata(probe.metadata_props)
    takes_k, takes_xi = C.INPUT_K in probe.input_names, C.INPUT_XI in probe.input_names
    if opts.keep_k_input and not takes_k:
        raise UsageError(f"--keep-k-input: {Path(path).name} has no K input (only ATS files do)")
    k = opts.k if takes_k else None
    if k == "auto":
        k = profile_k(path, meta, opts)
    return load(path, k=k, xi=opts.xi if takes_xi else None, threads=opts.threads), takes_k, takes_xi


def model_name(path: str, runner: Runner) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", Path(path).stem + (f"_k{runner.k}" if runner.k is not None else ""))


def freeze(src: str, dst: Path, k: int | None, xi: float | None) -> None:
    """Copy of ``src`` whose k_select input is a constant [K] tensor and whose xi input is a
    constant (only ``images`` stays an input); output dims 'K + 1' become K + 1."""
    onnx = require("onnx", "pip install onnx (the export extras)")
    from onnx import numpy_helper

    model = onnx.load(src)
    graph = model.graph
    constants = {}
    if k is not None:
        constants[C.INPUT_K] = np.zeros(k, np.float32)  # only its length matters
    if xi is not None:
        constants[C.INPUT_XI] = np.asarray(xi, np.float32)
    kept = [i for i in graph.input if i.name not in constants]
    del graph.input[:]
    graph.input.extend(kept)
    for init in [t for t in graph.initializer if t.name in constants]:
        graph.initializer.remove(init)
    graph.initializer.extend(numpy_helper.from_array(v, name) for name, v in constants.items())
    if k is not None:
        for out in graph.output:
            for dim in out.type.tensor_type.shape.dim:
                if dim.dim_param == f"{C.DIM_K} + 1":
                    dim.dim_value = k + 1
    for key, value in (("frozen_k", k), ("frozen_xi", xi)):
        if value is not None:
            model.metadata_props.add(key=C.META_PREFIX + key, value=str(value))
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))


def check_frozen(runner: Runner, frozen: Path, keep_k_input: bool) -> float:
    """Max |difference| of the frozen copy against the runner on two random images; raises
    CheckFailed beyond TOLERANCE or when an integer/bool output differs at all."""
    c, h, w = runner.meta["input_size"]
    x = np.random.default_rng(0).standard_normal((2, c, h, w)).astype(np.float32)
    want = runner.infer(x)
    feeds = {C.INPUT_IMAGES: x}
    if keep_k_input:
        feeds[C.INPUT_K] = np.zeros(runner.k, np.float32)
    got = OrtBackend(frozen).run(feeds)
    worst = 0.0
    for name, value in got.items():
        ref = want[name]
        if value.shape != ref.shape or (value.dtype.kind != "f" and not np.array_equal(value, ref)):
            raise CheckFailed(f"the frozen copy of {runner.meta['model']} differs from the runtime in {name}")
        worst = max(worst, float(np.max(np.abs(value.astype(np.float64) - ref.astype(np.float64)), initial=0.0)))
    if worst > TOLERANCE:
        raise CheckFailed(f"the frozen copy differs from the runtime by {worst:.3g} > {TOLERANCE}")
    return worst


def spec_for(name: str, runner: Runner, opts: RepoOptions, source: str) -> T.ModelSpec:
    batched = opts.max_batch > 0 and not opts.keep_k_input
    lead = [] if batched else [-1]
    inputs = [T.TensorSpec(C.INPUT_IMAGES, "TYPE_FP32", lead + list(runner.meta["input_size"]))]
    if opts.keep_k_input:
        inputs.append(T.TensorSpec(C.INPUT_K, "TYPE_FP32", [runner.k]))
    outputs = []
    for out_name, (dims, dtype) in triton_model.output_specs(runner).items():
        if batched and not dims:  # [B] in the file: one value per image as dims [1], reshaped away
            outputs.append(T.TensorSpec(out_name, T.triton_type(dtype), [1], reshape=[]))
        else:
            outputs.append(T.TensorSpec(out_name, T.triton_type(dtype), lead + dims))
    params = {"tscli.model": str(runner.meta.get("model")), "tscli.source": Path(source).name,
              "tscli.source_sha256": sha256_file(source)}
    for key, value in ((triton_model.PARAM_K, runner.k), (triton_model.PARAM_XI, runner.xi)):
        if value is not None:
            params[key] = str(value)
    if opts.backend == "python":
        params[triton_model.PARAM_FILE] = Path(source).name
        if opts.threads:
            params[triton_model.PARAM_THREADS] = str(opts.threads)
    elif opts.backend == "onnxruntime" and opts.threads:
        params["intra_op_thread_count"] = str(opts.threads)  # the onnxruntime backend's own parameter
    carried = f"K={runner.k}" if runner.k is not None else (f"xi={runner.xi}" if runner.xi is not None else "nothing to choose")
    how = {"python": "tscli.runtime loads the file at load time",
           "onnxruntime": "k_select is an input [K]" if opts.keep_k_input else "frozen into 1/model.onnx",
           "tensorrt": "k_select is an input [K]" if opts.keep_k_input else "frozen into source.onnx"}[opts.backend]
    comment = [f"tscli triton-repo: {Path(source).name} ({runner.meta.get('model')}), {carried} ({how})"]
    if not batched:
        comment.append("not batched: k_select has no batch dimension, so max_batch_size is 0" if opts.keep_k_input
                       else "max_batch_size 0: no dynamic batching")
    return T.ModelSpec(name, opts.backend, opts.max_batch if batched else 0, inputs, outputs, opts.instances,
                       KIND[opts.backend], opts.delay_us, params, comment)


def _build_script(runner: Runner, opts: RepoOptions, plugin_form: bool) -> str:
    c, h, w = runner.meta["input_size"]
    image = f"{c}x{h}x{w}"
    top = max(opts.max_batch, 1)
    k = f",{C.INPUT_K}:{runner.k}" if opts.keep_k_input else ""
    shapes = (f"--minShapes={C.INPUT_IMAGES}:1x{image}{k} --optShapes={C.INPUT_IMAGES}:{top}x{image}{k} "
              f"--maxShapes={C.INPUT_IMAGES}:{top}x{image}{k}")
    plugin = ' --staticPlugins="${TSCLI_PLUGIN_LIB:?set TSCLI_PLUGIN_LIB to libtscli_plugins.so}"' if plugin_form else ""
    return ("#!/bin/sh\n"
            "# Build 1/model.plan from source.onnx on the device that serves it (engines are not portable).\n"
            "# TensorRT 8.6 spells --staticPlugins as --plugins. Extra arguments go to trtexec (e.g. --fp16).\n"
            "set -e\ncd \"$(dirname \"$0\")\"\n"
            f"\"${{TRTEXEC:-trtexec}}\" --onnx=source.onnx --saveEngine=1/model.plan {shapes}{plugin} \"$@\"\n")


def _serve_script(repo: Path) -> str:
    libs = sorted(p.name for p in (repo / "plugins").glob("*.so")) if (repo / "plugins").is_dir() else []
    plugins = "".join(f' --backend-config=tensorrt,plugins="$HERE/plugins/{lib}"' for lib in libs)
    return ("#!/bin/sh\n"
            "# tritonserver on this repository, listening on 127.0.0.1 only: change the three addresses\n"
            "# (or put a proxy in front) to serve other machines. TensorRT plugins load per server.\n"
            "HERE=$(cd \"$(dirname \"$0\")\" && pwd)\n"
            "exec tritonserver --model-repository=\"$HERE\" --http-address=127.0.0.1 --grpc-address=127.0.0.1 "
            f"--metrics-address=127.0.0.1{plugins} \"$@\"\n")


def _write_model(path: str, runner: Runner, opts: RepoOptions, folder: Path) -> T.ModelSpec:
    """Fill ``folder`` (a fresh model folder) for ``path``; returns the config's spec."""
    (folder / "1").mkdir(parents=True)
    spec = spec_for(folder.name, runner, opts, path)
    if opts.backend == "python":
        shutil.copyfile(path, folder / "1" / Path(path).name)
        shutil.copyfile(triton_model.__file__, folder / "1" / "model.py")
    else:
        target = folder / "1" / "model.onnx" if opts.backend == "onnxruntime" else folder / "source.onnx"
        if opts.keep_k_input:
            shutil.copyfile(path, target)
        else:
            freeze(path, target, runner.k, runner.xi)
        check_frozen(runner, target, opts.keep_k_input)
        if opts.backend == "tensorrt":
            script = folder / "build_engine.sh"
            script.write_text(_build_script(runner, opts, runner.meta.get("form") == "plugin"))
            script.chmod(0o755)
    (folder / "config.pbtxt").write_text(T.render(spec))
    found = T.problems(folder / "config.pbtxt", spec)
    if found:
        raise CheckFailed(f"the config written for {folder.name} would not load in Triton: {'; '.join(found)}")
    return spec


def _swap_in(new: Path, final: Path) -> None:
    """Rename ``new`` to ``final``; an existing ``final`` is replaced (moved aside, then removed)."""
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{hashlib.sha1(str(new).encode()).hexdigest()[:8]}")
        final.rename(old)
    new.rename(final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_repo(opts: RepoOptions, progress=None) -> list[T.ModelSpec]:
    """Write one model folder per file into ``opts.output`` (created if missing)."""
    check_options(opts)
    repo = Path(opts.output)
    runners, names, any_k, any_xi = [], {}, False, False
    for path in opts.files:
        if not Path(path).is_file():
            raise ModelFileError(f"model file {path!r} does not exist")
        runner, takes_k, takes_xi = resolve(path, opts)
        any_k, any_xi = any_k or takes_k, any_xi or takes_xi
        name = opts.name or model_name(path, runner)
        if name in names:
            raise UsageError(f"{path} and {names[name]} would both be model {name!r}; rename one file")
        names[name] = path
        runners.append((path, runner, name))
    if opts.k is not None and not any_k:
        raise UsageError(f"--k {opts.k} given, but no file takes K (only ATS files do)")
    if opts.xi is not None and not any_xi:
        raise UsageError(f"--xi {opts.xi} given, but no file takes xi (only DoViT files do)")
    repo.mkdir(exist_ok=True)
    specs = []
    for path, runner, name in runners:
        if progress:
            progress(f"{name}: {opts.backend}")
        with tempfile.TemporaryDirectory(prefix=f".{name}.", dir=repo) as tmp:
            spec = _write_model(path, runner, opts, Path(tmp) / name)
            _swap_in(Path(tmp) / name, repo / name)
        specs.append(spec)
    if opts.plugins:
        (repo / "plugins").mkdir(exist_ok=True)
        with atomic_path(repo / "plugins" / Path(opts.plugins).name) as tmp:
            shutil.copyfile(opts.plugins, tmp)
    with atomic_path(repo / "serve.sh") as tmp:
        tmp.write_text(_serve_script(repo))
        tmp.chmod(0o755)
    return specs
