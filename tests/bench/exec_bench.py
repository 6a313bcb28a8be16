#!/usr/bin/env python3
"""exec_bench: what an exec costs hostd, and execs/s with several clients.

Through the Python SDK against a real hostd on loopback:
  hostd CPU per exec   --execs sequential `print(1)` on one sandbox; hostd's
                       utime + stime (/proc/<hostd>/stat, every thread, in
                       clock ticks) after minus before, over the count. Only
                       hostd's own work: the guest's runs in its QEMU.
  switches per exec    hostd's context switches over the same execs, every
                       thread (/proc/<hostd>/task/*/status): each hop of an
                       exec between hostd's threads costs two or more.
  exec latency         of those execs, p50/p95/p99
  execs/s by clients   for each count in --clients, that many client
                       processes, each on a sandbox of its own, running
                       `print(1)` in a loop for --seconds: the total execs/s,
                       p50/p99 over every exec, and hostd CPU per exec again.
  where the CPU went   for each count, the host's busy cores over the loop
                       (/proc/stat), and per exec: hostd's CPU, the busy
                       sandboxes' QEMUs' (the guests' work under TCG), and
                       the rest (the clients, the kernel's own work): whether
                       the cores were full, and what filled them.
Clients are processes, not threads, so the SDK's Python work spreads over
the cores instead of waiting on one interpreter lock; they run on the same
cores as hostd and the VMs (the figure includes their cost). Sandboxes
are cold booted at --memory-mib (a size no pool serves; an exec costs the
same on a pool sandbox). Prints p50/p95/p99, writes JSON.

  tests/bench/exec_bench.py --hostd build/hostd/hostd --images build/images \\
      [--execs 1000] [--clients 1 2 4 6] [--seconds 10] [--memory-mib 512] [--vcpus 2]
      [--tcg-thread single|multi] [--json out.json]
"""

from __future__ import annotations

import argparse
import multiprocessing
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
from bench_support import cpu_ms, host_cpu_ms, qemu_pids_of  # noqa: E402

CORES = os.cpu_count() or 1


