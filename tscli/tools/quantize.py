"""``tscli quantize``: an fp32 file -> static INT8 in QDQ form, calibrated on the user's images,
with the sampling island in float32 (docs/design.md, "Reduced precision").

What is quantized: the inputs of the MatMul, Gemm and Conv nodes that read a weight (the linear
layers, the patch embedding, the head), weights per output channel; their outputs stay float32
(ONNX Runtime then runs each as one MatMulIntegerToFloat). Everything else stays float32: the
attention MatMuls (q.k and a.v read two activations), LayerNorm, softmax, GELU, the residual
adds and the -inf key masking, and the island: ONNX Runtime's quantizer is told to leave those
nodes alone, and where it hands an island node the dequantized copy of a tensor that another
(quantized) node reads too, the island node gets the float32 tensor back. Only the inputs of the
quantized nodes are calibrated, so the masks' infinities never reach a histogram (entropy and
percentile calibration fail on them).

Why not more (measured, docs/design.md "Reduced precision"): re-quantizing every MatMul output
and quantizing the attention MatMuls too (the quantizer's defaults) made deit_s_ats 1.34x faster
than fp32 at K=99 batch 8 instead of 1.70x (ONNX Runtime's QLinearSoftmax and the Q/DQ pairs
around each output cost more than the int8 attention saved), and agreed with fp32 on 98.0 % of
the digits answers instead of 99.1 %.

Two targets, because the fast form differs: ``cpu`` is uint8 activations (asymmetric) with int8
weights, what VNNI CPUs run fastest in ONNX Runtime; ``tensorrt`` is int8 activations and
weights with zero points 0, the only Q/DQ form TensorRT's explicit quantization accepts.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .. import contract as C
from ..errors import ModelFileError, UsageError
from ..files import check_output_file, sha256_file
from ..runtime.images import images_in
from ..runtime.preprocess import preprocess
from . import precision as PR

METHODS = ("minmax", "entropy", "percentile")
TARGETS = ("cpu", "tensorrt")
OP_TYPES = ("MatMul", "Gemm", "Conv")


@dataclass
class QuantizeOptions:
    file: str
    calib: str
    n: int = 256
    method: str = "minmax"
    output: str | None = None
    target: str = "cpu"
    batch: int = 8
    check_n: int = 16  # calibration images of the check against the fp32 file (0: no check)


@dataclass
class QuantizeResult:
    path: Path
    metadata: dict
    quantized_nodes: int
    island: list[str]
    lint_warnings: list[str] = field(default_factory=list)
    check: object | None = None  # tools/precision_parity.PrecisionReport against the fp32 file


class _Reader:
    """ONNX Runtime's CalibrationDataReader protocol over image files, read ``batch`` at a time
    (memory stays bounded), each batch at the next K of ``ks`` in turn."""

    def __init__(self, files: list[Path], meta: dict, batch: int, ks: list[int | None],
                 on_batch: Callable[[int, int], None], full_batches: bool = False):
        self.files, self.meta, self.batch, self.ks, self.on_batch = files, meta, batch, ks, on_batch
        self.full_batches = full_batches
        self.pos = 0
        self.count = 0

    def get_next(self) -> dict | None:
        if self.pos >= len(self.files):
            return None
        chunk = self.files[self.pos:self.pos + self.batch]
        if self.full_batches and len(chunk) < self.batch:  # histograms need one shape: fill from the start
            chunk = chunk + [self.files[i % len(self.files)] for i in range(self.batch - len(chunk))]
        feed = {C.INPUT_IMAGES: preprocess([str(p) for p in chunk], self.meta)}
        k = self.ks[self.count % len(self.ks)]
        if k is not None:
            feed[C.INPUT_K] = np.zeros(k, np.float32)
        self.pos += len(chunk)
        self.count += 1
        self.on_batch(self.pos, len(self.files))
        return feed

    def __iter__(self):
        return self

    def __next__(self):
        feed = self.get_next()
        if feed is None:
            raise StopIteration
        return feed


def check_options(opts: QuantizeOptions) -> None:
    if opts.method not in METHODS:
        raise UsageError(f"unknown --method {opts.method!r}; valid: {', '.join(METHODS)}")
    if opts.target not in TARGETS:
        raise UsageError(f"unknown --target {opts.target!r}; valid: {', '.join(TARGETS)}")
    if isinstance(opts.n, bool) or opts.n < 1:
        raise UsageError(f"--n {opts.n} is invalid; give the number of calibration images (>= 1)")
    if opts.batch < 1:
        raise UsageError(f"--batch {opts.batch} is invalid; give a number >= 1")
    if opts.check_n < 0:
        raise UsageError(f"--check-n {opts.check_n} is invalid; give a number >= 0 (0 skips the check)")


def calibration_ks(meta: dict, method: str = "minmax") -> list[int | None]:
    """minmax alternates K between max_k and max_k/2; the histogram methods (entropy, percentile)
    stack every batch's tensors into one array, so they run at max_k only, in full batches."""
    if not meta.get("max_k"):
        return [None]
    return C.default_ks(meta["max_k"]) if method == "minmax" else [int(meta["max_k"])]


