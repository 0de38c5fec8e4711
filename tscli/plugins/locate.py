"""Find the TensorRT plugin library (libtscli_plugins.so) built by CMake.

Used by `tscli build`, the "trt" runtime backend and `tscli doctor`. Pure path logic: nothing is
loaded here (loading needs libnvinfer, see tscli.runtime.trt.plugins).
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import UsageError

LIBRARY_NAME = "libtscli_plugins.so"
ENV_VAR = "TSCLI_PLUGIN_PATH"


def candidate_paths(cwd: Path | None = None) -> list[Path]:
    """Where the library is looked for, in order: $TSCLI_PLUGIN_PATH (file or folder, ':'-separated),
    the CMake build folders of the README (./build/plugins, ./build), then the package folder."""
    cwd = Path.cwd() if cwd is None else cwd
    paths: list[Path] = []
    for entry in filter(None, os.environ.get(ENV_VAR, "").split(os.pathsep)):
        p = Path(entry).expanduser()
        paths.append(p if p.suffix == ".so" else p / LIBRARY_NAME)
    here = Path(__file__).resolve().parent
    paths += [cwd / "build" / "plugins" / LIBRARY_NAME, cwd / "build" / LIBRARY_NAME,
              here / LIBRARY_NAME, here / "build" / LIBRARY_NAME]
    return paths


def find_plugin_library(explicit: str | Path | None = None, cwd: Path | None = None) -> Path | None:
    """The plugin library to use, or None when none is built. An explicit path that does not exist
    is a usage error (the user asked for that file), not a silent fallback."""
    if explicit is not None:
        path = Path(explicit).expanduser()
        if path.is_dir():
            path = path / LIBRARY_NAME
        if not path.is_file():
            raise UsageError(f"plugin library {str(explicit)!r} does not exist; build it with "
                             "`cmake -S tscli/plugins -B build/plugins && cmake --build build/plugins` "
                             f"or give the path to {LIBRARY_NAME}")
        return path.resolve()
    return next((p.resolve() for p in candidate_paths(cwd) if p.is_file()), None)
