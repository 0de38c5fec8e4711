"""Device profiles: which K a model should use on which device (written by ``tscli tune``, read by
``tscli.runtime.load(FILE, k="auto")`` and ``tscli run --k auto``).

Store: a JSON file, by default next to the model: ``deit_s_ats.onnx`` -> ``deit_s_ats.profiles.json``
(or any path given with ``profiles=`` / ``--profiles``)::

    {"schema": "tscli.profiles/1",
     "profiles": [{"fingerprint": {"cpu", "gpu", "backend", "provider", "onnxruntime", "numpy"},
                   "model": {"model", "weights", "max_k", "mode"},
                   "chosen_k": int, "batch": int, "objective": {...}, "accuracy_kind": ...,
                   "table": [{"k", "median_ms", "p10_ms", "p90_ms", "accuracy", "correct", "total",
                              "gflops", ...}, ...],   # objective["reason"]: why chosen_k
                   "created": ISO time}, ...]}

A profile matches this device when cpu, gpu, backend and provider are equal (library versions are
recorded, and a difference is reported, but does not block: they move latency a little, not the
device). It must also have been made for this model file (same model, weights, max_k and mode).
One profile per (device, backend, provider, batch) is kept: tuning again replaces it.
"""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
from pathlib import Path

from .. import contract as C
from ..errors import ModelFileError, UsageError, first_line
from ..files import atomic_path

SCHEMA = "tscli.profiles/1"
MATCH_KEYS = ("cpu", "gpu", "backend", "provider")
MODEL_KEYS = ("model", "weights", "max_k", "mode")
PROFILE_KEYS = ("fingerprint", "model", "chosen_k")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def gpu_model() -> str | None:
    """First NVIDIA GPU's name, or None (no nvidia-smi, no GPU, or it fails)."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        res = subprocess.run([exe, "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    names = [n.strip() for n in res.stdout.splitlines() if n.strip()]
    return names[0] if res.returncode == 0 and names else None


def fingerprint(backend: str, provider: str | None) -> dict:
    import numpy

    try:
        import onnxruntime

        ort_version = onnxruntime.__version__
    except ImportError:  # pragma: no cover - the runtime always has it
        ort_version = None
    return {"cpu": cpu_model(), "gpu": gpu_model(), "backend": backend, "provider": provider,
            "onnxruntime": ort_version, "numpy": numpy.__version__}


def describe(fp: dict) -> str:
    return ", ".join(f"{k}={fp.get(k)}" for k in MATCH_KEYS)


def describe_choice(profile: dict) -> str:
    """Why the profile's K was chosen, in words (``tscli tune`` writes the reason; older profiles
    only have their objective)."""
    objective = profile.get("objective") or {}
    if objective.get("reason"):
        return str(objective["reason"])
    if "budget_ms" in objective:
        return f"the most accurate K whose median latency fit {objective['budget_ms']:g} ms"
    if "max_drop_points" in objective:
        return (f"the fastest K within {objective['max_drop_points']:g} accuracy points of K={objective.get('reference_k')}"
                " (medians only: tuned before spreads were measured)")
    return "no reason recorded"


def default_store(model_path: str | Path) -> Path:
    p = Path(model_path)
    return p.with_name(p.stem + ".profiles.json")


def model_identity(meta: dict) -> dict:
    return {k: meta.get(k, "padded" if k == "mode" else None) for k in MODEL_KEYS}


def read_store(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        return []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"profile store {str(path)!r} is not readable JSON: {first_line(exc, 200)}") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA or not isinstance(data.get("profiles"), list):
        raise ModelFileError(f"{str(path)!r} is not a tscli profile store (schema {SCHEMA})")
    for i, profile in enumerate(data["profiles"]):
        missing = [key for key in PROFILE_KEYS if not isinstance(profile, dict) or key not in profile]
        if missing or not isinstance(profile["fingerprint"], dict) or not isinstance(profile["model"], dict):
            what = f"lacks {', '.join(missing)}" if missing else "has a malformed fingerprint or model"
            raise ModelFileError(f"profile {i + 1} in {str(path)!r} {what}; run `tscli tune` again to rewrite the store")
    return data["profiles"]


def write_store(path: str | Path, profiles: list[dict]) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps({"schema": SCHEMA, "profiles": profiles}, indent=2))
    return path


def add_profile(path: str | Path, profile: dict) -> Path:
    """Insert ``profile``, replacing one for the same device, backend, provider, batch and model."""
    def same(p: dict) -> bool:
        return (all(p["fingerprint"].get(k) == profile["fingerprint"].get(k) for k in MATCH_KEYS)
                and p.get("batch") == profile.get("batch") and p.get("model") == profile.get("model"))

    kept = [p for p in read_store(path) if not same(p)]
    return write_store(path, kept + [profile])


def matches(profile: dict, fp: dict) -> bool:
    theirs = profile.get("fingerprint", {})
    return all(theirs.get(k) == fp.get(k) for k in MATCH_KEYS if not (k == "provider" and fp.get(k) is None))


def select(profiles: list[dict], fp: dict, meta: dict, batch: int | None = None, source: str = "profiles") -> dict:
    """The profile for this device and model (the one tuned at ``batch`` if several, else the
    smallest batch). Raises UsageError naming this device's fingerprint when none matches."""
    ident = model_identity(meta)
    for_model = [p for p in profiles if p.get("model") == ident]
    if profiles and not for_model:
        raise UsageError(f"the profiles in {source} were made for another model file "
                         f"({profiles[0].get('model')}), not {ident}; run `tscli tune` for this file")
    mine = [p for p in for_model if matches(p, fp)]
    if not mine:
        known = "; ".join(sorted({describe(p.get('fingerprint', {})) for p in for_model})) or "none"
        raise UsageError(f"no device profile in {source} matches this device ({describe(fp)}); "
                         f"profiles there: {known}. Run `tscli tune FILE --data DIR` on this device, or give --k")
    if batch is not None:
        exact = [p for p in mine if p.get("batch") == batch]
        mine = exact or mine
    return min(mine, key=lambda p: p.get("batch", 1))


def auto_k(model_path: str | Path, meta: dict, backend: str, provider: str | None,
           store: str | Path | None = None) -> tuple[int, dict]:
    """K for ``k="auto"``: from the matching profile in ``store`` (default: next to the model)."""
    path = Path(store) if store is not None else default_store(model_path)
    if not path.is_file():
        raise UsageError(f"--k auto needs a device profile, and {str(path)!r} does not exist; "
                         f"run `tscli tune {model_path} --data DIR` on this device first, or give --k")
    profile = select(read_store(path), fingerprint(backend, provider), meta, source=repr(str(path)))
    return C.check_k(profile["chosen_k"], meta.get("max_k") or 0, f"profile store {str(path)!r}"), profile
