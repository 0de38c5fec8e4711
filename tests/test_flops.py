"""Analytic FLOP formula (tscli/runtime/flops.py) against a count done by hand."""

import pytest

from tscli.runtime import flops as F

TINY = dict(input_size=[3, 32, 32], patch_size=4, embed_dim=48, depth=4, num_classes=10, stages=[1, 2, 3],
            family="ats", max_k=64)


def test_tiny_dense_hand_count():
    # tiny: D=48, 64 patches of 3*4*4=48 values, T=65 tokens, MLP hidden 192, 10 classes; 1 MAC = 2 FLOPs.
    patch_embed = 2 * 64 * 48 * 48          # 294,912
    qkv = 2 * 65 * 48 * 144                 # 898,560
    attn = 2 * (2 * 65 * 65 * 48)           # QK^T + AV: 811,200
    proj = 2 * 65 * 48 * 48                 # 299,520
    mlp = 2 * (2 * 65 * 48 * 192)           # fc1 + fc2: 2,396,160
    head = 2 * 48 * 10                      # 960
    assert qkv + attn + proj + mlp == 4_405_440
    expected = patch_embed + 4 * (qkv + attn + proj + mlp) + head
    assert expected == 17_917_632
    assert F.dense_flops(F.arch_from_meta(TINY)) == expected
    assert F.gflops(dict(TINY, family="dense", stages=[], max_k=None)) == pytest.approx(expected / 1e9)


def test_tiny_ats_padded_hand_count_k16():
    # K=16 -> S=17 slots. Block 0 dense (4,405,440). Block 1 = first ATS stage on 65 input tokens:
    first = (2 * 65 * 48 * 144      # qkv for all 65 tokens: 898,560
             + 2 * 65 * 48          # CLS score row Q K^T: 6,240
             + 2 * 2 * 17 * 65 * 48  # QK^T + AV for 17 rows over 65 keys: 212,160
             + 2 * 17 * 48 * 48     # proj: 78,336
             + 2 * 2 * 17 * 48 * 192)  # MLP: 626,688
    assert first == 1_821_984
    # Blocks 2, 3: ATS stages on 17 slots; they score with the CLS row of their own attention.
    later = 2 * 17 * 48 * 144 + 2 * 2 * 17 * 17 * 48 + 2 * 17 * 48 * 48 + 2 * 2 * 17 * 48 * 192
    assert later == 995_520
    expected = 294_912 + 4_405_440 + first + 2 * later + 960
    assert expected == 8_514_336
    a = F.arch_from_meta(TINY)
    assert F.padded_flops(a, 16) == expected
    # The ideal graph skips only the first stage's CLS score row.
    assert F.ideal_flops(a, 16) == expected - 6_240
    assert F.gflops(TINY, 16) == pytest.approx(expected / 1e9)


def test_trimmed_is_per_image_mean_and_bounded_by_padded():
    a = F.arch_from_meta(TINY)
    counts = [[17, 17, 17], [9, 5, 3]]
    expected = (F.ats_flops(a, [17, 17, 17]) + F.ats_flops(a, [9, 5, 3])) / 2
    assert F.trimmed_flops(a, counts) == expected
    assert F.trimmed_flops(a, counts) < F.padded_flops(a, 16)
    # trimmed stages gather, so each computes a CLS score row over its 17 input slots
    assert F.ats_flops(a, [17, 17, 17]) == F.padded_flops(a, 16) + 2 * (2 * 17 * 48)
    with pytest.raises(ValueError):
        F.ats_flops(a, [17, 17])


def test_deit_s_matches_paper_scale():
    meta = dict(input_size=[3, 224, 224], patch_size=16, embed_dim=384, depth=12, num_classes=1000,
                stages=list(range(3, 12)), family="ats", max_k=196)
    # Papers quote multiply-adds: DeiT-S 4.6 G, ATS at K~99 about 2.9 G.
    assert F.gflops(meta, graph="dense") / 2 == pytest.approx(4.6, abs=0.05)
    assert F.gflops(meta, 99) / 2 == pytest.approx(2.9, abs=0.05)


def test_tiny_tome_hand_count():
    # tiny_tome, r=8 in each of the 4 blocks: 65 -> 57 -> 49 -> 41 -> 33 tokens. D=48, 3 heads (16
    # channels of head-averaged keys), MLP hidden 192. Block 0 by hand:
    block0 = (2 * 65 * 48 * 144        # qkv on 65 tokens: 898,560
              + 2 * 2 * 65 * 65 * 48   # QK^T + AV: 811,200
              + 2 * 65 * 48 * 48       # proj: 299,520
              + 2 * 33 * 32 * 16       # matching: 33 A x 32 B similarities over 16 channels: 33,792
              + 2 * 32 * 8 * 49        # one-hot assignment, 32 B rows x 8 sources x (48 + 1): 25,088
              + 2 * 2 * 57 * 48 * 192)  # MLP on the 57 merged tokens: 2,101,248
    assert block0 == 4_169_408

    def block(t, r):
        return (2 * t * 48 * 144 + 4 * t * t * 48 + 2 * t * 48 * 48 + 2 * ((t + 1) // 2) * (t // 2) * 16
                + 2 * (t // 2) * r * 49 + 4 * (t - r) * 48 * 192)

    assert block(65, 8) == block0
    expected = 294_912 + block(65, 8) + block(57, 8) + block(49, 8) + block(41, 8) + 960
    meta = dict(TINY, family="tome", stages=[], max_k=None, num_heads=3, r=8, merge_r=[8, 8, 8, 8])
    assert F.tome_flops(F.arch_from_meta(meta), [8, 8, 8, 8]) == expected
    assert F.gflops(meta) == pytest.approx(expected / 1e9)
    assert F.gflops(meta, graph="dense") == pytest.approx(17_917_632 / 1e9)  # same weights, no merging
    # r = 0 everywhere: exactly the dense count (nothing merged, no matching)
    assert F.tome_flops(F.arch_from_meta(meta), [0, 0, 0, 0]) == 17_917_632
    with pytest.raises(ValueError):
        F.tome_flops(F.arch_from_meta(meta), [8, 8])
