"""What `tscli inspect` shows. Works with only onnxruntime installed (metadata, inputs, outputs);
with the onnx package it adds the operator histogram and the lint."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from .. import contract as C
from ..errors import ModelFileError
from ..runtime.flops import FLOPS_PER_MAC, arch_from_meta, dense_flops, padded_flops, reduction_flops, tome_flops
from ..runtime.ort.session import OrtBackend
from ..runtime.segmentation import seg_gflops_table


def inspect_file(path: str | Path) -> dict:
    backend = OrtBackend(path)
    meta = C.decode_metadata(backend.metadata_props)
    if "model" not in meta:
        raise ModelFileError(f"{str(path)!r} was not exported by tscli (no tscli.* metadata)")
    sess = backend.session
    info = {
        "file": str(path),
        "metadata": meta,
        "inputs": [{"name": i.name, "type": i.type, "shape": list(i.shape)} for i in sess.get_inputs()],
        "outputs": [{"name": o.name, "type": o.type, "shape": list(o.shape)} for o in sess.get_outputs()],
    }
    if C.is_segmentation(meta):
        info["gflops"] = seg_gflops_table(meta)
    else:
        info["gflops"] = gflops_table(meta)
    # papers quote multiply-adds as "GFLOPs" (DeiT-S 4.6): both, so the numbers compare either way
    info["gmacs"] = {graph: value / FLOPS_PER_MAC for graph, value in info["gflops"].items()}
    if importlib.util.find_spec("onnx") is not None:
        import onnx

        from ..export.lint import lint_model

        report = lint_model(onnx.load(str(path)))
        info["ops"] = report.op_histogram
        info["lint"] = {"ok": report.ok, "findings": [str(f) for f in report.findings]}
    return info


def gflops_table(meta: dict) -> dict:
    """Analytic GFLOPs (see runtime/flops.py): the dense equivalent, and padded ATS at a few K."""
    try:
        arch = arch_from_meta(meta)
    except (KeyError, TypeError, ValueError):  # files from before these keys were written
        return {}
    table = {"dense": dense_flops(arch) / 1e9}
    if meta.get("family") == C.FAMILY_TOME and meta.get("merge_r"):
        table[f"r={meta['r']}"] = tome_flops(arch, meta["merge_r"]) / 1e9
    max_k = meta.get("max_k")
    if meta.get("family") == "ats" and max_k and arch.stages:
        for k in sorted({int(max_k), max(1, int(max_k) // 2), max(1, int(max_k) // 4)}, reverse=True):
            table[f"K={k}"] = padded_flops(arch, k) / 1e9
    if C.is_reduction(meta) and arch.stages:  # DynamicViT / EViT at the file's default rate
        rate, counts = C.check_rate(meta["rate"], meta)
        table[f"rate={rate:g}"] = reduction_flops(arch, meta["family"], counts) / 1e9
    return table
