"""Exit codes, signals, bad input and faults, through the real `tscli` executable in a subprocess
(the exit code is part of each command's contract). Usage 2, failed check 1, internal error 3
(never expected here), Ctrl-C 130, SIGTERM 143."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

ENV = dict(os.environ, COLUMNS="200")


def tscli(*args, cwd=None, timeout=600):
    return subprocess.run([sys.executable, "-m", "tscli.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=ENV, timeout=timeout)


def one_line_error(proc, code: int, message: str) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr


# -- 1. exit codes --------------------------------------------------------------------------------


@pytest.mark.parametrize("args, message", [
    (["export", "tiny_ats", "--max-k", "abc"], "Invalid value for '--max-k'"),
    (["export"], "Missing argument"),
    (["export", "tiny_ats", "--nope"], "No such option: --nope"),
    (["nosuch"], "No such command 'nosuch'"),
    (["--debug", "export", "tiny_ats", "--max-k", "abc"], "Invalid value for '--max-k'"),
])
def test_usage_errors_exit_2_with_clicks_message(args, message, tmp_path):
    proc = tscli(*args, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("Usage:") and f"Error: {message}" in proc.stderr, proc.stderr
    assert "internal error" not in proc.stderr and "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_bare_command_prints_help_and_exits_2():
    proc = tscli()
    assert proc.returncode == 2 and "Usage:" in proc.stdout + proc.stderr and "export" in proc.stdout + proc.stderr


def test_debug_keeps_the_exit_code(tmp_path):
    proc = tscli("--debug", "list", "--family", "nosuch")
    assert proc.returncode == 2 and "Traceback" in proc.stderr and "unknown --family 'nosuch'" in proc.stderr


def _scaled_head(src: Path, dst: Path, factor: float) -> Path:
    """The file with its classifier weights multiplied: what a wrong export would produce."""
    model = onnx.load(str(src))
    heads = [t for t in model.graph.initializer if t.name.split(".")[-2:] == ["head", "weight"]]
    assert heads, [t.name for t in model.graph.initializer][:20]
    for t in heads:
        t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) * np.float32(factor), t.name))
    onnx.save(model, str(dst))
    return dst


def test_failed_parity_exits_1(tiny_exports, tmp_path):
    good = tscli("parity", tiny_exports["paper"], "--n", "2", "--k", "40")
    assert good.returncode == 0, good.stderr
    assert "tie band:" in good.stdout
    bad = _scaled_head(tiny_exports["paper"], tmp_path / "bad.onnx", 1.5)
    proc = tscli("parity", bad, "--n", "2", "--k", "40")
    assert proc.returncode == 1, proc.stderr
    proc = tscli("parity", bad, "--n", "2", "--k", "40", "--json")
    assert proc.returncode == 1 and json.loads(proc.stdout)["ok"] is False


def _start_export(tmp_path: Path) -> tuple[subprocess.Popen, Path]:
    out = tmp_path / "m.onnx"
    # A suite started as a background job (`cmd &` in a script) inherits SIGINT ignored, and so would
    # the export (Python then leaves it ignored): give the child the default disposition, as a
    # terminal's foreground process has.
    proc = subprocess.Popen([sys.executable, "-m", "tscli.cli", "export", "deit_t_ats", "--max-k", "32", "-o", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 900  # a loaded 2-core machine is slow to get there
    while not any(p.name.startswith(".m.onnx.") for p in tmp_path.iterdir()):  # the file is being written/checked
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the export never wrote its temporary file"
        time.sleep(0.05)
    return proc, out


@pytest.mark.slow
@pytest.mark.parametrize("sig, code, word", [(signal.SIGINT, 130, "aborted"), (signal.SIGTERM, 143, "terminated")])
def test_signal_during_export_leaves_nothing(sig, code, word, tmp_path):
    proc, out = _start_export(tmp_path)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert err.strip().splitlines()[-1] == word and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_killed_runs_leftovers_are_removed(tiny_exports, tmp_path):
    """SIGKILL cannot be caught: the next write to the same target removes the dead run's file."""
    dead = subprocess.run(["true"]).returncode == 0 and _dead_pid()
    stale = tmp_path / f".t.onnx.tscli-{dead}-abcd1234.tmp"
    stale.write_bytes(b"x" * 100)
    alive = tmp_path / f".t.onnx.tscli-{os.getpid()}-efgh5678.tmp"  # a live process's file stays
    alive.write_bytes(b"y")
    proc = tscli("export", "tiny_ats", "--max-k", "8", "-o", tmp_path / "t.onnx", "--no-validate")
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([alive.name, "t.onnx"])


