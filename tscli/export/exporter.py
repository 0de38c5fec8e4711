"""What every tscli exporter shares: the torch.onnx.export call, the metadata stamp, the
optional second optimisation pass and the checked, atomic write.

The file is written to a temporary name, checked (onnx.checker full check, the TensorRT lint and
an optional post-export check passed in by the caller) and only then renamed into place: a failed
export leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Callable, Iterator

import onnx
import torch

from .. import __version__
from .. import contract as C
from ..errors import TscliError, UsageError
from ..files import atomic_path
from .fusable import fusable_forms
from .lint import LintReport, lint_model

MIN_OPSET = 17
# A post-export check: called with the temporary file's path, returns a report with
# raise_if_failed() (tools/ builds it from the runtime and the PyTorch reference).
Validator = Callable[[str], object]


def check_seed(seed: int) -> None:
    """Shared by every exporter: the seed of random weights (torch and numpy take 0..2**63-1)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise UsageError(f"--seed {seed} is out of range; valid: 0..{2**63 - 1}")


def check_opset(opset: int) -> None:
    """Shared by every exporter: LayerNormalization needs 17; above what onnx knows nothing exports."""
    newest = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= newest:
        raise UsageError(f"--opset {opset} is out of range; valid: {MIN_OPSET}..{newest} "
                         "(17 is the first with LayerNormalization)")


@contextlib.contextmanager
def _quiet_stderr_fd() -> Iterator[None]:
    """Send file descriptor 2 to a scratch file while the exporter runs: torch's data-dependent
    shape machinery prints whole FX graphs there from native code (hundreds of lines for a trimmed
    export), which no Python-level redirect or logger setting reaches."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def run_exporter(module: torch.nn.Module, example: tuple, names: tuple[list[str], list[str]], dynamic: dict,
                 opset: int, translation: dict | None = None) -> onnx.ModelProto:
    """torch.onnx.export the way every tscli exporter calls it: dynamo, one file (no external
    data), GELU and attention in the forms runtimes fuse (export/fusable.py), the given dynamic
    dims, and quiet (the exporter prints progress and a long report,
    warns about its own internals, and logs or prints every data-dependent size of a trimmed
    export). Its errors still surface: they are exceptions, and say what went wrong."""
    shape_log = logging.getLogger("torch.fx.experimental.symbolic_shapes")
    level = shape_log.level
    shape_log.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings(), _quiet_stderr_fd(), \
                fusable_forms(module):
            warnings.simplefilter("ignore")
            prog = torch.onnx.export(
                module, example, dynamo=True, external_data=False, opset_version=opset, verbose=False,
                input_names=names[0], output_names=names[1], dynamic_shapes=dynamic,
                custom_translation_table=translation,
            )
    finally:
        shape_log.setLevel(level)
    return drop_value_info(prog.model_proto)


def drop_value_info(model: onnx.ModelProto) -> onnx.ModelProto:
    """Remove the exporter's shape annotations of intermediate tensors (in place), except those
    of custom-op outputs, which nothing else can infer. ONNX Runtime infers the shapes again; with
    dynamo's annotations (symbolic dims such as "K + 1") kept, the same graph ran 3-8 % slower at
    batch 1 (measured, docs/design.md "Graph speed")."""
    g = model.graph
    custom = {out for node in g.node if node.domain not in ("", "ai.onnx") for out in node.output}
    keep = [v for v in g.value_info if v.name in custom]
    del g.value_info[:]
    g.value_info.extend(keep)
    return model


def run_static_exporter(module: torch.nn.Module, example: tuple, names: tuple[list[str], list[str]],
                        dynamic: tuple[dict, ...], opset: int) -> onnx.ModelProto:
    """Export a graph without token selection (bench's dense baseline and bound) the way it runs
    fastest: torch's TorchScript exporter, whose graph ONNX Runtime ran at least as fast as
    dynamo's graph of the same module in every comparison (3-7 % faster at batch 1 with dynamo's
    shape annotations, 0-3 % without; measured, docs/design.md "Graph speed"), so no baseline a
    user exports by hand beats ours. ``dynamic``: per positional input, {axis: torch.export.Dim};
    every output's axis 0 is the batch. A torch without that exporter gets dynamo's graph."""
    axes = {name: {axis: dim.__name__ for axis, dim in dims.items()} for name, dims in zip(names[0], dynamic)}
    axes |= {name: {0: C.DIM_BATCH} for name in names[1]}
    buffer = io.BytesIO()
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings(), _quiet_stderr_fd(), \
                fusable_forms(module):
            warnings.simplefilter("ignore")
            torch.onnx.export(module, example, buffer, dynamo=False, opset_version=opset, input_names=names[0],
                              output_names=names[1], dynamic_axes=axes)
    except Exception:  # the (deprecated) TorchScript exporter is gone from this torch or cannot trace
        # this module: dynamo's graph of the same module, 0-3 % slower; its errors, if any, surface
        return optimize_graph(run_exporter(module, example, names, dynamic, opset))
    return onnx.load_from_string(buffer.getvalue())


def stamp(model: onnx.ModelProto, meta: dict) -> onnx.ModelProto:
    """Write the contract's metadata (tscli/contract.py) and tscli as the producer."""
    for key, value in C.encode_metadata(meta).items():
        model.metadata_props.add(key=key, value=value)
    model.producer_name, model.producer_version = "tscli", __version__
    return model


def optimize_graph(model: onnx.ModelProto) -> onnx.ModelProto:
    """Constant folding, dead-code and redundant Shape/Cast/Expand removal (onnxscript's optimizer).

    Used by the DoViT and benchmark-graph exporters on graphs they post-process after the
    exporter's own optimisation pass (the ATS plain form needs no second pass: measured, it
    removes nothing there).
    """
    import onnxscript.optimizer

    with contextlib.redirect_stdout(io.StringIO()):
        return onnxscript.optimizer.optimize(model)


def bound_check(validate, enabled: bool, built, meta: dict, progress: Callable[[str], None],
                what: str = "PyTorch") -> Validator | None:
    """The check write_checked runs on the temporary file: ``validate(tmp, built, meta)``, or None
    when validation is off or no validator was passed in (export/ never imports the runtime)."""
    if not enabled or validate is None:
        return None

    def check(tmp: str):
        progress(f"validating ONNX Runtime against {what}")
        return validate(tmp, built, meta)

    return check


def write_checked(model: onnx.ModelProto, out: Path, validate: Validator | None = None,
                  progress: Callable[[str], None] = lambda msg: None) -> tuple[LintReport, object | None]:
    """Save beside ``out`` under a temporary name, run the full checker, the lint and
    ``validate(tmp_path)`` (a report with ``raise_if_failed``), then rename into place. Any failure
    leaves nothing on disk. Every exporter ends here."""
    with atomic_path(out) as tmp:
        onnx.save(model, str(tmp))
        progress("checking (onnx.checker full check, lint)")
        onnx.checker.check_model(str(tmp), full_check=True)
        lint = lint_model(onnx.load(str(tmp)))
        if not lint.ok:
            raise TscliError(f"exported graph failed the lint: {lint.first_error()}")
        report = validate(str(tmp)) if validate else None
        if report is not None:
            report.raise_if_failed()
    return lint, report
