"""A full host disk against a real hostd (TCG here): the VM pauses, nothing
is lost, and it runs on once there is room.

hostd's runtime dir, where the VMs' disk overlays live, is a small tmpfs
here, and the test fills it with a file of its own, as another program on
the host (or sandboxes admitted with the disk overcommitted) would. A guest
that writes then finds the host's filesystem full: QEMU pauses it
(werror=enospc) and keeps the write; hostd holds the agent's deadlines
(which the test shortens to seconds, so a pause taken for a stuck agent
would end the sandbox), answers other calls at once with 503 and why, and
resumes the VM when the test removes its file. The sandbox's status says
why it is paused meanwhile. The write completes, and
what the guest reads back from its disk is what it wrote.
"""

from __future__ import annotations

import hashlib
import os
import random
import threading
import time

import pytest

from conftest import REPO
from hostd_process import hostd_session
from vesicle import Sandbox
from vesicle.errors import UnavailableError

PAUSED = "the VM is paused until there is room"
RESUMED = "a VM paused on a full host disk runs again"
WRITE_MIB = 96
SEED = 7


@pytest.fixture(scope="module")
def small_disk_hostd():
    config = (
        "disable_pools: true\n"
        # The host disk is filled on purpose: admission would refuse the
        # sandbox's 2 GiB disk on a 640 MiB filesystem.
        "admission { disabled: true }\n"
        # A held agent must outlast these: without the hold, a ping during
        # the paused exec would end the sandbox after 3 + 2 s.
        "agent_deadlines { call_timeout_s: 2 liveness_s: 3 }\n"
    )
    with hostd_session(REPO, max_sandboxes=2, extra_config=config, runtime_tmpfs_mib=640) as h:
        yield h


def wait_for(predicate, timeout_s, what):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout_s} s: {what}")


def test_a_vm_on_a_full_host_disk_pauses_and_runs_on_when_there_is_room(small_disk_hostd):
    h = small_disk_hostd
    sb = Sandbox(url=h.url, api_key=h.key, idle_timeout_s=600)
    filler = h.runtime_dir / "filler"
    try:
        # Leave the guest less room on the host than it is about to write.
        free = os.statvfs(h.runtime_dir)
        left_mib = free.f_bavail * free.f_frsize // (1 << 20)
        assert left_mib > WRITE_MIB + 64, f"only {left_mib} MiB free in the test's tmpfs"
        with open(filler, "wb") as out:
            out.truncate(0)
            chunk = b"\xa5" * (1 << 20)
            for _ in range(left_mib - WRITE_MIB // 2):
                out.write(chunk)

        expected = hashlib.sha256(random.Random(SEED).randbytes(WRITE_MIB << 20)).hexdigest()
        write = (
            "import os, random\n"
            f"data = random.Random({SEED}).randbytes({WRITE_MIB} << 20)\n"
            "with open('/root/big', 'wb') as f:\n"
            "    f.write(data)\n"
            "    f.flush()\n"
            "    os.fsync(f.fileno())\n"
            "print('written', len(data))\n"
        )
        outcome = {}

        def writer():
            try:
                outcome["run"] = sb.run_code(write, timeout=240)
            except Exception as e:  # the assertion below says what it was
                outcome["error"] = e

        thread = threading.Thread(target=writer)
        thread.start()
        wait_for(lambda: PAUSED in h.log() or not thread.is_alive(), 180, "the VM paused")
        assert thread.is_alive(), f"the write ended before the disk filled: {outcome}"

        # Held past every (shortened) agent deadline: the sandbox lives on.
        time.sleep(8)
        started = time.monotonic()
        with pytest.raises(UnavailableError) as held:
            sb.download("/etc/hostname")
        took = time.monotonic() - started
        message = str(held.value)
        assert "paused" in message and "disk is full" in message, message
        assert "retry later" in message, message
        assert took < 2, f"a call to a paused VM took {took:.1f} s to fail"
        # Its status says so too, while the sandbox stays ready.
        status = sb.refresh()
        assert status["state"] == "ready", status
        assert "disk is full" in status.get("paused", ""), status
        assert thread.is_alive(), outcome

        filler.unlink()
        thread.join(60)
        assert not thread.is_alive(), "the write did not finish after the disk had room again"
        assert "error" not in outcome, outcome
        run = outcome["run"]
        assert run.error is None and run.stdout == f"written {WRITE_MIB << 20}\n", run
        assert RESUMED in h.log()
        after = sb.refresh()
        assert after["state"] == "ready" and not after.get("paused"), after
        for line in h.log().splitlines():
            if PAUSED in line or RESUMED in line:
                print(line)

        # What the guest's disk holds is what it wrote (read past its page cache).
        check = sb.run_code(
            "sync; echo 3 > /proc/sys/vm/drop_caches; sha256sum /root/big | cut -d' ' -f1",
            language="bash",
            timeout=120,
        )
        assert check.stdout.strip() == expected, check
        assert sb.run_code("print(2)").stdout == "2\n"
        assert "sandbox died" not in h.log()
    finally:
        if filler.exists():
            filler.unlink()
        sb.close()
