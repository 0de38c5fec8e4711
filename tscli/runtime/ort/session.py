"""The ONNX Runtime backend (CPU provider by default; runtime/ort/gpu.py opens the GPU providers).

Reports the provider that really runs (onnxruntime-gpu silently falls back to CPU while still
listing CUDA as available)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...errors import ModelFileError, UsageError, first_line, require
from ...plugins.ort_ops import check_library_abi
from ..backend import BackendBase


class OrtBackend(BackendBase):
    name = "ort"

    def __init__(self, path: str | Path, threads: int | None = None, providers: list | None = None,
                 fixed_dims: dict[str, int] | None = None, stop_spinning: bool = False,
                 plugins: str | Path | None = None):
        """``plugins``: tscli's ONNX Runtime op library (tscli/plugins/ort_ops.py builds it). A
        plugin-form file then runs each sampling step as one native op; without it ORT runs the
        op's standard-operator body (the file's local function), which gives the same result.

        ``fixed_dims`` pins named dynamic dimensions (e.g. {"K": 96}) for this session: ORT then
        plans memory and folds shape arithmetic for that size (K is fixed at load anyway).

        ``stop_spinning``: the pool's workers stop spinning as soon as a run returns. For benchmarks
        that alternate between sessions: otherwise the workers of the session that just ran keep
        spinning while the next one runs, and on a 2-core machine that slowed the next session by
        up to 40 %, at random (measured). Spinning inside a run is unchanged."""
        ort = require("onnxruntime", "pip install onnxruntime")
        path = Path(path)
        if path.is_dir():
            raise ModelFileError(f"model file {str(path)!r} is a folder; give the .onnx file")
        if not path.is_file():
            raise ModelFileError(f"model file {str(path)!r} does not exist")
        opts = ort.SessionOptions()
        if threads is not None:
            if threads < 1:
                raise UsageError(f"--threads {threads} is invalid; give a positive number of threads")
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        if stop_spinning:
            opts.add_session_config_entry("session.force_spinning_stop", "1")
        # Flush denormals to zero. The padded graphs mask empty slots with a -inf attention bias;
        # MLAS's exp underflows through denormals on such entries, and a masked softmax ran 2.2x
        # slower than an unmasked one (measured, docs/design.md "Graph speed"). Values below
        # 1.2e-38 change nothing a tolerance or a token decision can see.
        opts.add_session_config_entry("session.set_denormal_as_zero", "1")
        if plugins is not None:
            library = Path(plugins)
            if not library.is_file():
                what = "is a folder" if library.is_dir() else "does not exist"
                raise UsageError(f"--plugins {str(library)!r} {what}; give the library file that "
                                 "`python -m tscli.plugins.ort_ops` prints")
            check_library_abi(library)
            try:
                opts.register_custom_ops_library(str(library))
            except Exception as exc:
                raise ModelFileError(f"--plugins {str(library)!r} is not an ONNX Runtime op library: "
                                     f"{first_line(exc, 200)}") from None
        self.plugins = str(plugins) if plugins is not None else None
        for dim, value in (fixed_dims or {}).items():
            opts.add_free_dimension_override_by_name(dim, int(value))
        self.fixed_dims = dict(fixed_dims or {})
        opts.log_severity_level = 3  # warnings about unused initializers etc. are not the user's business
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=providers or ["CPUExecutionProvider"])
        except Exception as exc:
            raise ModelFileError(f"{str(path)!r} is not a loadable ONNX model: {first_line(exc)}") from None
        self.metadata_props = dict(self.session.get_modelmeta().custom_metadata_map)
        self.input_names = [i.name for i in self.session.get_inputs()]
        # Inputs with a default (an initializer of the same name, e.g. DoViT's xi) are listed
        # separately by ORT; a feed still overrides them.
        self.input_names += [i.name for i in self.session.get_overridable_initializers()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    @property
    def provider(self) -> str:
        return self.session.get_providers()[0]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feeds = {k: v for k, v in feeds.items() if k in self.input_names}
        return dict(zip(self.output_names, self.session.run(None, feeds)))

    def close(self) -> None:
        self.session = None  # the session's memory and threads go with its last reference
