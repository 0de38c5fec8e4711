"""Reference graphs for ``tscli bench`` and ``tscli compare``: the dense baseline of a
classification file (ATS, ToMe, ...) and the "ideal" bound of an ATS file.

Both are plain timm models rebuilt from the file's metadata with the same weights (random seed or
checkpoint) and exported the way they run fastest (exporter.run_static_exporter: one file, dynamic
batch; the ideal graph also has the same dynamic K input), written to a temporary name and renamed
into place. A user comparing with a dense model exported by hand must not find it faster than ours.
"""

from __future__ import annotations

from pathlib import Path

import onnx
import torch
from timm.models.vision_transformer import VisionTransformer

from .. import contract as C
from ..errors import UsageError
from ..files import atomic_path
from ..models.factory import build_from_metadata, vit_kwargs
from ..models.ideal import IdealBound
from .exporter import run_static_exporter, stamp

GRAPHS = ("dense", "ideal")


def _module_for(graph: str, meta: dict, checkpoint: str | None) -> torch.nn.Module:
    built = build_from_metadata(meta, checkpoint)
    dense = VisionTransformer(**vit_kwargs(built.config))
    # Every family is a timm VisionTransformer with the same parameter names (ATS and ToMe swap
    # blocks; DynamicViT/EViT add predictors, left out here); strict: no backbone weight missing.
    own = built.module.state_dict()
    dense.load_state_dict({key: own[key] for key in dense.state_dict()}, strict=True)
    if graph == "ideal":
        return IdealBound(dense, min(built.config.stages)).eval()
    return dense.eval()


def _export(module: torch.nn.Module, graph: str, meta: dict) -> onnx.ModelProto:
    images = torch.randn(2, *meta["input_size"])
    batch = torch.export.Dim(C.DIM_BATCH, min=1, max=4096)
    if graph == "ideal":
        max_k = int(meta["max_k"])
        example = (images, torch.zeros(min(max_k, 4)))
        dynamic = ({0: batch}, {0: torch.export.Dim(C.DIM_K, min=1, max=max_k)} if max_k > 1 else {})
        names = [C.INPUT_IMAGES, C.INPUT_K]
    else:
        example, dynamic, names = (images,), ({0: batch},), [C.INPUT_IMAGES]
    return run_static_exporter(module, example, (names, [C.OUTPUT_LOGITS]), dynamic, int(meta["opset"]))


def export_bench_graph(graph: str, meta: dict, path: str | Path, checkpoint: str | None = None) -> Path:
    """Export the ``dense`` baseline of the classification file described by ``meta``, or the
    ``ideal`` bound of an ATS file."""
    if graph not in GRAPHS:
        raise UsageError(f"unknown bench graph {graph!r}; valid: {', '.join(GRAPHS)}")
    if C.is_segmentation(meta) or (graph == "ideal" and meta.get("family") != "ats"):
        raise UsageError(f"the {graph} reference graph needs {'an ATS' if graph == 'ideal' else 'a classification'} "
                         f"file; this one is {meta.get('family')!r}")
    path = Path(path)
    model = _export(_module_for(graph, meta, checkpoint), graph, meta)
    ref = dict(meta, family="dense" if graph == "dense" else "ideal", bench_graph=graph,
               bench_graph_form=C.BENCH_GRAPH_FORM)
    if graph == "dense":
        ref.update(model=meta.get("dense_name") or f"{meta['model']}-dense", max_k=None, stages=[], scheme=None,
                   mode="padded")
        for key in C.TOME_META_KEYS + C.REDUCTION_META_KEYS:  # a ToMe file's r, a DynamicViT file's rate
            ref.pop(key, None)
    stamp(model, ref)
    with atomic_path(path) as tmp:
        onnx.save(model, str(tmp))
        onnx.checker.check_model(str(tmp))
    return path
