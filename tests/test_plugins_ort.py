"""The plugin form's sampling node run natively in ONNX Runtime (tscli/plugins/ort_ops.py).

Graphs are built by hand with onnx.helper: a tscli.ATSSample node the way the exporter's plugin
form writes it (plugin_version/plugin_namespace attributes, optional local function of the same
name, int32 valid and mask as the TensorRT plugin takes them, with the bool <-> int32 Casts the
exporter puts around the node), inside a small graph with ops before and after it. The op library is compiled once per
test session (the ort_ops_library fixture fetches ONNX Runtime's headers if none are present).
"""

from __future__ import annotations

import hashlib
import io
import tarfile

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto as TP
from onnx import helper

from tscli.errors import ModelFileError, TscliError, UsageError
from tscli.models.ops import ats_sample_reference
from tscli.models.sampling import SCHEMES
from tscli.plugins import ort_ops
from tscli.runtime.ort.session import OrtBackend

IR_VERSION = 10  # what onnxruntime 1.2x-1.3x accepts; onnx 1.23's default (14) is too new


def _decoy_function() -> onnx.FunctionProto:
    """A local function tscli.ATSSample whose body is deliberately NOT the sampling: if the rewrite
    left it in place, ORT would inline it and the outputs would be all zeros / all false."""
    nodes = [
        helper.make_node("Shape", ["scores"], ["b"], end=1),
        helper.make_node("Shape", ["k_like"], ["k"]),
        helper.make_node("Constant", [], ["one"], value=helper.make_tensor("one", TP.INT64, [1], [1])),
        helper.make_node("Add", ["k", "one"], ["k1"]),
        helper.make_node("Concat", ["b", "k1"], ["shape"], axis=0),
        helper.make_node("ConstantOfShape", ["shape"], ["index"],
                         value=helper.make_tensor("z", TP.INT32, [1], [0])),
        helper.make_node("Identity", ["index"], ["mask"]),
    ]
    return helper.make_function("tscli", "ATSSample", ["scores", "valid", "k_like"], ["index", "mask"], nodes,
                                [helper.make_opsetid("", 17)], attributes=["scheme"])


