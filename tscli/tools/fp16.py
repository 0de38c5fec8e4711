"""fp32 file -> fp16 file for ORT-CUDA and TensorRT: weights and activations in float16, the
sampling island in float32 with Casts at its boundary (docs/design.md, "Reduced precision").

A focused converter rather than a general one: every node is either in the float16 region (the
network) or in the float32 region (the island, plus the nodes that do not depend on the images:
shape and K arithmetic, whose float values such as the sample points must not be rounded to 11
bits). A float tensor that crosses from one region to the other goes through one Cast, made once
per tensor and direction and placed right before its first reader, so the graph stays in
topological order. Inside each region nothing is cast: island tensors never round-trip through
float16. The file keeps the graph contract: float32 ``images`` in, float32 ``logits`` out, K at
load time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import ModelFileError
from . import precision as PR

# Readers of a tensor's shape only: they take either type, no Cast needed.
_SHAPE_ONLY = {"Shape", "Size"}


def _fp16_tensor(t):
    from onnx import numpy_helper

    arr = numpy_helper.to_array(t).astype(np.float32)
    with np.errstate(over="ignore"):
        half = np.clip(arr, -65504.0, 65504.0).astype(np.float16)
    half = np.where(np.isinf(arr), arr.astype(np.float16), half)  # -inf masks stay -inf
    out = numpy_helper.from_array(half, t.name)
    return out


def _convert_attrs(node, onnx) -> None:
    """Float constants carried by attributes: Constant values, ConstantOfShape fills, Cast targets."""
    FLOAT, HALF = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
    for a in node.attribute:
        if node.op_type == "Cast" and a.name == "to" and a.i == FLOAT:
            a.i = HALF
        elif a.type == onnx.AttributeProto.TENSOR and a.t.data_type == FLOAT:
            a.t.CopyFrom(_fp16_tensor(a.t))
        elif node.op_type == "Constant" and a.name in ("value_float", "value_floats"):
            raise ModelFileError(f"Constant {node.name} with {a.name}: not supported by the fp16 conversion")


def to_fp16(model, island: list[str]):
    """A float16 copy of ``model`` with the nodes of ``island`` and the image-free nodes in
    float32. Returns (model, number of Casts inserted)."""
    import onnx

    FLOAT, HALF = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    types = PR.tensor_types(model)
    fp32_nodes = set(island) | PR.image_free(g)
    region = {}  # float tensor -> FLOAT or HALF, as produced
    for i in g.input:
        region[i.name] = i.type.tensor_type.elem_type
    inits = {t.name: t for t in g.initializer}
    for node in g.node:
        want = FLOAT if node.name in fp32_nodes else HALF
        for o in node.output:
            if types.get(o) == FLOAT:
                region[o] = want
        if want == HALF:
            _convert_attrs(node, onnx)

    readers = {}
    for node in g.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    # Initializers: converted in place when every reader is float16, duplicated when both read.
    new_inits = []
    for name, t in inits.items():
        if t.data_type != FLOAT:
            continue
        kinds = {FLOAT if n.name in fp32_nodes else HALF for n in readers.get(name, []) if n.op_type not in _SHAPE_ONLY}
        if kinds == {HALF}:
            t.CopyFrom(_fp16_tensor(t))
            region[name] = HALF
        else:
            region[name] = FLOAT
            if HALF in kinds:
                half = _fp16_tensor(t)
                half.name = f"{name}__fp16"
                new_inits.append(half)
                for n in readers[name]:
                    if n.name not in fp32_nodes:
                        n.input[:] = [half.name if i == name else i for i in n.input]
    g.initializer.extend(new_inits)

    casts, made, nodes = 0, {}, []
    for node in list(g.node):
        want = FLOAT if node.name in fp32_nodes else HALF
        if node.op_type not in _SHAPE_ONLY:
            for j, name in enumerate(node.input):
                have = region.get(name)
                if have not in (FLOAT, HALF) or have == want:
                    continue
                key = (name, want)
                if key not in made:
                    made[key] = f"{name}__to_{'fp32' if want == FLOAT else 'fp16'}"
                    nodes.append(onnx.helper.make_node("Cast", [name], [made[key]], to=want,
                                                       name=f"{made[key]}_cast"))
                    casts += 1
                node.input[j] = made[key]
        nodes.append(node)
    # Graph outputs keep their float32 type (the contract): a float16 producer gets a last Cast.
    for o in g.output:
        if region.get(o.name) == HALF:
            inner = f"{o.name}__fp16"
            for node in nodes:
                node.output[:] = [inner if x == o.name else x for x in node.output]
                node.input[:] = [inner if x == o.name else x for x in node.input]
            nodes.append(onnx.helper.make_node("Cast", [inner], [o.name], to=FLOAT, name=f"{o.name}_cast_fp32"))
            casts += 1
    del g.node[:]
    g.node.extend(nodes)
    del g.value_info[:]  # types changed; onnx and ONNX Runtime infer them again
    return out, casts


def convert_fp16(path: str | Path, output: str | Path | None = None, images: str | Path | None = None, n: int = 8,
                 validate: bool = True, progress: Callable[[str], None] = lambda msg: None):
    """fp32 file -> fp16 file, checked before it is renamed into place: it runs in ONNX Runtime
    at max_k and max_k/2, every logit is finite, and on images whose kept sets did not change
    the logits are within precision.FP16_TOLERANCE of the fp32 file. Returns (path, metadata,
    casts, lint report, check report)."""
    from ..export.exporter import write_checked
    from ..files import check_output_file, sha256_file
    from .precision_parity import precision_parity

    path = Path(path)
    model, meta = PR.read_fp32_file(path)
    out = check_output_file(output or str(path.with_suffix("")) + ".fp16.onnx", inputs=[str(path)])
    island = PR.island_nodes(model)
    progress("converting to fp16 (sampling island in fp32)")
    half, casts = to_fp16(model, island)
    extra = {"precision": "fp16", "island": island, "source": {"file": path.name, "sha256": sha256_file(path)}}
    PR.stamp_reduced(half, model, extra)

    def check(tmp: str):
        progress("checking the fp16 file against the fp32 file in ONNX Runtime")
        return precision_parity(tmp, path, images, n, torch_reference_too=False, max_unchanged_diff=PR.FP16_TOLERANCE)

    lint, report = write_checked(half, out, check if validate else None, progress)
    if report is not None:
        report.file = str(out)  # it ran on the temporary name the file had before the rename
    return out, {**meta, **extra}, casts, lint, report
