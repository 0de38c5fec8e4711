"""--pretrained: timm's hub weights from a Hugging Face cache, offline.

No hub is reachable here, so each test writes a cache in huggingface_hub's layout
(HF_HOME/hub/models--timm--NAME/snapshots/REV/model.safetensors, refs/main = REV) holding random
DeiT-Tiny weights (seed 7, so they differ from tscli's own random init) and runs offline
(HF_HUB_OFFLINE=1). What is checked: the file's tensors are what the model holds, the metadata
records the file's SHA-256 and the snapshot, parity rebuilds the same model from the cache, a
different file under the same name is refused, and a missing file is one line naming the URL and
--checkpoint.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tscli.errors import CheckpointError, UsageError
from tscli.files import sha256_file

NAME = "deit_tiny_patch16_224.fb_in1k"
REVISION = "0123456789abcdef0123456789abcdef01234567"


def write_cache(home: Path, seed: int = 7, revision: str = REVISION) -> Path:
    """A random DeiT-Tiny state_dict as the cached hub file; -> its path."""
    from safetensors.torch import save_file
    from timm.models.vision_transformer import VisionTransformer

    repo = home / "hub" / f"models--timm--{NAME}"
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(revision)
    torch.manual_seed(seed)
    model = VisionTransformer(img_size=224, patch_size=16, embed_dim=192, depth=12, num_heads=3, num_classes=1000)
    path = snapshot / "model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """huggingface_hub pointed at an empty cache under tmp_path, offline (read at call time)."""
    from huggingface_hub import constants

    home = tmp_path / "hf"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return home


def test_tags_resolve_and_bad_ones_are_named():
    from tscli.models.catalog import get_config
    from tscli.models.pretrained import resolve

    assert resolve(get_config("deit_s_ats")) == "deit_small_patch16_224.fb_in1k"
    assert resolve(get_config("deit_b"), "fb_in1k") == "deit_base_patch16_224.fb_in1k"
    assert resolve(get_config("deit_s"), "augreg_in1k") == "vit_small_patch16_224.augreg_in1k"
    assert resolve(get_config("deit_t_ats"), NAME) == NAME
    with pytest.raises(UsageError, match=r"unknown --pretrained 'in22k' for deit_s_ats; valid: fb_in1k "):
        resolve(get_config("deit_s_ats"), "in22k")
    with pytest.raises(UsageError, match="no pretrained weights are known for 'tiny_ats'"):
        resolve(get_config("tiny_ats"))
    with pytest.raises(UsageError, match="is a segmentation model"):
        resolve(get_config("dovit_setr_deit_s"))


def test_weights_come_from_the_cached_file(offline_hub):
    from safetensors.torch import load_file

    from tscli.models.catalog import get_config
    from tscli.models.factory import build_from_metadata, build_model

    path = write_cache(offline_hub)
    built = build_model(get_config("deit_t_ats"), pretrained="default")
    assert built.weights == "sha256:" + sha256_file(path)
    assert built.pretrained == {"name": NAME, "hub_id": f"timm/{NAME}", "file": "model.safetensors", "revision": REVISION}
    expected = load_file(str(path))
    got = built.module.state_dict()
    assert set(got) == set(expected) and all(torch.equal(got[k], expected[k]) for k in expected)
    assert built.config.crop_pct == 0.9  # the weights' own preprocessing (timm's pretrained cfg), not the registry's
    meta = {"model": "deit_t_ats", "family": "ats", "stages": list(built.config.stages), "scheme": "paper",
            "weights": built.weights, "pretrained": built.pretrained}
    again = build_from_metadata(meta)
    assert all(torch.equal(again.module.state_dict()[k], expected[k]) for k in expected)
    # Another file under the same name and snapshot: refused, not silently compared against.
    write_cache(offline_hub, seed=8)
    with pytest.raises(CheckpointError, match=f"the cached pretrained weights {NAME} .* are not the ones"):
        build_from_metadata(meta)


def test_missing_weights_are_one_line(offline_hub):
    from tscli.models.catalog import get_config
    from tscli.models.factory import build_model

    with pytest.raises(CheckpointError) as info:
        build_model(get_config("deit_t_ats"), pretrained="default")
    message = str(info.value)
    assert "\n" not in message and "not in the Hugging Face cache" in message
    assert f"https://huggingface.co/timm/{NAME}/resolve/main/model.safetensors" in message and "--checkpoint" in message
    with pytest.raises(UsageError, match="either --checkpoint or --pretrained"):
        build_model(get_config("deit_t_ats"), checkpoint="x.pth", pretrained="default")


def test_bare_pretrained_takes_the_default():
    from tscli.cli.common import complete_optional_values

    assert complete_optional_values(["export", "m", "--pretrained"]) == ["export", "m", "--pretrained", "default"]
    assert complete_optional_values(["export", "m", "--pretrained", "-o", "x"]) == \
        ["export", "m", "--pretrained", "default", "-o", "x"]
    assert complete_optional_values(["export", "m", "--pretrained", "fb_in1k"]) == ["export", "m", "--pretrained", "fb_in1k"]


def tscli(*args, env):
    return subprocess.run([sys.executable, "-m", "tscli.cli", *map(str, args)], capture_output=True, text=True, env=env)


def test_export_records_the_hash_and_parity_rebuilds_offline(tmp_path):
    """The CLI end to end (HF_HOME + HF_HUB_OFFLINE, as a user without a hub would run it)."""
    home = tmp_path / "hf"
    path = write_cache(home)
    env = dict(os.environ, HF_HOME=str(home), HF_HUB_OFFLINE="1")
    out = tmp_path / "deit_t_ats.onnx"
    proc = tscli("export", "deit_t_ats", "--max-k", "8", "--pretrained", "--no-validate", "-o", out, env=env)
    assert proc.returncode == 0, proc.stderr
    assert f"weights: pretrained {NAME}" in proc.stdout
    meta = json.loads(tscli("inspect", out, "--json", env=env).stdout)["metadata"]
    assert meta["weights"] == "sha256:" + sha256_file(path)
    assert meta["pretrained"]["name"] == NAME and meta["pretrained"]["revision"] == REVISION
    assert meta["crop_pct"] == 0.9 and meta["interpolation"] == "bicubic"
    proc = tscli("parity", out, "--n", "2", "--k", "8", "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["ok"] and all(r["max_abs_diff"] <= 1e-4 for r in report["rows"])
    from tscli.data.samples import write_samples

    image = write_samples(tmp_path / "imgs", 1)[0]
    proc = tscli("run", out, image, "--k", "8", env=env)
    assert proc.returncode == 0 and "RANDOM" not in proc.stderr, proc.stderr  # hub weights are not called random
    # Without the cache: one line naming the file to fetch and the --checkpoint alternative, nothing written.
    empty = dict(env, HF_HOME=str(tmp_path / "empty"))
    proc = tscli("export", "deit_t_ats", "--pretrained", "-o", tmp_path / "never.onnx", env=empty)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "model.safetensors" in lines[0] and "--checkpoint FILE" in lines[0]
    assert not (tmp_path / "never.onnx").exists()
    proc = tscli("parity", out, "--n", "1", "--k", "8", env=empty)
    assert proc.returncode == 2 and "not in the Hugging Face cache" in proc.stderr
