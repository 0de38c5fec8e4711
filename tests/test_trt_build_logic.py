"""LOGIC tests of `tscli build` and the TensorRT API use per version, with a FAKE tensorrt module
(tests/trt_fakes.py). They check what the code asks TensorRT to do; no engine is built and no GPU
is used. The CLI tests at the bottom run the real command on this host (no TensorRT here)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from trt_fakes import Recorder, fake_tensorrt, make_onnx

from tscli.errors import MissingDependency, ModelFileError, UsageError
from tscli.files import sha256_file
from tscli.runtime.trt.host import GpuInfo
from tscli.tools import engine_build as B

ORIN = GpuInfo("Orin", "8.7", "12.6", "12.6", "cuda-python")


@pytest.fixture
def onnx_file(tmp_path) -> Path:
    return make_onnx(tmp_path / "tiny.onnx")


def _with_fake(monkeypatch, version="10.3.0.30", **kw):
    trt = fake_tensorrt(version, Recorder(), **kw)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(B, "detect_gpu", lambda: (ORIN, []))
    return trt


def test_logic_build_writes_engine_and_manifest(monkeypatch, onnx_file, tmp_path):
    trt = _with_fake(monkeypatch)
    cache = tmp_path / "timing.cache"
    res = B.build_engine(B.BuildOptions(str(onnx_file), str(tmp_path / "e.engine"), k_ranges=["8:16:32"], ks=[4],
                                        batch="1:2:4", workspace_mb=256, timing_cache=str(cache)))
    rec = trt.recorder
    assert rec.network.flags == 0  # TensorRT 10: no explicit-batch flag (deprecated)
    assert [p.shapes for p in rec.config.profiles] == [
        {"images": ([1, 3, 32, 32], [2, 3, 32, 32], [4, 3, 32, 32]), "k_select": ([8], [16], [32])},
        {"images": ([1, 3, 32, 32], [2, 3, 32, 32], [4, 3, 32, 32]), "k_select": ([4], [4], [4])},
    ]
    assert rec.config.pool == {trt.MemoryPoolType.WORKSPACE: 256 << 20}
    assert trt.BuilderFlag.TF32 in rec.config.cleared and trt.BuilderFlag.FP16 not in rec.config.flags
    assert ("create_timing_cache", b"") in rec.calls and cache.read_bytes() == b"timing-cache-v1"
    m = json.loads(res.manifest_path.read_text())
    assert m["tensorrt_version"] == "10.3.0.30" and m["gpu"]["compute_capability"] == "8.7"
    assert m["k_range"] == [4, 32] and m["batch_range"] == [1, 4] and m["precision"] == "fp32"
    assert m["model_metadata"]["model"] == "tiny_ats" and m["plugin_ops"] == [] and m["plugin_library"] is None
    assert len(m["source_onnx"]["sha256"]) == 64 and m["engine_sha256"] == sha256_file(res.engine_path)
    assert res.engine_path.read_bytes().startswith(b"FAKE-ENGINE:")


@pytest.mark.parametrize("version,expected_flags", [("8.6.2", 1 << 0), ("10.7.0", 0), ("11.0.0", 1 << 2)])
def test_logic_network_flags_per_version(monkeypatch, onnx_file, tmp_path, version, expected_flags):
    trt = _with_fake(monkeypatch, version)
    B.build_engine(B.BuildOptions(str(onnx_file), str(tmp_path / "e.engine")))
    assert trt.recorder.network.flags == expected_flags


def test_logic_fp16_flag_and_trt11_strongly_typed_refusal(monkeypatch, onnx_file, tmp_path):
    trt = _with_fake(monkeypatch, "10.3.0")
    B.build_engine(B.BuildOptions(str(onnx_file), str(tmp_path / "a.engine"), precision="fp16"))
    assert trt.BuilderFlag.FP16 in trt.recorder.config.flags
    _with_fake(monkeypatch, "11.0.0")
    with pytest.raises(UsageError, match="strongly typed .* tiny.onnx is float32; --precision fp16 needs a float16 ONNX"):
        B.build_engine(B.BuildOptions(str(onnx_file), str(tmp_path / "b.engine"), precision="fp16"))
    assert not (tmp_path / "b.engine").exists()


def test_logic_old_tensorrt_refused(monkeypatch, onnx_file, tmp_path):
    _with_fake(monkeypatch, "8.5.2")
    with pytest.raises(Exception, match=r"TensorRT 8\.5\.2 is too old.*>= 8\.6"):
        B.build_engine(B.BuildOptions(str(onnx_file), str(tmp_path / "e.engine")))


def test_logic_plugin_form_loads_library_checks_creators_and_hashes(monkeypatch, tmp_path):
    src = make_onnx(tmp_path / "p.onnx", plugin_node=True, form="plugin")
    lib = tmp_path / "libtscli_plugins.so"
    lib.write_bytes(b"not really a library")
    trt = _with_fake(monkeypatch, plugin_layers=3)
    res = B.build_engine(B.BuildOptions(str(src), str(tmp_path / "p.engine"), plugins=str(lib)))
    assert ("load_library", str(lib.resolve())) in trt.recorder.calls
    assert res.manifest["plugin_ops"] == [{"name": "ATSSample", "namespace": "tscli", "version": "1"}]
    assert res.manifest["plugin_library"]["sha256"] == sha256_file(lib)
    _with_fake(monkeypatch, creators=())
    with pytest.raises(ModelFileError, match=r"no TensorRT plugin creator for tscli::ATSSample v1 after loading"):
        B.build_engine(B.BuildOptions(str(src), str(tmp_path / "q.engine"), plugins=str(lib)))


def test_logic_plugins_refused_on_tensorrt_8(monkeypatch, tmp_path):
    src = make_onnx(tmp_path / "p.onnx", plugin_node=True, form="plugin")
    lib = tmp_path / "libtscli_plugins.so"
    lib.write_bytes(b"fake")
    trt = _with_fake(monkeypatch, "8.6.1")
    with pytest.raises(UsageError, match=r"IPluginV3 and need TensorRT >= 10 \(this is 8\.6\.1\)"):
        B.build_engine(B.BuildOptions(str(src), str(tmp_path / "p.engine"), plugins=str(lib)))
    assert "load_library" not in trt.recorder.names()


def test_read_source_without_onnx_package(monkeypatch, tmp_path):
    """A deploy host may have only onnxruntime: metadata, inputs and the plugin op come from it."""
    find_spec = B.importlib.util.find_spec
    monkeypatch.setattr(B.importlib.util, "find_spec", lambda name: None if name == "onnx" else find_spec(name))
    # (the fake has no function body for ORT to run, so the plugin op is known from form=plugin only)
    src = B.read_source(make_onnx(tmp_path / "p.onnx", form="plugin"))
    assert src.input_names == ["images", "k_select"] and src.input_types["images"] == "float32"
    assert src.custom_ops == [{"name": "ATSSample", "namespace": "tscli", "version": "1"}] and src.lint_error is None


def test_logic_input_default_is_dropped_so_xi_stays_an_engine_input(monkeypatch, tmp_path):
    # TensorRT would fold an input that has an initializer into a constant: a DoViT engine would
    # then ignore the xi chosen at load. The parser must get the model without that default.
    import onnx

    src = make_onnx(tmp_path / "seg.onnx", k_input=False, xi_default=0.985, max_k=None)
    trt = _with_fake(monkeypatch)
    B.build_engine(B.BuildOptions(str(src), str(tmp_path / "seg.engine"), batch="1:1:2"))
    parsed = [c for c in trt.recorder.calls if c[0] in ("parse", "parse_from_file")]
    assert len(parsed) == 1 and parsed[0][0] == "parse"
    model = onnx.load_from_string(parsed[0][1])
    assert [i.name for i in model.graph.input] == ["images", "xi"] and not list(model.graph.initializer)
    assert onnx.load(str(src)).graph.initializer[0].name == "xi"  # the user's file is untouched
    # A host without the onnx package (read via ONNX Runtime: no model to edit) is told before
    # TensorRT is imported.
    find_spec = B.importlib.util.find_spec
    monkeypatch.setattr(B.importlib.util, "find_spec", lambda name: None if name == "onnx" else find_spec(name))
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(MissingDependency, match="keeping xi selectable .* pip install onnx"):
        B.build_engine(B.BuildOptions(str(src), str(tmp_path / "seg2.engine"), batch="1:1:2"))
    monkeypatch.undo()
    trt = _with_fake(monkeypatch)
    # Without a defaulted input the file is parsed as it is.
    plain = make_onnx(tmp_path / "plain.onnx")
    trt = _with_fake(monkeypatch)
    B.build_engine(B.BuildOptions(str(plain), str(tmp_path / "plain.engine"), ks=[4], batch="1:1:2"))
    assert ("parse_from_file", str(plain)) in trt.recorder.calls


def test_logic_timing_cache_path_is_checked_before_building_and_never_costs_the_engine(monkeypatch, onnx_file, tmp_path):
    trt = _with_fake(monkeypatch)
    for bad in (tmp_path, tmp_path / "missing" / "t.cache"):  # a folder; a file in a missing folder
        with pytest.raises(UsageError, match="--timing-cache"):
            B.build_engine(B.BuildOptions(str(onnx_file), str(tmp_path / "e.engine"), ks=[4], timing_cache=str(bad)))
        assert "build_serialized_network" not in trt.recorder.names()
    assert not (tmp_path / "e.engine").exists()
    # A cache that cannot be written after the build is a warning: the engine is kept.
    monkeypatch.setattr(B, "atomic_path", lambda *a, **k: (_ for _ in ()).throw(PermissionError(13, "Permission denied")))
    res = B.build_engine(B.BuildOptions(str(onnx_file), str(tmp_path / "e.engine"), ks=[4],
                                        timing_cache=str(tmp_path / "t.cache")))
    assert res.engine_path.is_file() and any("timing cache not saved" in w for w in res.warnings)


def test_logic_parser_error_names_the_fix(monkeypatch, tmp_path):
    src = make_onnx(tmp_path / "p.onnx", plugin_node=True, form="plugin")
    monkeypatch.setenv("TSCLI_PLUGIN_PATH", str(tmp_path / "nowhere"))
    monkeypatch.chdir(tmp_path)
    _with_fake(monkeypatch, parse_ok=False)
    with pytest.raises(ModelFileError, match="No importer registered for op: ATSSample; this is a plugin-form file"):
        B.build_engine(B.BuildOptions(str(src), str(tmp_path / "e.engine")))
    assert not (tmp_path / "e.engine").exists()


def test_trimmed_and_data_dependent_graphs_refused(tmp_path):
    with pytest.raises(UsageError, match="trimmed graph"):
        B.plan_build(B.BuildOptions(str(make_onnx(tmp_path / "t.onnx", mode="trimmed"))))
    with pytest.raises(UsageError, match="cannot become a TensorRT engine: error: NonZero"):
        B.plan_build(B.BuildOptions(str(make_onnx(tmp_path / "n.onnx", nonzero=True))))


def test_bad_options_refused_before_tensorrt(onnx_file, tmp_path):
    with pytest.raises(UsageError, match="unknown --precision 'int4'; valid: fp32, fp16, int8"):
        B.plan_build(B.BuildOptions(str(onnx_file), precision="int4"))
    with pytest.raises(UsageError, match=r"K range 8\.\.33 is outside this file's 1\.\.32"):
        B.plan_build(B.BuildOptions(str(onnx_file), k_ranges=["8:16:33"]))
    with pytest.raises(UsageError, match="plugin library .* does not exist"):
        B.plan_build(B.BuildOptions(str(onnx_file), plugins=str(tmp_path / "missing.so")))


def _run_cli(monkeypatch, capsys, *args) -> tuple[int, str]:
    from tscli.cli import main

    monkeypatch.setattr(sys, "argv", ["tscli", *args])
    with pytest.raises(SystemExit) as exc:
        main()
    return exc.value.code, capsys.readouterr().err


def test_cli_build_without_tensorrt_one_line(monkeypatch, capsys, onnx_file):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import fails as on a host without TensorRT
    code, err = _run_cli(monkeypatch, capsys, "build", str(onnx_file), "--k-range", "8:16:32")
    lines = err.strip().splitlines()
    assert code != 0 and len(lines) == 1 and "Traceback" not in err
    assert lines[0].startswith("error: TensorRT Python bindings not found") and "pip install tensorrt" in lines[0]
    assert "python3-libnvinfer" in lines[0]
    assert not onnx_file.with_suffix(".engine").exists()


def test_cli_build_refuses_trimmed_in_one_line(monkeypatch, capsys, tmp_path):
    code, err = _run_cli(monkeypatch, capsys, "build", str(make_onnx(tmp_path / "t.onnx", mode="trimmed")))
    assert code == 2 and err.count("\n") == 1 and "trimmed graph" in err


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="this host has TensorRT")
def test_cli_build_subprocess_on_this_host(onnx_file):
    exe = Path(sys.executable).with_name("tscli")
    proc = subprocess.run([str(exe), "build", str(onnx_file)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "TensorRT Python bindings not found" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
