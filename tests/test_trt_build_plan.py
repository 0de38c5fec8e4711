"""The build plan per TensorRT version (tools/build_plan.py) and `tscli build --dry-run`.

The acceptance part runs the dry run on the exporter's real plugin-form tiny_ats for the versions
Jetsons ship (8.6, 10.3, 10.13 via 10.7+) and the edges (10.0, 10.7, 11.1), saves the exact bytes
TensorRT's parser would get, and checks them: which nodes and functions are left, the types at the
plugin's boundary (onnx shape inference), and that the bytes run in ONNX Runtime with the same
numbers as the file itself. The build-logic part uses the FAKE tensorrt (tests/trt_fakes.py): it
checks what the code asks TensorRT to do and what the manifest records; no engine is built and no
GPU is used.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto as TP
from trt_fakes import Recorder, fake_tensorrt, make_onnx

from tscli import contract as C
from tscli.errors import ModelFileError, UsageError
from tscli.runtime.ort.session import OrtBackend
from tscli.runtime.trt.host import GpuInfo
from tscli.tools import build_plan as P
from tscli.tools import engine_build as B

ORIN = GpuInfo("Orin", "8.7", "12.6", "12.6", "cuda-python")
VERSIONS = ("8.6", "10.0", "10.3", "10.7", "11.1")


def _dry(src, tmp_path, version, plugins=False, precision="fp32", save=True, **kw) -> B.BuildPlan:
    out = tmp_path / f"parser-{version}-{int(plugins)}-{precision}.onnx" if save else None
    opts = B.BuildOptions(str(src), precision=precision, dry_run=True, trt_version=version,
                          plugins=str(tmp_path / "libtscli_plugins.so") if plugins else None,
                          save_parser_input=str(out) if out else None, **kw)
    return B.dry_run(opts)


def _boundary_types(model: onnx.ModelProto) -> list[tuple[int, ...]]:
    g = onnx.shape_inference.infer_shapes(model).graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*g.value_info, *g.input, *g.output)}
    return [tuple(types.get(t, 0) for t in (*n.input, *n.output)) for n in P.sample_nodes(model)]


def test_trt_version_text() -> None:
    assert P.parse_trt_version("10.3") == (10, 3) and P.parse_trt_version("10.13.0.35") == (10, 13)
    with pytest.raises(UsageError, match="'ten' is not a TensorRT version; give MAJOR.MINOR"):
        P.parse_trt_version("ten")
    with pytest.raises(UsageError, match=r"TensorRT >= 8\.6 .*JetPack 5's TensorRT 8\.5 is not supported"):
        P.parse_trt_version("8.5")


# -- acceptance: the exporter's plugin-form file, per version -------------------------------------

@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("plugins", [False, True])
def test_dry_run_parser_input_per_version(tiny_exports, tmp_path, version, plugins) -> None:
    src = tiny_exports["plugin"]
    original = onnx.load(str(src))
    n_nodes = len(P.sample_nodes(original))
    assert n_nodes >= 1 and [f.name for f in original.functions] == [C.SAMPLE_OP]
    if version == "8.6" and plugins:  # IPluginV3 plugins cannot load in 8.6: refused, not ignored
        with pytest.raises(UsageError, match=r"IPluginV3 and need TensorRT >= 10 \(this is 8\.6\)"):
            _dry(src, tmp_path, version, plugins)
        return
    bp = _dry(src, tmp_path, version, plugins)
    plan, saved_path = bp.plan, tmp_path / f"parser-{version}-{int(plugins)}-fp32.onnx"
    saved = onnx.load(str(saved_path))
    assert not plan.tf32 and not plan.fp16_flag and plan.precision == "fp32"  # fp32 means fp32, 11.x too
    assert plan.strongly_typed == (version == "11.1")
    if plugins:
        assert plan.sampling == P.PLUGIN and len(P.sample_nodes(saved)) == n_nodes
        functions = [f.name for f in saved.functions]
        if version in ("10.0", "10.3"):  # the function would win over the plugin in 10.0-10.6
            assert functions == [] and plan.edits == ["ATSSample local function removed"]
        else:  # 10.7+: the file as it is (the plugin is preferred; the function stays as fallback)
            assert functions == [C.SAMPLE_OP] and plan.edits == []
            assert saved_path.read_bytes() == src.read_bytes()
        # no BOOL/UINT8 at the plugin's boundary: FLOAT, INT32, FLOAT -> INT32, INT32
        assert _boundary_types(saved) == [(TP.FLOAT, TP.INT32, TP.FLOAT, TP.INT32, TP.INT32)] * n_nodes
    else:  # standard ops, inlined by tscli on every version (8.6's parser reads no local functions)
        assert plan.sampling == P.STANDARD and not P.sample_nodes(saved) and not saved.functions
        assert all(o.domain != C.PLUGIN_DOMAIN for o in saved.opset_import)
        assert sum(n.name.startswith(P.SAMPLING_PREFIX) for n in saved.graph.node) >= n_nodes
        assert "inlined into the graph by tscli" in plan.why and (("8.6" in plan.why) == (version == "8.6"))
    assert len(plan.profiles) == 1 and plan.profiles[0]["shapes"][C.INPUT_K]["max"] == [40]


@pytest.fixture(scope="module")
def parity_feeds():
    rng = np.random.default_rng(12)
    return [(k, rng.standard_normal((2, 3, 32, 32)).astype(np.float32)) for k in (40, 9)]


def _same_outputs(ref: OrtBackend, got: OrtBackend, feeds) -> None:
    for k, images in feeds:
        feed = {C.INPUT_IMAGES: images, C.INPUT_K: np.zeros(k, np.float32)}
        want, have = ref.run(feed), got.run(feed)
        assert float(np.abs(want[C.OUTPUT_LOGITS] - have[C.OUTPUT_LOGITS]).max()) <= 1e-5
        for name in ref.output_names[1:]:
            np.testing.assert_array_equal(want[name], have[name], err_msg=f"{name} at K={k}")


@pytest.mark.parametrize("version", ["8.6", "10.3"])
def test_standard_op_parser_input_runs_like_the_file(tiny_exports, tmp_path, parity_feeds, version) -> None:
    """The inlined bytes the parser gets compute what the file computes (ORT CPU, logits <= 1e-5,
    kept counts and positions exact) and pass the TensorRT lint."""
    from tscli.export.lint import lint_model

    _dry(tiny_exports["plugin"], tmp_path, version)
    saved = tmp_path / f"parser-{version}-0-fp32.onnx"
    assert lint_model(onnx.load(str(saved))).ok
    _same_outputs(OrtBackend(tiny_exports["plugin"]), OrtBackend(saved), parity_feeds)


def test_plugin_parser_input_without_function_runs_with_the_op(tiny_exports, tmp_path, parity_feeds,
                                                               ort_ops_library) -> None:
    """10.0-10.6 with --plugins: the nodes without their function run in ORT with the native op
    (the same node contract as the TensorRT plugin) and match the plain form; without the op they
    cannot run at all (nothing else could compute them)."""
    _dry(tiny_exports["plugin"], tmp_path, "10.3", plugins=True)
    saved = tmp_path / "parser-10.3-1-fp32.onnx"
    _same_outputs(OrtBackend(tiny_exports["paper"]), OrtBackend(saved, plugins=ort_ops_library), parity_feeds)
    with pytest.raises(ModelFileError, match="not a loadable ONNX model"):
        OrtBackend(saved)


@pytest.mark.parametrize("version", ["8.6", "10.3", "10.7"])
@pytest.mark.parametrize("plugins", [False, True])
def test_fp16_plans_keep_sampling_fp32(tiny_exports, tmp_path, version, plugins) -> None:
    if version == "8.6" and plugins:
        return  # refused above
    plan = _dry(tiny_exports["plugin"], tmp_path, version, plugins, precision="fp16", save=False).plan
    assert plan.fp16_flag and not plan.tf32 and plan.sampling_precision.startswith("fp32")
    want = "accepts float32 only" if plugins else "pinned with OBEY_PRECISION_CONSTRAINTS"
    assert want in plan.sampling_precision


def test_strongly_typed_precision_comes_from_the_file(tmp_path) -> None:
    """TensorRT 11: fp16 needs a float16 file and fp32 a float32 one (fp32 must mean fp32); the
    sampling node must be fed float32 there (a Cast before it), else the plan refuses."""
    fp32 = make_onnx(tmp_path / "f32.onnx", plugin_node=True, with_function=True, form="plugin")
    half = make_onnx(tmp_path / "f16.onnx", plugin_node=True, with_function=True, half=True, form="plugin")
    with pytest.raises(UsageError, match="f32.onnx is float32; --precision fp16 needs a float16 ONNX"):
        _dry(fp32, tmp_path, "11.1", precision="fp16", save=False)
    with pytest.raises(UsageError, match="f16.onnx is float16; --precision fp32 needs a float32 ONNX"):
        _dry(half, tmp_path, "11.1", save=False)
    plan = _dry(half, tmp_path, "11.1", plugins=True, precision="fp16", save=False).plan
    assert plan.strongly_typed and not plan.fp16_flag and plan.sampling_precision.startswith("fp32 (strongly typed")
    fed_half = onnx.load(str(half))  # the node fed float16 scores directly
    node = P.sample_nodes(fed_half)[0]
    fed_half.graph.node.insert(0, onnx.helper.make_node("Cast", [C.OUTPUT_LOGITS], ["scores16"], to=TP.FLOAT16))
    node.input[0] = "scores16"
    onnx.save(fed_half, str(tmp_path / "fed16.onnx"))
    with pytest.raises(UsageError, match=r"\(FLOAT16, INT32, FLOAT -> .*a Cast to float32 before the node"):
        _dry(tmp_path / "fed16.onnx", tmp_path, "11.1", plugins=True, precision="fp16", save=False)


def test_files_with_bool_flags_are_refused_for_the_plugin_only(tmp_path) -> None:
    old = make_onnx(tmp_path / "old.onnx", plugin_node=True, with_function=True, bool_flags=True, form="plugin")
    with pytest.raises(UsageError, match="FLOAT, BOOL, FLOAT -> INT32, BOOL.*export it again"):
        _dry(old, tmp_path, "10.7", plugins=True, save=False)
    assert _dry(old, tmp_path, "10.7", save=False).plan.sampling == P.STANDARD  # its body still works


def test_plain_and_dense_files(tmp_path) -> None:
    plain = _dry(make_onnx(tmp_path / "p.onnx"), tmp_path, "10.3", plugins=True, save=False).plan
    assert plain.sampling == P.STANDARD and plain.edits == [] and plain.plugin_library is None
    assert any("no tscli.ATSSample nodes" in n for n in plain.notes)
    dense = _dry(make_onnx(tmp_path / "d.onnx", family="dense"), tmp_path, "10.3", save=False).plan
    assert dense.sampling == P.NONE and dense.sampling_precision == "n/a"


# -- real builds with the fake TensorRT: the plan is followed and the engine asked ----------------

def _fake(monkeypatch, version, **kw):
    trt = fake_tensorrt(version, Recorder(), **kw)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(B, "detect_gpu", lambda: (ORIN, []))
    return trt


@pytest.fixture
def plugin_file(tmp_path) -> Path:
    return make_onnx(tmp_path / "p.onnx", plugin_node=True, with_function=True, form="plugin")


@pytest.fixture
def library(tmp_path) -> Path:
    lib = tmp_path / "libtscli_plugins.so"
    lib.write_bytes(b"not really a library")
    return lib


@pytest.mark.parametrize("version,parsed", [("10.3.0", "parse"), ("10.7.0", "parse_from_file"),
                                            ("10.13.0", "parse_from_file"), ("11.1.0", "parse_from_file")])
def test_build_with_plugins_runs_the_plugin(monkeypatch, tmp_path, plugin_file, library, version, parsed) -> None:
    trt = _fake(monkeypatch, version)
    shown = []
    res = B.build_engine(B.BuildOptions(str(plugin_file), str(tmp_path / "e.engine"), plugins=str(library)),
                         show_plan=shown.append)
    assert [c[0] for c in trt.recorder.calls if c[0].startswith("parse")] == [parsed]
    assert trt.recorder.config.profiling_verbosity == trt.ProfilingVerbosity.DETAILED
    assert ("create_engine_inspector",) in trt.recorder.calls
    m = res.manifest
    assert m["sampling"] == {"path": "plugin", "checked_by": "engine inspector", "plugin_layers": 1}
    assert m["build_plan"]["sampling"] == "plugin" and m["build_plan"] == shown[0].to_dict()
    assert m["plugin_ops"] == [{"name": "ATSSample", "namespace": "tscli", "version": "1"}]
    assert trt.BuilderFlag.TF32 in trt.recorder.config.cleared  # fp32 means fp32 on 11.x too
    assert json.loads(res.manifest_path.read_text())["sampling"]["path"] == "plugin"


def test_the_function_would_have_won_on_10_3(monkeypatch, tmp_path, plugin_file, library) -> None:
    """Why the plan removes the function on 10.0-10.6: handed the file as it is, the (modelled)
    10.3 parser imports the local function and the engine has no plugin layer."""
    trt = _fake(monkeypatch, "10.3.0")
    trt.get_plugin_registry().load_library(str(library))
    parser = trt.OnnxParser(trt.Builder(trt.Logger(2)).create_network(0), None)
    assert parser.parse_from_file(str(plugin_file))
    assert B.count_plugin_layers(trt.recorder.network) == 0


@pytest.mark.parametrize("version", ["8.6.1", "10.3.0", "10.7.0"])
def test_build_without_plugins_runs_standard_ops(monkeypatch, tmp_path, plugin_file, version) -> None:
    monkeypatch.setenv("TSCLI_PLUGIN_PATH", str(tmp_path / "nowhere"))
    monkeypatch.chdir(tmp_path)
    trt = _fake(monkeypatch, version)
    res = B.build_engine(B.BuildOptions(str(plugin_file), str(tmp_path / "e.engine")))
    assert res.manifest["sampling"]["path"] == "standard ops" and res.manifest["plugin_ops"] == []
    assert "load_library" not in trt.recorder.names()
    plugin_hint = [w for w in res.warnings if "--plugins" in w]
    assert bool(plugin_hint) == (version != "8.6.1")  # never offered where TensorRT would refuse it


def test_fp16_build_pins_the_inlined_sampling(monkeypatch, tmp_path, plugin_file) -> None:
    monkeypatch.setenv("TSCLI_PLUGIN_PATH", str(tmp_path / "nowhere"))
    trt = _fake(monkeypatch, "10.3.0")
    B.build_engine(B.BuildOptions(str(plugin_file), str(tmp_path / "e.engine"), precision="fp16"))
    config, network = trt.recorder.config, trt.recorder.network
    layers = [network.get_layer(i) for i in range(network.num_layers)]
    pinned = [la for la in layers if la.precision == trt.float32]
    assert [la.name.split("/")[-1] for la in pinned] == ["Abs_7__1"]  # the body's one float layer (inliner suffix)
    assert pinned[0].output_types == {0: trt.float32} and pinned[0].name.startswith(P.SAMPLING_PREFIX)
    assert trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS in config.flags and trt.BuilderFlag.FP16 in config.flags
    assert all(la.precision is None for la in layers if not la.name.startswith(P.SAMPLING_PREFIX))


def test_without_inspector_the_network_answers(monkeypatch, tmp_path, plugin_file, library) -> None:
    _fake(monkeypatch, "10.7.0", inspector=False)
    res = B.build_engine(B.BuildOptions(str(plugin_file), str(tmp_path / "e.engine"), plugins=str(library)))
    assert res.manifest["sampling"] == {"path": "plugin", "checked_by": "network layers", "plugin_layers": 1}


def test_parser_error_on_8_6_does_not_offer_plugins(monkeypatch, tmp_path, plugin_file) -> None:
    monkeypatch.setenv("TSCLI_PLUGIN_PATH", str(tmp_path / "nowhere"))
    _fake(monkeypatch, "8.6.1", parse_ok=False)
    with pytest.raises(ModelFileError, match="plugin-form file: export the plain form") as exc:
        B.build_engine(B.BuildOptions(str(plugin_file), str(tmp_path / "e.engine")))
    assert "--plugins" not in str(exc.value)


def test_selftest_verdict_names_the_sampling_path() -> None:
    from tscli.tools.selftest import KResult, SelftestResult

    result = SelftestResult("a.onnx", "10.3.0", "Orin (8.7)", [KResult(8, 1e-6, True)], "plugin (engine inspector)")
    assert result.verdict().endswith("kept counts equal; sampling: plugin (engine inspector)")


# -- the command ---------------------------------------------------------------------------------

def _tscli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tscli.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


def test_cli_dry_run(tmp_path, plugin_file) -> None:
    out = tmp_path / "parser.onnx"
    proc = _tscli("build", plugin_file, "--dry-run", "--trt-version", "10.3", "--plugins", tmp_path / "lib.so",
                  "--k", "8", "--save-parser-input", out)
    assert proc.returncode == 0, proc.stderr
    assert "sampling: plugin: TensorRT 10.3's parser (10.0-10.6) imports a node's local function" in proc.stdout
    assert "parser input: ATSSample local function removed" in proc.stdout and "tf32 off" in proc.stdout
    assert out.is_file() and not onnx.load(str(out)).functions
    proc = _tscli("build", plugin_file, "--dry-run", "--trt-version", "8.6", "--precision", "fp16", "--json")
    plan = json.loads(proc.stdout)["plan"]
    assert plan["sampling"] == "standard ops" and plan["fp16_flag"] and plan["tf32"] is False
    assert plan["sampling_precision"].startswith("fp32")


@pytest.mark.parametrize("args,message", [
    (["--dry-run", "--trt-version", "10"], "'10' is not a TensorRT version"),
    (["--trt-version", "10.3"], "--trt-version needs --dry-run"),
    (["--dry-run", "--trt-version", "10.3", "--save-parser-input", "x.txt"], "must be an .onnx file"),
])
def test_cli_dry_run_refusals(tmp_path, plugin_file, args, message) -> None:
    proc = _tscli("build", plugin_file, *args)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and message in proc.stderr, proc.stderr


def test_cli_dry_run_never_overwrites_its_input(tmp_path, plugin_file) -> None:
    before = plugin_file.read_bytes()
    proc = _tscli("build", plugin_file, "--dry-run", "--trt-version", "10.3", "--save-parser-input", plugin_file)
    assert proc.returncode == 2 and "also an input" in proc.stderr and plugin_file.read_bytes() == before
