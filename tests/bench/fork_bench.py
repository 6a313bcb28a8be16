#!/usr/bin/env python3
"""fork_bench: fork(n) through the Python SDK against a real hostd on loopback.

For n in --ns (default 1 2 4 8), --reps times each:
  fork at the SDK     Sandbox.fork(n) from call to return (every child ready)
  fork server-side    hostd's own figure for the same call (ForkResponse.server_ms)
  first exec          from the fork's return until every child has answered
                      a first `x` (run in parallel, one thread per child),
                      and from the call (issue 15's fork(5) row)
  memory per child    PSS of each child's QEMU (smaps_rollup: the fork
                      snapshot's shared pages are split among the VMs mapping them)
  family growth       host memory the parent's and children's VMs hold after
                      the fork minus the parent's before it, each page once
                      (bench_support.family_memory_parts: QEMUs' anonymous
                      pages plus the guest RAM memfds' blocks)
The parent holds a small DataFrame and, with --parent-mib, a block of
random bytes. --source boot forks a cold-booted parent (its RAM a file of
its own), --source pool a default `Sandbox()` from hostd's default warm pool
(1 GiB, numpy and pandas preloaded; its RAM a private mapping of the
template's). --grandchild forks the parent once first and times the fork
of that child. Prints p50/p95/p99, writes JSON.

  tests/bench/fork_bench.py --hostd build/hostd/hostd --images build/images \\
      [--ns 1 2 4 8] [--reps 5] [--source boot|pool] [--grandchild] [--parent-mib 0] \\
      [--tcg-thread single|multi] [--json out.json]
Issue 15's rows: --source pool --ns 1 5 --parent-mib 100; --source boot --ns 1;
--source pool --grandchild --ns 1; --ns 4 --parent-mib 200 (family growth).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "sdk" / "python"))
sys.path.insert(0, str(REPO / "tests" / "sdk"))

from hostd_process import hostd_session  # noqa: E402
from vesicle import Client, Sandbox  # noqa: E402
from bench_series import summary, write_report  # noqa: E402
from bench_support import (  # noqa: E402
    family_memory_parts,
    host_pageout_bytes,
    qemu_pids_of,
    wait_for_pool,
)

BOOT_MEMORY_MIB = 768  # a size no pool serves: cold boots
MIB = 2**20


def pss_mib(pid):
    with open(f"/proc/{pid}/smaps_rollup") as rollup:
        for line in rollup:
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hostd", default=str(REPO / "build" / "hostd" / "hostd"))
    parser.add_argument("--images", default=str(REPO / "build" / "images"))
    parser.add_argument("--ns", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--source", choices=["boot", "pool"], default="boot")
    parser.add_argument("--parent-mib", type=int, default=0)
    parser.add_argument("--grandchild", action="store_true",
                        help="fork the parent once, then time the forks of that child")
    parser.add_argument("--prestarted", type=int, default=None,
                        help="hostd's prestarted_vmms (QEMUs started ahead for a fork's "
                        "children; default: hostd's)")
    parser.add_argument("--parent-restart-mib", type=int, default=None,
                        help="hostd's fork_parent_restart_mib (a restored parent that wrote "
                        "this many MiB restarts on the fork's snapshot; -1: never; "
                        "default: hostd's)")
    parser.add_argument("--tcg-thread", choices=["single", "multi"],
                        help="hostd's tcg_thread (default: hostd's own)")
    parser.add_argument("--json")
    options = parser.parse_args()
    os.environ["VESICLE_HOSTD"] = options.hostd
    os.environ["VESICLE_IMAGES_DIR"] = options.images

    # --source pool: hostd's default pools (one of the default size, 1 GiB,
    # preloading numpy and pandas), which a `Sandbox()` with no size takes.
    pools = "" if options.source == "pool" else "disable_pools: true\n"
    if options.prestarted is not None:
        pools += f"prestarted_vmms: {options.prestarted}\n"
    if options.parent_restart_mib is not None:
        pools += f"fork_parent_restart_mib: {options.parent_restart_mib}\n"
    if options.tcg_thread:
        pools += f'tcg_thread: "{options.tcg_thread}"\n'
    size = {} if options.source == "pool" else {"memory_mib": BOOT_MEMORY_MIB}
    # The default pool keeps 2 VMs waiting, up to 8.
    slots = max(options.ns) + (10 if options.source == "pool" else 3)
    results = []
    with hostd_session(REPO, max_sandboxes=slots, extra_config=pools, admin_key=True) as hostd:
        args = {"url": hostd.url, "api_key": hostd.key}
        accel = Client(**args).health().get("accel")
        for n in options.ns:
            sdk_ms, server_ms, first_exec_ms, child_pss, growth = [], [], [], [], []
            call_to_answers_ms, anon_growth, memfd_growth, pageout_mib = [], [], [], []
            for _ in range(options.reps):
                if options.source == "pool":
                    wait_for_pool(Client(**args))
                parent = Sandbox(**size, **args)
                kids, middle = [], []
                try:
                    setup = "import pandas as pd\ndf = pd.DataFrame({'a': range(100_000)})\nx = 1\n"
                    if options.parent_mib:
                        setup += f"import os\nblock = bytearray(os.urandom({options.parent_mib} * 2**20))\n"
                    result = parent.run_code(setup)
                    assert result.error is None, result.error
                    forking = parent
                    if options.grandchild:
                        middle = parent.fork(1)
                        forking = middle[0]
                    if options.source == "pool":
                        # The parent's refill done: no pool VM starting
                        # while the family's memory is measured.
                        wait_for_pool(Client(**args), ready=2)
                    family = [parent, *middle]
                    before = family_memory_parts(
                        hostd.pid, qemu_pids_of(hostd, [sb.id for sb in family])
                    )
                    pageout_before = host_pageout_bytes()
                    started = time.monotonic()
                    answer = forking._transport.json(
                        "POST", f"/v1/sandboxes/{forking.id}/fork", body={"n": n}
                    )
                    forked = time.monotonic()
                    kids = [Sandbox.connect(info["id"], **args) for info in answer["children"]]
                    sdk_ms.append((forked - started) * 1000)
                    server_ms.append(answer["server_ms"])

                    def first_exec(kid):
                        out = kid.run_code("x")
                        assert out.result == "1", out
                        return time.monotonic()

                    with concurrent.futures.ThreadPoolExecutor(len(kids)) as pool:
                        answered = list(pool.map(first_exec, kids))
                    first_exec_ms.append((max(answered) - forked) * 1000)
                    call_to_answers_ms.append((max(answered) - started) * 1000)
                    # The forked sandbox answers too (a restarted parent
                    # has its new QEMU) before the family is measured.
                    assert forking.run_code("x").result == "1"
                    for kid in kids:
                        for pid in qemu_pids_of(hostd, [kid.id]):
                            child_pss.append(pss_mib(pid))
                    time.sleep(1)  # the children's first faults settled
                    after = family_memory_parts(
                        hostd.pid, qemu_pids_of(hostd, [sb.id for sb in [*family, *kids]])
                    )
                    grew = {part: (after[part] - before[part]) / MIB for part in after}
                    growth.append(sum(grew.values()))
                    anon_growth.append(grew["anonymous"])
                    memfd_growth.append(grew["memfd"])
                    pageout_after = host_pageout_bytes()
                    pageout = ""
                    if pageout_before is not None and pageout_after is not None:
                        pageout_mib.append((pageout_after - pageout_before) / MIB)
                        pageout = f", host DAMON pageout {pageout_mib[-1]:.0f} MiB"
                    print(f"  rep {len(growth)}: growth {sum(grew.values()):.1f} MiB (anonymous "
                          f"{grew['anonymous']:.1f}, memfds {grew['memfd']:.1f}); server "
                          f"{server_ms[-1]:.0f} ms, until answered {first_exec_ms[-1]:.0f} ms"
                          f"{pageout}")
                finally:
                    for sb in [*kids, *middle, parent]:
                        try:
                            sb.close()
                        except Exception as exc:  # noqa: BLE001
                            print(f"closing {sb.id}: {exc}", file=sys.stderr)
            kind = "grandchild of a " if options.grandchild else ""
            print(f"-- n={n} ({kind}{options.source} parent, {options.parent_mib} MiB block)")
            results.append(summary(f"fork n={n}, at the SDK", "ms", sdk_ms))
            results.append(summary(f"fork n={n}, server-side", "ms", server_ms))
            results.append(summary(f"fork n={n}, return until all answered", "ms", first_exec_ms))
            results.append(summary(f"fork n={n}, call until all answered", "ms", call_to_answers_ms))
            results.append(summary(f"fork n={n}, PSS per child", "MiB", child_pss))
            results.append(summary(f"fork n={n}, family memory growth", "MiB", growth))
            results.append(summary(f"fork n={n}, growth: QEMUs' anonymous", "MiB", anon_growth))
            results.append(summary(f"fork n={n}, growth: guest RAM memfds", "MiB", memfd_growth))
            if pageout_mib:
                results.append(summary(f"fork n={n}, host DAMON pageout per rep", "MiB", pageout_mib))
        # hostd logs the phases of each fork's parent step (save, resume).
        phases = [
            l for l in hostd.log_path.read_text().splitlines() if "fork: parent" in l or "fork: running parent saved" in l or "landing" in l
        ]
        for line in phases:
            print(line)

    write_report(options.json, "fork_bench", accel, results, source=options.source,
                 parent_mib=options.parent_mib, grandchild=options.grandchild,
                 prestarted_vmms=options.prestarted,
                 fork_parent_restart_mib=options.parent_restart_mib,
                 tcg_thread=options.tcg_thread or "hostd's default")

if __name__ == "__main__":
    main()