def _settings(opts: QuantizeOptions):
    from onnxruntime.quantization import CalibrationMethod, QuantType

    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[opts.method]
    symmetric = opts.target == "tensorrt"
    activation = QuantType.QInt8 if symmetric else QuantType.QUInt8
    extra = {"ActivationSymmetric": symmetric, "WeightSymmetric": True,
             # outputs stay float32: no Q/DQ pair after each linear layer (see the module docstring)
             "OpTypesToExcludeOutputQuantization": list(OP_TYPES)}
    return method, activation, QuantType.QInt8, extra


def activation_matmuls(model) -> list[str]:
    """MatMul nodes whose second operand is not a weight (attention's q.k and a.v): kept float32.
    (The quantizer's MatMulConstBOnly option does this only outside the QDQ format.)"""
    weights = {t.name for t in model.graph.initializer}
    weights |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    return [n.name for n in model.graph.node if n.op_type == "MatMul" and n.input[1] not in weights]


def restore_island_inputs(model, island: list[str]) -> int:
    """Island nodes that read DequantizeLinear(QuantizeLinear(x)) read x again; returns how many
    inputs were restored. (The quantizer rewires every reader of a quantized tensor, excluded
    nodes included, when one of its readers is quantized.)"""
    producers = {o: n for n in model.graph.node for o in n.output}
    members, restored = set(island), 0
    for node in model.graph.node:
        if node.name not in members:
            continue
        for j, name in enumerate(node.input):
            dq = producers.get(name)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            q = producers.get(dq.input[0])
            if q is not None and q.op_type == "QuantizeLinear":
                node.input[j] = q.input[0]
                restored += 1
    return restored


def _quantize_static(src: Path, dst: Path, reader: _Reader, keep_fp32: list[str], opts: QuantizeOptions) -> None:
    from onnxruntime.quantization import QuantFormat, quantize_static

    method, activation, weight, extra = _settings(opts)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer logs advice (pre-processing) on the root logger
    try:
        quantize_static(str(src), str(dst), reader, quant_format=QuantFormat.QDQ, op_types_to_quantize=list(OP_TYPES),
                        per_channel=True, activation_type=activation, weight_type=weight, nodes_to_exclude=keep_fp32,
                        calibrate_method=method, extra_options=extra)
    except ValueError as exc:  # e.g. a histogram of a tensor that is not finite
        raise ModelFileError(f"calibration ({opts.method}) failed: {exc}") from None
    finally:
        root.setLevel(level)


