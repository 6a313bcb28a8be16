#!/usr/bin/env python3
"""Writes what the test internet's package host serves (servers.py --files),
for the test that a default sandbox can install packages the way agent code
does: pip from an index, git clone over HTTP, npm from a tarball URL.

  make_packages.py DIR

  DIR/simple/vesicle-tiny/index.html         a PEP 503 index page
  DIR/vesicle_tiny-1.0-py3-none-any.whl      a wheel: `import vesicle_tiny`
  DIR/repo.git/                              a bare repository with README
                                             (git's "dumb" HTTP protocol:
                                             update-server-info has run)
  DIR/vesicle-tiny-1.0.0.tgz                 an npm package tarball

Each package's payload says "tiny 1.0" so the test can check what arrived.
Standard library and git only.
"""
import base64
import hashlib
import io
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path


def record_line(name, data):
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def wheel(out: Path):
    files = {
        "vesicle_tiny/__init__.py": b'VERSION = "tiny 1.0"\n',
        "vesicle_tiny-1.0.dist-info/METADATA": (
            b"Metadata-Version: 2.1\nName: vesicle-tiny\nVersion: 1.0\n"
        ),
        "vesicle_tiny-1.0.dist-info/WHEEL": (
            b"Wheel-Version: 1.0\nGenerator: vesicle-tests\nRoot-Is-Purelib: true\n"
            b"Tag: py3-none-any\n"
        ),
    }
    record = "vesicle_tiny-1.0.dist-info/RECORD"
    lines = [record_line(name, data) for name, data in files.items()] + [f"{record},,"]
    files[record] = ("\n".join(lines) + "\n").encode()
    name = "vesicle_tiny-1.0-py3-none-any.whl"
    with zipfile.ZipFile(out / name, "w", zipfile.ZIP_DEFLATED) as archive:
        for path, data in files.items():
            archive.writestr(path, data)
    index = out / "simple" / "vesicle-tiny"
    index.mkdir(parents=True)
    (index / "index.html").write_text(
        f'<!DOCTYPE html>\n<html><body><a href="../../{name}">{name}</a></body></html>\n'
    )


def repository(out: Path):
    with tempfile.TemporaryDirectory() as work:
        env = {
            "GIT_AUTHOR_NAME": "vesicle",
            "GIT_AUTHOR_EMAIL": "tests@vesicle.invalid",
            "GIT_COMMITTER_NAME": "vesicle",
            "GIT_COMMITTER_EMAIL": "tests@vesicle.invalid",
            "HOME": work,
            "PATH": "/usr/bin:/bin",
        }

        def git(*args, cwd=work):
            subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True)

        git("init", "-q", "-b", "main", ".")
        (Path(work) / "README").write_text("tiny 1.0\n")
        git("add", "README")
        git("commit", "-q", "-m", "tiny 1.0")
        git("clone", "-q", "--bare", work, str(out / "repo.git"))
        git("update-server-info", cwd=out / "repo.git")


def npm_tarball(out: Path):
    files = {
        "package/package.json": b'{"name": "vesicle-tiny", "version": "1.0.0", "main": "index.js"}\n',
        "package/index.js": b'module.exports = "tiny 1.0";\n',
    }
    with tarfile.open(out / "vesicle-tiny-1.0.0.tgz", "w:gz") as archive:
        for path, data in files.items():
            info = tarfile.TarInfo(path)
            info.size = len(data)
            info.mode = 0o644
            archive.addfile(info, io.BytesIO(data))


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: make_packages.py DIR")
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    wheel(out)
    repository(out)
    npm_tarball(out)
    print("packages ready")


if __name__ == "__main__":
    main()
