"""Optimization profiles from the model's metadata.

A TensorRT engine with dynamic inputs needs, per profile, a min/opt/max shape for each of them:
images [B, 3, H, W] (batch range from --batch, H/W fixed by the metadata) and k_select [K].

Choice of buckets (documented in docs/jetson.md): every `--k-range MIN:OPT:MAX` is one profile and
every `--k K` is one profile fixed at K. One profile over a range lets a device choose any K in it
at load time from one engine; TensorRT tunes its kernels for OPT, so a K far from OPT may run a
little slower than in its own bucket. Several buckets cost build time and engine size, once per
bucket. With neither option the single profile is 1:max_k:max_k.
"""

from __future__ import annotations

from dataclasses import dataclass

from ... import contract as C
from ...errors import UsageError

DEFAULT_BATCH = "1:1:8"


def parse_range(text: str | int, what: str) -> tuple[int, int, int]:
    """'48:96:120' -> (48, 96, 120); 'A:B' -> (A, B, B); 'A' -> (A, A, A). min <= opt <= max, all >= 1."""
    parts = str(text).split(":")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if not 1 <= len(values) <= 3:
        raise UsageError(f"bad {what} {str(text)!r}; give N, MIN:MAX or MIN:OPT:MAX with integers, e.g. 48:96:120")
    lo, opt, hi = values if len(values) == 3 else (values[0], values[-1], values[-1])
    if not 1 <= lo <= opt <= hi:
        raise UsageError(f"bad {what} {str(text)!r}; need 1 <= MIN <= OPT <= MAX")
    return lo, opt, hi


@dataclass(frozen=True)
class Profile:
    batch: tuple[int, int, int]
    k: tuple[int, int, int] | None  # None: the model has no K input (dense)
    image_shape: tuple[int, int, int]  # C, H, W

    def shapes(self) -> dict[str, dict[str, list[int]]]:
        """Input name -> {"min", "opt", "max"} shapes, the arguments of IOptimizationProfile.set_shape."""
        out = {C.INPUT_IMAGES: {key: [b, *self.image_shape] for key, b in zip(("min", "opt", "max"), self.batch)}}
        if self.k is not None:
            out[C.INPUT_K] = {key: [k] for key, k in zip(("min", "opt", "max"), self.k)}
        return out

    def covers(self, k: int | None, batch: int | None = None) -> bool:
        ok_k = self.k is None or k is None or self.k[0] <= k <= self.k[2]
        ok_b = batch is None or self.batch[0] <= batch <= self.batch[2]
        return ok_k and ok_b

    def to_dict(self) -> dict:
        return {"batch": list(self.batch), "k": list(self.k) if self.k else None, "shapes": self.shapes()}

    @classmethod
    def from_dict(cls, d: dict) -> "Profile":
        image = d["shapes"][C.INPUT_IMAGES]["min"][1:]
        return cls(tuple(d["batch"]), tuple(d["k"]) if d.get("k") else None, tuple(image))


def derive_profiles(meta: dict, input_names: list[str], ks: list[int] | None = None,
                    k_ranges: list[str] | None = None, batch: str = DEFAULT_BATCH) -> list[Profile]:
    """The build's profiles: one per --k-range and one per --k (see the module docstring)."""
    if "input_size" not in meta:
        raise UsageError("this ONNX file has no tscli.input_size metadata; export it with `tscli export`")
    image_shape = tuple(int(v) for v in meta["input_size"])
    b = parse_range(batch, "--batch")
    has_k = C.INPUT_K in input_names
    max_k = meta.get("max_k")
    if not has_k:
        if ks or k_ranges:
            raise UsageError(f"--k/--k-range given, but {meta.get('model', 'this model')} has no K input to choose")
        return [Profile(b, None, image_shape)]
    if not isinstance(max_k, int):
        raise UsageError("this file has a k_select input but no tscli.max_k metadata; re-export it with `tscli export`")
    buckets = [parse_range(r, "--k-range") for r in (k_ranges or [])]
    buckets += [(int(k), int(k), int(k)) for k in (ks or [])]
    for lo, _, hi in buckets:
        if hi > max_k or lo < 1:
            raise UsageError(f"K range {lo}..{hi} is outside this file's 1..{max_k} (max_k chosen at export)")
    if not buckets:
        buckets = [(1, max_k, max_k)]
    unique = list(dict.fromkeys(buckets))  # same bucket twice would only double the build time
    return [Profile(b, k, image_shape) for k in unique]


def k_span(profiles: list[Profile]) -> list[int] | None:
    """[smallest, largest] K any profile accepts (the manifest's k_range)."""
    ks = [p.k for p in profiles if p.k is not None]
    return [min(k[0] for k in ks), max(k[2] for k in ks)] if ks else None


def batch_span(profiles: list[Profile]) -> list[int]:
    return [min(p.batch[0] for p in profiles), max(p.batch[2] for p in profiles)]


def choose_profile(profiles: list[Profile], k: int | None) -> int:
    """Index of the profile to run K with: among those covering K, the one whose OPT is nearest
    (TensorRT tuned its kernels for OPT); ties go to the narrower range."""
    covering = [(i, p) for i, p in enumerate(profiles) if p.covers(k)]
    if not covering:
        ranges = ", ".join(f"{p.k[0]}..{p.k[2]}" for p in profiles if p.k) or "none"
        raise UsageError(f"K={k} is not in any profile of this engine (K ranges: {ranges}); "
                         "pick a K in range or rebuild with `tscli build --k-range MIN:OPT:MAX`")
    if k is None:
        return covering[0][0]
    return min(covering, key=lambda ip: (abs(ip[1].k[1] - k) if ip[1].k else 0,
                                         (ip[1].k[2] - ip[1].k[0]) if ip[1].k else 0))[0]
