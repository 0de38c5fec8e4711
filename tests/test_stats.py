"""`tscli stats` (K' per stage and GFLOPs per image over a folder) and the FLOP units: GFLOPs
(2 per multiply-add) beside GMACs (what papers call "GFLOPs")."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tscli import contract as C
from tscli.errors import UsageError


def tscli(*args):
    return subprocess.run([sys.executable, "-m", "tscli.cli", *map(str, args)], capture_output=True, text=True)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    from tscli.data.samples import write_samples

    folder = tmp_path_factory.mktemp("imgs")
    write_samples(folder / "sub", 5)  # a sub-folder: stats reads folders recursively (ImageFolder)
    return folder


def test_stats_counts_what_the_runner_keeps(tiny_exports, images, tmp_path):
    from tscli.runtime import flops as F
    from tscli.runtime import load
    from tscli.runtime.images import images_in
    from tscli.runtime.preprocess import preprocess
    from tscli.tools.stats import stats

    out = tmp_path / "s.md"
    report = stats(tiny_exports["paper"], images, k=12, batch=2, output=out)
    runner = load(tiny_exports["paper"], k=12)
    counts = runner.infer(preprocess([str(f) for f in images_in(images)], runner.meta))[C.OUTPUT_COUNTS]
    assert report["images"] == 5 and [s["block"] for s in report["stages"]] == [1, 2, 3]
    assert [s["mean"] for s in report["stages"]] == pytest.approx((counts - 1).mean(axis=0).tolist())
    arch = F.arch_from_meta(runner.meta)
    per_image = [F.ats_flops(arch, row, score_rows=1) / 1e9 for row in counts]
    assert report["gflops"]["mean"] == pytest.approx(np.mean(per_image))
    assert report["gflops"]["padded"] == pytest.approx(F.padded_flops(arch, 12) / 1e9)
    assert report["gmacs"]["mean"] == pytest.approx(report["gflops"]["mean"] / 2)
    assert report["gflops"]["mean"] <= report["gflops"]["padded"] + 1e-12 < report["gflops"]["dense"]
    assert "| 1 | 1 |" in out.read_text() and "GMACs" in out.read_text()
    assert json.loads(out.with_suffix(".json").read_text())["per_image"][0]["tokens"] == (counts[0] - 1).tolist()
    with Image.open(out.with_suffix(".png")) as im:
        assert im.format == "PNG" and im.size[0] > 600
    with pytest.raises(UsageError, match="must end in .md"):
        stats(tiny_exports["paper"], images, output=tmp_path / "s.png")


def test_stats_cli_and_refusals(tiny_exports, images, tmp_path):
    proc = tscli("stats", tiny_exports["paper"], "--data", images, "--k", "8", "-o", tmp_path / "r.md")
    assert proc.returncode == 0, proc.stderr
    assert "GFLOPs per image" in proc.stdout and "GMACs" in proc.stdout and "RANDOM" in proc.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json", "r.md", "r.png"]
    for args, message in [((tiny_exports["dense"], "--data", images), "keeps every token"),
                          ((tiny_exports["paper"], "--data", images, "--k", "41"), "K=41 is out of range"),
                          ((tiny_exports["paper"], "--data", tmp_path / "none"), "does not exist")]:
        proc = tscli("stats", *args)
        assert proc.returncode == 2 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_flop_units_match_the_papers():
    """DeiT-S dense: 4.6 G multiply-adds in the DeiT paper, 9.2 GFLOPs when a multiply-add is 2."""
    from tscli.models.catalog import get_config
    from tscli.runtime.flops import FLOPS_PER_MAC
    from tscli.tools.inspect import gflops_table

    cfg = get_config("deit_s")
    meta = {"input_size": [3, 224, 224], "patch_size": 16, "embed_dim": cfg.embed_dim, "depth": cfg.depth,
            "num_classes": 1000, "family": "dense", "stages": []}
    dense = gflops_table(meta)["dense"]
    assert dense == pytest.approx(9.198, abs=1e-3) and dense / FLOPS_PER_MAC == pytest.approx(4.6, abs=0.01)


def test_inspect_shows_both_units(tiny_exports):
    proc = tscli("inspect", tiny_exports["paper"], "--json")
    info = json.loads(proc.stdout)
    assert info["gmacs"] == {g: pytest.approx(v / 2) for g, v in info["gflops"].items()}
    proc = tscli("inspect", tiny_exports["paper"])
    assert "GFLOPs (1 MAC = 2 FLOPs)" in proc.stdout and "GMACs" in proc.stdout
