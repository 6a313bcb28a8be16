"""The PEP 517 build backend of the vesicle Python package, in-tree and standard-library only.

Why: pip builds a package in an isolated environment and first installs the
backend the package names. With setuptools that means downloading it from an
index, which fails on a host without network access. This backend needs
nothing but the Python running pip, so `pip install ./sdk/python` works
offline (pyproject.toml: `requires = []`, `backend-path = ["_build"]`).

It builds a pure-Python wheel (py3-none-any) of the `vesicle` package with
the console script `vesicle`, an sdist, and a PEP 660 editable wheel (a .pth
file pointing at this source tree). The package's metadata lives here;
the version lives in vesicle/_version.py.
"""

from __future__ import annotations

import base64
import csv
import gzip
import hashlib
import io
import os
import re
import tarfile
import time
import zipfile
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "vesicle"
SUMMARY = "Python SDK and CLI for vesicle, self-hostable microVM sandboxes for AI agents"
REQUIRES_PYTHON = ">=3.9"
CONSOLE_SCRIPTS = {"vesicle": "vesicle.cli:main"}
CLASSIFIERS = [
    "Programming Language :: Python :: 3",
    "Operating System :: POSIX :: Linux",
    "Topic :: Software Development :: Interpreters",
]
# What an sdist holds besides the package itself: enough to build the wheel again.
SDIST_EXTRA = ["pyproject.toml", "README.md", "_build/vesicle_build.py"]
WHEEL_TAG = "py3-none-any"


def version() -> str:
    text = (ROOT / PACKAGE / "_version.py").read_text(encoding="utf-8")
    match = re.search(r'^__version__\s*=\s*"([^"]+)"', text, re.MULTILINE)
    if not match:
        raise RuntimeError(f"no __version__ = \"...\" line in {ROOT / PACKAGE / '_version.py'}")
    return match.group(1)


def _dist_info() -> str:
    return f"{PACKAGE}-{version()}.dist-info"


def _epoch() -> int:
    # Reproducible archives: honour SOURCE_DATE_EPOCH, else the earliest date
    # a zip can hold (1980-01-01).
    try:
        epoch = int(os.environ.get("SOURCE_DATE_EPOCH", "315532800"))
    except ValueError:
        epoch = 315532800
    return max(epoch, 315532800)


def _timestamp() -> Tuple[int, int, int, int, int, int]:
    return time.gmtime(_epoch())[:6]


def _package_files() -> List[Path]:
    files = []
    for path in sorted((ROOT / PACKAGE).rglob("*")):
        if not path.is_file() or "__pycache__" in path.parts or path.suffix in (".pyc", ".pyo"):
            continue
        files.append(path)
    if not any(p.name == "__init__.py" for p in files):
        raise RuntimeError(f"{ROOT / PACKAGE} holds no __init__.py: is this the vesicle source tree?")
    return files


# ---- metadata ---------------------------------------------------------------


def _metadata() -> str:
    lines = [
        "Metadata-Version: 2.1",
        f"Name: {PACKAGE}",
        f"Version: {version()}",
        f"Summary: {SUMMARY}",
        f"Requires-Python: {REQUIRES_PYTHON}",
    ]
    lines += [f"Classifier: {c}" for c in CLASSIFIERS]
    readme = ROOT / "README.md"
    if readme.is_file():
        lines.append("Description-Content-Type: text/markdown")
        return "\n".join(lines) + "\n\n" + readme.read_text(encoding="utf-8")
    return "\n".join(lines) + "\n"


def _wheel_file() -> str:
    return (
        "Wheel-Version: 1.0\n"
        f"Generator: vesicle_build {version()}\n"
        "Root-Is-Purelib: true\n"
        f"Tag: {WHEEL_TAG}\n"
    )


def _entry_points() -> str:
    lines = ["[console_scripts]"]
    lines += [f"{name} = {target}" for name, target in CONSOLE_SCRIPTS.items()]
    return "\n".join(lines) + "\n"


def _metadata_files() -> Dict[str, bytes]:
    return {
        "METADATA": _metadata().encode("utf-8"),
        "WHEEL": _wheel_file().encode("utf-8"),
        "entry_points.txt": _entry_points().encode("utf-8"),
        "top_level.txt": f"{PACKAGE}\n".encode("utf-8"),
    }


