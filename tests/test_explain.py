"""What the model kept, made visible: kept positions in predict() and `run --json`, token maps
(ATS) and stop maps (DoViT) from `run --explain`, the random-weights note, and DoViT's crop and
capacity notes.

The maps are checked by what they show: every panel handed to matplotlib is read back patch by
patch (a patch shown as in the input view = kept, washed out = dropped), and that set must equal
the runner's own kept_positions / kept_masks output, as must the JSON written beside the PNG.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tscli import contract as C


def tscli(*args):
    return subprocess.run([sys.executable, "-m", "tscli.cli", *map(str, args)], capture_output=True, text=True)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    from tscli.data.samples import write_samples

    folder = tmp_path_factory.mktemp("imgs")
    write_samples(folder, 4)
    return folder


@pytest.fixture(scope="module")
def tiny_dovit_file(tmp_path_factory):
    """tiny_dovit with a capacity below what xi=0.6 lets through (so images saturate)."""
    from tscli.tools.checked_export import SegExportOptions, export_seg

    path = tmp_path_factory.mktemp("dovit") / "tiny_dovit.onnx"
    export_seg(SegExportOptions("tiny_dovit", max_keep=40, xi=0.6, output=str(path), validate=False))
    return path


def shown_patches(panel: np.ndarray, view: np.ndarray, patch: int) -> set[int]:
    """The patches a panel shows as they are in the view (row-major patch indices)."""
    rows, cols = view.shape[0] // patch, view.shape[1] // patch
    same = (panel == view).all(axis=2)
    return {r * cols + c for r in range(rows) for c in range(cols)
            if same[r * patch:(r + 1) * patch, c * patch:(c + 1) * patch].all()}


@pytest.fixture
def drawn(monkeypatch):
    """Every (panels, titles) handed to matplotlib by tools/explain."""
    from tscli.tools import explain

    calls = []
    original = explain._figure

    def spy(panels, titles, *args):
        calls.append((panels, titles))
        return original(panels, titles, *args)

    monkeypatch.setattr(explain, "_figure", spy)
    return calls


def test_token_map_draws_the_runners_kept_positions(tiny_exports, images, tmp_path, drawn):
    from tscli.runtime import load
    from tscli.runtime.images import images_in
    from tscli.runtime.preprocess import preprocess
    from tscli.runtime.segmentation import input_view
    from tscli.tools.explain import draw_tokens

    runner = load(tiny_exports["paper"], k=6)
    files = images_in(images)
    x = preprocess([str(f) for f in files], runner.meta)
    raw = runner.infer(x)[C.OUTPUT_POSITIONS]  # [B, stages, K+1], -1 = padding
    with pytest.warns(UserWarning, match="RANDOM"):  # predict() says plainly that the weights are random
        preds = runner.predict([str(f) for f in files])
    for i, (f, pred) in enumerate(zip(files, preds)):
        runner_sets = [{int(p) for p in stage if p >= 0} for stage in raw[i]]
        assert [set(s) for s in pred.kept_positions] == runner_sets  # predict() carries them
        png, js = draw_tokens(str(f), pred, runner.meta, runner.k, tmp_path, f.stem)
        panels, titles = drawn[-1]
        view = input_view(x[i], runner.meta)
        assert np.array_equal(panels[0], view) and len(panels) == 1 + len(runner_sets)
        for s, (panel, kept) in enumerate(zip(panels[1:], runner_sets)):
            patches = {p - 1 for p in kept if p >= 1}
            assert shown_patches(panel, view, 4) == patches, f"{f.name} stage {s + 1}"
            assert titles[s + 1].endswith(f"K'={len(patches)}")
        data = json.loads(js.read_text())
        assert [set(st["kept_positions"]) for st in data["stages"]] == runner_sets
        assert [st["block"] for st in data["stages"]] == runner.meta["stages"]
        with Image.open(png) as im:
            assert im.format == "PNG" and im.size[0] > 400


def test_run_json_and_explain_cli(tiny_exports, images, tmp_path):
    proc = tscli("run", tiny_exports["paper"], images, "--k", "6", "--json", "--explain", tmp_path / "maps")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["random_weights"] is True and "RANDOM" in proc.stderr and "--pretrained" in proc.stderr
    for p in data["predictions"]:
        assert [len(s) for s in p["kept_positions"]] == p["kept_counts"]
        name = p["source"].rsplit("/", 1)[-1].rsplit(".", 1)[0]
        drawn = json.loads((tmp_path / "maps" / f"{name}_tokens.json").read_text())
        assert [s["kept_positions"] for s in drawn["stages"]] == p["kept_positions"]
        assert (tmp_path / "maps" / f"{name}_tokens.png").stat().st_size > 1000
    for args, message in [((tiny_exports["dense"], images, "--explain", tmp_path / "d"), "keeps every token"),
                          ((tiny_exports["paper"], images, "--explain", tiny_exports["paper"]), "is a file")]:
        proc = tscli("run", *args)
        assert proc.returncode == 2 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (tmp_path / "d").exists()


def test_stop_map_draws_the_runners_kept_masks(tiny_dovit_file, images, tmp_path, drawn):
    from tscli.runtime import load
    from tscli.runtime.images import images_in
    from tscli.tools.explain import draw_stops

    runner = load(tiny_dovit_file)
    files = images_in(images)
    segs = runner.segment([str(f) for f in files])
    from tscli.runtime.preprocess import preprocess

    raw = runner.infer(preprocess([str(f) for f in files], runner.meta))[C.OUTPUT_KEEP_MASKS]
    for i, (f, seg) in enumerate(zip(files, segs)):
        png, js = draw_stops(seg, runner.meta, runner.xi, tmp_path, f.stem)
        panels, titles = drawn[-1]
        assert len(panels) == raw.shape[1] + 1 and titles[-1] == "classes"
        for d, panel in enumerate(panels[:-1]):
            assert shown_patches(panel, seg.view, 4) == set(np.flatnonzero(raw[i, d]).tolist())
        data = json.loads(js.read_text())
        assert [d["active_patches"] for d in data["decisions"]] == [np.flatnonzero(m).tolist() for m in raw[i]]
        assert data["saturated"] == seg.saturated and sum(c["pixels"] for c in data["classes"]) <= seg.class_map.size
        with Image.open(png) as im:
            assert im.format == "PNG"


def test_dovit_run_says_crop_and_capacity(tiny_dovit_file, images, tmp_path):
    proc = tscli("run", tiny_dovit_file, images, "--out-dir", tmp_path / "seg", "--explain", tmp_path / "maps", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)["images"]
    assert all(r["cropped"] for r in rows)  # square-ish photos, a 2:1 model input
    assert "centre-cropped to the model's 64x32 input" in proc.stderr
    # random weights: no aux head is confident beyond xi=0.6, so all 128 tokens want to go on, and C=40 cuts them
    assert all(r["saturated"] for r in rows) and all(r["kept_counts"] == [40, 40, 40] for r in rows)
    assert f"{len(rows)} of {len(rows)} images hit the capacity C=40" in proc.stderr and "raise --max-keep" in proc.stderr
    assert sorted(p.name for p in (tmp_path / "maps").iterdir() if p.suffix == ".png") == \
        sorted(f"{r['image'].rsplit('/', 1)[-1].rsplit('.', 1)[0]}_stops.png" for r in rows)


def test_resize_covers_the_input_and_square_inputs_are_unchanged():
    from tscli.runtime.preprocess import resized_size

    seg = {"input_size": [3, 512, 1024], "crop_pct": 1.0}
    assert resized_size((2048, 1024), seg) == (1024, 512)  # a Cityscapes frame: whole, no crop
    assert resized_size((1000, 1000), seg) == (1024, 1024)  # square photo: covers the width, crops rows
    for size in [(640, 427), (300, 451), (224, 224), (1000, 30)]:  # square input: the old rule (shorter side)
        cls = {"input_size": [3, 224, 224], "crop_pct": 0.875}
        scale = 224 / 0.875 / min(size)
        assert resized_size(size, cls) == (max(224, round(size[0] * scale)), max(224, round(size[1] * scale)))
