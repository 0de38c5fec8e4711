"""`tscli selftest` (GPU host): build a tiny engine from a tscli ONNX file, run it at two K values
and compare with ONNX Runtime on the CPU. One verdict line. Needs no torch when a file is given."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import contract as C
from ..errors import CheckFailed, MissingDependency, UsageError
from ..runtime import load
from ..runtime.trt import host
from .engine_build import BuildOptions, build_engine

LOGIT_TOL = 1e-3  # fp32 engine (TF32 off) vs ORT CPU; kernels differ, so not the 1e-5 of ORT vs torch


@dataclass
class KResult:
    k: int | None
    max_abs_diff: float
    counts_equal: bool

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= LOGIT_TOL and self.counts_equal


@dataclass
class SelftestResult:
    source: str
    tensorrt: str
    gpu: str
    rows: list[KResult] = field(default_factory=list)
    sampling: str = ""  # which path ran the sampling in the engine, from its manifest

    @property
    def ok(self) -> bool:
        return bool(self.rows) and all(r.ok for r in self.rows)

    def verdict(self) -> str:
        worst = max((r.max_abs_diff for r in self.rows), default=float("nan"))
        counts = all(r.counts_equal for r in self.rows)
        ks = ",".join(str(r.k) for r in self.rows)
        return (f"selftest {'PASSED' if self.ok else 'FAILED'}: TensorRT {self.tensorrt} on {self.gpu}, "
                f"{Path(self.source).name} K={ks}: max|dlogit| {worst:.2e} (tol {LOGIT_TOL:.0e}), "
                f"kept counts {'equal' if counts else 'DIFFER'}; sampling: {self.sampling or 'unknown'}")


def compare_outputs(ref: dict, got: dict, k: int | None) -> KResult:
    diff = float(np.max(np.abs(ref[C.OUTPUT_LOGITS].astype(np.float64) - got[C.OUTPUT_LOGITS].astype(np.float64))))
    if C.OUTPUT_COUNTS in ref:
        counts = np.array_equal(np.asarray(ref[C.OUTPUT_COUNTS], np.int64), np.asarray(got[C.OUTPUT_COUNTS], np.int64))
    else:
        counts = True
    return KResult(k, diff, counts)


def preflight():
    """TensorRT, CUDA bindings and a GPU, all reported in one line when any is missing."""
    problems, trt, gpu = [], None, None
    try:
        trt = host.import_tensorrt()
        host.check_trt_version(trt)
    except MissingDependency as exc:
        problems.append(str(exc))
    try:
        host.import_cudart()
    except MissingDependency as exc:
        problems.append(str(exc))
    gpu, reasons = host.detect_gpu()
    if gpu is None:
        problems.append("no NVIDIA GPU found (" + "; ".join(r for r in reasons if r) + ")")
    if problems:
        raise MissingDependency("selftest needs TensorRT and an NVIDIA GPU; on this host: " + " | ".join(problems))
    return trt, gpu


def _tiny_source(workdir: Path) -> Path:
    try:
        from .checked_export import (  # torch: only when no file is given
            ExportOptions,
            export_onnx,
        )
    except ImportError:
        raise UsageError("give a tscli ONNX file: `tscli selftest FILE.onnx` (export one on the host with "
                         "`tscli export tiny_ats --max-k 32 -o tiny_ats.onnx`)") from None
    out = workdir / "tiny_ats.onnx"
    export_onnx(ExportOptions("tiny_ats", 32, str(out), validate=False))
    return out


def selftest(onnx_file: str | None = None, ks: list[int] | None = None, plugins: str | None = None,
             progress=lambda msg: None) -> SelftestResult:
    trt, gpu = preflight()
    with tempfile.TemporaryDirectory(prefix="tscli-selftest-") as tmp:
        source = Path(onnx_file) if onnx_file else _tiny_source(Path(tmp))
        probe = load(source)
        if C.is_segmentation(probe.meta):
            raise UsageError(f"selftest compares classification logits; {source.name} is a segmentation file "
                             f"({probe.meta.get('family')}): give an ATS or dense classification file, or none")
        if ks is None:
            ks = [None] if probe.k is None else sorted(C.default_ks(probe.k))
        k_range = None if ks == [None] else [f"{min(ks)}:{max(ks)}:{max(ks)}"]
        progress("building a test engine")
        engine = Path(tmp) / "selftest.engine"
        built = build_engine(BuildOptions(str(source), str(engine), k_ranges=k_range, batch="1:2:2", plugins=plugins))
        x = np.random.default_rng(0).standard_normal((2, *probe.meta["input_size"])).astype(np.float32)
        checked = built.manifest["sampling"]
        result = SelftestResult(str(source), trt.__version__, f"{gpu.name} ({gpu.compute_capability})",
                                sampling=f"{checked['path']} ({checked['checked_by']})")
        for k in ks:
            progress(f"running K={k}")
            got = load(engine, k=k, backend="trt").infer(x)
            ref = load(source, k=k).infer(x)
            result.rows.append(compare_outputs(ref, got, k))
    return result


def run_selftest_or_raise(onnx_file=None, ks=None, plugins=None, progress=lambda msg: None) -> SelftestResult:
    result = selftest(onnx_file, ks, plugins, progress)
    if not result.ok:
        raise CheckFailed(result.verdict())
    return result
