"""Token maps (``tscli run FILE IMAGES --explain DIR``): which tokens each stage kept, drawn on the
image as the network saw it (resized and centre-cropped), as in the ATS paper's figure 2.

- ATS: ``NAME_tokens.png``, a grid of panels: the input, then one per stage, titled with its block
  and K' (the patch tokens it kept); dropped patches are washed out.
- DoViT: ``NAME_stops.png``, one panel per decision layer (the tokens stopped so far washed out:
  they skip the remaining blocks and go straight to the decoder), then the class map with a legend.

Beside each PNG, a JSON (schema ``tscli.tokens/1`` / ``tscli.stops/1``) holds the positions drawn.
The panels are numpy arrays made from those positions (token_panels, stop_panels), which is what
the tests read back; matplotlib only lays them out and titles them.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .. import contract as C
from ..runtime.preprocess import preprocess
from ..runtime.runner import Prediction, describe_weights
from ..runtime.segmentation import Segmentation, input_view, overlay, palette
from .plots import pyplot, save_figure, write_json

KEEP_ALPHA = 0.25  # a dropped patch keeps this much of its pixels ...
WASH = 235.0  # ... blended with this light grey, so that even black patches show as dropped
TOKEN_SCHEMA = "tscli.tokens/1"
STOP_SCHEMA = "tscli.stops/1"


def patch_grid(meta: dict) -> tuple[int, int, int]:
    """-> (rows, columns, patch size) of the model's patch grid."""
    _, height, width = meta["input_size"]
    p = int(meta["patch_size"])
    return height // p, width // p, p


def kept_patches(positions: list[int]) -> list[int]:
    """Token positions (0 = CLS, 1 + patch index) -> the patch indices among them."""
    return [int(p) - 1 for p in positions if p >= 1]


def wash(view: np.ndarray, keep: np.ndarray, patch: int) -> np.ndarray:
    """view uint8 [H, W, 3], keep bool [rows, cols] -> the view with the patches not kept washed out."""
    pixels = np.repeat(np.repeat(keep, patch, axis=0), patch, axis=1)[..., None]
    faded = np.rint(view.astype(np.float32) * KEEP_ALPHA + (1 - KEEP_ALPHA) * WASH).astype(np.uint8)
    return np.where(pixels, view, faded)


def token_panels(view: np.ndarray, stage_positions: list[list[int]], meta: dict) -> list[np.ndarray]:
    """One panel per ATS stage: the view with that stage's dropped patches washed out."""
    rows, cols, p = patch_grid(meta)
    panels = []
    for positions in stage_positions:
        keep = np.zeros(rows * cols, bool)
        keep[kept_patches(positions)] = True
        panels.append(wash(view, keep.reshape(rows, cols), p))
    return panels


def stop_panels(view: np.ndarray, kept_masks: np.ndarray, meta: dict) -> list[np.ndarray]:
    """One panel per DoViT decision layer: the tokens stopped by then washed out."""
    rows, cols, p = patch_grid(meta)
    return [wash(view, np.asarray(active, bool).reshape(rows, cols), p) for active in kept_masks]


