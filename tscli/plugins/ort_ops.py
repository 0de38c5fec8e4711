"""The native ONNX Runtime op library (csrc/ats_ort_ops.cpp): tscli.ATSSample on the CPU.

With it, a plugin-form file runs in ONNX Runtime with one op per sampling step instead of its
standard-operator body (the function ORT inlines without it: more nodes than the plain form's
~40, as the op also returns slot indices).
It is compiled on first use like the CPU core (core.compile_library), against ONNX Runtime's C
API headers, which the onnxruntime wheel does not ship. They are taken from, in this order:

1. ``include_dir`` / $TSCLI_ORT_INCLUDE: a folder holding onnxruntime_c_api.h (the include/
   folder of an ONNX Runtime release archive, or /usr/include/onnxruntime);
2. headers fetched earlier into the cache (``fetch_ort_headers``).

``fetch_ort_headers`` downloads Debian's libonnxruntime-dev package (85 KB, from the Debian
archive, checked against a pinned SHA-256) and keeps only its headers. The headers describe the
C API table and nothing else: the library never links against libonnxruntime and asks the
running ORT for API version 16, so it works with any ONNX Runtime >= 1.16 (the headers' own
version does not matter as long as it is at least that).
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import http.client
import io
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path, PurePosixPath

from ..errors import MissingDependency, ModelFileError, TscliError
from .core import cache_dir, compile_library

ORT_SOURCES = ("ats_sampling_core.h", "ats_sampling_fast.h", "ats_ort_ops.cpp")
ABI_VERSION = 2  # csrc/ats_ort_ops.cpp: 2 = int32 valid/mask (the TensorRT plugin's types)
HEADER = "onnxruntime_c_api.h"
DEB_URL = "http://deb.debian.org/debian/pool/main/o/onnxruntime/libonnxruntime-dev_1.21.0+dfsg-1_amd64.deb"
DEB_SHA256 = "14f7d959d5deacbcf1504830d4189f91fc67382b399ed9ae9d3aa9c4050ced08"
_DEB_INCLUDE = "usr/include/onnxruntime/"
_FETCH_HINT = ("run `python -m tscli.plugins.ort_ops --fetch-headers` (downloads Debian's libonnxruntime-dev, "
               "85 KB), or set TSCLI_ORT_INCLUDE to the include/ folder of an ONNX Runtime release")


def fetched_headers_dir() -> Path:
    return cache_dir() / "ort-include"


def find_ort_headers(include_dir: str | Path | None = None) -> Path:
    """The folder holding onnxruntime_c_api.h (see the module docstring for the order)."""
    given = include_dir or os.environ.get("TSCLI_ORT_INCLUDE")
    if given:
        folder = Path(given)
        if not (folder / HEADER).is_file():
            raise MissingDependency(f"{str(folder)!r} has no {HEADER}; give the folder that holds it")
        return folder
    folder = fetched_headers_dir()
    if (folder / HEADER).is_file():
        return folder
    raise MissingDependency(f"ONNX Runtime's C API headers are needed to build the tscli ORT op: {_FETCH_HINT}")


def _ar_members(blob: bytes) -> dict[str, bytes]:
    """Members of a Unix ar archive (the container of a .deb)."""
    if not blob.startswith(b"!<arch>\n"):
        raise TscliError("the downloaded package is not a Debian archive")
    members, pos = {}, 8
    while pos + 60 <= len(blob):
        header = blob[pos:pos + 60]
        name = header[:16].decode().strip().rstrip("/")
        size = int(header[48:58].decode().strip())
        members[name] = blob[pos + 60:pos + 60 + size]
        pos += 60 + size + (size % 2)  # members are 2-byte aligned
    return members


def _header_path(name: str) -> PurePosixPath | None:
    """Where a package member goes below the headers folder, or None to skip it: only .h files
    under usr/include/onnxruntime/, and nothing that could land outside (absolute, ..)."""
    name = name.removeprefix("./")
    if not (name.startswith(_DEB_INCLUDE) and name.endswith(".h")):
        return None
    relative = PurePosixPath(name[len(_DEB_INCLUDE):])
    if relative.is_absolute() or ".." in relative.parts or not relative.parts:
        return None
    return relative


def _install(staging: Path, target: Path) -> None:
    """Move a complete headers folder into place. An older folder is moved aside first, so a
    reader sees the old or the new headers; if another process installed its own meanwhile,
    that one is kept (same package, same files)."""
    aside = None
    if target.exists():
        aside = Path(tempfile.mkdtemp(prefix=".ort-include-old-", dir=target.parent))
        try:
            os.replace(target, aside / "headers")
        except FileNotFoundError:  # another process moved it first
            pass
    try:
        os.replace(staging, target)
    except OSError:
        if not (target / HEADER).is_file():
            raise
    finally:
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)


def fetch_ort_headers(url: str = DEB_URL, sha256: str = DEB_SHA256) -> Path:
    """Download libonnxruntime-dev, check its SHA-256, unpack its headers into the cache."""
    target = fetched_headers_dir()
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            blob = response.read()
    except (OSError, http.client.HTTPException) as exc:
        raise TscliError(f"could not download {url}: {str(exc) or type(exc).__name__}; "
                         "set TSCLI_ORT_INCLUDE to local headers instead") from None
    digest = hashlib.sha256(blob).hexdigest()
    if digest != sha256:
        raise TscliError(f"{url} has SHA-256 {digest}, expected {sha256}; not using it")
    data = next((body for name, body in _ar_members(blob).items() if name.startswith("data.tar")), None)
    if data is None:
        raise TscliError(f"{url} holds no data.tar member")
    target.parent.mkdir(parents=True, exist_ok=True)
    # Unpack beside the target and rename, so a reader never sees half the headers.
    staging = Path(tempfile.mkdtemp(prefix=".ort-include-", dir=target.parent))
    try:
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            for member in tar.getmembers():
                relative = _header_path(member.name) if member.isfile() else None
                if relative is None:
                    continue
                (staging / relative).parent.mkdir(parents=True, exist_ok=True)
                (staging / relative).write_bytes(tar.extractfile(member).read())
        if not (staging / HEADER).is_file():
            raise TscliError(f"{url} holds no {HEADER}")
        _install(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return target


def library_abi(library: str | Path) -> int | None:
    """The ABI version a tscli op library reports, or None for a library that is not one of ours
    (or not loadable with ctypes: ORT then says why when it registers it)."""
    try:
        return int(ctypes.CDLL(str(library)).tscli_ort_ops_abi_version())
    except (OSError, AttributeError):
        return None


def check_library_abi(library: str | Path) -> None:
    """A tscli op library built from other sources than this tscli's would be given tensors of
    the wrong type (ABI 1 took bool flags): refuse it with the rebuild command."""
    abi = library_abi(library)
    if abi is not None and abi != ABI_VERSION:
        raise ModelFileError(f"{library} is a tscli ORT op library of ABI {abi}; this tscli needs ABI {ABI_VERSION} "
                             "(int32 valid/mask): rebuild it with `python -m tscli.plugins.ort_ops`")


def build_ort_ops(include_dir: str | Path | None = None, force: bool = False) -> Path:
    """Compile csrc/ats_ort_ops.cpp (cached by sources, headers and flags); return the .so path."""
    headers = find_ort_headers(include_dir)
    library = compile_library("libtscli_ort_ops", (*ORT_SOURCES, (headers / HEADER).resolve()), "ats_ort_ops.cpp",
                              extra_flags=(f"-I{headers}", "-fvisibility=hidden"), force=force)
    abi = library_abi(library)
    if abi != ABI_VERSION:
        raise TscliError(f"{library} has ABI {abi}, expected {ABI_VERSION}; delete it")
    return library


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tscli.plugins.ort_ops", description=__doc__.splitlines()[0])
    parser.add_argument("--fetch-headers", action="store_true", help="download the C API headers first")
    parser.add_argument("--include", default=None, help="folder holding onnxruntime_c_api.h")
    args = parser.parse_args(argv)
    try:
        if args.fetch_headers:
            print(f"headers: {fetch_ort_headers()}")
        print(f"ort ops: {build_ort_ops(args.include)}")
    except TscliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(_main())
