"""Small file helpers shared by every writer (torch-free, so the runtime can use them too).

Temporary files are named ``.NAME.tscli-PID-RANDOM.SUFFIX`` beside their target. The PID lets a
later run recognise the leftovers of a process that was killed (SIGKILL, power loss) before it
could clean up, and delete them: tscli never leaves its own temporary files behind for long.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

from .errors import UsageError

_TMP_TAG = "tscli-"
_TMP_NAME = re.compile(r"^\.(?P<target>.+)\.tscli-(?P<pid>\d+)-[A-Za-z0-9_]+(\.[A-Za-z0-9]+)?$")


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_temporaries(folder: str | Path, target: str | None = None) -> list[Path]:
    """Delete tscli temporary files in ``folder`` (of ``target`` only, when given) whose process
    is gone. Returns what was removed. Files of live processes are never touched."""
    removed = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = _TMP_NAME.match(entry.name)
        if match is None or (target is not None and match["target"] != target):
            continue
        if int(match["pid"]) == os.getpid() or _alive(int(match["pid"])):
            continue
        with contextlib.suppress(OSError):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            removed.append(entry)
    return removed


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it into place when the block succeeds,
    delete it when anything fails (including Ctrl-C and SIGTERM, which the CLI turns into
    KeyboardInterrupt), so no half-written file is ever left. Leftovers of killed runs for the
    same target are removed first."""
    path = Path(path)
    remove_stale_temporaries(path.parent, path.name)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{_TMP_TAG}{os.getpid()}-", suffix=suffix, dir=str(path.parent))
    os.close(fd)
    # mkstemp makes the file owner-only (0600); give it the mode a plain open() would (umask).
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def temporary_dir_beside(path: str | Path) -> Path:
    """A new temporary folder beside ``path`` (same file system, so it can be renamed into place),
    named like atomic_path's files so a killed run's leftover is recognised and removed."""
    path = Path(path)
    remove_stale_temporaries(path.parent, path.name)
    return Path(tempfile.mkdtemp(prefix=f".{path.name}.{_TMP_TAG}{os.getpid()}-", dir=str(path.parent)))


def check_writable_folder(folder: str | Path, option: str = "-o") -> Path:
    """Refuse a folder that cannot take a new file (read-only, no permission) before slow work."""
    folder = Path(folder)
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{_TMP_TAG}{os.getpid()}-probe-", dir=str(folder))
    except OSError as exc:
        why = "is read-only" if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM) else f"cannot take a file ({exc.strerror})"
        raise UsageError(f"{option}: folder {str(folder)!r} {why}; give a writable folder") from None
    os.close(fd)
    os.unlink(probe)
    return folder


def check_output_file(path: str | Path, option: str = "-o", inputs: Iterable[str | Path | None] = ()) -> Path:
    """Refuse, before any slow work, an output path whose folder is missing, read-only, that is
    a folder, or that is one of the command's input files (symlinks resolved): writing it would
    destroy the input."""
    path = Path(path)
    if not path.parent.is_dir():
        raise UsageError(f"output folder {str(path.parent)!r} does not exist")
    if path.is_dir():
        raise UsageError(f"{option} {str(path)!r} is a folder; give a file name inside it")
    target = path.resolve()
    for given in inputs:
        if given is not None and Path(given).exists() and Path(given).resolve() == target:
            raise UsageError(f"{option} {str(path)!r} is also an input of this command ({str(given)!r}); "
                             "give another output file name")
    check_writable_folder(path.parent, option)
    return path