def _write_metadata_dir(directory: str) -> str:
    dist_info = Path(directory) / _dist_info()
    dist_info.mkdir(parents=True, exist_ok=True)
    for name, data in _metadata_files().items():
        (dist_info / name).write_bytes(data)
    return dist_info.name


# ---- wheels -----------------------------------------------------------------


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
    return "sha256=" + digest.decode("ascii")


def _write_wheel(wheel_directory: str, contents: Iterable[Tuple[str, bytes]]) -> str:
    name = f"{PACKAGE}-{version()}-{WHEEL_TAG}.whl"
    dist_info = _dist_info()
    entries = list(contents)
    entries += [(f"{dist_info}/{n}", d) for n, d in _metadata_files().items()]

    record = io.StringIO()
    writer = csv.writer(record, lineterminator="\n")
    for arcname, data in entries:
        writer.writerow([arcname, _record_hash(data), str(len(data))])
    writer.writerow([f"{dist_info}/RECORD", "", ""])
    entries.append((f"{dist_info}/RECORD", record.getvalue().encode("utf-8")))

    Path(wheel_directory).mkdir(parents=True, exist_ok=True)
    target = Path(wheel_directory) / name
    partial = target.with_name(target.name + ".part")
    stamp = _timestamp()
    with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for arcname, data in entries:
            info = zipfile.ZipInfo(arcname, date_time=stamp)
            info.external_attr = (0o100644 << 16)
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
    os.replace(partial, target)
    return name


def build_wheel(
    wheel_directory: str,
    config_settings: Optional[dict] = None,
    metadata_directory: Optional[str] = None,
) -> str:
    contents = [
        (path.relative_to(ROOT).as_posix(), path.read_bytes()) for path in _package_files()
    ]
    return _write_wheel(wheel_directory, contents)


def build_editable(
    wheel_directory: str,
    config_settings: Optional[dict] = None,
    metadata_directory: Optional[str] = None,
) -> str:
    # A .pth line puts this source tree on sys.path, so edits show at once.
    _package_files()  # fail early on a broken tree
    pth = (str(ROOT) + "\n").encode("utf-8")
    return _write_wheel(wheel_directory, [(f"__editable__.{PACKAGE}-{version()}.pth", pth)])


def get_requires_for_build_wheel(config_settings: Optional[dict] = None) -> List[str]:
    return []


def get_requires_for_build_editable(config_settings: Optional[dict] = None) -> List[str]:
    return []


def get_requires_for_build_sdist(config_settings: Optional[dict] = None) -> List[str]:
    return []


def prepare_metadata_for_build_wheel(
    metadata_directory: str, config_settings: Optional[dict] = None
) -> str:
    return _write_metadata_dir(metadata_directory)


def prepare_metadata_for_build_editable(
    metadata_directory: str, config_settings: Optional[dict] = None
) -> str:
    return _write_metadata_dir(metadata_directory)


# ---- sdist ------------------------------------------------------------------


def build_sdist(sdist_directory: str, config_settings: Optional[dict] = None) -> str:
    base = f"{PACKAGE}-{version()}"
    name = base + ".tar.gz"
    members: List[Tuple[str, bytes]] = [("PKG-INFO", _metadata().encode("utf-8"))]
    for rel in SDIST_EXTRA:
        path = ROOT / rel
        if path.is_file():
            members.append((rel, path.read_bytes()))
    members += [(p.relative_to(ROOT).as_posix(), p.read_bytes()) for p in _package_files()]

    Path(sdist_directory).mkdir(parents=True, exist_ok=True)
    target = Path(sdist_directory) / name
    partial = target.with_name(target.name + ".part")
    mtime = _epoch()
    with open(partial, "wb") as raw, gzip.GzipFile(
        filename="", mode="wb", fileobj=raw, mtime=mtime
    ) as gz, tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for rel, data in members:
            info = tarfile.TarInfo(f"{base}/{rel}")
            info.size = len(data)
            info.mode = 0o644
            info.mtime = mtime
            info.uname = info.gname = "root"
            tar.addfile(info, io.BytesIO(data))
    os.replace(partial, target)
    return name
