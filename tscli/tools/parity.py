"""ATS / ToMe / dense parity: a backend (ONNX Runtime by default) against the PyTorch model a
file was exported from. Used right after export (``validate_export``) and by ``tscli parity``.

Per image: max |logit diff|, cosine, top-1 agreement, per-stage kept counts and kept sets (ToMe:
the groups of merged tokens after every block). Kept sets are discrete decisions on floats: when
an image's sets differ, the first stage where they differ is re-decided in float64 from the
reference's scores, and the image is a near-tie when every differing token was in a decision
inside that stage's tie band (tools/tie_band.py, docs/design.md "Tie bands"); ToMe: when the
image's smallest matching margin is inside the score-order band. A near-tie's logits (which then
legitimately differ) are left out of the logit statistics. Any other difference is a mismatch
and fails the check.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from .. import contract as C
from ..data.samples import sample_images
from ..errors import CheckFailed, UsageError
from ..models.factory import BuiltModel, build_from_metadata
from ..runtime import load
from ..runtime.images import images_in
from ..runtime.preprocess import preprocess
from . import tie_band

LOGIT_ATOL = 1e-4


@dataclass
class Divergence:
    """An image whose kept sets differ from the reference's, where they first differ."""

    image: int
    source: str
    stage: int  # 0-based index of the first ATS stage whose kept set differs
    margin: float  # the largest contest margin among the differing tokens (float64 re-decision)
    band: float  # the tie band of that margin (tools/tie_band.py)
    near_tie: bool  # margin <= band: a correct implementation may decide either way
    unit: str = "stage"  # "stage" (ATS) or "decision layer" (DoViT)
    kind: str = "point decision"  # what the margin measures: "point decision", "score order", "xi", ...

    def describe(self) -> str:
        verdict = "near-tie" if self.near_tie else "MISMATCH"
        return (f"{self.source}: kept tokens first differ at {self.unit} {self.stage + 1}, {self.kind} margin "
                f"{self.margin:.1e} {'<=' if self.near_tie else '>'} band {self.band:.1e}: {verdict}")


@dataclass
class ParityRow:
    k: int | None
    execution: str
    images: int
    max_abs_diff: float
    min_cosine: float
    top1_agree: int
    counts_agree: int
    sets_agree: int
    near_ties: int
    ok: bool
    divergences: list[Divergence] = field(default_factory=list)
    rate: float | None = None  # DynamicViT / EViT files: the keep rate checked (k is None then)

    @property
    def setting(self) -> str:
        return f"rate={self.rate:g}" if self.rate is not None else f"K={self.k}"


@dataclass
class ParityReport:
    backend: str
    provider: str
    tolerance: float = LOGIT_ATOL
    rows: list[ParityRow] = field(default_factory=list)
    precision: str = "fp32"

    @property
    def ok(self) -> bool:
        return bool(self.rows) and all(r.ok for r in self.rows)

    @property
    def band_rule(self) -> str:
        return tie_band.ats_band_formula(self.precision)

    def to_dict(self) -> dict:
        return {"backend": self.backend, "provider": self.provider, "tolerance": self.tolerance, "ok": self.ok,
                "precision": self.precision, "tie_band": self.band_rule, "rows": [asdict(r) for r in self.rows]}

    def describe_failure(self, r: ParityRow) -> str:
        bad = [d for d in r.divergences if not d.near_tie]
        why = f"; {bad[0].describe()}" if bad else ""
        return (f"parity failed at {r.setting} ({r.execution}): max|logit diff| {r.max_abs_diff:.2e} (tol {self.tolerance:.0e}), "
                f"kept sets equal {r.sets_agree}/{r.images - r.near_ties}, counts equal {r.counts_agree}/{r.images}{why}")

    def raise_if_failed(self) -> None:
        bad = [r for r in self.rows if not r.ok]
        if bad:
            raise CheckFailed(self.describe_failure(bad[0]))


@dataclass
class Reference:
    """What the PyTorch model computed for a batch (records: per ATS stage, see models/ats.py)."""

    logits: np.ndarray
    records: list | None = None  # StageRecords with scores/valid/candidates; None for dense
    k: int | None = None
    scheme: str = "paper"
    embed_dim: int = 0
    merge_slots: np.ndarray | None = None  # ToMe: [B, depth, T] row of every original token per block
    margins: np.ndarray | None = None  # ToMe: [B] smallest matching margin (models/merging.py)