def _dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


# -- 4. an output that is one of the inputs ------------------------------------------------------


def test_output_may_not_overwrite_the_checkpoint(tmp_path):
    import torch

    from tscli.models.catalog import get_config
    from tscli.models.factory import build_model

    ck = tmp_path / "ck.pth"
    torch.save(build_model(get_config("tiny_ats")).module.state_dict(), ck)
    before = ck.read_bytes()
    link = tmp_path / "link.pth"
    link.symlink_to(ck)
    for out in (ck, link):
        proc = tscli("export", "tiny_ats", "--checkpoint", ck, "-o", out)
        one_line_error(proc, 2, "is also an input of this command")
    assert ck.read_bytes() == before


# -- 5. image modes ------------------------------------------------------------------------------


def test_high_bit_depth_palette_cmyk_alpha_and_exif(tmp_path):
    from PIL import Image

    from tscli.runtime.preprocess import to_pil

    ramp = np.linspace(0, 30000, 64 * 64).reshape(64, 64).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "16bit.png")
    assert Image.open(tmp_path / "16bit.png").mode.startswith("I")
    rgb = np.asarray(to_pil(tmp_path / "16bit.png"))
    assert rgb.max() == round(30000 * 255 / 65535) and (rgb == 255).mean() == 0.0  # scaled, not clipped
    np.testing.assert_array_equal(np.asarray(to_pil(ramp)), rgb)  # a uint16 array: the same rule

    Image.fromarray(np.full((4, 4), 0.5, np.float32), mode="F").save(tmp_path / "f.tif")
    assert np.asarray(to_pil(tmp_path / "f.tif"))[0, 0].tolist() == [128, 128, 128]
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 0
    assert np.asarray(to_pil(rgba))[0, 0].tolist() == [200, 0, 0]  # alpha dropped, colour kept
    Image.new("CMYK", (3, 3), (0, 255, 0, 0)).save(tmp_path / "c.jpg")
    assert np.asarray(to_pil(tmp_path / "c.jpg")).shape == (3, 3, 3)
    pal = Image.fromarray(np.arange(16, dtype=np.uint8).reshape(4, 4)).convert("P")
    assert np.asarray(to_pil(pal)).shape == (4, 4, 3)

    tall = np.zeros((20, 10, 3), np.uint8)
    tall[:5] = 255  # white top band
    im = Image.fromarray(tall)
    exif = im.getexif()
    exif[0x0112] = 6  # stored rotated: viewers turn it 90 degrees clockwise
    im.save(tmp_path / "rot.jpg", exif=exif, quality=95)
    upright = np.asarray(to_pil(tmp_path / "rot.jpg"))
    assert upright.shape == (10, 20, 3) and upright[:, -3:].mean() > 200 and upright[:, :3].mean() < 50


def test_decompression_bomb_is_one_line(tiny_exports, tmp_path):
    from PIL import Image

    big = tmp_path / "huge.png"
    Image.new("1", (30000, 30000)).save(big)  # 1-bit: a small file whose header claims 9e8 pixels
    one_line_error(tscli("run", tiny_exports["paper"], big), 2, "too large to decode safely")


# -- 6. bounded memory ---------------------------------------------------------------------------


