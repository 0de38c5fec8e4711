"""tscli.files: the one atomic writer every exporter/profile/engine writer uses."""

from __future__ import annotations

import os
import stat

import pytest

from tscli.files import atomic_path


def test_written_file_gets_the_umask_mode_not_owner_only(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "model.onnx") as tmp:
            tmp.write_bytes(b"x")
    finally:
        os.umask(old)
    # mkstemp alone would give 0600: an exported model unreadable by a serving user.
    assert stat.S_IMODE((tmp_path / "model.onnx").stat().st_mode) == 0o644


def test_failure_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "model.onnx") as tmp:
            tmp.write_bytes(b"partial")
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
