"""Pre-started VMMs against a real hostd (TCG here): QEMUs started before the
request that needs them (issue 15).

- A pool that keeps no VM waiting (min_ready 0): its first create restores
  on demand, and from then on a QEMU started on the template's snapshot
  waits for the next (a warm restore: no guest runs in it until then).
- A fork of a pool sandbox fills the template's fork landing: its first
  child is a QEMU that was started before the fork.
In both cases the sandbox is the same as one made the usual way, a new
QEMU waits again afterwards, and hostd's shutdown leaves none behind.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from conftest import REPO
from hostd_process import close_all, hostd_session, qemu_processes_under
from vesicle import Client, Sandbox


@pytest.fixture(scope="module")
def prestarted_hostd():
    pools = (
        "pools {\n"
        '  template: "default"\n'
        "  min_ready: 0\n"
        "  max: 2\n"
        "}\n"
    )
    network = (
        "network {\n"
        '  prefix: "vps"\n'
        '  transit: "10.232.0.0/16"\n'
        "  route_table: 1232\n"
        "  rule_priority: 7532\n"
        "}\n"
    )
    with hostd_session(REPO, max_sandboxes=5, extra_config=pools + network, admin_key=True) as running:
        yield running


def prestarted(hostd):
    """/metrics' vesicle_prestarted_vmms: {"waiting": n, "starting": m}."""
    admin = Client(url=hostd.url, api_key=hostd.admin_key)
    with admin._transport.stream("GET", "/metrics") as answer:
        text = answer.read_all().decode()
    found = {}
    for line in text.splitlines():
        if line.startswith("vesicle_prestarted_vmms{"):
            state = line.split('state="', 1)[1].split('"', 1)[0]
            found[state] = int(line.split()[-1])
    assert set(found) == {"waiting", "starting"}, text
    return found


def wait_for_prestarted(hostd, waiting, timeout=120):
    deadline = time.monotonic() + timeout
    while True:
        now = prestarted(hostd)
        if now == {"waiting": waiting, "starting": 0}:
            return
        assert time.monotonic() < deadline, f"pre-started VMMs: {now}, wanted {waiting} waiting"
        time.sleep(0.2)


def connect(hostd):
    return {"url": hostd.url, "api_key": hostd.key}


def assert_forked_family(parent, kids):
    """Children of a parent that set x = 41 and wrote /root/f: its state, their own names."""
    for kid in kids:
        assert kid.info["source"] == "fork"
        assert kid.run_code("x + 1").result == "42"
        assert kid.run_code("open('/root/f').read()").result == "'parent'"
        assert kid.run_code("import socket; socket.gethostname()").result == repr(kid.id)
    # Siblings keep their writes to themselves.
    kids[0].run_code("x = 0")
    assert kids[1].run_code("x").result == "41"
    assert parent.run_code("x").result == "41"


def test_a_pool_miss_takes_a_qemu_started_for_it(prestarted_hostd):
    hostd = prestarted_hostd
    client = Client(**connect(hostd))
    deadline = time.monotonic() + 600
    while client.capacity()["pools"][0]["template_state"] != "ready":
        assert time.monotonic() < deadline, "the template was not built"
        time.sleep(0.5)
    # The default template's fork landing is made once it is ready.
    wait_for_prestarted(hostd, waiting=1)

    first = Sandbox(**connect(hostd))
    try:
        assert first.info["source"] == "restore", first.info
        # The miss asked for a QEMU to wait for the next one.
        wait_for_prestarted(hostd, waiting=2)
        log_before = hostd.log_path.read_text()
        second = Sandbox(**connect(hostd))
        try:
            assert second.info["source"] == "restore", second.info
            assert prestarted(hostd)["waiting"] == 1, "the warm QEMU was not taken"
            # A sandbox like any other: its own identity, a working REPL and shell.
            assert second.run_code("import socket; socket.gethostname()").result == repr(second.id)
            assert second.run_code("21 * 2").result == "42"
            assert second.run_code("echo hi > /tmp/x && cat /tmp/x", language="bash").stdout == "hi\n"
            assert first.run_code("21 * 2").result == "42"
            assert " warn " not in hostd.log_path.read_text()[len(log_before):]
            wait_for_prestarted(hostd, waiting=2)
        finally:
            close_all(second)
    finally:
        close_all(first)


def test_a_fork_fills_the_templates_landing(prestarted_hostd):
    hostd = prestarted_hostd
    wait_for_prestarted(hostd, waiting=2)
    parent = Sandbox(**connect(hostd))  # a warm restore: a VM of the template
    try:
        parent.run_code("x = 41\nimport os\nopen('/root/f', 'w').write('parent')")
        log_before = hostd.log_path.read_text()
        kids = parent.fork(n=2)
        try:
            forked = hostd.log_path.read_text()[len(log_before):]
            assert "fork: running parent saved" in forked and "landing=filled" in forked, forked
            assert_forked_family(parent, kids)
        finally:
            close_all(*kids)
        # Once the fork's children are launched, a new landing waits again.
        wait_for_prestarted(hostd, waiting=2)
    finally:
        close_all(parent)


def landing_qemus(hostd):
    """PIDs of the QEMUs of the fork landing waiting (their VM ids are land-*)."""
    found = []
    for pid in qemu_processes_under([hostd.runtime_dir]):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"vesicle-land-" in f.read():
                    found.append(pid)
        except OSError:
            pass
    return found


def test_a_fork_whose_landing_lost_its_qemu_saves_the_usual_way(prestarted_hostd):
    hostd = prestarted_hostd
    wait_for_prestarted(hostd, waiting=2)
    parent = Sandbox(**connect(hostd))
    try:
        parent.run_code("x = 41\nopen('/root/f', 'w').write('parent')")
        waiting = landing_qemus(hostd)
        assert len(waiting) == 1, waiting
        # As if the kernel's OOM killer or an operator took it.
        os.kill(waiting[0], signal.SIGKILL)
        deadline = time.monotonic() + 10
        while waiting[0] in qemu_processes_under([hostd.runtime_dir]):
            assert time.monotonic() < deadline, "the killed QEMU did not go"
            time.sleep(0.1)
        log_before = hostd.log_path.read_text()
        kids = parent.fork(n=2)
        try:
            forked = hostd.log_path.read_text()[len(log_before):]
            assert "fork: saving into a landing failed; saving the usual way" in forked, forked
            assert "landing=none" in forked, forked
            assert_forked_family(parent, kids)
        finally:
            close_all(*kids)
        # The broken landing is gone (its dir too) and a new one waits.
        wait_for_prestarted(hostd, waiting=2)
        live = set(landing_qemus(hostd))
        assert len(live) == 1 and waiting[0] not in live, live
        dirs = sorted(Path(hostd.runtime_dir).glob("landing-*"))
        assert len(dirs) == 1, dirs
    finally:
        close_all(parent)


def test_shutdown_leaves_no_prestarted_qemu(prestarted_hostd):
    hostd = prestarted_hostd
    wait_for_prestarted(hostd, waiting=2)
    assert len(qemu_processes_under([hostd.runtime_dir])) >= 2
    hostd.stop()
    assert qemu_processes_under([hostd.runtime_dir]) == []
