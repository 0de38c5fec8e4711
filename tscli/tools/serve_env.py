"""The serving interpreter: `tscli serve` and `tscli loadtest` run in a separate Python environment.

PyTriton 0.7 needs numpy<2 (with numpy 2 its responses come back with the right shape and no
data) and tritonclient's gRPC part needs protobuf<7, while the project runs on numpy 2 and the
export side wants protobuf 7. So serving gets its own venv (the ``serve`` extra), and a command
started from the project's venv re-executes itself there: the serving Python replaces this
process (os.execve), so signals reach the server directly and the exit code is the server's.

Which Python: ``--python PATH``, else $TSCLI_SERVE_PYTHON, else the venv that ``tscli serve
--setup`` creates ($TSCLI_CACHE/serve-venv, default ~/.cache/tscli/serve-venv).
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from ..errors import MissingDependency, UsageError, first_line

# The `serve` extra of pyproject.toml (tests/test_triton_repo.py checks that both lists agree).
SERVE_PACKAGES = ("nvidia-pytriton>=0.7,<0.8", "numpy<2", "tritonclient[http,grpc]>=2.50", "matplotlib>=3.7")
ENV_PYTHON = "TSCLI_SERVE_PYTHON"
CHILD_MARK = "TSCLI_SERVE_REEXEC"  # set in the re-executed process: it must not re-execute again

# What each command needs importable (top-level modules).
NEEDS = {"serve": ("pytriton", "onnxruntime"), "loadtest": ("tritonclient", "geventhttpclient", "grpc")}


def cache_root() -> Path:
    root = os.environ.get("TSCLI_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "tscli"


def default_venv() -> Path:
    return cache_root() / "serve-venv"


def source_tree() -> Path | None:
    """The checkout this tscli runs from (editable install or PYTHONPATH), or None for a wheel."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "pyproject.toml").is_file() and (root / "tscli" / "__init__.py").is_file() else None


def setup_command(venv: Path | None = None) -> str:
    """The shell commands that create a serving venv (what --setup runs)."""
    venv = venv or default_venv()
    pip = shlex.quote(str(venv / "bin" / "pip"))
    root = source_tree()
    install = f"{pip} install -e {shlex.quote(f'{root}[serve]')}" if root else \
        f"{pip} install {' '.join(shlex.quote(p) for p in SERVE_PACKAGES)} && {pip} install --no-deps YOUR_TSCLI_SOURCE"
    return f"python3 -m venv {shlex.quote(str(venv))} && {install}"


def missing_here(command: str) -> list[str]:
    """Why this interpreter cannot run ``command`` (empty: it can)."""
    why = [f"{m} is not installed" for m in NEEDS[command] if importlib.util.find_spec(m) is None]
    if command == "serve":
        import numpy

        if int(numpy.__version__.split(".")[0]) >= 2:
            why.append(f"numpy is {numpy.__version__} (PyTriton 0.7 returns empty outputs with numpy 2)")
    return why


def serving_python(explicit: Path | None) -> tuple[Path | None, str]:
    """(the serving interpreter or None, where it was looked for)."""
    if explicit is not None:
        if not explicit.is_file():
            raise UsageError(f"--python {str(explicit)!r} does not exist; give a Python interpreter (e.g. VENV/bin/python)")
        return explicit, f"--python {explicit}"
    if os.environ.get(ENV_PYTHON):
        path = Path(os.environ[ENV_PYTHON])
        if not path.is_file():
            raise UsageError(f"${ENV_PYTHON}={str(path)!r} does not exist; unset it or point it at a Python interpreter")
        return path, f"${ENV_PYTHON}={path}"
    path = default_venv() / "bin" / "python"
    where = f"--python, ${ENV_PYTHON}, {default_venv()}"
    return (path, where) if path.is_file() else (None, where)


def _probe(python: Path, command: str) -> str | None:
    """Can ``python`` import tscli and what ``command`` needs? None if yes, else why not."""
    needs = ", ".join(repr(m) for m in NEEDS[command])
    code = ("import importlib.util as u, numpy, tscli; "
            f"print(','.join(m for m in ({needs},) if u.find_spec(m) is None) or 'ok', numpy.__version__)")
    try:
        proc = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"it does not run ({first_line(exc)})"
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        return f"it cannot import tscli and numpy ({lines[-1] if lines else proc.returncode})"
    missing, numpy_version = (proc.stdout.split() + ["?", "?"])[:2]
    if missing != "ok":
        return f"it lacks {missing}"
    if command == "serve" and not numpy_version.startswith("1."):
        return f"its numpy is {numpy_version} (PyTriton 0.7 needs numpy<2)"
    return None


def run_here_or_reexec(command: str, explicit: Path | None) -> None:
    """Return if this interpreter can run ``command``; otherwise replace this process with the
    serving interpreter running the same command line, or raise one line saying how to create it."""
    why = missing_here(command)
    if not why:
        return
    if os.environ.get(CHILD_MARK):  # already re-executed: do not loop
        raise MissingDependency(f"this Python ({sys.executable}) cannot run `tscli {command}`: {'; '.join(why)}; "
                                f"create a serving venv with: {setup_command()}")
    python, where = serving_python(explicit)
    if python is None:
        raise MissingDependency(f"`tscli {command}` needs a serving Python (pytriton, numpy<2, tritonclient) and none "
                                f"was found ({where}); create it with `tscli serve --setup`, i.e.: {setup_command()}")
    problem = _probe(python, command)
    if problem:
        raise MissingDependency(f"the serving Python {str(python)!r} cannot run `tscli {command}`: {problem}; "
                                f"recreate it with: {setup_command()}")
    sys.stdout.flush()
    sys.stderr.flush()
    env = dict(os.environ, **{CHILD_MARK: "1"})
    os.execve(str(python), [str(python), "-m", "tscli.cli", *sys.argv[1:]], env)


def create_venv(venv: Path | None = None, progress=None) -> Path:
    """Create the serving venv with pip (about 35 s and 0.5 GB from PyPI). A failed install
    removes the half-made venv."""
    venv = venv or default_venv()
    root = source_tree()
    if root is None:
        raise MissingDependency(f"tscli is installed from a wheel, so --setup cannot install it into a venv; run: "
                                f"{setup_command(venv)}")
    if (venv / "bin" / "python").exists():
        raise UsageError(f"{str(venv)!r} already exists; remove it first to create it again")
    steps = [[sys.executable, "-m", "venv", str(venv)],
             [str(venv / "bin" / "pip"), "install", "-q", "-e", f"{root}[serve]"]]
    try:
        for step in steps:
            if progress:
                progress(" ".join(step[-3:]))
            proc = subprocess.run(step, capture_output=True, text=True)
            if proc.returncode != 0:
                lines = [ln for ln in (proc.stderr or proc.stdout).strip().splitlines() if ln.strip()]
                raise MissingDependency(f"creating the serving venv failed at `{' '.join(step)}`: "
                                        f"{lines[-1] if lines else proc.returncode}")
    except BaseException:
        shutil.rmtree(venv, ignore_errors=True)
        raise
    return venv
