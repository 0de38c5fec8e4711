"""`tscli run`: images through an exported model (classification or segmentation)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from .. import contract as C
from ..errors import UsageError
from .common import (
    Backend,
    Batch,
    JsonFlag,
    Plugins,
    Threads,
    out,
    parse_k_value,
    parse_rate,
    positive,
    print_caveat,
    print_json,
    progress_bar,
    table,
)


def run(
    file: Path = typer.Argument(..., help="Exported .onnx file (or a TensorRT engine with --backend trt)."),
    images: List[Path] = typer.Argument(..., help="Image files or folders."),
    k: Optional[str] = typer.Option(None, "--k", help="Points per ATS stage (1..max_k), or 'auto' (from this device's profile, see `tscli tune`). Default: max_k."),
    profiles: Optional[Path] = typer.Option(None, "--profiles", help="Profile store for --k auto (default: MODEL.profiles.json next to the file)."),
    topk: int = typer.Option(5, "--topk", help="How many classes to show (>= 1)."),
    threads: Threads = None,
    as_json: JsonFlag = False,
    backend: Backend = "ort",
    xi: Optional[float] = typer.Option(None, "--xi", help="DoViT threshold 0..1 (default: the file's export value)."),
    out_dir: Path = typer.Option(Path("seg_out"), "--out-dir", help="Segmentation: where class maps and overlays go."),
    plugins: Plugins = None,
    batch: Batch = 8,
    rate: Optional[str] = typer.Option(None, "--rate", help="DynamicViT / EViT keep rate (0 < rate <= max_rate). Default: the file's."),
):
    """Run images through an exported model: predictions and kept tokens per stage."""
    from ..runtime import load
    from ..runtime.images import images_in

    positive(topk, "--topk")
    positive(batch, "--batch")
    files: list[Path] = []
    for item in images:
        files.extend(images_in(item) if item.is_dir() else [item])
    runner = load(file, k=parse_k_value(k), backend=backend, threads=threads, xi=xi, profiles=profiles, plugins=plugins,
                  rate=parse_rate(rate))
    print_caveat(runner)
    if C.is_segmentation(runner.meta):
        return _run_seg(runner, files, out_dir, as_json)
    preds = []
    for chunk in progress_bar(files, "images", batch):
        preds += runner.predict([str(f) for f in chunk], topk=topk)
    if as_json:
        return print_json({"k": runner.k, "rate": runner.rate, "provider": runner.provider,
                           "predictions": [p.__dict__ for p in preds]})
    setting = f"rate={runner.rate:g}" if runner.rate is not None else f"K={runner.k}"
    t = table("image", "label", "prob", f"top-{topk}", "kept per stage (K'+1)" if runner.rate is None else "kept per stage",
              title=f"{runner.meta['model']}  {setting}  provider={runner.provider}")
    for p in preds:
        t.add_row(Path(p.source).name, p.label, f"{p.score:.3f}", " ".join(label for _, label, _ in p.top5),
                  " ".join(map(str, p.kept_counts)) or "-")
    out.print(t)


def _run_seg(runner, files: list[Path], out_dir: Path, as_json: bool) -> None:
    from ..runtime.segmentation import output_stems, write_outputs

    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--out-dir {str(out_dir)!r} is a file; give a folder (it is created if missing)")
    n_classes = int(runner.meta["num_classes"])
    stems = output_stems(files)
    rows = []
    for f in progress_bar(files, "images", 1):  # one image at a time: segmentation inputs are large
        seg = runner.segment([str(f[0])])[0]
        classes, overlay = write_outputs(seg, out_dir, n_classes, stems[f[0]])
        rows.append({"image": seg.source, "classes_png": str(classes), "overlay_png": str(overlay),
                     "kept_counts": seg.kept_counts, "kept_fraction": seg.kept_fraction, "saturated": seg.saturated,
                     "gflops": seg.gflops})
    if as_json:
        return print_json({"xi": runner.xi, "provider": runner.provider, "images": rows})
    t = table("image", "kept per decision", "kept frac", "saturated", "GFLOPs (token-pass)", "overlay",
              title=f"{runner.meta['model']}  xi={runner.xi}  C={runner.meta.get('max_keep')}  provider={runner.provider}")
    for r in rows:
        t.add_row(Path(r["image"]).name, " ".join(map(str, r["kept_counts"])) or "-", f"{r['kept_fraction']:.3f}",
                  "yes" if r["saturated"] else "no", "-" if r["gflops"] is None else f"{r['gflops']:.2f}", r["overlay_png"])
    out.print(t)
