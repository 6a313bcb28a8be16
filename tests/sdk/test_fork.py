"""fork(n) and merge_into against a real hostd booting real VMs (TCG here).

One hostd for the module, with room for a family of sandboxes and a warm
pool of one VM, so both kinds of parent are forked: a cold-booted one (its
RAM a file of its own) and one that came from the pool (its RAM a private
copy of the template's).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from conftest import REPO
from hostd_process import close_all, hostd_session
from vesicle import Client, Sandbox
from vesicle.errors import (
    CapacityError,
    ConflictError,
    InvalidRequestError,
    NotFoundError,
)

MAX_SANDBOXES = 7
MIB = 1024 * 1024


@pytest.fixture(scope="module")
def fork_hostd():
    pools = (
        "pools {\n"
        '  template: "default"\n'
        "  min_ready: 1\n"
        "  max: 2\n"
        '  preload_modules: "numpy"\n'
        "}\n"
    )
    with hostd_session(REPO, max_sandboxes=MAX_SANDBOXES, extra_config=pools) as running:
        yield running


def connect_args(hostd):
    return {"url": hostd.url, "api_key": hostd.key}


def value(sb, code):
    result = sb.run_code(code)
    assert result.error is None, result.error
    return result.result


def fork_files(hostd):
    """The fork snapshots on this host: their dirs and RAM files."""
    return sorted(
        [p.name for p in Path(hostd.runtime_dir).glob("fork-*")]
        + [p.name for p in Path(hostd.shm_dir).glob("vesicle-fork-*")]
    )


def family_memory_bytes(hostd, ids):
    """The memory the VMs of sandboxes `ids` hold: each QEMU's anonymous pages (its own
    heap, TCG's code cache, the copy-on-write copies of guest pages) plus the
    tmpfs pages of their RAM files (a fork snapshot's pages counted once,
    however many VMs map them). Unlike the host's free memory, other work
    on the machine does not move it."""
    markers = [f"{hostd.runtime_dir}/{i}/".encode() for i in ids]
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            if b"qemu-system" not in cmdline or not any(m in cmdline for m in markers):
                continue
            with open(f"/proc/{entry}/smaps_rollup") as rollup:
                for line in rollup:
                    if line.startswith("Anonymous:"):
                        total += int(line.split()[1]) * 1024
        except OSError:
            continue
    for path in Path(hostd.shm_dir).iterdir():
        if not path.name.startswith("vesicle-template-"):  # the pool's, not the family's
            total += path.stat().st_blocks * 512
    return total


def test_children_start_from_the_parents_state_and_diverge(fork_hostd):
    # A size no pool serves: a cold boot, its RAM a file of its own.
    parent = Sandbox(memory_mib=768, **connect_args(fork_hostd))
    assert parent.info["source"] == "boot"
    kids = []
    try:
        value(parent, "import pandas as pd\ndf = pd.DataFrame({'a': range(100_000)})\nx = 1")
        started = parent.run_code(
            "nohup sh -c 'while true; do date +%s%N >> /tmp/ticks; sleep 0.2; done' "
            ">/dev/null 2>&1 & echo $!",
            language="bash",
        )
        ticker = int(started.stdout.strip())
        parent.run_code("echo parent > /root/note.txt", language="bash")

        before = time.monotonic()
        kids = parent.fork(n=3)
        took = time.monotonic() - before
        print(f"fork(3) of a cold-booted parent took {took * 1000:.0f} ms at the SDK")
        assert len({k.id for k in kids} | {parent.id}) == 4
        for kid in kids:
            assert kid.forked_from == parent.id
            assert kid.info["source"] == "fork"
            assert value(kid, "df.shape") == "(100000, 1)"
            assert value(kid, "x") == "1"
            # The background process runs on in every child: its ticks go on.
            check = kid.run_code(
                f"kill -0 {ticker} && a=$(wc -l < /tmp/ticks) && sleep 1 && b=$(wc -l < /tmp/ticks)"
                " && [ $b -gt $a ] && cat /root/note.txt",
                language="bash",
            )
            assert check.exit_code == 0, check.stderr
            assert check.stdout.strip() == "parent"

        for i, kid in enumerate(kids):
            value(kid, f"x = {10 + i}")
        for i, kid in enumerate(kids):
            assert value(kid, "x") == str(10 + i)
        assert value(parent, "x") == "1"

        kids[0].run_code("echo only-kid0 > /root/kid0.txt", language="bash")
        for other in [parent, kids[1], kids[2]]:
            seen = other.run_code("test -e /root/kid0.txt", language="bash")
            assert seen.exit_code == 1

        # Fresh identity: entropy, hostname, machine-id.
        randoms = {value(s, "import os; os.urandom(16).hex()") for s in [parent, *kids]}
        assert len(randoms) == 4
        hostnames = [value(s, "import socket; socket.gethostname()") for s in kids]
        assert hostnames == [repr(k.id) for k in kids]
        machine_ids = {
            k.run_code("cat /etc/machine-id", language="bash").stdout.strip() for k in kids
        }
        assert len(machine_ids) == 3

        # merge_into: the parent continues as kids[1]; kids[1]'s id is gone.
        winner = kids[1]
        parent.merge_into(winner)
        assert winner.closed
        assert value(parent, "x") == "11"
        assert parent.run_code("hostname", language="bash").stdout.strip() == parent.id
        with pytest.raises(NotFoundError):
            Sandbox.connect(winner.id, **connect_args(fork_hostd))
        assert value(kids[0], "x") == "10"
        assert value(kids[2], "x") == "12"

        # Closing the parent leaves the children answering.
        parent.close()
        assert value(kids[0], "x") == "10"
        assert value(kids[2], "x") == "12"

        # A fork of a fork.
        grandkids = kids[0].fork(n=1)
        try:
            assert value(grandkids[0], "x") == "10"
            assert grandkids[0].forked_from == kids[0].id
            assert value(grandkids[0], "df.shape") == "(100000, 1)"
        finally:
            close_all(*grandkids)
    finally:
        close_all(parent, *kids)
    assert fork_files(fork_hostd) == []


def test_a_sandbox_from_the_pool_forks(fork_hostd):
    deadline = time.monotonic() + 300
    # The pool fills in the background; wait for a waiting VM.
    while True:
        pools = Client(**connect_args(fork_hostd)).capacity().get("pools", [])
        if pools and pools[0].get("ready", 0) >= 1:
            break
        assert time.monotonic() < deadline, f"the pool did not fill: {pools}"
        time.sleep(1)
    parent = Sandbox(**connect_args(fork_hostd))
    kids = []
    try:
        assert parent.info["source"] == "pool"
        value(parent, "import numpy as np\ny = np.arange(10).sum()")
        kids = parent.fork(n=2)
        for kid in kids:
            assert value(kid, "int(y)") == "45"
        value(kids[0], "y = 7")
        assert value(kids[1], "int(y)") == "45"
        assert value(parent, "int(y)") == "45"
    finally:
        close_all(parent, *kids)
    assert fork_files(fork_hostd) == []


def test_bad_forks_and_merges_are_refused_clearly(fork_hostd):
    parent = Sandbox(memory_mib=768, **connect_args(fork_hostd))
    other = Sandbox(memory_mib=768, **connect_args(fork_hostd))
    kids = []
    try:
        value(parent, "x = 5")
        for n in (0, 33):
            with pytest.raises(InvalidRequestError):
                parent.fork(n=n)
        # Through the API too (the SDK checks first).
        with pytest.raises(InvalidRequestError) as too_many:
            parent._transport.json("POST", f"/v1/sandboxes/{parent.id}/fork", body={"n": 40})
        assert "1 to 32" in str(too_many.value)

        with pytest.raises(ConflictError) as itself:
            parent.merge_into(parent.id)
        assert "itself" in str(itself.value)
        with pytest.raises(ConflictError) as stranger:
            parent.merge_into(other)
        assert "not forked" in str(stranger.value)

        # More children than the host has room for: 503, nothing made, the
        # parent as it was.
        before = {s.id for s in Sandbox.list(**connect_args(fork_hostd))}
        with pytest.raises(CapacityError) as full:
            parent.fork(n=MAX_SANDBOXES)
        assert "free sandbox slots" in str(full.value)
        assert {s.id for s in Sandbox.list(**connect_args(fork_hostd))} == before
        assert value(parent, "x") == "5"
        assert fork_files(fork_hostd) == []

        kids = parent.fork(n=1)
        # A child cannot take its parent.
        with pytest.raises(ConflictError):
            kids[0].merge_into(parent)
    finally:
        close_all(parent, other, *kids)
    assert fork_files(fork_hostd) == []


def test_children_share_the_parents_memory(fork_hostd):
    parent = Sandbox(memory_mib=896, **connect_args(fork_hostd))
    kids = []
    try:
        # 200 MiB of random bytes: every page real, none zero.
        value(parent, "import os\nbig = bytearray(os.urandom(200 * 2**20))\nlen(big)")
        time.sleep(1)
        before = family_memory_bytes(fork_hostd, [parent.id])
        kids = parent.fork(n=4)
        for kid in kids:
            assert value(kid, "len(big)") == str(200 * MIB)
        time.sleep(1)
        grew = family_memory_bytes(fork_hostd, [parent.id] + [k.id for k in kids]) - before
        print(
            f"fork(4) of a parent holding 200 MiB: its VMs' memory grew by {grew / MIB:.0f} MiB "
            f"(4 copies of the array alone would be {4 * 200} MiB)"
        )
        # Each child's QEMU adds memory of its own (~35 MiB measured: its
        # heap, the pages it has written); copies of the array would add
        # 4 x 200 MiB on top. Half of that is the line.
        assert grew < 400 * MIB, f"grew by {grew / MIB:.0f} MiB"
    finally:
        close_all(parent, *kids)
    assert fork_files(fork_hostd) == []
