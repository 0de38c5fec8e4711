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
WASH = 128.0  # ... blended with mid-grey: dark and bright patches alike go flat, so the kept ones stand out
OUTLINE = "#ffd400"  # the kept region's outline, drawn over the panel (the panel's pixels stay as computed)
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


def kept_mask(positions: list[int], meta: dict) -> np.ndarray:
    """A stage's kept token positions -> bool [rows, cols] over the patch grid."""
    rows, cols, _ = patch_grid(meta)
    keep = np.zeros(rows * cols, bool)
    keep[kept_patches(positions)] = True
    return keep.reshape(rows, cols)


def token_panels(view: np.ndarray, stage_positions: list[list[int]], meta: dict) -> list[np.ndarray]:
    """One panel per ATS stage: the view with that stage's dropped patches washed out."""
    p = patch_grid(meta)[2]
    return [wash(view, kept_mask(positions, meta), p) for positions in stage_positions]


def stop_panels(view: np.ndarray, kept_masks: np.ndarray, meta: dict) -> list[np.ndarray]:
    """One panel per DoViT decision layer: the tokens stopped by then washed out."""
    rows, cols, p = patch_grid(meta)
    return [wash(view, np.asarray(active, bool).reshape(rows, cols), p) for active in kept_masks]


def _figure(panels: list[np.ndarray], titles: list[str], suptitle: str, columns: int, width: float,
            outlines: list | None = None):
    """Panels in a grid; ``outlines``: per panel a bool [rows, cols] patch mask whose border is
    drawn (None: no outline)."""
    plt = pyplot()
    columns = max(1, min(columns, len(panels)))
    rows = math.ceil(len(panels) / columns)
    aspect = panels[0].shape[0] / panels[0].shape[1]
    fig, axes = plt.subplots(rows, columns, figsize=(columns * width, rows * (width * aspect + 0.5) + 0.4),
                             dpi=110, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    outlines = outlines or [None] * len(panels)
    for ax, panel, title, keep in zip(axes.flat, panels, titles, outlines):
        ax.imshow(panel, interpolation="nearest")
        ax.set_title(title, fontsize=8)
        if keep is not None and keep.any() and not keep.all():
            patch = panel.shape[0] // keep.shape[0]
            # padded by a pixel of "not kept", so regions on the image's edge get a closed outline
            pixels = np.pad(np.kron(keep.astype(np.float32), np.ones((patch, patch), np.float32)), 1)
            h, w = pixels.shape
            ax.contour(np.arange(-1, w - 1), np.arange(-1, h - 1), pixels, levels=[0.5], colors=OUTLINE,
                       linewidths=0.9)
            ax.set_xlim(-0.5, panel.shape[1] - 0.5)
            ax.set_ylim(panel.shape[0] - 0.5, -0.5)
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
    head = (f"{Path(pred.source).name}: {pred.label} ({pred.score:.3f}), {meta['model']} K={k}"
            + ("\nRANDOM weights: these kept tokens are noise" if random else ""))
    folder = Path(folder)
    png, js = folder / f"{stem}_tokens.png", folder / f"{stem}_tokens.json"
    outlines = [None] + [kept_mask(pos, meta) for pos in pred.kept_positions]
    fig, _ = _figure(panels, titles, head, 5, 2.3, outlines)
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
    outlines = [np.asarray(m, bool).reshape(rows, cols) for m in masks] + [None]
    fig, axes = _figure(panels, titles, head, 2, 4.2, outlines)
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