def torch_reference(built: BuiltModel, images: np.ndarray, k: int | None, execution: str) -> Reference:
    model = built.module
    x = torch.from_numpy(images)
    with torch.no_grad():
        if built.config.family == C.FAMILY_TOME:
            logits, slots, margin = model.forward_with_records(x, with_margin=True)
            margins = np.full(len(images), np.inf) if margin is None else margin.double().numpy()
            return Reference(logits.numpy(), embed_dim=built.config.embed_dim, merge_slots=slots.numpy(),
                             margins=margins)
        if built.config.family != C.FAMILY_ATS:
            return Reference(model(x).numpy())
        model.configure(execution=execution, record_margin=True)
        try:
            logits, records = model.forward_with_records(x, torch.zeros(k))
        finally:
            model.configure(execution="padded", record_margin=False)
    return Reference(logits.numpy(), records, k, built.config.scheme, built.config.embed_dim)


def _kept_set(positions: np.ndarray) -> frozenset:
    return frozenset(int(p) for p in positions if p >= 0)


def _merged_groups(slots: np.ndarray) -> list[frozenset]:
    """ToMe merge slots [depth, T] of one image -> per block, the groups of original tokens that
    share a row (row numbers themselves are not compared: only which tokens were merged)."""
    return [frozenset(frozenset(np.flatnonzero(row == v).tolist()) for v in np.unique(row)) for row in slots]


def _tome_divergence(ref: Reference, got: dict, i: int, source: str, precision: str) -> Divergence | None:
    """ToMe: None when image i merges the same groups in every block; else the first block that
    differs, a near-tie when the image's smallest matching margin (a cosine-similarity gap) is
    inside the score-order band of its token count and embed dim."""
    mine, theirs = _merged_groups(ref.merge_slots[i]), _merged_groups(got[C.OUTPUT_MERGE_SLOTS][i])
    if mine == theirs:
        return None
    block = next(b for b, (x, y) in enumerate(zip(mine, theirs)) if x != y)
    band = tie_band.order_band(ref.merge_slots.shape[-1], ref.embed_dim, precision)
    margin = float(ref.margins[i])
    return Divergence(i, source, block, margin, band, margin <= band, unit="block", kind="merge order")


def first_divergence(ref: Reference, got: dict, i: int, source: str, precision: str) -> Divergence | None:
    """None when image i keeps the same tokens at every stage as the reference; else where the
    kept sets first differ, and whether the difference is inside that stage's tie band."""
    if ref.merge_slots is not None:
        return _tome_divergence(ref, got, i, source, precision)
    for s, rec in enumerate(ref.records):
        mine, theirs = _kept_set(rec.positions[i].numpy()), _kept_set(got[C.OUTPUT_POSITIONS][i, s])
        if mine == theirs:
            continue
        margin, band, kind = tie_band.explain(mine, theirs, rec.candidates[i].numpy(), rec.scores[i].numpy(),
                                             rec.valid[i].numpy(), ref.k, ref.scheme, ref.embed_dim, precision)
        return Divergence(i, source, s, float(margin), float(band), bool(margin <= band), kind=kind)
    return None


def compare(ref: Reference, got: dict, k: int | None, execution: str, tol: float = LOGIT_ATOL,
            sources: list[str] | None = None, precision: str = "fp32") -> ParityRow:
    """One row: every image must keep the same tokens, have the same counts and logits within
    ``tol``, unless its kept sets first differ inside the tie band (a near-tie, left out of the
    logit statistics since its logits then legitimately differ)."""
    n = len(ref.logits)
    sources = sources or [f"input {i + 1}" for i in range(n)]
    diffs, cosines, top1, counts_ok, sets_ok, near, divergences = [], [], 0, 0, 0, 0, []
    for i in range(n):
        div = first_divergence(ref, got, i, sources[i], precision) if ref.records is not None or ref.merge_slots is not None else None
        if div is not None:
            divergences.append(div)
            near += int(div.near_tie)
            continue
        sets_ok += 1
        if ref.records is not None:
            counts = np.stack([r.counts[i].numpy() for r in ref.records])
            counts_ok += int(np.array_equal(counts, got[C.OUTPUT_COUNTS][i]))
        a, b = ref.logits[i].astype(np.float64), got[C.OUTPUT_LOGITS][i].astype(np.float64)
        diffs.append(float(np.abs(a - b).max()))
        cosines.append(float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-30)))
        top1 += int(a.argmax() == b.argmax())
    max_diff = max(diffs) if diffs else 0.0
    checked = n - near
    ok = (max_diff <= tol and not any(not d.near_tie for d in divergences)
          and sets_ok == checked and (ref.records is None or counts_ok == checked))
    return ParityRow(k, execution, n, max_diff, min(cosines) if cosines else 1.0, top1, counts_ok, sets_ok, near, ok,
                     divergences)


