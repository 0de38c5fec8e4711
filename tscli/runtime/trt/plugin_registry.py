"""Load libtscli_plugins.so into TensorRT's plugin registry and check that every custom node has a
creator, before any parsing or deserialising (which would otherwise fail late and obscurely)."""

from __future__ import annotations

from pathlib import Path

from ...errors import MissingDependency, ModelFileError, first_line

_loaded: dict[tuple, object] = {}  # (registry, path) -> handle: loading the same library twice registers creators twice


def load_plugin_library(trt, path: str | Path):
    """IPluginV3 libraries export getCreators(); only the registry's load_library (TensorRT >= 10)
    calls it, so a plain ctypes load would register nothing."""
    registry = trt.get_plugin_registry()
    key = str(Path(path).resolve())
    if (id(registry), key) in _loaded:
        return _loaded[(id(registry), key)]
    if not hasattr(registry, "load_library"):
        raise MissingDependency(f"TensorRT {trt.__version__} cannot load {Path(path).name}: the tscli plugins are "
                                "IPluginV3 and need TensorRT >= 10; use the plain form (`tscli export --form plain`)")
    try:
        handle = registry.load_library(key)
    except Exception as exc:  # noqa: BLE001 - the bindings raise RuntimeError/TypeError
        handle, reason = None, first_line(exc, 200)
    else:
        reason = "load_library returned no handle"
    if handle is None:
        raise ModelFileError(f"TensorRT could not load the plugin library {key} ({reason}); was it built for this "
                             "TensorRT/CUDA? rebuild it with CMake on this device (docs/jetson.md)")
    _loaded[(id(registry), key)] = handle
    return handle


def find_creator(registry, name: str, version: str, namespace: str):
    """The registered creator or None; TensorRT 10 has get_creator, 8.6 get_plugin_creator."""
    getter = getattr(registry, "get_creator", None) or getattr(registry, "get_plugin_creator")
    try:
        return getter(name, version, namespace)
    except Exception:  # noqa: BLE001 - some versions raise instead of returning None
        return None


def check_plugin_ops(trt, ops: list[dict], library: str | Path | None) -> None:
    """Every custom node the graph/engine uses must have a creator; name what is missing."""
    registry = trt.get_plugin_registry()
    missing = [op for op in ops if find_creator(registry, op["name"], op["version"], op["namespace"]) is None]
    if missing:
        names = ", ".join(f"{o['namespace']}::{o['name']} v{o['version']}" for o in missing)
        where = f"after loading {library}" if library else "(no plugin library loaded; give --plugins PATH or set $TSCLI_PLUGIN_PATH)"
        raise ModelFileError(f"no TensorRT plugin creator for {names} {where}")
