"""ATS / ToMe / dense parity: a backend (ONNX Runtime by default) against the PyTorch model a
file was exported from. Used right after export (``validate_export``) and by ``tscli parity``.
Per image: max |logit diff|, cosine, top-1 agreement, per-stage kept counts and kept sets (ToMe:
the groups of merged tokens after every block). Kept sets are discrete decisions on floats: when
they differ and the PyTorch decision margin of that image is below NEAR_TIE, the image is
reported as a near-tie (docs/design.md, "Tie bands"), not as a mismatch, and its logits (which
then legitimately differ) are left out of the logit statistics.
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

LOGIT_ATOL = 1e-4
NEAR_TIE = 1e-6


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


@dataclass
class ParityReport:
    backend: str
    provider: str
    tolerance: float = LOGIT_ATOL
    rows: list[ParityRow] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.rows)

    def to_dict(self) -> dict:
        return {"backend": self.backend, "provider": self.provider, "tolerance": self.tolerance, "ok": self.ok,
                "near_tie_margin": NEAR_TIE, "rows": [asdict(r) for r in self.rows]}

    def describe_failure(self, r: ParityRow) -> str:
        return (f"parity failed at K={r.k} ({r.execution}): max|logit diff| {r.max_abs_diff:.2e} (tol {self.tolerance:.0e}), "
                f"kept sets equal {r.sets_agree}/{r.images - r.near_ties}, counts equal {r.counts_agree}/{r.images}")

    def raise_if_failed(self) -> None:
        bad = [r for r in self.rows if not r.ok]
        if bad:
            raise CheckFailed(self.describe_failure(bad[0]))


def torch_reference(built: BuiltModel, images: np.ndarray, k: int | None, execution: str):
    """-> (logits [B,C], counts [B,S], positions list per stage [B, *], margins [B]).
    ToMe: (logits, None, merge slots [B, depth, T], margins)."""
    model = built.module
    x = torch.from_numpy(images)
    with torch.no_grad():
        if built.config.family == C.FAMILY_TOME:
            logits, slots, margin = model.forward_with_records(x, with_margin=True)
            margins = np.full(len(images), np.inf) if margin is None else margin.numpy()
            return logits.numpy(), None, slots.numpy(), margins
        if built.config.family != "ats":
            return model(x).numpy(), None, None, np.full(len(images), np.inf)
        model.configure(execution=execution, record_margin=True)
        try:
            logits, records = model.forward_with_records(x, torch.zeros(k))
        finally:
            model.configure(execution="padded", record_margin=False)
    counts = torch.stack([r.counts for r in records], 1).numpy()
    positions = [r.positions.numpy() for r in records]
    margins = torch.stack([r.margin for r in records], 1).amin(1).numpy()
    return logits.numpy(), counts, positions, margins


def _kept_sets(positions_per_stage, i: int) -> list[frozenset]:
    return [frozenset(int(p) for p in stage[i] if p >= 0) for stage in positions_per_stage]


def _merged_groups(slots: np.ndarray) -> list[frozenset]:
    """ToMe merge slots [depth, T] of one image -> per block, the groups of original tokens that
    share a row (row numbers themselves are not compared: only which tokens were merged)."""
    return [frozenset(frozenset(np.flatnonzero(row == v).tolist()) for v in np.unique(row)) for row in slots]


def compare(ref, got: dict, k: int | None, execution: str, tol: float = LOGIT_ATOL) -> ParityRow:
    logits_r, counts_r, pos_r, margins = ref
    logits_g = got["logits"]
    n = len(logits_r)
    diffs, cosines, top1, counts_ok, sets_ok, near = [], [], 0, 0, 0, 0
    for i in range(n):
        same_sets = same_counts = True
        if counts_r is not None:
            pos_g = [got["kept_positions"][i : i + 1, s] for s in range(got["kept_positions"].shape[1])]
            same_sets = _kept_sets(pos_r, i) == _kept_sets(pos_g, 0)
            same_counts = np.array_equal(counts_r[i], got["kept_counts"][i])
        elif pos_r is not None:  # ToMe: token counts are static, the merged groups are the decisions
            same_sets = _merged_groups(pos_r[i]) == _merged_groups(got[C.OUTPUT_MERGE_SLOTS][i])
        # An image whose picks differ only where a decision was within NEAR_TIE of a tie is
        # reported apart; every other image must agree on sets, counts and logits.
        if not (same_sets and same_counts) and margins[i] < NEAR_TIE:
            near += 1
            continue
        sets_ok += int(same_sets)
        counts_ok += int(same_counts and counts_r is not None)
        a, b = logits_r[i].astype(np.float64), logits_g[i].astype(np.float64)
        diffs.append(float(np.abs(a - b).max()))
        cosines.append(float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-30)))
        top1 += int(a.argmax() == b.argmax())
    max_diff = max(diffs) if diffs else 0.0
    checked = n - near
    ok = max_diff <= tol and sets_ok == checked and (counts_r is None or counts_ok == checked)
    return ParityRow(k, execution, n, max_diff, min(cosines) if cosines else 1.0, top1, counts_ok, sets_ok, near, ok)


def run_parity(runner_factory, built: BuiltModel, images: np.ndarray, ks: list[int | None],
               executions=("padded", "trimmed"), tol: float = LOGIT_ATOL) -> ParityReport:
    """runner_factory(k) -> a tscli.runtime Runner; images: preprocessed float32 NCHW."""
    report = None
    for k in ks:
        runner = runner_factory(k)
        if report is None:
            report = ParityReport(runner.backend_name, runner.provider, tol)
        got = runner.infer(images)
        family = built.config.family
        runs = executions if family == "ats" else ("tome" if family == C.FAMILY_TOME else "dense",)
        for execution in runs:
            ref = torch_reference(built, images, k, execution if family == "ats" else "padded")
            report.rows.append(compare(ref, got, k, execution, tol))
    return report


def validate_export(path: str, built: BuiltModel, meta: dict, batch: int = 2, seed: int = 0) -> ParityReport:
    """The check ``tscli export`` runs before the file is renamed into place."""
    cfg = built.config
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((batch, 3, cfg.img_size, cfg.img_size)).astype(np.float32)
    ks = C.default_ks(meta["max_k"]) if meta.get("max_k") else [None]
    return run_parity(lambda k: load(path, k=k), built, images, ks)


def parity_inputs(meta: dict, images: Path | None, n: int, seed: int = 0) -> np.ndarray:
    """n real images (a folder, or scikit-image samples) plus 2 random inputs, preprocessed."""
    if n < 1:
        raise UsageError(f"--n {n} is invalid; give at least 1 image")
    sources = [str(p) for p in images_in(images, n)] if images else [a for _, a in sample_images(n)]
    real = preprocess(sources, meta)
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal((2,) + tuple(meta["input_size"])).astype(np.float32)
    return np.concatenate([real, noise])


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
    x = parity_inputs(meta, images, n)
    return run_parity(runners.__getitem__, built, x, ks)
