"""`pip install ./sdk/python` must work offline with Debian's pip, and build a correct wheel."""

import base64
import csv
import hashlib
import io
import os
import subprocess
import tarfile
import zipfile

import pytest

from conftest import SDK

SYSTEM_PYTHON = "/usr/bin/python3"


def _offline_env():
    env = dict(os.environ)
    # No index, no user pip config, no proxy: any download attempt fails the test.
    env.update(
        PIP_NO_INDEX="1",
        PIP_CONFIG_FILE=os.devnull,
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        http_proxy="http://127.0.0.1:9",
        https_proxy="http://127.0.0.1:9",
    )
    env.pop("PYTHONPATH", None)
    env.pop("VESICLE_URL", None)
    env.pop("VESICLE_API_KEY", None)
    return env


def _run(args, **kw):
    p = subprocess.run(args, capture_output=True, text=True, env=_offline_env(), timeout=300, **kw)
    assert p.returncode == 0, f"{args} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}"
    return p


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    if not os.path.exists(SYSTEM_PYTHON):
        pytest.skip(f"{SYSTEM_PYTHON} (Debian's python3, the target) is not installed")
    path = tmp_path_factory.mktemp("venv") / "v"
    _run([SYSTEM_PYTHON, "-m", "venv", str(path)])
    return path


def test_pip_install_offline_gives_a_working_package_and_command(venv, tmp_path):
    _run([str(venv / "bin" / "pip"), "install", "--no-index", str(SDK)])
    p = _run([str(venv / "bin" / "vesicle"), "--help"])
    assert "usage: vesicle" in p.stdout and "exec" in p.stdout
    # From a directory without the source tree in it: the installed copy is used.
    p = _run(
        [str(venv / "bin" / "python"), "-c", "import vesicle, sys; print(vesicle.__file__); print(vesicle.Sandbox)"],
        cwd=tmp_path,
    )
    assert p.stdout.startswith(str(venv)), p.stdout
    p = _run([str(venv / "bin" / "python"), "-m", "vesicle", "--version"], cwd=tmp_path)
    assert p.stdout.strip() == "vesicle 0.1.0"
    # No key and nothing listening: a one-line error, exit 1.
    p = subprocess.run([str(venv / "bin" / "vesicle"), "ls"], capture_output=True, text=True, env=_offline_env())
    assert p.returncode == 1 and p.stderr.startswith("vesicle: ") and "VESICLE_API_KEY" in p.stderr
    _run([str(venv / "bin" / "pip"), "uninstall", "-y", "vesicle"])
    assert not (venv / "bin" / "vesicle").exists()


def test_editable_install_points_at_the_source_tree(venv, tmp_path):
    _run([str(venv / "bin" / "pip"), "install", "--no-index", "-e", str(SDK)])
    try:
        p = _run([str(venv / "bin" / "python"), "-c", "import vesicle; print(vesicle.__file__)"], cwd=tmp_path)
        assert p.stdout.strip() == str(SDK / "vesicle" / "__init__.py")
        _run([str(venv / "bin" / "vesicle"), "--version"])
    finally:
        _run([str(venv / "bin" / "pip"), "uninstall", "-y", "vesicle"])


def test_wheel_is_well_formed(venv, tmp_path):
    _run([str(venv / "bin" / "pip"), "wheel", "--no-index", "--no-deps", "-w", str(tmp_path), str(SDK)])
    (wheel,) = tmp_path.glob("*.whl")
    assert wheel.name == "vesicle-0.1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        dist = "vesicle-0.1.0.dist-info"
        for required in ("METADATA", "WHEEL", "RECORD", "entry_points.txt"):
            assert f"{dist}/{required}" in names
        assert "vesicle/__init__.py" in names and "vesicle/cli.py" in names
        assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)
        metadata = zf.read(f"{dist}/METADATA").decode()
        assert "Name: vesicle\n" in metadata and "Version: 0.1.0\n" in metadata
        assert "Tag: py3-none-any" in zf.read(f"{dist}/WHEEL").decode()
        assert "vesicle = vesicle.cli:main" in zf.read(f"{dist}/entry_points.txt").decode()
        rows = list(csv.reader(io.StringIO(zf.read(f"{dist}/RECORD").decode())))
        recorded = {row[0] for row in rows}
        assert recorded == names
        for path, digest, size in rows:
            if path == f"{dist}/RECORD":
                assert digest == size == ""
                continue
            data = zf.read(path)
            algo, _, value = digest.partition("=")
            expected = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            assert (algo, value, int(size)) == ("sha256", expected, len(data)), path


def test_sdist_builds_and_installs_offline(venv, tmp_path):
    out = tmp_path / "dist"
    code = (
        "import sys; sys.path.insert(0, sys.argv[1] + '/_build'); import vesicle_build as b; "
        "print(b.build_sdist(sys.argv[2]))"
    )
    p = _run([SYSTEM_PYTHON, "-c", code, str(SDK), str(out)], cwd=tmp_path)
    sdist = out / p.stdout.strip()
    assert sdist.name == "vesicle-0.1.0.tar.gz"
    with tarfile.open(sdist) as tar:
        names = set(tar.getnames())
    for member in ("PKG-INFO", "pyproject.toml", "_build/vesicle_build.py", "vesicle/__init__.py"):
        assert f"vesicle-0.1.0/{member}" in names
    _run([str(venv / "bin" / "pip"), "install", "--no-index", str(sdist)])
    try:
        _run([str(venv / "bin" / "vesicle"), "--version"])
    finally:
        _run([str(venv / "bin" / "pip"), "uninstall", "-y", "vesicle"])


def test_every_module_parses_as_python_3_9():
    """Requires-Python says >=3.9: no grammar newer than that (what ast's
    feature_version flags, e.g. match statements). Only Debian's 3.11 runs
    here, so the grammar is checked instead of running a 3.9."""
    import ast

    sources = sorted((SDK / "vesicle").rglob("*.py")) + sorted((SDK / "_build").rglob("*.py"))
    assert sources
    for source in sources:
        try:
            ast.parse(source.read_text(), filename=str(source), feature_version=(3, 9))
        except SyntaxError as error:
            raise AssertionError(f"{source} is not Python 3.9: {error}") from None
