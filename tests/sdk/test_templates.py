"""Saved templates against a real hostd booting real VMs (TCG here).

One hostd for the module (no base pools: the only QEMUs are the tests'
own and the template's pool of one), with a second key to show that a
key's template is invisible to another. Everything about a sandbox made
from a template is asserted from inside its guest: the package pip
installed (from a wheel made here: no index, no network), and the Python
global its REPL held.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest

from conftest import REPO
from hostd_process import close_all, hostd_session
from vesicle import Client, Sandbox
from vesicle.errors import ConflictError, NotFoundError, QuotaExceededError

MEMORY_MIB = 512
NAME = "tpl-test"
WHEEL = "/tmp/tplwheel-1.0-py3-none-any.whl"


@pytest.fixture(scope="module")
def tpl_hostd():
    with hostd_session(
        REPO,
        max_sandboxes=4,
        # The scale tier keeps at most 520 MiB of Spaces and templates: one
        # template of a 512 MiB guest fits, and then nothing more.
        extra_config="disable_pools: true\ntemplate_pool_size: 1\n"
        "tiers { scale { max_spaces_mib: 520 } }\n",
        admin_key=True,
    ) as running:
        yield running


def args(hostd, key=None):
    return {"url": hostd.url, "api_key": key or hostd.key}


def value(sb, code):
    result = sb.run_code(code)
    assert result.error is None, result.error
    return result.result


def shell(sb, command):
    result = sb.run_code(command, language="bash")
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return result.stdout


def wheel() -> bytes:
    """A pure-Python wheel of the package `tplwheel` (what pip installs offline)."""
    files = {
        "tplwheel.py": b"VALUE = 'from the template package'\n",
        "tplwheel-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: tplwheel\nVersion: 1.0\n",
        "tplwheel-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = ""
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record += f"{name},sha256={digest},{len(data)}\n"
    files["tplwheel-1.0.dist-info/RECORD"] = (record + "tplwheel-1.0.dist-info/RECORD,,\n").encode()
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return out.getvalue()


def wait_for_pool(hostd, name, timeout_s=180.0):
    """Until the template's pool has a VM waiting (under TCG a restore takes seconds)."""
    deadline = time.monotonic() + timeout_s
    with Client(**args(hostd)) as client:
        while client.template(name).pool_ready < 1:
            assert time.monotonic() < deadline, f"template {name}'s pool did not fill in {timeout_s} s"
            time.sleep(0.5)


def assert_templated(sb):
    """What the template holds, seen from inside `sb`: its package and its REPL's state."""
    assert "from the template package" in shell(sb, "python3 -c 'import tplwheel; print(tplwheel.VALUE)'")
    assert "Version: 1.0" in shell(sb, "pip show tplwheel")
    assert value(sb, "GLOBAL") == "'from the template package!'"
    assert value(sb, "tplwheel.VALUE") == "'from the template package'"


def test_template_lifecycle_ownership_fork_and_restart(tpl_hostd):
    hostd = tpl_hostd
    other = hostd.admin_key  # another key (admin, but the template is not global)
    made = []
    try:
        source = Sandbox(memory_mib=MEMORY_MIB, **args(hostd))
        made.append(source)
        source.upload(wheel(), WHEEL)
        shell(source, f"pip install --no-index --no-cache-dir {WHEEL} && rm {WHEEL}")
        value(source, "import tplwheel; GLOBAL = tplwheel.VALUE + '!'")
        saved = source.save_template(NAME)
        assert saved.name == NAME and saved.own and not saved.global_
        assert saved.memory_mib == MEMORY_MIB and saved.memory_bytes > 0 and saved.disk_bytes > 0
        # The sandbox it was saved from runs on, state and all.
        assert_templated(source)
        assert value(source, "GLOBAL = 'changed'; GLOBAL") == "'changed'"

        with Client(**args(hostd)) as client:
            assert [t.name for t in client.templates()] == [NAME]
            assert client.template_usage()["count"] == 1
            with pytest.raises(ConflictError):  # the name is taken
                source.save_template(NAME)

        # From the template's warm pool.
        wait_for_pool(hostd, NAME)
        child = Sandbox(template=NAME, **args(hostd))
        made.append(child)
        assert child.info["template"] == NAME
        assert child.info["source"] == "pool", child.info
        assert_templated(child)  # the source's later change is not in it

        # A fork of a templated sandbox.
        [kid] = child.fork(1)
        made.append(kid)
        assert_templated(kid)

        # Another key: not usable, not visible, not deletable.
        with pytest.raises(NotFoundError):
            Sandbox(template=NAME, **args(hostd, other))
        with Client(**args(hostd, other)) as stranger:
            assert stranger.templates() == []
            with pytest.raises(NotFoundError):
                stranger.template(NAME)
            with pytest.raises(NotFoundError):
                stranger.delete_template(NAME)

        # Sandboxes made from it stand on its disk: no delete meanwhile.
        with pytest.raises(ConflictError):
            Sandbox.delete_template(NAME, **args(hostd))
    finally:
        close_all(*reversed(made))

    # After a restart (SIGKILL: nothing gets a chance to tidy up) it is
    # checked from disk and usable.
    hostd.restart(signal.SIGKILL)
    wait_for_pool(hostd, NAME)
    again = Sandbox(template=NAME, **args(hostd))
    try:
        assert again.info["source"] == "pool", again.info
        assert_templated(again)
    finally:
        again.close()
    with pytest.raises(NotFoundError):
        Sandbox(template=NAME, **args(hostd, other))

    Sandbox.delete_template(NAME, **args(hostd))
    with Client(**args(hostd)) as client:
        assert client.templates() == []
    saved_dir = Path(hostd.state_dir) / "templates" / "saved"
    assert [p for p in saved_dir.iterdir() if not p.name.endswith(".removing")] == []


