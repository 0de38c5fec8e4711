"""Shared fixtures: tiny exported models (seconds), sample images, and the golden vectors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

# 82 picking cases from an implementation independent of tscli (docs/design.md, "Golden vectors").
GOLDEN = Path(__file__).resolve().parent / "data" / "ats_pick_vectors.json"


@pytest.fixture(scope="session")
def golden_cases() -> list[dict]:
    if not GOLDEN.is_file():
        pytest.fail(f"golden vectors missing at {GOLDEN}")
    return json.loads(GOLDEN.read_text())["cases"]


@pytest.fixture(scope="session")
def tiny_exports(tmp_path_factory) -> dict[str, Path]:
    """tiny_ats exported in both schemes and both forms, plus the dense baseline."""
    from tscli.tools.checked_export import ExportOptions, export_onnx

    folder = tmp_path_factory.mktemp("exports")
    out = {}
    for key, opts in {
        "paper": dict(model="tiny_ats", max_k=40, scheme="paper"),
        "official": dict(model="tiny_ats", max_k=40, scheme="official"),
        "plugin": dict(model="tiny_ats", max_k=40, scheme="paper", form="plugin"),
        "dense": dict(model="tiny_dense"),
    }.items():
        path = folder / f"{key}.onnx"
        export_onnx(ExportOptions(output=str(path), **opts))
        out[key] = path
    return out


@pytest.fixture(scope="session")
def serving_exports(tmp_path_factory) -> dict[str, Path]:
    """tiny_ats (max_k 40) and tiny_dovit for the serving tests: what they check is the server
    against tscli.runtime on the same file, so the exports skip their PyTorch check (seconds)."""
    from tscli.tools.checked_export import ExportOptions, SegExportOptions, export_onnx, export_seg

    folder = tmp_path_factory.mktemp("serving")
    export_onnx(ExportOptions(model="tiny_ats", max_k=40, output=str(folder / "tiny_ats.onnx"), validate=False))
    export_seg(SegExportOptions("tiny_dovit", output=str(folder / "tiny_dovit.onnx"), validate=False))
    return {"ats": folder / "tiny_ats.onnx", "dovit": folder / "tiny_dovit.onnx"}


@pytest.fixture(scope="session")
def serve_python() -> Path:
    """The serving venv's Python (numpy<2, PyTriton, tritonclient): $TSCLI_SERVE_PYTHON, else
    .venv-serve in the checkout. Missing, the serving tests fail (they do not skip)."""
    import os

    path = Path(os.environ.get("TSCLI_SERVE_PYTHON") or Path(__file__).resolve().parents[1] / ".venv-serve/bin/python")
    if not path.is_file():
        pytest.fail(f"no serving venv at {path}: create it with `make serve-venv` (or set TSCLI_SERVE_PYTHON)")
    return path


@pytest.fixture(scope="session")
def sample_arrays() -> list[np.ndarray]:
    from tscli.data.samples import sample_images

    return [a for _, a in sample_images(6)]


@pytest.fixture(scope="session")
def ort_ops_library() -> str:
    """tscli's ONNX Runtime op library, compiled once. ONNX Runtime's headers come from
    $TSCLI_ORT_INCLUDE or the cache; if neither has them they are fetched from the Debian
    archive, and a failure to fetch fails the tests that need the library (it does not skip)."""
    from tscli.errors import MissingDependency
    from tscli.plugins.ort_ops import build_ort_ops, fetch_ort_headers, find_ort_headers

    try:
        find_ort_headers()
    except MissingDependency:
        fetch_ort_headers()
    return str(build_ort_ops())


@pytest.fixture(scope="session")
def tiny_reduction_exports(tmp_path_factory) -> dict:
    """The export results (path, metadata, lint, parity) of tiny_topk (max_k 40) and tiny_tome
    (its r = 8), shared by the top-K, ToMe and compare tests."""
    from tscli.tools.checked_export import ExportOptions, export_onnx

    folder = tmp_path_factory.mktemp("reduction")
    return {key: export_onnx(ExportOptions(output=str(folder / f"{key}.onnx"), **opts))
            for key, opts in {"topk": dict(model="tiny_topk", max_k=40), "tome": dict(model="tiny_tome")}.items()}
