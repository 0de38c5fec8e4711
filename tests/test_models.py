"""PyTorch ATS model: padded == trimmed, batch independence, K = all == dense, checkpoints."""

from __future__ import annotations

import pytest
import torch

from tscli.errors import CheckpointError, UsageError
from tscli.models.catalog import get_config, list_models
from tscli.models.factory import build_model
from tscli.models.registry import parse_stages

# Logits, fp32. Measured here: padded vs trimmed <= 5e-8 (tiny_ats), alone vs in a batch <= 2e-7
# (deit_t_ats): the same arithmetic on the kept rows up to summation order, which other CPUs
# (SIMD width, threads) may change; hence 50x headroom.
TOL = 1e-5


def _run(model, x, k, execution="padded"):
    model.configure(execution=execution)
    try:
        with torch.no_grad():
            return model.forward_with_records(x, torch.zeros(k))
    finally:
        model.configure(execution="padded")


def _sets(records, i):
    return [set(r.positions[i][r.positions[i] >= 0].tolist()) for r in records]


@pytest.mark.parametrize("scheme", ["paper", "official"])
@pytest.mark.parametrize("k", [1, 7, 40, 64])
def test_padded_equals_trimmed(scheme, k):
    model = build_model(get_config("tiny_ats", scheme=scheme)).module
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(k))
    lp, rp = _run(model, x, k, "padded")
    lt, rt = _run(model, x, k, "trimmed")
    assert (lp - lt).abs().max() <= TOL
    for i in range(4):
        assert _sets(rp, i) == _sets(rt, i)
    for r in rp:
        assert (r.counts <= k + 1).all() and (r.counts >= 2).all()


def test_image_alone_equals_image_in_batch(sample_arrays):
    """An image's logits and kept sets do not depend on its batch mates (docs/design.md, ATS step 4)."""
    from tscli.runtime.preprocess import preprocess

    cfg = get_config("deit_t_ats")
    meta = {"input_size": [3, 224, 224], "mean": cfg.mean, "std": cfg.std, "crop_pct": cfg.crop_pct,
            "interpolation": cfg.interpolation}
    x = torch.from_numpy(preprocess(sample_arrays[:3], meta))
    x[2] = torch.randn(3, 224, 224) * 3  # a very different batch mate: noise
    model = build_model(cfg).module
    for execution in ("padded", "trimmed"):
        lb, rb = _run(model, x, 48, execution)
        la, ra = _run(model, x[1:2], 48, execution)
        assert (lb[1] - la[0]).abs().max() <= TOL
        assert _sets(rb, 1) == _sets(ra, 0)


def test_ats_differs_from_dense_and_bounds_counts():
    cfg = get_config("tiny_ats")
    ats = build_model(cfg).module
    dense = build_model(get_config("tiny_dense")).module
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        la, rec = ats.forward_with_records(x, torch.zeros(16))
        ld = dense(x)
    assert (la - ld).abs().max() > 1e-3  # sampling really changes the computation
    assert all((r.counts <= 17).all() for r in rec)


def test_registry_has_the_required_variants():
    names = set(list_models())
    assert {"deit_t_ats", "deit_s_ats", "deit_b_ats", "deit_t", "deit_s", "deit_b"} <= names
    assert get_config("deit_s_ats").stages == tuple(range(3, 12))
    with pytest.raises(UsageError, match="unknown model 'nope'; valid: .*deit_s_ats"):
        get_config("nope")


def test_parse_stages():
    assert parse_stages("3-11", 12) == tuple(range(3, 12))
    assert parse_stages("3,6,9", 12) == (3, 6, 9)
    for bad in ("12", "a-b", "3,3", ""):
        with pytest.raises(UsageError):
            parse_stages(bad, 12)


def test_checkpoint_formats_and_errors(tmp_path):
    from safetensors.torch import save_file

    cfg = get_config("tiny_ats")
    src = build_model(cfg, seed=7)
    sd = src.module.state_dict()
    torch.save({"model": sd}, tmp_path / "deit_release.pth")  # official DeiT release format
    torch.save(sd, tmp_path / "plain.bin")
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "w.safetensors"))
    x = torch.randn(1, 3, 32, 32)
    ref = _run(src.module, x, 8)[0]
    for name in ("deit_release.pth", "plain.bin", "w.safetensors"):
        built = build_model(cfg, checkpoint=str(tmp_path / name))
        assert built.weights.startswith("sha256:")
        assert torch.equal(_run(built.module, x, 8)[0], ref)

    partial = dict(sd)
    partial.pop("head.weight")
    partial["extra.weight"] = torch.zeros(1)
    torch.save(partial, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match=r"missing keys: head.weight.*unexpected keys: extra.weight"):
        build_model(cfg, checkpoint=str(tmp_path / "bad.pth"))
    with pytest.raises(CheckpointError, match="shape mismatch"):
        build_model(get_config("tiny_ats", num_classes=5), checkpoint=str(tmp_path / "plain.bin"))
    (tmp_path / "corrupt.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        build_model(cfg, checkpoint=str(tmp_path / "corrupt.pth"))


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned > /dev/null",))


def test_checkpoint_with_code_is_refused(tmp_path):
    """torch.load(weights_only=True): a pickle that would run code is rejected, not executed."""
    torch.save({"model": _Evil()}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="holds Python objects besides tensors.*tscli loads tensors only"):
        build_model(get_config("tiny_ats"), checkpoint=str(tmp_path / "evil.pth"))