def _figure(panels: list[np.ndarray], titles: list[str], suptitle: str, columns: int, width: float):
    plt = pyplot()
    columns = max(1, min(columns, len(panels)))
    rows = math.ceil(len(panels) / columns)
    aspect = panels[0].shape[0] / panels[0].shape[1]
    fig, axes = plt.subplots(rows, columns, figsize=(columns * width, rows * (width * aspect + 0.55) + 0.5),
                             dpi=110, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, panel, title in zip(axes.flat, panels, titles):
        ax.imshow(panel, interpolation="nearest")
        ax.set_title(title, fontsize=8)
    fig.suptitle(suptitle, fontsize=9)
    fig.tight_layout()
    return fig, axes


def draw_tokens(image, pred: Prediction, meta: dict, k: int | None, folder: str | Path, stem: str) -> tuple[Path, Path]:
    """NAME_tokens.png and NAME_tokens.json for one ATS prediction (its kept positions)."""
    view = input_view(preprocess([image], meta)[0], meta)
    rows, cols, p = patch_grid(meta)
    blocks = list(meta.get("stages") or [])
    panels = [view] + token_panels(view, pred.kept_positions, meta)
    kept = [kept_patches(pos) for pos in pred.kept_positions]
    titles = [f"input: {rows * cols} patches"] + [f"stage {i + 1} (block {blocks[i] if i < len(blocks) else '?'})\n"
                                                 f"K'={len(patches)}" for i, patches in enumerate(kept)]
    random = C.random_seed(meta.get("weights")) is not None
    head = (f"{Path(pred.source).name}: {pred.label} ({pred.score:.2f}), {meta['model']} K={k}"
            + ("\nRANDOM weights: these kept tokens are noise" if random else ""))
    folder = Path(folder)
    png, js = folder / f"{stem}_tokens.png", folder / f"{stem}_tokens.json"
    fig, _ = _figure(panels, titles, head, 5, 2.3)
    save_figure(fig, png)
    write_json(js, {
        "schema": TOKEN_SCHEMA, "image": pred.source, "png": png.name, "model": meta.get("model"), "k": k,
        "weights": describe_weights(meta), "label": pred.label, "score": pred.score, "grid": [rows, cols],
        "patch_size": p, "positions": "token positions: 0 = CLS, 1 + row * grid[1] + col = the patch at (row, col)",
        "stages": [{"stage": i + 1, "block": blocks[i] if i < len(blocks) else None, "k_prime": len(kept[i]),
                    "kept_positions": list(pos)} for i, pos in enumerate(pred.kept_positions)],
    })
    return png, js


def draw_stops(seg: Segmentation, meta: dict, xi: float | None, folder: str | Path, stem: str) -> tuple[Path, Path]:
    """NAME_stops.png and NAME_stops.json for one DoViT segmentation (its kept masks)."""
    rows, cols, p = patch_grid(meta)
    blocks = list(meta.get("stages") or [])
    n_classes = int(meta["num_classes"])
    names = meta.get("label_names") or [f"class {i}" for i in range(n_classes)]
    masks = seg.kept_masks if seg.kept_masks is not None else np.ones((0, rows * cols), bool)
    active = [np.flatnonzero(m).tolist() for m in masks]
    titles = [f"decision {d + 1} (after block {blocks[d] if d < len(blocks) else '?'}): "
              f"{rows * cols - len(a)} stopped, {len(a)} go on" for d, a in enumerate(active)] + ["classes"]
    panels = stop_panels(seg.view, masks, meta) + [overlay(seg.view, seg.class_map, n_classes)]
    random = C.random_seed(meta.get("weights")) is not None
    head = (f"{Path(seg.source).name}: {meta['model']} xi={xi} C={meta.get('max_keep')}"
            + (" (saturated: raise --max-keep)" if seg.saturated else "")
            + ("\nRANDOM weights: these stops are noise" if random else ""))
    fig, axes = _figure(panels, titles, head, 2, 4.2)
    present = np.bincount(seg.class_map.ravel(), minlength=n_classes)
    order = [int(c) for c in np.argsort(-present, kind="stable") if present[c] > 0][:12]
    colours = palette(n_classes) / 255.0
    plt = pyplot()
    handles = [plt.Rectangle((0, 0), 1, 1, color=colours[c], label=str(names[c])) for c in order]
    axes.flat[len(panels) - 1].legend(handles=handles, loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=7,
                                      frameon=False)
    fig.tight_layout()
    folder = Path(folder)
    png, js = folder / f"{stem}_stops.png", folder / f"{stem}_stops.json"
    save_figure(fig, png)
    write_json(js, {
        "schema": STOP_SCHEMA, "image": seg.source, "png": png.name, "model": meta.get("model"), "xi": xi,
        "capacity": meta.get("max_keep"), "saturated": seg.saturated, "cropped": seg.cropped,
        "weights": describe_weights(meta), "grid": [rows, cols], "patch_size": p,
        "positions": "patch index = row * grid[1] + col",
        "decisions": [{"decision": d + 1, "block": blocks[d] if d < len(blocks) else None, "active": len(a),
                       "stopped": rows * cols - len(a), "active_patches": a} for d, a in enumerate(active)],
        "classes": [{"index": c, "name": str(names[c]), "pixels": int(present[c])} for c in order],
    })
    return png, js