@pytest.mark.slow
def test_run_memory_does_not_grow_with_the_number_of_images(tmp_path):
    """Peak memory of `tscli run DIR` on 256 images stays within 1.5x of that on 16 (streamed in
    --batch chunks; before, 256 images in one batch peaked at 1.7 GB on deit_t_ats)."""
    from PIL import Image

    model = tmp_path / "deit_t_ats.onnx"
    assert tscli("export", "deit_t_ats", "--max-k", "98", "-o", model, "--no-validate").returncode == 0
    rng = np.random.default_rng(0)
    for n in (16, 256):
        folder = tmp_path / f"imgs{n}"
        folder.mkdir()
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")
    peaks = {}
    for n in (16, 256):
        code = ("import resource, subprocess, sys; "
                f"p = subprocess.run([sys.executable, '-m', 'tscli.cli', 'run', {str(model)!r}, {str(tmp_path / f'imgs{n}')!r}, '--json'],"
                " capture_output=True); assert p.returncode == 0, p.stderr; "
                "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=900)
        assert out.returncode == 0, out.stderr
        peaks[n] = int(out.stdout.strip()) / 1024  # MB
    print(f"\npeak RSS of tscli run: 16 images {peaks[16]:.0f} MB, 256 images {peaks[256]:.0f} MB")
    assert peaks[256] <= 1.5 * peaks[16], peaks


# -- 8. outputs that would overwrite each other -------------------------------------------------


def test_segmentation_outputs_of_same_named_images_do_not_collide(tmp_path):
    from tscli.runtime.segmentation import output_stems

    files = [Path("a/r0.png"), Path("b/r0.png"), Path("c/x.png")]
    stems = output_stems(files)
    assert len(set(stems.values())) == 3 and stems[Path("c/x.png")] == "x"
    assert stems[Path("a/r0.png")].endswith("a_r0") and stems[Path("b/r0.png")].endswith("b_r0")


def test_seg_run_writes_every_image_and_refuses_a_file_as_out_dir(tmp_path):
    from PIL import Image

    model = tmp_path / "seg.onnx"
    assert tscli("export", "tiny_dovit", "-o", model, "--no-validate").returncode == 0
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        Image.new("RGB", (64, 32), (10, 200, 30)).save(tmp_path / folder / "r0.png")
    proc = tscli("run", model, tmp_path / "a" / "r0.png", tmp_path / "b" / "r0.png", "--out-dir", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    assert len(list((tmp_path / "out").iterdir())) == 4
    (tmp_path / "afile").write_text("x")
    one_line_error(tscli("run", model, tmp_path / "a", "--out-dir", tmp_path / "afile"), 2, "is a file")


def test_tune_output_must_be_the_json_store(tiny_exports, tmp_path):
    (tmp_path / "data").mkdir()
    proc = tscli("tune", tiny_exports["paper"], "--data", tmp_path / "data", "-o", tmp_path / "p.md")
    one_line_error(proc, 2, "must end in .json")


# -- 9. a bool or a float is not a K -----------------------------------------------------------


def test_bool_and_float_k_are_refused(tiny_exports, tmp_path):
    from tscli.errors import ModelFileError, UsageError
    from tscli.runtime import load

    for k in (True, 2.7, 8.0):
        with pytest.raises(UsageError, match="is not an integer"):
            load(tiny_exports["paper"], k=k)
    assert load(tiny_exports["paper"], k=np.int64(8)).k == 8
    from tscli.runtime import device_profiles as P

    meta = load(tiny_exports["paper"]).meta
    fp = P.fingerprint("ort", "CPUExecutionProvider")
    for chosen, error, match in ((True, UsageError, "is not an integer"), (2.7, UsageError, "is not an integer"),
                                 (99, UsageError, "out of range")):
        store = tmp_path / f"p{chosen}.json"
        P.write_store(store, [{"fingerprint": fp, "model": P.model_identity(meta), "chosen_k": chosen, "batch": 1}])
        with pytest.raises(error, match=match):
            load(tiny_exports["paper"], k="auto", profiles=store)
    for text, match in ((b"\xff\xfe not utf-8", "not readable JSON"),
                        (b'{"schema": "tscli.profiles/1", "profiles": [1, 2]}', "profile 1 .* lacks"),
                        (json.dumps({"schema": "tscli.profiles/1", "profiles": [{"fingerprint": fp, "model": {}}]}).encode(),
                         "lacks chosen_k")):
        bad = tmp_path / "bad.json"
        bad.write_bytes(text)
        with pytest.raises(ModelFileError, match=match):
            load(tiny_exports["paper"], k="auto", profiles=bad)


# -- 10/11. inputs that ended in "internal error" or misleading text --------------------------


def test_cli_bad_values_are_one_line(tiny_exports, tmp_path):
    f = tiny_exports["paper"]
    one_line_error(tscli("run", f, tmp_path, "--topk", "0"), 2, "--topk 0 is invalid")
    one_line_error(tscli("run", f, tmp_path, "--topk", "-1"), 2, "--topk -1 is invalid")
    one_line_error(tscli("run", f, tmp_path, "--batch", "0"), 2, "--batch 0 is invalid")
    one_line_error(tscli("export", "tiny_ats", "--seed", "99999999999999999999", "-o", tmp_path / "m.onnx"), 2,
                   "--seed 99999999999999999999 is out of range")
    one_line_error(tscli("list", "--family", "nosuch"), 2, "unknown --family 'nosuch'; valid: ")
    one_line_error(tscli("inspect", tmp_path), 2, "is a folder")
    one_line_error(tscli("export", "tiny_ats", "--checkpoint", tmp_path, "-o", tmp_path / "m.onnx"), 2, "is a folder")
    one_line_error(tscli("export", "tiny_ats", "-o", "/sys/m.onnx"), 2, "is read-only")


def test_huge_k_is_out_of_range_not_a_crash(tiny_exports, tmp_path):
    from tscli.data.samples import write_samples

    write_samples(tmp_path / "imgs", 1)
    one_line_error(tscli("run", tiny_exports["paper"], tmp_path / "imgs", "--k", "99999999999999999999"), 2,
                   "is out of range for this file; valid: 1..40")


def test_foreign_and_incomplete_files(tmp_path):
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["images"], ["logits"])], "g",
                              [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 4, 4])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3, 4, 4])])
    foreign = tmp_path / "foreign.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10), foreign)
    one_line_error(tscli("bench", foreign, "--no-dense"), 2, "was not exported by tscli")
    fake = onnx.load(str(foreign))
    fake.metadata_props.add(key="tscli.model", value='"tiny_ats"')
    fake.metadata_props.add(key="tscli.family", value='"ats"')
    onnx.save(fake, str(tmp_path / "fake.onnx"))
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    one_line_error(tscli("run", tmp_path / "fake.onnx", tmp_path / "x.png"), 2,
                   "metadata is incomplete or malformed (input_size None")


