"""`tscli run`: images through an exported model (classification or segmentation)."""

from __future__ import annotations

import warnings
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
    err,
    out,
    parse_k_value,
    parse_rate,
    positive,
    print_caveat,
    print_json,
    progress_bar,
    table,
)


def note(message: str) -> None:
    """A remark for the user on stderr (stdout stays the table or the JSON)."""
    err.print(f"note: {message}", markup=False, highlight=False, soft_wrap=True)


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
    explain: Optional[Path] = typer.Option(None, "--explain", help="Folder for token maps: NAME_tokens.png (ATS: kept tokens per stage) "
                                           "or NAME_stops.png (DoViT: stopped tokens per decision layer), each with a JSON of the positions drawn."),
):
    """Run images through an exported model: predictions and kept tokens per stage."""
    from ..runtime import load
    from ..runtime.images import images_in
    from ..runtime.runner import describe_weights
    from ..runtime.segmentation import output_stems

    positive(topk, "--topk")
    positive(batch, "--batch")
    files: list[Path] = []
    for item in images:
        files.extend(images_in(item) if item.is_dir() else [item])
    runner = load(file, k=parse_k_value(k), backend=backend, threads=threads, xi=xi, profiles=profiles, plugins=plugins,
                  rate=parse_rate(rate))
    print_caveat(runner)
    if explain is not None:
        explain = _explain_folder(runner, explain)
    stems = output_stems(files)
    if C.is_segmentation(runner.meta):
        _run_seg(runner, files, out_dir, as_json, explain, stems)
    else:
        _run_classification(runner, files, topk, batch, explain, stems, as_json)
    # Said after the work, so that a bad image stays a one-line error.
    if runner.random_weights:
        note(f"{Path(file).name}: weights {describe_weights(runner.meta)}")
    if runner.profile is not None:
        _say_profile(runner, file, profiles)


def _run_classification(runner, files: list[Path], topk: int, batch: int, explain, stems: dict, as_json: bool) -> None:
    from ..runtime.runner import RandomWeightsWarning, describe_weights

    preds = []
    for chunk in progress_bar(files, "images", batch):
        with warnings.catch_warnings():  # said once, as a note after the run
            warnings.simplefilter("ignore", RandomWeightsWarning)
            got = runner.predict([str(f) for f in chunk], topk=topk)
        if explain is not None:
            from ..tools.explain import draw_tokens

            for f, p in zip(chunk, got):
                draw_tokens(str(f), p, runner.meta, runner.k, explain, stems[f])
        preds += got
    if explain is not None:
        note(f"token maps: {len(preds)} x NAME_tokens.png (+ .json) in {explain}")
    if as_json:
        return print_json({"k": runner.k, "rate": runner.rate, "provider": runner.provider,
                           "weights": describe_weights(runner.meta), "random_weights": runner.random_weights,
                           "predictions": [p.__dict__ for p in preds]})
    setting = f"rate={runner.rate:g}" if runner.rate is not None else f"K={runner.k}"
    t = table("image", "label", "prob", f"top-{topk}", "kept per stage (K'+1)" if runner.rate is None else "kept per stage",
              title=f"{runner.meta['model']}  {setting}  provider={runner.provider}")
    for p in preds:
        t.add_row(Path(p.source).name, p.label, f"{p.score:.3f}", " ".join(label for _, label, _ in p.top5),
                  " ".join(map(str, p.kept_counts)) or "-")
    out.print(t)


def _explain_folder(runner, folder: Path) -> Path:
    """--explain needs a file with kept tokens, matplotlib and a writable folder (known before any image runs)."""
    from ..tools.plots import output_folder, pyplot

    meta = runner.meta
    if meta.get("family") not in (C.FAMILY_ATS, "dovit"):
        raise UsageError(f"--explain draws the tokens an ATS or DoViT file kept; {meta.get('model')} ({meta.get('family')}) "
                         "keeps every token")
    pyplot()
    return output_folder(folder, "--explain")


def _say_profile(runner, file: Path, profiles: Optional[Path]) -> None:
    """--k auto: which device profile gave K, and why that K was chosen there."""
    from ..runtime.device_profiles import default_store, describe, describe_choice

    p = runner.profile
    store = profiles or default_store(file)
    note(f"K={runner.k} from the device profile in {store} ({describe(p['fingerprint'])}, batch {p.get('batch')}, "
         f"tuned {p.get('created', '?')}): {describe_choice(p)}")


def _run_seg(runner, files: list[Path], out_dir: Path, as_json: bool, explain: Optional[Path], stems: dict) -> None:
    from ..runtime.runner import describe_weights
    from ..runtime.segmentation import write_outputs

    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--out-dir {str(out_dir)!r} is a file; give a folder (it is created if missing)")
    n_classes = int(runner.meta["num_classes"])
    rows, cropped, saturated = [], [], []
    for f in progress_bar(files, "images", 1):  # one image at a time: segmentation inputs are large
        seg = runner.segment([str(f[0])])[0]
        classes, overlay = write_outputs(seg, out_dir, n_classes, stems[f[0]])
        stops = None
        if explain is not None and seg.kept_masks is not None:
            from ..tools.explain import draw_stops

            stops = str(draw_stops(seg, runner.meta, runner.xi, explain, stems[f[0]])[0])
        cropped += [f"{Path(seg.source).name} ({seg.source_size[0]}x{seg.source_size[1]})"] if seg.cropped else []
        saturated += [Path(seg.source).name] if seg.saturated else []
        rows.append({"image": seg.source, "classes_png": str(classes), "overlay_png": str(overlay),
                     "kept_counts": seg.kept_counts, "kept_fraction": seg.kept_fraction, "saturated": seg.saturated,
                     "gflops": seg.gflops, "cropped": seg.cropped, "stops_png": stops})
    if explain is not None:
        note(f"stop maps: {len(rows)} x NAME_stops.png (+ .json) in {explain}")
    _, h, w = runner.meta["input_size"]
    if cropped:
        note(f"{len(cropped)} of {len(rows)} images were centre-cropped to the model's {w}x{h} input (their aspect "
             f"differs; resized to cover it first), so their edges were not segmented: {', '.join(cropped[:5])}"
             + (" ..." if len(cropped) > 5 else ""))
    if saturated:
        note(f"{len(saturated)} of {len(rows)} images hit the capacity C={runner.meta.get('max_keep')}: more tokens "
             f"wanted to go on than C allows, so some were stopped below xi={runner.xi}; raise --max-keep (export again) "
             f"for them: {', '.join(saturated[:5])}" + (" ..." if len(saturated) > 5 else ""))
    if as_json:
        return print_json({"xi": runner.xi, "provider": runner.provider, "weights": describe_weights(runner.meta),
                           "images": rows})
    t = table("image", "kept per decision", "kept frac", "saturated", "GFLOPs (token-pass)", "overlay",
              title=f"{runner.meta['model']}  xi={runner.xi}  C={runner.meta.get('max_keep')}  provider={runner.provider}")
    for r in rows:
        t.add_row(Path(r["image"]).name, " ".join(map(str, r["kept_counts"])) or "-", f"{r['kept_fraction']:.3f}",
                  "yes" if r["saturated"] else "no", "-" if r["gflops"] is None else f"{r['gflops']:.2f}", r["overlay_png"])
    out.print(t)