def test_cli_build_is_idempotent_by_recipe(tpl_hostd, tmp_path):
    hostd = tpl_hostd
    package = tmp_path / "clipkg.py"
    package.write_text("ANSWER = 42\n")
    env = dict(os.environ, VESICLE_URL=hostd.url, VESICLE_API_KEY=hostd.key,
               PYTHONPATH=str(REPO / "sdk" / "python"))
    command = [sys.executable, "-m", "vesicle", "--json", "template", "build", "cli-tpl",
               "--upload", f"{package}:/opt/cli/clipkg.py",
               "--run", "python3 -c 'import sys; sys.path.append(\"/opt/cli\"); import clipkg' ",
               "--run", "echo built > /opt/cli/marker", "--pool-size", "0"]
    first = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr
    built = json.loads(first.stdout)
    assert built["built"] is True and built["template"]["recipe_hash"].startswith("sha256:")
    second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr
    again = json.loads(second.stdout)
    assert again["built"] is False
    assert again["template"]["template_id"] == built["template"]["template_id"]

    sb = Sandbox(template="cli-tpl", **args(hostd))
    try:
        assert shell(sb, "cat /opt/cli/marker").strip() == "built"
        assert sb.info["source"] == "template"  # pool size 0: restored on demand
    finally:
        sb.close()
    listed = subprocess.run([sys.executable, "-m", "vesicle", "template", "list"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0 and "cli-tpl" in listed.stdout, listed.stderr
    deleted = subprocess.run([sys.executable, "-m", "vesicle", "template", "delete", "cli-tpl"],
                             env=env, capture_output=True, text=True, timeout=60)
    assert deleted.returncode == 0, deleted.stderr


def test_templates_count_against_the_stored_bytes_quota(tpl_hostd):
    hostd = tpl_hostd
    key = hostd.new_key(tier="scale")
    reload = urllib.request.Request(f"{hostd.url}/v1/admin/keys/reload", method="POST",
                                    headers={"Authorization": f"Bearer {hostd.admin_key}"})
    with urllib.request.urlopen(reload, timeout=30) as answer:
        assert answer.status == 200
    sb = Sandbox(memory_mib=MEMORY_MIB, **args(hostd, key))
    try:
        # 0 MiB kept + about 512 for the template: within 520.
        saved = sb.save_template("quota-tpl")
        assert saved.memory_bytes + saved.disk_bytes > 8 << 20
        # Now the template's bytes are kept: neither a Space of the same
        # guest nor a second template fits, and each refusal says why.
        with pytest.raises(QuotaExceededError) as refused:
            sb.freeze()
        assert "max_spaces_mib" in str(refused.value) and "templates" in str(refused.value)
        with pytest.raises(QuotaExceededError) as refused:
            sb.save_template("quota-tpl-2")
        assert "saving template quota-tpl-2" in str(refused.value)
        # The sandbox is untouched by the refusals; deleting the template
        # gives its bytes back.
        assert value(sb, "6 * 7") == "42"
        Sandbox.delete_template("quota-tpl", **args(hostd, key))
        again = sb.save_template("quota-tpl-2")
        assert again.name == "quota-tpl-2"
        Sandbox.delete_template("quota-tpl-2", **args(hostd, key))
    finally:
        sb.close()
