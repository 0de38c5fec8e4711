"""``tscli train-digits``: a small ViT for scikit-learn's digits, trained on the CPU: a real trained model on
which token selection matters (tscli tune measures accuracy vs K on it).

32x32 input (the 8x8 digits upscaled 4x), patch 4 -> 64 patches, each about one original pixel;
most are background, which ATS should drop first. The recipe trains ``digits_ats`` with ATS in
the loop at a random K per batch (as the paper fine-tunes with ATS), so the model learns to work
from the sampled tokens; ``digits_dense`` is the same weights without ATS (ATS has no
parameters, so one checkpoint serves both).

    tscli train-digits -o digits.safetensors
    tscli export digits_ats --checkpoint digits.safetensors -o digits_ats.onnx
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..data.digits import digits_arrays
from ..errors import UsageError
from ..files import atomic_path, check_output_file
from ..models.catalog import get_config
from ..runtime.preprocess import preprocess


@dataclass
class TrainResult:
    path: Path
    epochs: int
    seconds: float
    train_accuracy: float
    val_accuracy: float  # digits_ats at K = max_k on the held-out split
    val_accuracy_k8: float  # ... and at K = 8
    history: list = field(default_factory=list)  # per epoch: {"epoch", "loss", "val_top1", "seconds"}


def _arrays(seed: int):
    """Digits preprocessed exactly as the runtime preprocesses the ImageFolder's PNGs."""
    import numpy as np

    cfg = get_config("digits_ats")
    meta = {"input_size": [3, cfg.img_size, cfg.img_size], "mean": cfg.mean, "std": cfg.std,
            "crop_pct": cfg.crop_pct, "interpolation": cfg.interpolation}
    tx, ty, vx, vy = digits_arrays(cfg.img_size, seed=seed)
    return preprocess(list(tx), meta), ty, preprocess(list(vx), meta), vy, np


def train_digits(output: str | Path, epochs: int = 12, seed: int = 0, batch: int = 16, lr: float = 1.5e-3,
                 progress: Callable[[str], None] = lambda m: None,
                 on_epoch: Callable[[dict], None] = lambda e: None) -> TrainResult:
    """Train digits_ats with K drawn from 8..max_k per batch (AdamW, one-cycle schedule, small
    batches); save a safetensors state_dict (temp file + rename). ``progress`` follows the steps,
    ``on_epoch`` gets each epoch's mean training loss and held-out top-1 at K = max_k."""
    output = check_output_file(output)
    if output.suffix != ".safetensors":  # checkpoints.py picks the loader by the suffix
        raise UsageError(f"--output {str(output)!r} must end in .safetensors (the format written)")

    import torch
    from safetensors.torch import save_file

    from ..models.factory import build_model

    start = time.perf_counter()
    tx, ty, vx, vy, np = _arrays(seed)
    torch.manual_seed(seed)
    cfg = get_config("digits_ats")
    model = build_model(cfg, seed=seed).module.train()
    x, y = torch.from_numpy(tx), torch.from_numpy(ty)
    full, vx_t, vy_t = torch.zeros(cfg.max_k_limit), torch.from_numpy(vx), torch.from_numpy(vy)
    steps_per_epoch = (len(x) + batch - 1) // batch
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch, pct_start=0.15)
    gen = torch.Generator().manual_seed(seed)
    history = []
    for epoch in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        losses = []
        for i in range(steps_per_epoch):
            if i % 10 == 0:
                progress(f"epoch {epoch + 1}/{epochs}: step {i + 1}/{steps_per_epoch}")
            idx = perm[i * batch:(i + 1) * batch]
            k = int(torch.randint(8, cfg.max_k_limit + 1, (1,), generator=gen))
            loss = torch.nn.functional.cross_entropy(model(x[idx], torch.zeros(k)), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
        model.eval()
        with torch.no_grad():
            val = float((model(vx_t, full).argmax(1) == vy_t).float().mean())
        model.train()
        history.append({"epoch": epoch + 1, "epochs": epochs, "loss": float(np.mean(losses)), "val_top1": val,
                        "seconds": time.perf_counter() - start})
        on_epoch(history[-1])
    model.eval()
    with torch.no_grad():
        train_acc = float((model(x, full).argmax(1) == y).float().mean())
        val_acc = float((model(vx_t, full).argmax(1) == vy_t).float().mean())
        val_acc_8 = float((model(vx_t, torch.zeros(8)).argmax(1) == vy_t).float().mean())
    with atomic_path(output) as tmp:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
    return TrainResult(output, epochs, time.perf_counter() - start, train_acc, val_acc, val_acc_8, history)
