"""A tscli file on Triton Inference Server: the request handling that ``tscli serve`` (PyTriton) and
the Python-backend repositories of ``tscli triton-repo`` share.

This file is also the Python backend's ``model.py``: ``tscli triton-repo --backend python`` copies
it into MODEL/1/ next to the .onnx file, and Triton's stub imports it as a top-level module (so it
imports tscli by absolute name, and tscli must be installed in the stub's Python). The model's
``config.pbtxt`` parameters say which file, K, xi and threads to load.

K (and DoViT's xi) is fixed when the server loads the model, not sent per request: with dynamic
batching Triton gives every input a batch dimension, so a per-request K would split batches and
a [K] input cannot be batched at all (README, "Serving").
"""

from __future__ import annotations

import json
import os

import numpy as np

from tscli import contract as C
from tscli.errors import TscliError, first_line
from tscli.runtime.runner import Runner, load

# config.pbtxt parameters of a Python-backend model (tools/triton_repo.py writes them)
PARAM_FILE = "tscli.file"
PARAM_K = "tscli.k"
PARAM_XI = "tscli.xi"
PARAM_THREADS = "tscli.threads"


def file_outputs(runner: Runner) -> list[str]:
    """The outputs the file itself has (the runner adds an empty kept_counts to dense files,
    and Triton refuses a zero-sized dimension)."""
    return list(runner.backend.output_names)


def output_specs(runner: Runner) -> dict[str, tuple[list[int], np.dtype]]:
    """{output: (dims without the batch dimension, dtype)} from one probe run on a zero image
    (which also warms the session up). Rank-1 outputs (DoViT's saturated [B]) have dims []."""
    c, h, w = runner.meta["input_size"]
    out = runner.infer(np.zeros((1, c, h, w), np.float32))
    return {n: (list(out[n].shape[1:]), to_triton(out[n]).dtype) for n in file_outputs(runner)}


def to_triton(array: np.ndarray) -> np.ndarray:
    """ONNX Runtime returns int64 outputs as numpy.longlong (dtype char 'q'), which PyTriton's
    strict check and the Python backend's type table do not accept as int64 (char 'l' on Linux);
    the same bytes, viewed as int64."""
    if array.dtype == np.int64 and array.dtype.char != np.dtype(np.int64).char:
        return array.view(np.int64)
    return np.ascontiguousarray(array)


def run_requests(runner: Runner, images: list[np.ndarray], names: list[str]) -> list[dict[str, np.ndarray]]:
    """The requests of one dynamic batch as one run: concatenated, inferred once, split again
    (each request may itself hold several images). Raises the runner's error for the batch."""
    batch = images[0] if len(images) == 1 else np.concatenate(images)
    out = runner.infer(batch)
    results, start = [], 0
    for x in images:
        stop = start + len(x)
        results.append({name: to_triton(out[name][start:stop]) for name in names})
        start = stop
    return results


class TritonPythonModel:
    """Triton Python backend: one runner per model instance, K fixed at load."""

    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        params = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
        folder = os.path.join(args["model_repository"], args["model_version"])
        try:
            self.runner = load(os.path.join(folder, params[PARAM_FILE]),
                               k=int(params[PARAM_K]) if PARAM_K in params else None,
                               xi=float(params[PARAM_XI]) if PARAM_XI in params else None,
                               threads=int(params[PARAM_THREADS]) if PARAM_THREADS in params else None)
        except (KeyError, ValueError, TscliError) as exc:  # Triton shows this line as the load failure
            raise RuntimeError(f"tscli model {config.get('name')!r}: {first_line(exc)}") from None
        self.names = [o["name"] for o in config["output"]]

    def execute(self, requests: list) -> list:
        import triton_python_backend_utils as pb  # exists only inside Triton's Python-backend stub

        images = [pb.get_input_tensor_by_name(r, C.INPUT_IMAGES).as_numpy() for r in requests]
        try:
            results = run_requests(self.runner, images, self.names)
        except TscliError:
            # One bad request (NaN pixels) must not fail its batch mates: each on its own.
            results = [self._one(x) for x in images]
        responses = []
        for result in results:
            if isinstance(result, str):
                responses.append(pb.InferenceResponse(output_tensors=[], error=pb.TritonError(result)))
            else:
                responses.append(pb.InferenceResponse(output_tensors=[pb.Tensor(n, v) for n, v in result.items()]))
        return responses

    def _one(self, x: np.ndarray) -> dict[str, np.ndarray] | str:
        try:
            return run_requests(self.runner, [x], self.names)[0]
        except TscliError as exc:
            return first_line(exc)
