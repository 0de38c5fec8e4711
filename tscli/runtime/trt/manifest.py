"""The JSON manifest written next to every engine, and the checks made with it before an engine
is deserialised (a TensorRT engine only loads in the TensorRT version and on the GPU model that
built it; deserialising a foreign one fails late and with an obscure message)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from ...errors import ModelFileError
from ...files import atomic_path
from .host import GpuInfo, version_tuple

FORMAT = "tscli-trt-engine"
VERSION = 1
REQUIRED = ("format", "manifest_version", "engine_sha256", "tensorrt_version", "gpu", "precision", "profiles",
            "k_range", "batch_range", "plugin_library", "plugin_ops", "source_onnx", "tscli_version", "model_metadata")


def manifest_path(engine: str | Path) -> Path:
    engine = Path(engine)
    return engine.with_name(engine.name + ".json")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write_synced(path: Path, data: bytes) -> None:
    # fsync before the rename: a Jetson losing power right after a build keeps a whole engine or none.
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_engine(engine_path: str | Path, engine: bytes, manifest: dict) -> tuple[Path, Path, dict]:
    """Write the engine and its manifest through temporary files in the target folder (files.
    atomic_path), renamed only when both are complete: an interrupted build leaves no half-written
    engine. The manifest carries the engine's hash, so a pair mixed up by hand is caught at load.
    Returns the two paths and the manifest as written."""
    engine_path = Path(engine_path)
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    manifest = {**manifest, "engine_sha256": sha256_bytes(engine)}
    validate_structure(manifest, engine_path)
    with atomic_path(engine_path, suffix=".engine") as tmp_engine:
        _write_synced(tmp_engine, engine)
        with atomic_path(manifest_path(engine_path), suffix=".json") as tmp_manifest:
            _write_synced(tmp_manifest, (json.dumps(manifest, indent=2) + "\n").encode())
    return engine_path, manifest_path(engine_path), manifest


def validate_structure(manifest: dict, engine_path: str | Path) -> dict:
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ModelFileError(f"{str(manifest_path(engine_path))!r} is not a tscli engine manifest (format != {FORMAT!r})")
    if manifest.get("manifest_version") != VERSION:
        raise ModelFileError(f"manifest version {manifest.get('manifest_version')!r} of {str(engine_path)!r} is not "
                             f"supported (this tscli reads version {VERSION}); rebuild the engine with `tscli build`")
    missing = [k for k in REQUIRED if k not in manifest]
    if missing:
        raise ModelFileError(f"engine manifest {str(manifest_path(engine_path))!r} lacks {', '.join(missing)}; "
                             "rebuild the engine with `tscli build`")
    return manifest


def read_manifest(engine_path: str | Path) -> dict:
    engine_path = Path(engine_path)
    if not engine_path.is_file():
        raise ModelFileError(f"engine file {str(engine_path)!r} does not exist")
    path = manifest_path(engine_path)
    if not path.is_file():
        raise ModelFileError(f"no manifest {str(path)!r} next to the engine; tscli engines are built with "
                             "`tscli build`, which writes both")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"engine manifest {str(path)!r} is not valid JSON: {exc}") from None
    return validate_structure(manifest, engine_path)


def check_engine_bytes(manifest: dict, engine: bytes, engine_path: str | Path) -> None:
    got = sha256_bytes(engine)
    if got != manifest["engine_sha256"]:
        raise ModelFileError(f"engine {str(engine_path)!r} (sha256 {got[:12]}) is not the one its manifest describes "
                             f"(sha256 {manifest['engine_sha256'][:12]}); rebuild with `tscli build`")


def check_host(manifest: dict, trt_version: str, gpu: GpuInfo | None, engine_path: str | Path = "engine") -> list[str]:
    """Raise when this host cannot run the engine; return warnings for what may still work.

    TensorRT must match to the patch release and the compute capability exactly; a different GPU
    name with the same compute capability is a warning (names differ between probes, e.g. 'Orin'
    from CUDA vs the board name from the device tree, and TensorRT itself only warns)."""
    name = Path(engine_path).name
    built = manifest["tensorrt_version"]
    if version_tuple(built)[:3] != version_tuple(trt_version)[:3]:
        raise ModelFileError(f"{name} was built with TensorRT {built}, this host has TensorRT {trt_version}: an engine "
                             "only loads in the TensorRT release that built it; rebuild it here with `tscli build`")
    want = manifest["gpu"] or {}
    if gpu is None:
        raise ModelFileError(f"{name} needs an NVIDIA GPU (built on {want.get('name')!r}, compute capability "
                             f"{want.get('compute_capability')}), but none was found on this host (run `tscli doctor`)")
    if want.get("compute_capability") and want["compute_capability"] != gpu.compute_capability:
        raise ModelFileError(f"{name} was built for {want.get('name')!r} (compute capability {want['compute_capability']}), "
                             f"this host has {gpu.name!r} (compute capability {gpu.compute_capability}); "
                             "rebuild it on this device with `tscli build`")
    warnings = []
    if want.get("name") and want["name"] != gpu.name:
        warnings.append(f"{name} was built on {want['name']!r}, this host has {gpu.name!r} (same compute capability "
                        f"{gpu.compute_capability}): it should load, but rebuild here for the best tactics")
    return warnings
