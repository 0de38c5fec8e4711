"""Parity for reduced precision: an fp16 or INT8 file against its fp32 file and against PyTorch,
measured in decisions (docs/design.md, "Reduced precision").

A reduced-precision file is not expected to keep every token: its scores differ from fp32 by
far more than float32 rounding, so decisions near a tie flip and the images that carry them
legitimately end in other logits. What a user needs to know is how much changes, per K:

- kept-set overlap per stage: the Jaccard index |A & B| / |A | B| of the tokens each stage kept,
  averaged over images (and its minimum);
- the share of images whose kept sets changed at any stage, and, against PyTorch, how many of
  those first changed inside the tie band of this precision (tools/tie_band.py: the band scales
  with the precision of the activations) rather than outside it;
- top-1 agreement with the reference (and top-1 accuracy when the images are an ImageFolder);
- logit differences on the images whose decisions did not change (the purely numeric error).

The check fails (exit 1) only when a threshold given by the caller is missed (``min_agreement``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .. import contract as C
from ..errors import CheckFailed, UsageError
from ..models.factory import build_from_metadata
from ..runtime import load
from ..runtime.preprocess import preprocess
from . import tie_band
from .parity import first_divergence, torch_reference
from .tune import load_data

REFERENCES = ("fp32 file", "pytorch")


@dataclass
class DecisionRow:
    k: int | None
    reference: str  # "fp32 file" | "pytorch"
    images: int
    jaccard_mean: list[float]  # per ATS stage, over images
    jaccard_min: list[float]
    changed: int  # images whose kept sets differ at some stage
    changed_in_band: int | None  # of those, first divergence inside the tie band (pytorch only)
    top1_agree: int
    unchanged_max_abs_diff: float  # logits, images whose kept sets did not change (0 when there are none)
    unchanged_mean_abs_diff: float
    accuracy: float | None = None  # the file's top-1 against folder labels
    reference_accuracy: float | None = None
    nonfinite: int = 0  # images with a NaN or infinite logit

    @property
    def changed_share(self) -> float:
        return self.changed / max(self.images, 1)

    @property
    def agreement(self) -> float:
        return self.top1_agree / max(self.images, 1)


@dataclass
class PrecisionReport:
    file: str
    precision: str
    reference_file: str | None
    provider: str
    rows: list[DecisionRow] = field(default_factory=list)
    min_agreement: float | None = None
    max_unchanged_diff: float | None = None  # the conversion's own check (fp16: precision.FP16_TOLERANCE)

    @property
    def band_rule(self) -> str:
        return tie_band.ats_band_formula(self.precision)

    @property
    def ok(self) -> bool:
        return bool(self.rows) and not self.failure()

    def failure(self) -> str | None:
        """The first broken promise, in one line; None when every row keeps them."""
        for r in self.rows:
            where = f"K={r.k} against the {r.reference}"
            if r.nonfinite:
                return f"{r.nonfinite} of {r.images} images give NaN or infinite logits ({where})"
            if self.min_agreement is not None and r.agreement < self.min_agreement:
                return f"top-1 agreement {r.agreement:.4f} ({where}) is below --min-agreement {self.min_agreement}"
            if self.max_unchanged_diff is not None and r.unchanged_max_abs_diff > self.max_unchanged_diff:
                return (f"max |logit diff| {r.unchanged_max_abs_diff:.2e} on images with unchanged decisions ({where}) "
                        f"is above the {self.precision} tolerance {self.max_unchanged_diff:.0e}")
        return None

    def to_dict(self) -> dict:
        rows = [asdict(r) | {"changed_share": r.changed_share, "top1_agreement": r.agreement} for r in self.rows]
        return {"schema": "tscli.precision_parity/1", "file": self.file, "precision": self.precision,
                "reference_file": self.reference_file, "provider": self.provider, "tie_band": self.band_rule,
                "min_agreement": self.min_agreement, "max_unchanged_diff": self.max_unchanged_diff, "ok": self.ok,
                "rows": rows}

    def raise_if_failed(self) -> None:
        if not self.rows:
            raise CheckFailed("precision parity compared no images")
        problem = self.failure()
        if problem:
            raise CheckFailed(f"{self.precision} check failed: {problem}")


def _sets(positions: np.ndarray) -> list[list[frozenset]]:
    """[B, S, K+1] kept positions -> per image, per stage, the set kept (-1 = padding)."""
    return [[frozenset(int(p) for p in stage if p >= 0) for stage in image] for image in positions]


class _Acc:
    """Per-image statistics of one (K, reference), accumulated over batches."""

    def __init__(self):
        self.jaccard, self.changed, self.in_band, self.top1, self.diffs, self.correct, self.ref_correct = \
            [], [], [], [], [], [], []
        self.nonfinite = 0

    def add(self, ref_logits, ref_positions, got: dict, labels, in_band=None):
        logits = got[C.OUTPUT_LOGITS].astype(np.float64)
        self.nonfinite += int((~np.isfinite(logits).all(-1)).sum())
        top1 = logits.argmax(-1) == ref_logits.argmax(-1)
        self.top1.extend(top1.tolist())
        if labels is not None:
            self.correct.extend((logits.argmax(-1) == labels).tolist())
            self.ref_correct.extend((ref_logits.argmax(-1) == labels).tolist())
        if ref_positions is None:  # dense: every image is "unchanged"
            self.changed.extend([False] * len(logits))
            self.diffs.extend(np.abs(logits - ref_logits).max(-1).tolist())
            return
        for i, (mine, theirs) in enumerate(zip(_sets(got[C.OUTPUT_POSITIONS]), _sets(ref_positions))):
            jac = [len(a & b) / max(len(a | b), 1) for a, b in zip(mine, theirs)]
            self.jaccard.append(jac)
            changed = any(a != b for a, b in zip(mine, theirs))
            self.changed.append(changed)
            if changed and in_band is not None:
                self.in_band.append(in_band(i))
            if not changed:
                self.diffs.append(float(np.abs(logits[i] - ref_logits[i]).max()))

    def row(self, k, reference: str) -> DecisionRow:
        jac = np.asarray(self.jaccard) if self.jaccard else np.ones((len(self.top1), 0))
        diffs = np.asarray(self.diffs) if self.diffs else np.zeros(0)
        return DecisionRow(
            k, reference, len(self.top1), [float(v) for v in jac.mean(0)] if len(jac) else [],
            [float(v) for v in jac.min(0)] if len(jac) else [], int(sum(self.changed)),
            int(sum(self.in_band)) if reference == "pytorch" else None, int(sum(self.top1)),
            float(diffs.max()) if diffs.size else 0.0, float(diffs.mean()) if diffs.size else 0.0,
            float(np.mean(self.correct)) if self.correct else None,
            float(np.mean(self.ref_correct)) if self.ref_correct else None, self.nonfinite)


def _batches(data: Path | None, meta: dict, n: int, batch: int, labels: str):
    """(preprocessed batch, label indices or None) over ``n`` images of ``data`` (an ImageFolder
    gives labels), or scikit-image's samples when no folder is given."""
    if data is None:
        from ..data.samples import sample_images

        samples = sample_images(n)
        for lo in range(0, len(samples), batch):
            yield preprocess([a for _, a in samples[lo:lo + batch]], meta), None
        return
    files, y, _ = load_data(data, labels, meta, n)
    for lo in range(0, len(files), batch):
        yield preprocess([str(p) for p in files[lo:lo + batch]], meta), None if y is None else y[lo:lo + batch]


