"""Reduced precision: where the sampling island is in an exported graph, and the fp16 conversion
that keeps it in float32 (docs/design.md, "Reduced precision").

The island is what decides which tokens survive: the significance scores, their normalisation,
CDF, sample points, picks and the slot index / mask of every ATS stage. A pick is a discrete
decision on floats, so the island always runs in float32, in fp16 and INT8 files alike. It is
found by name, not guessed: the model runs it inside ``models.sampling.SamplingIsland`` and the
ONNX exporter records that class on every node it traces there (contract.ISLAND_SCOPE). Nodes
that do not depend on the images (K-side arithmetic such as the sample points) and feed only
the island belong to it too, wherever the exporter put them.

onnx is imported by the functions that read or edit a graph (the export extras).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from .. import contract as C
from ..errors import ModelFileError, UsageError

_SHAPE_OPS = ("Shape", "Size")
FP16_TOLERANCE = 5e-2  # |logit diff| of an fp16 file on images whose kept sets did not change (tests/README)


def _scoped(node) -> bool:
    for prop in node.metadata_props:
        if prop.key == C.NODE_SCOPE_KEY and f"'{C.ISLAND_SCOPE}'" in prop.value:
            return True
    return node.domain == C.PLUGIN_DOMAIN and node.op_type == C.SAMPLE_OP


def image_free(graph) -> set[str]:
    """Names of the nodes whose values do not depend on the pixel values of ``images``: shape and
    K-side arithmetic and constants (a Shape of an activation depends on its shape only)."""
    tainted = {C.INPUT_IMAGES}
    free = set()
    for node in graph.node:  # ONNX graphs are stored in topological order
        if node.op_type not in _SHAPE_OPS and any(name in tainted for name in node.input):
            tainted.update(node.output)
        else:
            free.add(node.name)
    return free


def island_nodes(model, required: bool = True) -> list[str]:
    """Names of the sampling island's nodes in graph order ([] for a file that samples nothing).

    An ATS file exported before the island was tagged has none: ``required`` makes that an error
    that says to export it again."""
    graph = model.graph
    island = {n.name for n in graph.node if _scoped(n)}
    meta = C.decode_metadata({p.key: p.value for p in model.metadata_props})
    if not island:
        if required and meta.get("family") == C.FAMILY_ATS:
            raise ModelFileError(f"this {meta.get('model', 'ATS')} file has no nodes tagged as the sampling island "
                                 f"({C.ISLAND_SCOPE}); export it again with this tscli version")
        return []
    consumers = defaultdict(set)
    for node in graph.node:
        for name in node.input:
            consumers[name].add(node.name)
    outputs = {o.name for o in graph.output}
    free = image_free(graph)
    changed = True
    while changed:  # K-side nodes that feed only the island join it
        changed = False
        for node in graph.node:
            if node.name in island or node.name not in free or any(o in outputs for o in node.output):
                continue
            users = set().union(*(consumers[o] for o in node.output))
            if users and users <= island:
                island.add(node.name)
                changed = True
    return [n.name for n in graph.node if n.name in island]


def island_inputs(model, island: list[str]) -> set[str]:
    """Tensors the island reads from outside it (its boundary)."""
    members = set(island)
    produced = {o for n in model.graph.node if n.name in members for o in n.output}
    return {i for n in model.graph.node if n.name in members for i in n.input if i and i not in produced}


def qdq_inside_island(model, island: list[str]) -> list[str]:
    """Island nodes that are Q/DQ nodes or read a DequantizeLinear output: [] when the island
    computes in float32 from float32 values."""
    dq_outputs = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    members = set(island)
    return [n.name for n in model.graph.node if n.name in members
            and (n.op_type in ("QuantizeLinear", "DequantizeLinear") or any(i in dq_outputs for i in n.input))]


def tensor_types(model) -> dict[str, int]:
    """Element type of every tensor (onnx type inference, initializers, Constant nodes)."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    g = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*g.value_info, *g.input, *g.output)}
    types.update({t.name: t.data_type for t in g.initializer})
    for node in g.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    types[node.output[0]] = a.t.data_type
    return types


def float_tensor_types(model, names) -> dict[str, int]:
    types = tensor_types(model)
    return {n: types.get(n, 0) for n in names}


def read_fp32_file(path: str | Path):
    """(model, metadata) of a tscli fp32 file that can be reduced; refuses anything else in one line."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"ONNX file {str(path)!r} does not exist")
    try:
        model = onnx.load(str(path))
    except Exception:  # noqa: BLE001 - protobuf raises several types
        raise ModelFileError(f"{str(path)!r} is not a readable ONNX file") from None
    meta = C.decode_metadata({p.key: p.value for p in model.metadata_props})
    if "model" not in meta:
        raise ModelFileError(f"{path.name} was not exported by tscli (no tscli.* metadata); export it with `tscli export`")
    if C.is_segmentation(meta):
        raise UsageError(f"{path.name} is a {meta['family']} segmentation file; reduced precision covers ATS and dense "
                         "classification files")
    if meta.get("precision", "fp32") != "fp32":
        raise UsageError(f"{path.name} is already {meta['precision']}; give the fp32 file it was made from "
                         f"({(meta.get('source') or {}).get('file', 'the exported file')})")
    return model, meta


def stamp_reduced(model, source, extra: dict) -> None:
    """The source file's metadata plus the reduced-precision keys (contract.PRECISION_META_KEYS)."""
    del model.metadata_props[:]
    model.metadata_props.extend(source.metadata_props)
    for key, value in C.encode_metadata(extra).items():
        model.metadata_props.add(key=key, value=value)
    model.producer_name, model.producer_version = source.producer_name, source.producer_version