def quantization_summary(model) -> dict:
    """What the QDQ nodes say: how many, activation and weight types, whether every zero point
    is 0 (what TensorRT requires)."""
    from onnx import TensorProto, numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    const_names = set(inits)
    q = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
    act_types, w_types, biases, nonzero = set(), set(), 0, 0
    for node in dq:
        zp = inits.get(node.input[2]) if len(node.input) > 2 else None
        stored = inits.get(node.input[0])
        kind = TensorProto.DataType.Name((zp or stored).data_type).lower() if (zp or stored) is not None else "int8"
        if stored is not None and stored.data_type == TensorProto.INT32:  # a Conv/Gemm bias (scale = in * w)
            biases += 1
            continue
        (w_types if node.input[0] in const_names else act_types).add(kind)
        if zp is not None and np.any(numpy_helper.to_array(zp) != 0):
            nonzero += 1
    return {"quantize_nodes": len(q), "dequantize_nodes": len(dq), "activation_types": sorted(act_types),
            "weight_types": sorted(w_types), "int32_biases": biases, "nonzero_zero_points": nonzero}


def quantize(opts: QuantizeOptions, on_batch: Callable[[int, int], None] = lambda done, total: None,
             progress: Callable[[str], None] = lambda msg: None) -> QuantizeResult:
    """Quantize ``opts.file``. Before the file is renamed into place it is linted and, with
    ``opts.check_n``, run at max_k and max_k/2 on that many calibration images against the fp32
    file: every logit must be finite (the decision statistics come back in ``check``)."""
    from ..export.exporter import write_checked
    from .precision_parity import precision_parity

    check_options(opts)
    src = Path(opts.file)
    model, meta = PR.read_fp32_file(src)
    out = check_output_file(opts.output or str(src.with_suffix("")) + ".int8.onnx", inputs=[str(src)])
    files = images_in(opts.calib, opts.n)
    island = PR.island_nodes(model)
    members = set(island)
    attention = [name for name in activation_matmuls(model) if name not in members]  # the island's are its own
    ks = calibration_ks(meta, opts.method)
    with tempfile.TemporaryDirectory(prefix="tscli-quantize-") as tmp:
        dst = Path(tmp) / "int8.onnx"
        progress(f"calibrating on {len(files)} images ({opts.method})")
        with contextlib.redirect_stdout(None):
            reader = _Reader(files, meta, opts.batch, ks, on_batch, full_batches=opts.method != "minmax")
            _quantize_static(src, dst, reader, island + attention, opts)
        import onnx

        qmodel = onnx.load(str(dst))
    restore_island_inputs(qmodel, island)
    inside = PR.qdq_inside_island(qmodel, island)
    if inside:
        raise ModelFileError(f"quantization reached the sampling island (node {inside[0]}); this is a tscli bug")
    summary = quantization_summary(qmodel)
    by_output = {o: n for n in qmodel.graph.node for o in n.output}
    quantized = sum(1 for n in qmodel.graph.node if n.op_type in OP_TYPES
                    and any(by_output[i].op_type == "DequantizeLinear" for i in n.input if i in by_output))
    extra_meta = {
        "precision": "int8", "island": island,
        "source": {"file": src.name, "sha256": sha256_file(src)},
        "quantization": {"format": "QDQ", "target": opts.target, "method": opts.method, "images": len(files),
                         "calibration_ks": ks, "op_types": list(OP_TYPES), "per_channel_weights": True,
                         "quantized_nodes": quantized, "float_matmuls": len(attention), "outputs": "float32",
                         **summary},
    }
    PR.stamp_reduced(qmodel, model, extra_meta)
    def check(tmp: str):
        progress("checking the int8 file against the fp32 file")
        return precision_parity(tmp, src, opts.calib, opts.check_n, torch_reference_too=False, labels="none")

    lint, report = write_checked(qmodel, out, check if opts.check_n else None, progress)
    if report is not None:
        report.file = str(out)  # it ran on the temporary name the file had before the rename
    warnings = [str(f) for f in lint.findings if f.level == "warning"]
    return QuantizeResult(out, {**meta, **extra_meta}, quantized, island, warnings, report)
