"""DynamicViT and EViT torch modules: against a straightforward per-image reference written here,
ties to the lower index in PyTorch and ONNX Runtime, the keep rules, and the released checkpoint
key layout. Tiny variants, random weights (seed 0)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from timm.models.vision_transformer import Block

from tscli import contract as C
from tscli.errors import CheckpointError, UsageError
from tscli.models.catalog import get_config
from tscli.models.factory import build_model
from tscli.models.reduction import keep_mask, top_tokens

TOL = 1e-5  # float32, same operations in another order (batched vs per image)


def _images(n: int = 3, size: int = 32) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(1).standard_normal((n, 3, size, size)).astype(np.float32))


def _best(scores: list[float], k: int) -> list[int]:
    """The k best indices, ties to the lower index, in ascending order (plain Python)."""
    return sorted(sorted(range(len(scores)), key=lambda j: (-scores[j], j))[:k])


def _embed(model, image):
    return model.norm_pre(model._pos_embed(model.patch_embed(image[None])))[0]


def dynamicvit_per_image(model, image, counts):
    """One image, tokens as a [T, D] matrix, a Python list of kept positions per stage."""
    x, pos, out, stage = _embed(model, image), list(range(model.patch_embed.num_patches + 1)), [], 0
    for i, blk in enumerate(model.blocks):
        if i in model.stages:
            scores = model.score_predictor[stage](x[None, 1:])[0, :, 0].tolist()
            keep = [0] + [j + 1 for j in _best(scores, counts[stage])]
            x, pos = x[keep], [pos[j] for j in keep]
            out.append(pos)
            stage += 1
        x = blk(x[None])[0]
    return model.forward_head(model.norm(x[None]))[0], out


def evit_per_image(model, image, counts):
    n_patches = model.patch_embed.num_patches
    x, pos, out = _embed(model, image), list(range(n_patches + 1)), []
    for blk in model.blocks:
        if blk.stage is None:
            x = Block.forward(blk, x[None])[0]  # timm's own block
            continue
        h = blk.attn.num_heads
        t, d = x.shape
        qkv = blk.attn.qkv(blk.norm1(x)).reshape(t, 3, h, d // h)
        q, k, v = qkv[:, 0].transpose(0, 1), qkv[:, 1].transpose(0, 1), qkv[:, 2].transpose(0, 1)  # [h, t, dh]
        a = torch.softmax(q @ k.transpose(1, 2) * blk.attn.scale, dim=-1)
        x = x + blk.attn.proj((a @ v).transpose(0, 1).reshape(t, d))
        cls_attn = a[:, 0, 1:].mean(0).tolist()
        kept = _best(cls_attn, counts[blk.stage])
        fused = sum(cls_attn[j] * x[j + 1] for j in range(t - 1) if j not in kept)
        x = torch.cat([x[:1], x[[j + 1 for j in kept]], fused[None]])
        pos = [0] + [pos[j + 1] for j in kept] + [C.fused_position(n_patches, blk.stage)]
        out.append(pos)
        x = x + blk.mlp(blk.norm2(x))
    return model.forward_head(model.norm(x[None]))[0], out


@pytest.mark.parametrize("name, reference", [("tiny_dynamicvit", dynamicvit_per_image), ("tiny_evit", evit_per_image)])
@pytest.mark.parametrize("rate", [0.7, 0.45])
def test_module_matches_per_image_reference(name, reference, rate):
    cfg = get_config(name)
    model = build_model(cfg, seed=0).module
    counts = C.keep_counts(cfg.family, rate, cfg.num_patches, len(cfg.stages))
    images = _images()
    with torch.no_grad():
        logits, records = model.forward_with_records(images, [torch.zeros(c) for c in counts])
        for i in range(len(images)):
            ref_logits, ref_positions = reference(model, images[i], counts)
            assert torch.allclose(logits[i], ref_logits, atol=TOL, rtol=0), (logits[i] - ref_logits).abs().max()
            for s, rec in enumerate(records):
                assert rec.positions[i].tolist() == ref_positions[s]  # same tokens, same (ascending) order
                assert int(rec.counts[i]) == len(ref_positions[s])


def test_ties_go_to_the_lower_index():
    scores = torch.tensor([[1.0, 2.0, 2.0, 2.0, 0.0, 2.0]])
    index, keep = top_tokens(scores, torch.zeros(3))
    assert index.tolist() == [[1, 2, 3]] and keep.tolist() == [[False, True, True, True, False, False]]
    assert keep_mask(torch.zeros(1, 7), 4).tolist() == [[True] * 4 + [False] * 3]


def test_ties_in_onnx_runtime(tmp_path):
    """The exported selection breaks ties as PyTorch does, whatever TopK does with equal values."""
    from tscli.export.exporter import run_exporter
    from tscli.runtime.ort.session import OrtBackend

    class Pick(torch.nn.Module):
        def forward(self, scores, k_like):
            return top_tokens(scores, k_like)[0]

    dims = {"scores": {0: torch.export.Dim("batch", max=64), 1: torch.export.Dim("n", max=512)},
            "k_like": {0: torch.export.Dim("K", max=512)}}
    model = run_exporter(Pick(), (torch.randn(2, 9), torch.zeros(3)), (["scores", "k_like"], ["index"]), dims, 18)
    import onnx

    path = tmp_path / "pick.onnx"
    onnx.save(model, str(path))
    ort = OrtBackend(path)
    rng = np.random.default_rng(0)
    # many ties: scores drawn from 3 values
    scores = rng.integers(0, 3, size=(32, 40)).astype(np.float32)
    for k in (1, 5, 17, 40):
        got = ort.run({"scores": scores, "k_like": np.zeros(k, np.float32)})["index"]
        want = np.array([_best(row.tolist(), k) for row in scores])
        assert np.array_equal(got, want), k
        assert np.array_equal(top_tokens(torch.from_numpy(scores), torch.zeros(k))[0].numpy(), want)


def test_keep_rules():
    # The released rounding: DynamicViT int(196 * 0.7**s); EViT ceil(0.7 * (n - 1)) with the fused
    # token counted in the next stage's n (the released code kept 138+1, 98+1, 70+1 tokens).
    assert C.keep_counts(C.FAMILY_DYNAMICVIT, 0.7, 196, 3) == [137, 96, 67]
    assert C.keep_counts(C.FAMILY_EVIT, 0.7, 196, 3) == [138, 98, 70]
    assert C.keep_counts(C.FAMILY_DYNAMICVIT, 0.5, 64, 3) == [32, 16, 8]
    assert C.keep_counts(C.FAMILY_EVIT, 0.5, 64, 3) == [32, 17, 9]
    meta = {"family": C.FAMILY_EVIT, "max_rate": 1.0, "num_patches": 64, "stages": [1, 2, 3], "model": "m"}
    with pytest.raises(UsageError, match="drops no token at EViT stage 0"):
        C.check_rate(0.99, meta)
    for bad in (0, -0.1, 1.01, float("nan"), "x", True):
        with pytest.raises(UsageError, match="rate="):
            C.check_rate(bad, meta)
    with pytest.raises(UsageError, match="keeps no token"):
        C.check_rate(0.01, dict(meta, family=C.FAMILY_DYNAMICVIT))
    assert C.check_rate(0.7, dict(meta, max_rate=0.7))[1] == [45, 33, 24]
    with pytest.raises(UsageError, match="valid: 0 < rate <= 0.6"):
        C.check_rate(0.7, dict(meta, max_rate=0.6))


RELEASED_PREDICTOR_KEYS = [f"score_predictor.{i}.{part}.{p}" for i in range(3)
                           for part in ("in_conv.0", "in_conv.1", "out_conv.0", "out_conv.2", "out_conv.4")
                           for p in ("weight", "bias")]


def test_released_dynamicvit_checkpoint_layout_loads(tmp_path):
    """A state_dict in the released layout ({'model': ...}; timm names plus score_predictor.i.in_conv /
    out_conv) loads strictly, and a checkpoint without the predictors is refused by name."""
    cfg = get_config("tiny_dynamicvit")
    donor = build_model(cfg, seed=3).module.state_dict()
    assert sorted(k for k in donor if k.startswith("score_predictor.")) == sorted(RELEASED_PREDICTOR_KEYS)
    torch.save({"model": donor, "epoch": 29}, tmp_path / "dynamicvit.pth")
    loaded = build_model(cfg, checkpoint=str(tmp_path / "dynamicvit.pth")).module.state_dict()
    assert all(torch.equal(loaded[k], donor[k]) for k in donor)
    torch.save({k: v for k, v in donor.items() if not k.startswith("score_predictor.")}, tmp_path / "deit.pth")
    with pytest.raises(CheckpointError, match="missing keys: score_predictor.0"):
        build_model(cfg, checkpoint=str(tmp_path / "deit.pth"))
    # EViT adds no parameters: the DeiT layout (what EViT's release fine-tunes) loads as it is
    evit = build_model(get_config("tiny_evit"), checkpoint=str(tmp_path / "deit.pth")).module.state_dict()
    assert all(torch.equal(evit[k], donor[k]) for k in evit)


def test_training_attention_with_every_token_kept_is_the_plain_block():
    from tscli.models.dynamicvit import policy_block

    model = build_model(get_config("tiny_dynamicvit"), seed=0).module.eval()
    x = torch.randn(2, 65, 48)
    with torch.no_grad():
        got = policy_block(model.blocks[0], x, torch.ones(2, 65, 1))
        assert torch.allclose(got, model.blocks[0](x), atol=1e-4)  # only the release's eps differs
        # a dropped token is invisible to every other query
        policy = torch.ones(2, 65, 1)
        policy[:, 5] = 0
        y = x.clone()
        y[:, 5] += 10.0
        a, b = policy_block(model.blocks[0], x, policy), policy_block(model.blocks[0], y, policy)
        others = [i for i in range(65) if i != 5]
        assert torch.allclose(a[:, others], b[:, others], atol=1e-4)