def context_switches(pid):
    """Voluntary + involuntary context switches of every thread of `pid` now alive."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            with open(task / "status") as status:
                for line in status:
                    key, _, value = line.partition(":")
                    if key in ("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches"):
                        total += int(value)
        except FileNotFoundError:  # a thread that ended meanwhile
            continue
    return total


def print_one(sb):
    """One `print(1)`; its latency in ms."""
    started = time.monotonic()
    out = sb.run_code("print(1)")
    took = (time.monotonic() - started) * 1000
    assert out.stdout == "1\n" and out.error is None, out
    return took


def client_loop(job):
    """A client process: `print(1)` on its sandbox from `start` until `end` (monotonic)."""
    sandbox_id, args, start, end = job
    sb = Sandbox.connect(sandbox_id, **args)
    print_one(sb)  # the connection made before the clock starts
    while time.monotonic() < start:
        time.sleep(0.001)
    latencies = []
    while time.monotonic() < end:
        latencies.append(print_one(sb))
    return latencies


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hostd", default=str(REPO / "build" / "hostd" / "hostd"))
    parser.add_argument("--images", default=str(REPO / "build" / "images"))
    parser.add_argument("--execs", type=int, default=1000)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 2, 4, 6])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--memory-mib", type=int, default=512)
    parser.add_argument("--vcpus", type=int, default=2)
    parser.add_argument("--tcg-thread", choices=["single", "multi"],
                        help="hostd's tcg_thread (default: hostd's own)")
    parser.add_argument("--json")
    options = parser.parse_args()
    os.environ["VESICLE_HOSTD"] = options.hostd
    os.environ["VESICLE_IMAGES_DIR"] = options.images

    most = max(options.clients)
    results = []
    # The free tier's 100 requests/s per key would cut the loops short (429).
    config = "disable_pools: true\ntiers { free { max_requests_per_s: 100000 } }\n"
    if options.tcg_thread:
        config += f'tcg_thread: "{options.tcg_thread}"\n'
    with hostd_session(REPO, max_sandboxes=most + 1, extra_config=config,
                       admin_key=True) as hostd:
        args = {"url": hostd.url, "api_key": hostd.key}
        accel = Client(**args).health().get("accel")
        sandboxes = []
        try:
            for _ in range(most):
                sandboxes.append(Sandbox(memory_mib=options.memory_mib, vcpus=options.vcpus,
                                         idle_timeout_s=1800, **args))
            first = sandboxes[0]
            for _ in range(20):  # warm: the REPL's first cells, the connection
                print_one(first)
            before = cpu_ms(hostd.pid)
            switches_before = context_switches(hostd.pid)
            latencies = [print_one(first) for _ in range(options.execs)]
            per_exec = (cpu_ms(hostd.pid) - before) / options.execs
            switches = (context_switches(hostd.pid) - switches_before) / options.execs
            print(f"-- {options.execs} sequential print(1) on one sandbox")
            results.append(summary("exec print(1), sequential", "ms", latencies))
            results.append(summary("hostd CPU per exec", "ms", [per_exec]))
            results.append(summary("hostd context switches per exec", "1", [switches]))

            context = multiprocessing.get_context("fork")
            for clients in options.clients:
                start = time.monotonic() + 3  # every client connected and warm by then
                end = start + options.seconds
                jobs = [(sb.id, args, start, end) for sb in sandboxes[:clients]]
                qemus = qemu_pids_of(hostd, [sb.id for sb in sandboxes[:clients]])
                with context.Pool(clients) as pool:
                    waiting = pool.map_async(client_loop, jobs)
                    while time.monotonic() < start:
                        time.sleep(0.001)
                    cpu_before = cpu_ms(hostd.pid)
                    qemu_before = sum(cpu_ms(pid) for pid in qemus)
                    host_before = host_cpu_ms()
                    per_client = waiting.get(timeout=options.seconds + 120)
                    cpu_after = cpu_ms(hostd.pid)
                    qemu_after = sum(cpu_ms(pid) for pid in qemus)
                    host_after = host_cpu_ms()
                every = [ms for one in per_client for ms in one]
                count = max(len(every), 1)
                busy = host_after[0] - host_before[0]
                hostd_ms = cpu_after - cpu_before
                qemu_ms = qemu_after - qemu_before
                print(f"-- {clients} clients for {options.seconds:g} s: "
                      f"{len(every) / options.seconds:.0f} execs/s "
                      f"(per client: {[len(one) for one in per_client]})")
                results.append(summary(f"clients={clients}, exec print(1)", "ms", every))
                results.append(summary(f"clients={clients}, execs/s", "1/s",
                                       [len(every) / options.seconds]))
                results.append(summary(f"clients={clients}, hostd CPU per exec", "ms",
                                       [hostd_ms / count]))
                results.append(summary(f"clients={clients}, cores busy (of {CORES})", "cores",
                                       [CORES * busy / max(host_after[1] - host_before[1], 1)]))
                results.append(summary(f"clients={clients}, QEMU CPU per exec", "ms",
                                       [qemu_ms / count]))
                results.append(summary(f"clients={clients}, other CPU per exec", "ms",
                                       [(busy - hostd_ms - qemu_ms) / count]))
        finally:
            for sb in sandboxes:
                try:
                    sb.close()
                except Exception as exc:  # noqa: BLE001
                    print(f"closing {sb.id}: {exc}", file=sys.stderr)

    write_report(options.json, "exec_bench", accel, results, execs=options.execs,
                 seconds=options.seconds, memory_mib=options.memory_mib,
                 vcpus=options.vcpus, tcg_thread=options.tcg_thread or "hostd's default")


if __name__ == "__main__":
    main()