def precision_parity(path: str | Path, reference: str | Path | None = None, images: str | Path | None = None,
                     n: int = 64, ks: list[int] | None = None, threads: int | None = None,
                     checkpoint: str | None = None, min_agreement: float | None = None, labels: str = "auto",
                     batch: int = 32, torch_reference_too: bool = True, max_unchanged_diff: float | None = None,
                     progress=lambda msg: None) -> PrecisionReport:
    """Decision statistics of the reduced-precision ``path`` per K against the fp32 file
    ``reference`` (when given) and against PyTorch (rebuilt from the metadata)."""
    if n < 1:
        raise UsageError(f"--n {n} is invalid; give at least 1 image")
    if min_agreement is not None and not 0.0 <= min_agreement <= 1.0:
        raise UsageError(f"--min-agreement {min_agreement} is out of range; valid: 0..1 (a share of images)")
    probe = load(path, threads=threads)
    meta = probe.meta
    precision = meta.get("precision", "fp32")
    if ks is None:
        ks = [None] if probe.k is None else C.default_ks(probe.k)
    runners = {k: probe if k == probe.k else load(path, k=k, threads=threads) for k in ks}
    refs = {}
    if reference is not None:
        first = load(reference, threads=threads)
        _check_same_model(meta, first.meta, str(reference))
        refs = {k: first if k == first.k else load(reference, k=k, threads=threads) for k in ks}
    built = build_from_metadata(meta, checkpoint) if torch_reference_too else None
    accs = {(k, r): _Acc() for k in ks for r in REFERENCES}
    done = 0
    for x, y in _batches(Path(images) if images else None, meta, n, batch, labels):
        done += len(x)
        progress(f"images {done}")
        for k in ks:
            got = runners[k].infer(x)
            if refs:
                theirs = refs[k].infer(x)
                accs[(k, "fp32 file")].add(theirs[C.OUTPUT_LOGITS].astype(np.float64), theirs.get(C.OUTPUT_POSITIONS),
                                           got, y)
            if built is not None:
                ref = torch_reference(built, x, k, "padded")
                positions = (np.stack([r.positions.numpy() for r in ref.records], 1)
                             if ref.records is not None else None)

                def in_band(i, ref=ref, got=got):
                    div = first_divergence(ref, got, i, "", precision)
                    return bool(div is not None and div.near_tie)

                accs[(k, "pytorch")].add(ref.logits.astype(np.float64), positions, got, y,
                                         in_band if positions is not None else None)
    rows = [acc.row(k, r) for (k, r), acc in accs.items() if acc.top1]
    return PrecisionReport(str(path), precision, str(reference) if reference else None, probe.provider, rows,
                           min_agreement, max_unchanged_diff)


def _check_same_model(meta: dict, ref: dict, name: str) -> None:
    keys = ("model", "weights", "max_k", "stages", "scheme")
    if ref.get("precision", "fp32") != "fp32" or any(meta.get(key) != ref.get(key) for key in keys):
        raise UsageError(f"--reference {name!r} is not the fp32 file of this model (it is {ref.get('model')!r}, "
                         f"precision {ref.get('precision', 'fp32')}, weights {ref.get('weights')!r})")
