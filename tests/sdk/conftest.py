"""Fixtures for the SDK tests: the package from this tree, a scripted fake server, a real hostd."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SDK = REPO / "sdk" / "python"
HERE = Path(__file__).resolve().parent

# Test the package in this tree, not whatever may be installed.
sys.path.insert(0, str(SDK))
sys.path.insert(0, str(HERE))

from fakehostd import FakeHostd  # noqa: E402
from hostd_process import hostd_session  # noqa: E402


@pytest.fixture(autouse=True)
def _no_ambient_config(monkeypatch):
    # A developer's own VESICLE_* must not change what the tests see.
    monkeypatch.delenv("VESICLE_URL", raising=False)
    monkeypatch.delenv("VESICLE_API_KEY", raising=False)


@pytest.fixture
def fake():
    server = FakeHostd()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def hostd():
    """A real hostd booting real VMs, started once for the session."""
    with hostd_session(REPO) as running:
        yield running


def sdk_env(extra=None):
    """Environment for a subprocess that imports vesicle from this tree."""
    env = dict(os.environ)
    env.pop("VESICLE_URL", None)
    env.pop("VESICLE_API_KEY", None)
    env["PYTHONPATH"] = str(SDK)
    if extra:
        env.update(extra)
    return env
