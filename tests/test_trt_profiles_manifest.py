"""Profile derivation from metadata, manifest round trip and host checks (pure logic, no TensorRT)."""

from __future__ import annotations

import json

import pytest

from tscli.errors import ModelFileError, UsageError
from tscli.runtime.trt import manifest as M
from tscli.runtime.trt.host import GpuInfo
from tscli.runtime.trt.opt_profiles import (
    Profile,
    choose_profile,
    derive_profiles,
    k_span,
    parse_range,
)

META = {"model": "tiny_ats", "family": "ats", "max_k": 120, "input_size": [3, 224, 224]}
INPUTS = ["images", "k_select"]


@pytest.mark.parametrize("text,expected", [("48:96:120", (48, 96, 120)), ("96", (96, 96, 96)), ("1:8", (1, 8, 8))])
def test_parse_range(text, expected):
    assert parse_range(text, "--k-range") == expected


@pytest.mark.parametrize("text", ["96:48:120", "0:1:2", "a:b", "1:2:3:4", ""])
def test_parse_range_rejects(text):
    with pytest.raises(UsageError, match="--k-range"):
        parse_range(text, "--k-range")


def test_k_range_gives_one_profile_with_shapes_from_metadata():
    (p,) = derive_profiles(META, INPUTS, k_ranges=["48:96:120"], batch="1:4:8")
    assert p.shapes() == {
        "images": {"min": [1, 3, 224, 224], "opt": [4, 3, 224, 224], "max": [8, 3, 224, 224]},
        "k_select": {"min": [48], "opt": [96], "max": [120]},
    }


def test_several_buckets_one_profile_each_and_duplicates_dropped():
    profiles = derive_profiles(META, INPUTS, ks=[48, 96, 96], k_ranges=["64:100:120"])
    assert [p.k for p in profiles] == [(64, 100, 120), (48, 48, 48), (96, 96, 96)]
    assert k_span(profiles) == [48, 120]


def test_default_profile_covers_1_to_max_k():
    (p,) = derive_profiles(META, INPUTS)
    assert p.k == (1, 120, 120) and p.batch == (1, 1, 8)


def test_k_outside_file_range_is_refused():
    with pytest.raises(UsageError, match=r"K range 48\.\.121 is outside this file's 1\.\.120"):
        derive_profiles(META, INPUTS, k_ranges=["48:96:121"])


def test_dense_model_has_no_k_profile_and_refuses_k():
    dense = {"model": "tiny_dense", "family": "dense", "max_k": None, "input_size": [3, 32, 32]}
    (p,) = derive_profiles(dense, ["images"])
    assert p.k is None and "k_select" not in p.shapes()
    with pytest.raises(UsageError, match="no K input"):
        derive_profiles(dense, ["images"], ks=[4])


def test_choose_profile_nearest_opt_and_out_of_range():
    profiles = [Profile((1, 1, 8), (48, 96, 120), (3, 32, 32)), Profile((1, 1, 8), (48, 48, 48), (3, 32, 32))]
    assert choose_profile(profiles, 48) == 1
    assert choose_profile(profiles, 100) == 0
    with pytest.raises(UsageError, match=r"K=30 is not in any profile of this engine \(K ranges: 48\.\.120, 48\.\.48\)"):
        choose_profile(profiles, 30)


def _manifest(**over) -> dict:
    profiles = derive_profiles(META, INPUTS, k_ranges=["48:96:120"])
    base = {"format": M.FORMAT, "manifest_version": M.VERSION, "tensorrt_version": "10.3.0.30",
            "gpu": {"name": "Orin", "compute_capability": "8.7"}, "precision": "fp32",
            "profiles": [p.to_dict() for p in profiles], "k_range": k_span(profiles), "batch_range": [1, 8],
            "plugin_library": None, "plugin_ops": [], "source_onnx": {"path": "x.onnx", "sha256": "0" * 64},
            "tscli_version": "0.1.0", "model_metadata": META}
    return {**base, **over}


def test_manifest_round_trip_and_atomic_write(tmp_path):
    engine = tmp_path / "m.engine"
    path_e, path_m, written = M.write_engine(engine, b"engine-bytes", _manifest())
    assert path_m == tmp_path / "m.engine.json" and written["engine_sha256"] == M.sha256_bytes(b"engine-bytes")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.engine", "m.engine.json"]  # no temp files left
    back = M.read_manifest(engine)
    assert back["engine_sha256"] == M.sha256_bytes(b"engine-bytes")
    assert [Profile.from_dict(p) for p in back["profiles"]] == derive_profiles(META, INPUTS, k_ranges=["48:96:120"])
    M.check_engine_bytes(back, engine.read_bytes(), engine)
    with pytest.raises(ModelFileError, match="is not the one its manifest describes"):
        M.check_engine_bytes(back, b"other", engine)


def test_manifest_missing_key_or_file(tmp_path):
    engine = tmp_path / "m.engine"
    with pytest.raises(ModelFileError, match="lacks precision"):
        M.write_engine(engine, b"x", {k: v for k, v in _manifest().items() if k != "precision"})
    assert not engine.exists()  # refused before anything was written
    engine.write_bytes(b"x")
    with pytest.raises(ModelFileError, match="no manifest .*m.engine.json"):
        M.read_manifest(engine)
    M.manifest_path(engine).write_text(json.dumps({"format": "other"}))
    with pytest.raises(ModelFileError, match="not a tscli engine manifest"):
        M.read_manifest(engine)


def test_host_check_messages_name_both_values():
    m = _manifest()
    orin = GpuInfo("Orin", "8.7")
    assert M.check_host(m, "10.3.0.30", orin) == []
    with pytest.raises(ModelFileError, match=r"built with TensorRT 10\.3\.0\.30, this host has TensorRT 10\.7\.0"):
        M.check_host(m, "10.7.0", orin)
    with pytest.raises(ModelFileError, match=r"built for 'Orin' \(compute capability 8\.7\), this host has "
                                             r"'NVIDIA A100-SXM4-40GB' \(compute capability 8\.0\)"):
        M.check_host(m, "10.3.0", GpuInfo("NVIDIA A100-SXM4-40GB", "8.0"))
    with pytest.raises(ModelFileError, match="needs an NVIDIA GPU .* none was found"):
        M.check_host(m, "10.3.0", None)
    (warning,) = M.check_host(m, "10.3.0", GpuInfo("NVIDIA Jetson AGX Orin", "8.7"))
    assert "built on 'Orin'" in warning and "'NVIDIA Jetson AGX Orin'" in warning
