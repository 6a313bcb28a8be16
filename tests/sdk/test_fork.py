"""fork(n) and merge_into against a real hostd booting real VMs (TCG here).

One hostd for the module, with room for a family of sandboxes and a warm
pool of one VM, so both kinds of parent are forked: a cold-booted one (its
RAM a file of its own) and one that came from the pool (its RAM a private
copy of the template's). The pool-sourced families are the ones users get
(`Sandbox()`), so they are checked in full: what a child inherits, what
siblings and generations keep to themselves, merge_into, and that closing
the family leaves no snapshot, memfd, QEMU or slot behind.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from conftest import REPO
from hostd_process import close_all, hostd_session, qemu_processes_under
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
    # Networking on, as an install has it: every VM, fork children included,
    # holds a network slot (a tap in a namespace of its own). No uplink, so
    # egress stays off; names and ranges of its own so this hostd's slots
    # never meet another's.
    network = (
        "network {\n"
        '  prefix: "vfk"\n'
        '  transit: "10.231.0.0/16"\n'
        "  route_table: 1231\n"
        "  rule_priority: 7531\n"
        "}\n"
    )
    with hostd_session(
        REPO, max_sandboxes=MAX_SANDBOXES, extra_config=pools + network, admin_key=True
    ) as running:
        yield running


def connect_args(hostd):
    return {"url": hostd.url, "api_key": hostd.key}


def value(sb, code):
    result = sb.run_code(code)
    assert result.error is None, result.error
    return result.result


def hostd_fds(hostd, prefix):
    """What hostd's open files starting with `prefix` are: their link targets
    in /proc/<hostd>/fd."""
    found = []
    fd_dir = f"/proc/{hostd.pid}/fd"
    for fd in os.listdir(fd_dir):
        try:
            target = os.readlink(f"{fd_dir}/{fd}")
        except OSError:  # closed since the listing
            continue
        if target.startswith(prefix):
            found.append(target)
    return sorted(found)


def hostd_memfds(hostd):
    """The memory files hostd holds open (guest RAM is in memfds): "/memfd:<name> (deleted)"."""
    return hostd_fds(hostd, "/memfd:")


def hostd_taps(hostd):
    """The taps hostd holds open: one per network slot a VM holds (a slot
    released to the bridge's pool has its tap closed)."""
    return hostd_fds(hostd, "/dev/net/tun")


def fork_files(hostd, family=()):
    """The fork snapshots on this host: their dirs, named RAM files, and the
    RAM memfds hostd holds for them (named vesicle-fork-*, or after a VM of
    `family` whose own memory a snapshot sealed)."""
    names = ["vesicle-fork-"] + [f"vesicle-{i}" for i in family]
    # A fork landing (QEMUs started ahead for the next fork) is host state,
    # like the pool, until a fork fills it: then its dir holds the state.
    filled_landings = [
        p.name for p in Path(hostd.runtime_dir).glob("landing-*") if (p / "state").exists()
    ]
    return sorted(
        filled_landings
        + [p.name for p in Path(hostd.runtime_dir).glob("fork-*")]
        + [p.name for p in Path(hostd.shm_dir).glob("vesicle-fork-*")]
        + [m for m in hostd_memfds(hostd) if any(m.startswith("/memfd:" + n) for n in names)]
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


def has_cap_sys_resource():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> 24 & 1)
    return False


def test_out_of_memory_the_kernel_ends_a_vmm_before_hostd(fork_hostd):
    # hostd lowers its own score and starts every QEMU at +500 (the Family
    # checks each member's): when the host runs out of memory, one sandbox
    # fails rather than hostd and every sandbox with it.
    # Lowering needs CAP_SYS_RESOURCE, which root lacks in some containers
    # (these CI machines): hostd then stays at 0 and says so in its log.
    adj = Path(f"/proc/{fork_hostd.pid}/oom_score_adj").read_text().strip()
    assert adj == ("-500" if has_cap_sys_resource() else "0"), f"hostd's oom_score_adj is {adj}"
    with Family(fork_hostd) as family:
        family.add(Sandbox(**connect_args(fork_hostd)))
        assert len(family.vmms) == 1


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
    assert fork_files(fork_hostd, [parent.id] + [k.id for k in kids]) == []


def admin_sandboxes(hostd):
    """GET /v1/admin/sandboxes: every key's sandboxes, each with its VMM's pid."""
    admin = Client(url=hostd.url, api_key=hostd.admin_key)
    return admin._transport.json("GET", "/v1/admin/sandboxes")["sandboxes"]


def process_start(pid):
    """The start time of process `pid` (/proc/<pid>/stat field 22), which tells
    it from a later process given the same pid; None when there is none."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def landings_starting(hostd):
    """Fork landings hostd is making (/metrics: vesicle_prestarted_vmms)."""
    admin = Client(url=hostd.url, api_key=hostd.admin_key)
    with admin._transport.stream("GET", "/metrics") as answer:
        text = answer.read_all().decode()
    for line in text.splitlines():
        if line.startswith('vesicle_prestarted_vmms{state="starting"}'):
            return int(line.split()[-1])
    raise AssertionError("/metrics has no vesicle_prestarted_vmms")


def quiet_host(hostd, timeout=300):
    """Waits until the pool holds a ready VM and nothing boots, the same on two
    looks in a row; returns what the host holds then: its capacity answer,
    the number of memfds hostd holds (the template's and the pool's) and of
    taps (the pool VMs' network slots)."""
    client = Client(**connect_args(hostd))
    deadline = time.monotonic() + timeout
    previous = None
    while True:
        room = client.capacity()
        pools = room.get("pools", [])
        settled = (
            room.get("booting") == 0
            and pools
            and pools[0].get("ready", 0) >= 1
            and pools[0].get("booting") == 0
            and landings_starting(hostd) == 0
        )
        now = (room, len(hostd_memfds(hostd)), len(hostd_taps(hostd)))
        if settled and now == previous:
            return now
        previous = now if settled else None
        assert time.monotonic() < deadline, f"the host did not settle: {room}"
        time.sleep(0.5)


class Family:
    """Every sandbox of one fork family, and every VMM (pid, start time) they ran on.

    A context manager: entered on a quiet host (quiet_host), it closes every
    member at the end, and when the body passed, checks that closing left
    nothing (close_and_check_gone)."""

    def __init__(self, hostd):
        self.hostd = hostd
        self.members = []
        self.vmms = {}
        self.before = None

    def __enter__(self):
        self.before = quiet_host(self.hostd)
        return self

    def __exit__(self, kind, error, trace):
        if kind is None:
            self.close_and_check_gone()
        else:  # the body's failure is the one to see
            close_all(*self.members)
        return False

    def add(self, *sandboxes):
        self.members += sandboxes
        self.note_vmms()
        return sandboxes

    def note_vmms(self):
        """Records the VMMs the open members run on now (a merge moves one)."""
        ids = {m.id for m in self.members if not m.closed}
        listed = {e["sandbox"]["id"]: e for e in admin_sandboxes(self.hostd)}
        for sandbox_id in ids:
            entry = listed[sandbox_id]
            assert entry["has_vm"], entry
            pid = int(entry["vmm_pid"])
            self.vmms[pid] = process_start(pid)
            assert self.vmms[pid] is not None, f"{sandbox_id}'s VMM {pid} is not running"
            # Out of memory, the kernel ends a sandbox's QEMU before hostd
            # (-500, test_out_of_memory_the_kernel_ends_a_vmm_before_hostd).
            adj = Path(f"/proc/{pid}/oom_score_adj").read_text().strip()
            assert adj == "500", f"{sandbox_id}'s VMM {pid} has oom_score_adj {adj}"

    def ids(self):
        return [m.id for m in self.members]

    def leftovers(self):
        """What the host still holds of this family, by kind."""
        ids = self.ids()
        runtime = Path(self.hostd.runtime_dir)
        return {
            "listed sandboxes": [
                e["sandbox"]["id"] for e in admin_sandboxes(self.hostd) if e["sandbox"]["id"] in ids
            ],
            "fork snapshots": fork_files(self.hostd, ids),
            "VMMs alive": [p for p, start in self.vmms.items() if process_start(p) == start],
            "QEMUs naming a member": qemu_processes_under([runtime / i for i in ids]),
            "runtime dirs": [i for i in ids if (runtime / i).exists()],
        }

    def close_and_check_gone(self, timeout=90):
        """Closes every member; then nothing of the family is left and the host
        is back where quiet_host found it on entry: its sandbox slots free,
        the pool as full, hostd holding as many memfds and network slots. Closing may finish in
        the background: waits up to `timeout` s."""
        close_all(*self.members)
        deadline = time.monotonic() + timeout
        while True:
            left = {kind: what for kind, what in self.leftovers().items() if what}
            after = quiet_host(self.hostd)
            before = self.before
            if not left and after == before:
                return
            if time.monotonic() > deadline:
                assert not left, f"closing the family left {left}"
                assert after[0] == before[0], "the host's capacity did not come back"
                assert after[1] == before[1], (
                    f"hostd holds {after[1]} memfds, {before[1]} before the family: "
                    f"{hostd_memfds(self.hostd)}"
                )
                assert after[2] == before[2], (
                    f"hostd holds {after[2]} taps (network slots), {before[2]} before the family"
                )
            time.sleep(0.5)


def pool_sandbox(hostd):
    parent = Sandbox(**connect_args(hostd))
    assert parent.info["source"] == "pool", parent.info
    return parent


def bash(sb, script):
    done = sb.run_code(script, language="bash")
    assert done.exit_code == 0, (script, done.stdout, done.stderr)
    return done.stdout.strip()


# A background process the parent starts from bash: a counter, one a tick,
# in a file (replaced whole, so a reader never sees it half written); nohup
# so it outlives the exec that started it.
TICKER = (
    "nohup python3 -c 'import os, time\n"
    "i = 0\n"
    "while True:\n"
    "    i += 1\n"
    '    open("/tmp/counter.new", "w").write(str(i))\n'
    '    os.replace("/tmp/counter.new", "/tmp/counter")\n'
    "    time.sleep(0.1)' >/dev/null 2>&1 & echo $!"
)


def counter(sb):
    return int(bash(sb, "cat /tmp/counter"))


def start_ticker(sb):
    """Starts TICKER in `sb`; returns its pid once it has ticked (a Python
    start under TCG takes a while)."""
    pid = int(bash(sb, TICKER))
    bash(sb, "for i in $(seq 100); do [ -s /tmp/counter ] && exit 0; sleep 0.1; done; exit 1")
    return pid


def ticks_on(sb, within=5.0):
    """Whether the counter in `sb` advances within `within` s (it ticks every
    0.1 s; a loaded host may starve a TCG guest for a while)."""
    first = counter(sb)
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        time.sleep(0.2)
        if counter(sb) > first:
            return True
    return False


def stop(sb, pid):
    """Kills process `pid` in `sb` and waits until it is dead (gone, or a zombie
    nobody reaps): after this it writes nothing more."""
    bash(
        sb,
        f"kill {pid} && while [ -e /proc/{pid} ] && ! grep -q '^[^)]*) Z' /proc/{pid}/stat; "
        "do sleep 0.05; done",
    )


def vmm_of(hostd, sandbox_id):
    """(pid, start time) of the QEMU hostd runs sandbox `sandbox_id` in."""
    for entry in admin_sandboxes(hostd):
        if entry["sandbox"]["id"] == sandbox_id:
            pid = int(entry["vmm_pid"])
            return pid, process_start(pid)
    raise AssertionError(f"{sandbox_id} is not in /v1/admin/sandboxes")


# A parent that wrote less than fork_parent_restart_mib (64, hostd's
# default) runs on in its QEMU after the fork; one that wrote more is
# restarted on the fork's snapshot. Either way it is the same machine.
@pytest.mark.parametrize("written_mib", [0, 80], ids=["runs-on", "restarted"])
def test_a_pool_sandboxs_children_inherit_its_state_and_keep_their_own(fork_hostd, written_mib):
    with Family(fork_hostd) as family:
        (parent,) = family.add(pool_sandbox(fork_hostd))
        value(parent, "import numpy as np\ny = int(np.arange(10).sum())\nnames = ['parent']")
        value(parent, f"import hashlib, os\nblock = os.urandom({written_mib} * 2**20)")
        digest = value(parent, "hashlib.sha256(block).hexdigest()")
        home = bash(parent, "echo $HOME")
        machine_id = bash(parent, "cat /etc/machine-id")
        bash(parent, "echo parent-home > ~/note.txt && echo parent-tmp > /tmp/note.txt")
        ticker = start_ticker(parent)
        assert ticks_on(parent)
        vmm_before = vmm_of(fork_hostd, parent.id)

        kids = family.add(*parent.fork(n=2))
        # The parent answers (once restarted, when it was), as itself, its
        # process ticking on.
        assert bash(parent, "hostname") == parent.id
        assert bash(parent, "cat /etc/machine-id") == machine_id
        assert value(parent, "hashlib.sha256(block).hexdigest()") == digest
        assert ticks_on(parent)
        if written_mib >= 64:
            assert vmm_of(fork_hostd, parent.id) != vmm_before, "not restarted"
        else:
            assert vmm_of(fork_hostd, parent.id) == vmm_before, "restarted"
        # The family's RAM is where fork_files() and the memfd count look.
        assert fork_files(fork_hostd, family.ids()), "no fork snapshot seen while the family lives"
        # Its RAM is a memfd of its own, or the one of the landing it filled
        # (counted in `before`, until a new landing is made).
        assert len(hostd_memfds(fork_hostd)) >= family.before[1]
        # The children hold a slot each (the parent holds the pool VM's); the
        # first may hold the one its QEMU, started ahead, held already.
        assert len(hostd_taps(fork_hostd)) >= family.before[2] + 1
        # The parent's ticker stops: from now on only the children's tick.
        stop(parent, ticker)
        stopped_at = counter(parent)
        for kid in kids:
            assert kid.forked_from == parent.id
            assert kid.info["source"] == "fork"
            assert value(kid, "y") == "45"
            assert value(kid, "names") == "['parent']"
            assert value(kid, "hashlib.sha256(block).hexdigest()") == digest
            assert value(kid, "np.arange(3).tolist()") == "[0, 1, 2]"
            assert bash(kid, "cat ~/note.txt /tmp/note.txt") == "parent-home\nparent-tmp"
            assert bash(kid, "echo $HOME") == home
            # The parent's process runs on in the child, and ticks there.
            assert "python3 -c" in bash(kid, f"ps -o args= -p {ticker}")
            assert ticks_on(kid)
        assert counter(parent) == stopped_at

        # Each writes its own globals and files; nobody else sees them.
        for i, kid in enumerate(kids):
            value(kid, f"y = {100 + i}\nnames.append('kid{i}')")
            bash(kid, f"echo kid{i} > ~/note.txt && echo kid{i} > /tmp/kid{i}.txt")
        value(parent, "y = -1\nnames.append('parent-after')")
        bash(parent, "echo parent-after > /tmp/parent-after.txt")
        for i, kid in enumerate(kids):
            assert value(kid, "y") == str(100 + i)
            assert value(kid, "names") == f"['parent', 'kid{i}']"
            assert bash(kid, "cat ~/note.txt") == f"kid{i}"
            assert bash(kid, "ls /tmp/*.txt") == f"/tmp/kid{i}.txt\n/tmp/note.txt"
        assert value(parent, "y") == "-1"
        assert value(parent, "names") == "['parent', 'parent-after']"
        assert bash(parent, "cat ~/note.txt") == "parent-home"
        assert bash(parent, "ls /tmp/*.txt") == "/tmp/note.txt\n/tmp/parent-after.txt"


def test_a_pool_familys_generations_and_merge_into(fork_hostd):
    with Family(fork_hostd) as family:
        (parent,) = family.add(pool_sandbox(fork_hostd))
        value(parent, "gens = [0]")
        bash(parent, "echo 0 > ~/gen0 && echo 0 > /tmp/gen0")
        ticker = start_ticker(parent)
        (uncle,) = family.add(*parent.fork(n=1))
        value(uncle, "gens.append('uncle')")
        # Four generations below the parent, each forked from the one before
        # and adding its mark.
        line = [parent]
        for gen in range(1, 5):
            (kid,) = family.add(*line[-1].fork(n=1))
            assert kid.forked_from == line[-1].id
            assert value(kid, "gens") == str(list(range(gen)))
            value(kid, f"gens.append({gen})")
            bash(kid, f"echo {gen} > ~/gen{gen} && echo {gen} > /tmp/gen{gen}")
            line.append(kid)
        deepest = line[-1]
        assert value(deepest, "gens") == "[0, 1, 2, 3, 4]"
        assert bash(deepest, "cat ~/gen* /tmp/gen*") == "0\n1\n2\n3\n4\n0\n1\n2\n3\n4"
        assert "python3 -c" in bash(deepest, f"ps -o args= -p {ticker}")
        assert ticks_on(deepest)
        # The generations above kept their own state.
        for gen, sb in enumerate(line):
            assert value(sb, "gens") == str(list(range(gen + 1)))
            assert bash(sb, "ls ~/gen* | wc -l") == str(gen + 1)
        assert value(uncle, "gens") == "[0, 'uncle']"
        assert bash(uncle, "ls ~/gen*") == f"{bash(uncle, 'echo $HOME')}/gen0"

        # The parent continues as its great-great-grandchild.
        parent_id = parent.id
        parent.merge_into(deepest)
        assert deepest.closed
        family.note_vmms()
        assert parent.id == parent_id
        assert value(parent, "gens") == "[0, 1, 2, 3, 4]"
        assert bash(parent, "cat ~/gen4 /tmp/gen4") == "4\n4"
        assert bash(parent, "hostname") == parent.id
        assert "python3 -c" in bash(parent, f"ps -o args= -p {ticker}")
        with pytest.raises(NotFoundError):
            Sandbox.connect(deepest.id, **connect_args(fork_hostd))
        # The rest of the family is as it was.
        for gen, sb in enumerate(line[1:-1], start=1):
            assert value(sb, "gens") == str(list(range(gen + 1)))
        assert value(uncle, "gens") == "[0, 'uncle']"
        # And the merged parent forks on.
        (after,) = family.add(*parent.fork(n=1))
        assert value(after, "gens") == "[0, 1, 2, 3, 4]"


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
