"""Deploy-side runtime: load an exported file and run it. Imports no torch, timm or onnx.

    runner = tscli.runtime.load("deit_s_ats.onnx", k=96, threads=2)
    runner.predict(["cat.jpg"])          # labels, top-5, kept tokens per stage
    runner.infer(x)                      # float32 NCHW -> {"logits", "kept_counts", ...}
"""

from __future__ import annotations

from .runner import BACKENDS, Prediction, Runner, load

__all__ = ["BACKENDS", "Prediction", "Runner", "load"]
