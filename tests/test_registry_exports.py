"""Every tiny registered variant, whatever its family, exports, lints clean, passes its post-export
parity check and runs in the torch-free runtime (as timm's tests parametrise over its registry).
A new family is covered by registering its tiny variant."""

from __future__ import annotations

import numpy as np
import pytest

from tscli import contract as C
from tscli.models.catalog import get_config, tiny_variants
from tscli.runtime import load
from tscli.tools.checked_export import export_variant


def test_every_family_has_a_tiny_variant():
    from tscli.models.catalog import families

    covered = {get_config(n).family for n in tiny_variants()}
    assert covered == set(families()), f"families without a tiny_ variant: {set(families()) - covered}"


@pytest.mark.parametrize("name", tiny_variants())
def test_tiny_variant_exports_and_runs(name, tmp_path):
    cfg = get_config(name)
    result = export_variant(name, str(tmp_path / f"{name}.onnx"))
    assert result.lint.ok and result.validation is not None and result.validation.ok
    meta = result.metadata
    assert meta["model"] == name and meta["family"] == cfg.family
    runner = load(result.path)
    x = np.random.default_rng(0).standard_normal((3, *meta["input_size"])).astype(np.float32)
    out = runner.infer(x)
    main = C.OUTPUT_SEG if C.is_segmentation(meta) else C.OUTPUT_LOGITS
    assert out[main].shape[0] == 3 and np.isfinite(out[main]).all()
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{name}.onnx"]  # no temporary file left
