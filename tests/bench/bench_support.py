"""What the Python benchmarks share besides percentiles (bench_series.py):
waiting for a warm pool, a network section for a test hostd, hostd's
/metrics, the host memory a set of VMs holds and a process's CPU time."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TICK_MS = 1000 / os.sysconf("SC_CLK_TCK")


def cpu_ms(pid):
    """utime + stime of process `pid` (all its threads), in ms."""
    with open(f"/proc/{pid}/stat") as stat:
        # Fields after the command name (which may hold spaces) in parentheses.
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * TICK_MS  # fields 14 and 15 of stat(5)


def host_cpu_ms():
    """(busy, all) CPU time of the whole host in ms, summed over its cores
    (/proc/stat's "cpu" line; idle and iowait are not busy)."""
    with open("/proc/stat") as stat:
        ticks = [int(v) for v in stat.readline().split()[1:]]
    idle = ticks[3] + ticks[4]
    # guest and guest_nice (the last two) are already counted in user and nice.
    total = sum(ticks[:8])
    return (total - idle) * TICK_MS, total * TICK_MS


def wait_for_pool(client, ready=1, timeout_s=600):
    """Waits until the first pool has `ready` VMs waiting (its template built)."""
    deadline = time.monotonic() + timeout_s
    while True:
        pools = client.capacity().get("pools", [])
        if pools and pools[0].get("ready", 0) >= ready:
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"the warm pool did not fill to {ready}: {pools}")
        time.sleep(0.2)


def network_section(prefix, transit, table, extra=""):
    """A `network { ... }` section the way scripts/install.sh writes it (the
    uplink, gateway and resolver scripts/detect-network.sh finds: open egress
    by default), with names and ranges of its own so its slots never meet an
    installed hostd's or another test's. Exits when the host has no uplink."""
    detected = subprocess.run(
        ["bash", str(REPO / "scripts" / "detect-network.sh")], capture_output=True, text=True
    )
    network = detected.stdout.rstrip()
    if detected.returncode != 0 or not network.endswith("}"):
        raise SystemExit(f"scripts/detect-network.sh found no uplink: {detected.stderr.strip()}")
    own = (
        f'  prefix: "{prefix}"\n  transit: "{transit}"\n'
        f"  route_table: {table}\n  rule_priority: {table}\n" + extra
    )
    return network[:-1] + own + "}\n"


def metrics(url, admin_key):
    """hostd's /metrics (Prometheus text), read with an admin key."""
    request = urllib.request.Request(url + "/metrics", headers={"Authorization": f"Bearer {admin_key}"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        return answer.read().decode()


def per_sandbox_mib(text, name):
    """{sandbox id: value in MiB} of every `name{sandbox="..."} value` line."""
    found = re.findall(rf'^{name}\{{sandbox="([^"]*)"\}} ([0-9.e+]+)$', text, re.MULTILINE)
    return {sandbox: float(value) / 2**20 for sandbox, value in found}


def admin_sandboxes(url, admin_key):
    """GET /v1/admin/sandboxes: each sandbox with its vmm_pid."""
    request = urllib.request.Request(
        url + "/v1/admin/sandboxes", headers={"Authorization": f"Bearer {admin_key}"}
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.loads(answer.read())


def qemu_pids_of(hostd, ids):
    """PIDs of the QEMUs of sandboxes `ids`, as hostd reports them (`hostd` a
    running session with an admin key). Not found from the VM dirs: a
    sandbox's is named for the pool VM or pre-started VM it was."""
    wanted = set(ids)
    listed = admin_sandboxes(hostd.url, hostd.admin_key)
    return [
        int(e["vmm_pid"])
        for e in listed.get("sandboxes", [])
        if e["sandbox"]["id"] in wanted and e.get("vmm_pid")
    ]


def family_memory_bytes(hostd_pid, qemu_pids):
    """family_memory_parts summed."""
    return sum(family_memory_parts(hostd_pid, qemu_pids).values())


def family_memory_parts(hostd_pid, qemu_pids):
    """Host memory the VMs `qemu_pids` hold, each page counted once, in bytes:
    {"anonymous": ..., "memfd": ...}.

    Two kinds of pages, neither counted twice:
    - each QEMU's anonymous pages (smaps_rollup "Anonymous": its heap, TCG's
      code cache, and the copy-on-write copies of guest pages it wrote over
      a share=off mapping). They are private to that process, so summing
      over processes counts each once.
    - the pages of the memfds guest RAM lives in (issue 13: hostd creates
      them and passes them to QEMU, so there is no file in shm_dir to
      stat). A memfd is one inode however many QEMUs map it and however
      many descriptors hostd and they hold, so each is taken once, by inode,
      from every descriptor and mapping (map_files) of hostd and of those
      QEMUs, and its allocated
      blocks (st_blocks of the inode, what shmem has allocated, resident
      or not, which neither Rss nor Pss of the mappings gives: a page no
      process has touched since the restore is in the memfd but in no
      mapping) are counted. Summing the mappings' Rss would count a
      snapshot's page once per child; Pss would split it with VMs outside
      the family (pool VMs mapping the template).
    The template memfds hostd holds for its pools are in both a before and
    an after figure: a difference of two calls leaves them out.
    """
    anonymous = 0
    for pid in qemu_pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as rollup:
                for line in rollup:
                    if line.startswith("Anonymous:"):
                        anonymous += int(line.split()[1]) * 1024
        except OSError:
            continue
    seen = set()
    memfd = 0

    def count(path):
        nonlocal memfd
        try:
            link = os.readlink(path)
            # Guest RAM memfds are named vesicle-<what>; the seccomp
            # program's is not guest memory.
            if not link.startswith("/memfd:vesicle-") or "seccomp" in link:
                return
            st = os.stat(path)
        except OSError:
            return
        if (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            memfd += st.st_blocks * 512

    for pid in [hostd_pid, *qemu_pids]:
        # Descriptors, and mappings whose descriptor was closed (map_files).
        for where in (f"/proc/{pid}/fd", f"/proc/{pid}/map_files"):
            try:
                entries = os.listdir(where)
            except OSError:
                continue
            for entry in entries:
                count(f"{where}/{entry}")
    return {"anonymous": anonymous, "memfd": memfd}


DAMON_KDAMONDS = Path("/sys/kernel/mm/damon/admin/kdamonds")


def host_pageout_bytes():
    """Bytes the host's DAMON pageout schemes have reclaimed so far, or None.

    Some hosts (these CI machines among them) run DAMON with a `pageout`
    action on cold physical memory: it unmaps and reclaims page cache under
    the benchmark, and a rep it lands in can be slow for that reason. A
    benchmark reads this before and after each rep to say so. Writing
    update_schemes_stats only refreshes the counters.
    """
    if not DAMON_KDAMONDS.is_dir():
        return None
    total, seen = 0, False
    for kdamond in DAMON_KDAMONDS.iterdir():
        state = kdamond / "state"
        if not kdamond.name.isdigit() or not state.exists():
            continue
        try:
            if state.read_text().strip() != "on":
                continue
            state.write_text("update_schemes_stats")
            for scheme in kdamond.glob("contexts/*/schemes/[0-9]*"):
                if (scheme / "action").read_text().strip() == "pageout":
                    total += int((scheme / "stats" / "sz_applied").read_text())
                    seen = True
        except OSError:
            return None
    return total if seen else None