def _plugin_model(scheme: str, with_function: bool) -> onnx.ModelProto:
    """x [B, N] -> Abs -> scores; valid from the bool `valid_in` cast to int32; ATSSample; its
    int32 mask cast back to bool; the index is cast to int64 and used by GatherElements on a
    token-id row, as a block would gather its tokens."""
    nodes = [
        helper.make_node("Abs", ["x"], ["scores"]),
        helper.make_node("Cast", ["valid_in"], ["valid_i32"], to=TP.INT32),
        helper.make_node("ATSSample", ["scores", "valid_i32", "k_like"], ["index", "mask_i32"], domain="tscli",
                         scheme=scheme, plugin_version="1", plugin_namespace="tscli"),
        helper.make_node("Cast", ["mask_i32"], ["mask"], to=TP.BOOL),
        helper.make_node("Cast", ["index"], ["index64"], to=TP.INT64),
        helper.make_node("GatherElements", ["token_ids", "index64"], ["picked"], axis=1),
    ]
    graph = helper.make_graph(
        nodes, "ats_plugin_form",
        [helper.make_tensor_value_info("x", TP.FLOAT, ["B", "N"]),
         helper.make_tensor_value_info("valid_in", TP.BOOL, ["B", "N"]),
         helper.make_tensor_value_info("k_like", TP.FLOAT, ["K"]),
         helper.make_tensor_value_info("token_ids", TP.FLOAT, ["B", "T"])],
        [helper.make_tensor_value_info("index", TP.INT32, ["B", "K1"]),
         helper.make_tensor_value_info("mask", TP.BOOL, ["B", "K1"]),
         helper.make_tensor_value_info("picked", TP.FLOAT, ["B", "K1"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("tscli", 1)],
                              ir_version=IR_VERSION, functions=[_decoy_function()] if with_function else [])
    onnx.checker.check_model(model)
    return model


def _session(model: onnx.ModelProto, library: str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.register_custom_ops_library(library)
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("with_function", [False, True])
def test_plugin_graph_matches_reference(scheme: str, with_function: bool, ort_ops_library: str) -> None:
    """The native op runs (not the decoy function ORT would otherwise inline) and gives the
    reference's slots exactly."""
    session = _session(_plugin_model(scheme, with_function), ort_ops_library)
    rng = np.random.default_rng(11)
    checked = 0
    for batch, n, k in ((1, 9, 3), (5, 48, 24), (3, 196, 120), (4, 120, 196), (2, 1, 1)):
        x = (rng.standard_normal((batch, n)) ** 3).astype(np.float32)
        x[:, : n // 3] = np.round(x[:, : n // 3])  # exact ties and zeros
        valid = rng.random((batch, n)) > 0.25
        token_ids = (np.arange(n + 1)[None] + 1000 * np.arange(batch)[:, None]).astype(np.float32)
        index, mask, picked = session.run(
            None, {"x": x, "valid_in": valid, "k_like": np.zeros(k, np.float32), "token_ids": token_ids})
        ref_index, ref_mask = ats_sample_reference(
            torch.from_numpy(np.abs(x)), torch.from_numpy(valid), torch.empty(k), scheme)
        assert index.dtype == np.int32 and mask.dtype == np.bool_ and index.shape == (batch, k + 1)
        np.testing.assert_array_equal(index, ref_index.numpy())
        np.testing.assert_array_equal(mask, ref_mask.numpy())
        np.testing.assert_array_equal(picked, np.take_along_axis(token_ids, index.astype(np.int64), axis=1))
        assert mask.sum() > batch or n == 1  # something besides CLS was kept
        checked += batch
    assert checked == 15


def test_exported_plugin_form_matches_plain_form(tiny_exports, ort_ops_library) -> None:
    """The exporter's plugin-form tiny_ats, run with the native op, gives the plain form's logits
    (<= 1e-5) and exactly the same kept counts and positions, for several K; so does the same
    file without the library (ORT then runs the op's body, the file's local function)."""
    exports = tiny_exports
    plain = OrtBackend(exports["paper"])
    plugin_model = onnx.load(str(exports["plugin"]))
    assert sum(n.op_type == "ATSSample" and n.domain == "tscli" for n in plugin_model.graph.node) >= 1
    native = OrtBackend(exports["plugin"], plugins=ort_ops_library)
    inlined = OrtBackend(exports["plugin"])
    assert plain.output_names == native.output_names and plain.output_names[0] == "logits"
    rng = np.random.default_rng(5)
    k_input = next(name for name in plain.input_names if name != "images")
    for k in (40, 17, 3):
        feed = {"images": rng.standard_normal((3, 3, 32, 32)).astype(np.float32), k_input: np.zeros(k, np.float32)}
        ref = plain.run(feed)
        for got in (native.run(feed), inlined.run(feed)):
            assert float(np.abs(ref["logits"] - got["logits"]).max()) <= 1e-5
            for name in plain.output_names[1:]:
                np.testing.assert_array_equal(ref[name], got[name], err_msg=f"{name} differs at K={k}")


def test_op_errors_are_named(ort_ops_library: str) -> None:
    model = _plugin_model("paper", with_function=False)
    next(a for a in model.graph.node[2].attribute if a.name == "scheme").s = b"nearest"
    with pytest.raises(Exception, match="unknown scheme 'nearest'; valid: paper, official"):
        _session(model, ort_ops_library)
    session = _session(_plugin_model("paper", with_function=False), ort_ops_library)
    feed = {"x": np.ones((2, 5), np.float32), "valid_in": np.ones((2, 6), bool),
            "k_like": np.zeros(3, np.float32), "token_ids": np.zeros((2, 6), np.float32)}
    with pytest.raises(Exception, match=r"need scores \[B, N\], valid \[B, N\] and k_like \[K\]; got \[2, 5\], \[2, 6\]"):
        session.run(None, feed)


def test_backend_plugins_argument(tiny_exports, tmp_path) -> None:
    with pytest.raises(UsageError, match="--plugins '.*missing.so' does not exist"):
        OrtBackend(tiny_exports["plugin"], plugins=tmp_path / "missing.so")
    not_a_library = tmp_path / "text.so"
    not_a_library.write_text("not a library")
    with pytest.raises(ModelFileError, match="is not an ONNX Runtime op library"):
        OrtBackend(tiny_exports["plugin"], plugins=not_a_library)


def _fake_deb(files: dict[str, bytes]) -> bytes:
    """A .deb-shaped ar archive whose data.tar.xz holds ``files``."""
    tar_bytes = io.BytesIO()
    with tarfile.open(fileobj=tar_bytes, mode="w:xz") as tar:
        for name, body in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    blob = b"!<arch>\n"
    for name, body in ((b"debian-binary", b"2.0\n"), (b"data.tar.xz", tar_bytes.getvalue())):
        blob += name.ljust(16) + b"0".ljust(12) + b"0".ljust(6) + b"0".ljust(6) + b"100644".ljust(8)
        blob += str(len(body)).encode().ljust(10) + b"`\n" + body + (b"\n" if len(body) % 2 else b"")
    return blob


def test_fetch_headers_checks_hash_and_keeps_only_headers(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TSCLI_CACHE", str(tmp_path / "cache"))
    deb = tmp_path / "pkg.deb"
    escape = tmp_path / "escaped.h"
    deb.write_bytes(_fake_deb({"./usr/include/onnxruntime/onnxruntime_c_api.h": b"// api\n",
                               "./usr/include/onnxruntime/core/providers/resource.h": b"// r\n",
                               "./usr/lib/libonnxruntime.so": b"ELF",
                               "./usr/include/onnxruntime/../../../evil.h": b"x",
                               f"./usr/include/onnxruntime/{escape}": b"x"}))  # "...onnxruntime//tmp/..."
    url = deb.as_uri()
    with pytest.raises(TscliError, match="has SHA-256 .*, expected 00; not using it"):
        ort_ops.fetch_ort_headers(url, "00")
    assert not ort_ops.fetched_headers_dir().exists()  # nothing half-written
    folder = ort_ops.fetch_ort_headers(url, hashlib.sha256(deb.read_bytes()).hexdigest())
    found = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    assert found == ["core/providers/resource.h", "onnxruntime_c_api.h"]
    # Nothing landed anywhere else: only the .deb and the cache's headers folder exist.
    everything = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert everything == sorted(["pkg.deb"] + [str((folder / f).relative_to(tmp_path)) for f in found])
    assert ort_ops.find_ort_headers() == folder
    again = ort_ops.fetch_ort_headers(url, hashlib.sha256(deb.read_bytes()).hexdigest())  # replaces in place
    assert again == folder and (folder / "onnxruntime_c_api.h").is_file()
    assert [p.name for p in folder.parent.iterdir()] == ["ort-include"]  # no staging or old folders left
    with pytest.raises(TscliError, match="has no onnxruntime_c_api.h"):
        ort_ops.find_ort_headers(tmp_path)


def test_op_edge_shapes_and_default_scheme(ort_ops_library: str) -> None:
    """No scheme attribute = paper (as in the TensorRT creator); an empty one is refused; empty
    batch, no tokens and no valid token give CLS-only rows of the right shape."""
    model = _plugin_model("official", with_function=False)
    node = model.graph.node[2]
    keep = [a for a in node.attribute if a.name != "scheme"]
    del node.attribute[:]
    node.attribute.extend(keep)
    default = _session(model, ort_ops_library)
    rng = np.random.default_rng(2)
    x = rng.random((3, 40)).astype(np.float32)
    valid = np.ones((3, 40), bool)
    feed = {"x": x, "valid_in": valid, "k_like": np.zeros(12, np.float32), "token_ids": np.zeros((3, 41), np.float32)}
    index, mask, _ = default.run(None, feed)
    ref_index, ref_mask = ats_sample_reference(torch.from_numpy(x), torch.from_numpy(valid), torch.empty(12), "paper")
    np.testing.assert_array_equal(index, ref_index.numpy())
    np.testing.assert_array_equal(mask, ref_mask.numpy())

    empty = _plugin_model("paper", with_function=False)
    next(a for a in empty.graph.node[2].attribute if a.name == "scheme").s = b""
    with pytest.raises(Exception, match="unknown scheme ''"):
        _session(empty, ort_ops_library)

    for batch, n, valid_value in ((0, 5, True), (2, 0, True), (2, 7, False)):
        feed = {"x": np.ones((batch, n), np.float32), "valid_in": np.full((batch, n), valid_value),
                "k_like": np.zeros(4, np.float32), "token_ids": np.zeros((batch, n + 1), np.float32)}
        index, mask, _ = default.run(None, feed)
        assert index.shape == mask.shape == (batch, 5)
        assert (index == 0).all() and (mask[:, 0]).all() and not mask[:, 1:].any()


def test_run_bench_and_parity_take_the_library(tiny_exports, ort_ops_library, tmp_path) -> None:
    """run --plugins predicts what the file's own body predicts; bench and tune open every timed
    session with the library and say so; parity --plugins checks the native op against PyTorch."""
    import json
    import subprocess
    import sys

    from tscli.data.samples import write_samples
    from tscli.tools.bench import _open, bench

    def tscli(*args):
        return subprocess.run([sys.executable, "-m", "tscli.cli", *map(str, args)], capture_output=True, text=True)

    write_samples(tmp_path / "imgs", 2)
    plugin = tiny_exports["plugin"]
    native = tscli("run", plugin, tmp_path / "imgs", "--k", "8", "--json", "--plugins", ort_ops_library)
    body = tscli("run", plugin, tmp_path / "imgs", "--k", "8", "--json")
    assert native.returncode == 0 and body.returncode == 0, native.stderr + body.stderr
    got, ref = json.loads(native.stdout)["predictions"], json.loads(body.stdout)["predictions"]
    assert [(p["label"], p["kept_counts"]) for p in got] == [(p["label"], p["kept_counts"]) for p in ref]
    assert all(abs(a["score"] - b["score"]) <= 1e-5 for a, b in zip(got, ref))

    report = bench(plugin, ks=[8], batches=[1], runs=1, warmup=0, baseline=tiny_exports["dense"],
                   plugins=ort_ops_library)
    assert report["form"] == "plugin" and report["plugins"] == ort_ops_library
    # The CLI says when a plugin-form file was timed on its standard-op bodies, and only then.
    timed = {lib: tscli("bench", plugin, "--k", "8", "--batch", "1", "--runs", "1", "--warmup", "0",
                        "--baseline", tiny_exports["dense"], *(["--plugins", lib] if lib else []))
             for lib in (None, ort_ops_library)}
    assert all(r.returncode == 0 for r in timed.values()), [r.stderr for r in timed.values()]
    assert "timed without --plugins" in " ".join(timed[None].stdout.split())
    assert "timed without --plugins" not in " ".join(timed[ort_ops_library].stdout.split())
    assert _open(plugin, 1, "ats", ort_ops_library).session(8).plugins == ort_ops_library

    parity = tscli("parity", plugin, "--n", "2", "--k", "8", "--json", "--plugins", ort_ops_library)
    assert parity.returncode == 0, parity.stderr
    assert json.loads(parity.stdout)["ok"] is True

    from tscli.runtime import load
    from tscli.tools.tune import tune

    store = tmp_path / "profiles.json"
    tuned = tune(plugin, tmp_path / "imgs", budget_ms=1e4, k_grid=[8, 4], runs=1, output=store,
                 plugins=ort_ops_library)
    assert tuned["plugins"] == ort_ops_library and tuned["accuracy_kind"] == "agreement"
    assert "with the ORT op library libtscli_ort_ops" in store.with_suffix(".md").read_text()
    assert load(plugin, k="auto", profiles=store, plugins=ort_ops_library).k == tuned["chosen_k"]


@pytest.mark.parametrize("scheme", SCHEMES)
def test_infinite_nan_and_overflowing_scores_agree_everywhere(scheme: str, ort_ops_library: str) -> None:
    """Scores the exported graphs never produce, but a plugin must not disagree on: +inf (S = inf/inf
    is NaN, the reference's CDF is NaN everywhere and only CLS is kept), NaN and -inf (the total is
    not positive: uniform picks), and finite scores whose sum overflows (S = 0: one zero run). The
    native op, the core (serial and fast) and the standard-op reference give the same slots."""
    from tscli.plugins.core import ats_sample_cpu

    session = _session(_plugin_model(scheme, with_function=True), ort_ops_library)
    n, k = 24, 10
    rows = np.abs(np.random.default_rng(5).standard_normal((6, n))).astype(np.float32)
    rows[0, 3] = np.inf
    rows[1, [2, 9]] = np.inf
    rows[2, 4] = np.nan
    rows[3, 5] = np.inf
    rows[3, 6] = np.nan
    rows[4] = 3e38  # finite, the sum overflows to +inf
    rows[5, 7] = np.inf  # ... but that token is invalid: an ordinary row
    valid = np.ones((6, n), bool)
    valid[5, 7] = False
    token_ids = np.tile(np.arange(n + 1, dtype=np.float32), (6, 1))
    feeds = {"x": rows, "valid_in": valid, "k_like": np.zeros(k, np.float32), "token_ids": token_ids}
    with np.errstate(invalid="ignore"):
        index, mask, _ = session.run(None, feeds)
    ref_index, ref_mask = ats_sample_reference(torch.from_numpy(rows), torch.from_numpy(valid), torch.empty(k), scheme)
    for fast in (False, True):
        core_index, core_mask = ats_sample_cpu(rows, valid, k, scheme, fast=fast)
        np.testing.assert_array_equal(core_mask, ref_mask.numpy(), err_msg=f"core fast={fast}")
        np.testing.assert_array_equal(core_index, ref_index.numpy(), err_msg=f"core fast={fast}")
    np.testing.assert_array_equal(mask, ref_mask.numpy())
    np.testing.assert_array_equal(index, ref_index.numpy())
    assert mask[:2].sum(axis=1).tolist() == [1, 1]  # +inf: only CLS, in every implementation
    assert mask[5].sum() > 1  # an infinite score on an invalid token changes nothing


def test_exported_plugin_node_takes_and_gives_no_bool(tiny_exports) -> None:
    """The exporter's ATSSample nodes (and the function body's signature) carry float32 scores,
    int32 valid and int32 index/mask, with Casts bool -> int32 before and int32 -> bool after:
    TensorRT plugins take no BOOL/UINT8 tensors."""
    model = onnx.shape_inference.infer_shapes(onnx.load(str(tiny_exports["plugin"])))
    types = {v.name: v.type.tensor_type.elem_type for v in (*model.graph.value_info, *model.graph.input)}
    nodes = [n for n in model.graph.node if n.op_type == "ATSSample" and n.domain == "tscli"]
    assert nodes
    producers = {o: n for n in model.graph.node for o in n.output}
    consumers = {i: n for n in model.graph.node for i in n.input}
    for node in nodes:
        assert [types[name] for name in node.input] == [TP.FLOAT, TP.INT32, TP.FLOAT]
        assert [types[name] for name in node.output] == [TP.INT32, TP.INT32]
        cast = producers[node.input[1]]
        assert cast.op_type == "Cast" and types[cast.input[0]] == TP.BOOL
        if node.output[1] in consumers:  # the masking stage only reads the index
            assert consumers[node.output[1]].op_type in ("Cast", "Not", "Equal")
    (function,) = [f for f in model.functions if f.name == "ATSSample"]
    assert list(function.input) == ["scores", "valid", "k_like"] and list(function.output) == ["index", "mask"]


def test_op_library_of_another_abi_is_refused(tiny_exports, tmp_path) -> None:
    """A tscli op library built from older sources (ABI 1: bool valid/mask) is named and refused
    before ORT is handed tensors of the wrong type."""
    import subprocess

    source = tmp_path / "old.c"
    source.write_text("int tscli_ort_ops_abi_version(void) { return 1; }\n")
    library = tmp_path / "libold.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(library), str(source)], check=True)
    assert ort_ops.library_abi(library) == 1
    with pytest.raises(ModelFileError, match=r"ABI 1; this tscli needs ABI 2 .*python -m tscli.plugins.ort_ops"):
        OrtBackend(tiny_exports["plugin"], plugins=library)