def run_parity(runner_factory, built: BuiltModel, images, ks: list[int | None],
               executions=("padded", "trimmed"), tol: float = LOGIT_ATOL, sources: list[str] | None = None,
               precision: str = "fp32", batch: int = 8) -> ParityReport:
    """runner_factory(k) -> a tscli.runtime Runner. ``images``: preprocessed float32 NCHW (run in
    batches of ``batch``), or an iterable of (batch, names) pairs, so that memory stays bounded
    whatever the number of images (see parity_inputs)."""
    runners = {k: runner_factory(k) for k in ks}
    first = runners[ks[0]]
    report = ParityReport(first.backend_name, first.provider, tol, precision=precision)
    if isinstance(images, np.ndarray):
        names = sources or [f"input {i + 1}" for i in range(len(images))]
        images = [(images[lo:lo + batch], names[lo:lo + batch]) for lo in range(0, len(images), batch)]
    family = built.config.family
    if family != C.FAMILY_ATS:
        executions = ("tome",) if family == C.FAMILY_TOME else ("dense",)
    parts: dict[tuple, list[tuple[int, ParityRow]]] = {(k, e): [] for k in ks for e in executions}
    offset = 0
    for x, names in images:
        for k in ks:
            got = runners[k].infer(x)
            for execution in executions:
                ref = torch_reference(built, x, k, execution if family == C.FAMILY_ATS else "padded")
                parts[(k, execution)].append((offset, compare(ref, got, k, execution, tol, names, precision)))
        offset += len(x)
    report.rows = [_merge(rows) for rows in parts.values()]
    return report


def _merge(parts: list[tuple[int, ParityRow]]) -> ParityRow:
    """The rows of consecutive batches of one (K, execution) as one row over all their images."""
    rows = [row for _, row in parts]
    divergences = [Divergence(d.image + offset, d.source, d.stage, d.margin, d.band, d.near_tie, d.unit, d.kind)
                   for offset, row in parts for d in row.divergences]
    first = rows[0]
    return ParityRow(first.k, first.execution, sum(r.images for r in rows), max(r.max_abs_diff for r in rows),
                     min(r.min_cosine for r in rows), sum(r.top1_agree for r in rows),
                     sum(r.counts_agree for r in rows), sum(r.sets_agree for r in rows),
                     sum(r.near_ties for r in rows), all(r.ok for r in rows), divergences)


def validate_export(path: str, built: BuiltModel, meta: dict, images: str | Path | None = None,
                    n: int = 4) -> ParityReport:
    """The check ``tscli export`` runs before the file is renamed into place: ``n`` real images
    (``images``, a folder, or scikit-image's samples) plus 2 random inputs, at max_k and max_k/2."""
    ks = C.default_ks(meta["max_k"]) if meta.get("max_k") else [None]
    return run_parity(lambda k: load(path, k=k), built, parity_inputs(meta, Path(images) if images else None, n), ks)


def parity_inputs(meta: dict, images: Path | None, n: int, seed: int = 0, batch: int = 8):
    """Yield (preprocessed batch, names): n real images (a folder, read ``batch`` at a time, or
    scikit-image's samples), then 2 random inputs."""
    if n < 1:
        raise UsageError(f"--n {n} is invalid; give at least 1 image")
    if images:
        files = images_in(images, n)
        for lo in range(0, len(files), batch):
            chunk = files[lo:lo + batch]
            yield preprocess([str(p) for p in chunk], meta), [p.name for p in chunk]
    else:
        samples = sample_images(n)
        for lo in range(0, len(samples), batch):
            chunk = samples[lo:lo + batch]
            yield preprocess([a for _, a in chunk], meta), [f"scikit-image {name}" for name, _ in chunk]
    rng = np.random.default_rng(seed)
    yield (rng.standard_normal((2,) + tuple(meta["input_size"])).astype(np.float32),
           ["random input 1", "random input 2"])


def parity_for_file(path: Path, checkpoint: Path | None, images: Path | None, n: int, ks: list[int] | None,
                    threads: int | None, backend: str = "ort", plugins: Path | None = None,
                    probe=None) -> ParityReport:
    """``plugins``: the op library a plugin-form file runs with (ort: tscli's ORT ops; trt: the
    TensorRT plugins), so that what is compared is what will be deployed. ``probe``: a runner the
    caller already opened with these arguments and no K (it is reused, not opened again)."""
    if probe is None:  # validates the file, reads metadata
        probe = load(path, backend=backend, threads=threads, plugins=plugins)
    meta = probe.meta
    if ks is None:
        ks = [None] if probe.k is None else C.default_ks(probe.k)
    # One runner per K, opened (and so checked) before the slow part; the probe already is the
    # max_k runner.
    runners = {k: probe if k == probe.k else load(path, k=k, backend=backend, threads=threads, plugins=plugins)
               for k in ks}
    built = build_from_metadata(meta, str(checkpoint) if checkpoint else None)
    return run_parity(runners.__getitem__, built, parity_inputs(meta, images, n), ks)