def test_nan_checkpoint_and_pickles(tmp_path):
    import os as _os

    import torch

    from tscli.models.catalog import get_config
    from tscli.models.factory import build_model

    sd = build_model(get_config("tiny_ats")).module.state_dict()
    sd["head.weight"][0, 0] = float("nan")
    torch.save(sd, tmp_path / "nan.pth")
    one_line_error(tscli("export", "tiny_ats", "--checkpoint", tmp_path / "nan.pth", "-o", tmp_path / "m.onnx"), 2,
                   "has NaN or infinite values in head.weight")

    class Payload:
        def __reduce__(self):
            return (_os.system, (f"touch {tmp_path / 'PWNED'}",))

    torch.save({"model": sd, "x": Payload()}, tmp_path / "evil.pth")
    proc = tscli("export", "tiny_ats", "--checkpoint", tmp_path / "evil.pth", "-o", tmp_path / "m.onnx")
    one_line_error(proc, 2, "tscli loads tensors only")
    assert "weights_only" not in proc.stderr and "will likely succeed" not in proc.stderr
    assert not (tmp_path / "PWNED").exists()
    torch.save(dict(sd), tmp_path / "old.pth", pickle_protocol=1, _use_new_zipfile_serialization=False)
    proc = tscli("export", "tiny_ats", "--checkpoint", tmp_path / "old.pth", "-o", tmp_path / "m.onnx")
    assert "UserWarning" not in proc.stderr
    if proc.returncode != 0:  # a format the tensors-only loader cannot read: one line that says so
        one_line_error(proc, 2, "old pickle format that tscli's tensors-only loader does not read")


def test_infer_refuses_non_float_and_non_finite_input(tiny_exports):
    from tscli.errors import InputError
    from tscli.runtime import load

    runner = load(tiny_exports["paper"], k=8)
    x = np.zeros((2, 3, 32, 32), np.float32)
    for bad in (x.astype(np.uint8), x.astype(bool), x.astype(np.complex64)):
        with pytest.raises(InputError, match="must be a float array"):
            runner.infer(bad)
    x[1, 0, 0, 0] = np.nan
    with pytest.raises(InputError, match=r"NaN or infinite values \(image 1"):
        runner.infer(x)
    assert runner.infer(np.zeros((1, 3, 32, 32), np.float64))["logits"].shape == (1, 10)  # floats are fine


def test_full_disk_is_one_line(monkeypatch, capsys, tmp_path):
    """A write that the disk refuses (ENOSPC) ends in one line and exit 1, with no file left."""
    import errno

    from tscli.cli import main
    from tscli.export import exporter

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "m.onnx"))

    monkeypatch.setattr(exporter.onnx, "save", full)
    monkeypatch.setattr(sys, "argv", ["tscli", "export", "tiny_ats", "--max-k", "8", "-o", str(tmp_path / "m.onnx")])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: cannot complete") and "No space left on device" in err[-1]
    assert list(tmp_path.iterdir()) == []
