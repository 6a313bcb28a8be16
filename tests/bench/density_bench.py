#!/usr/bin/env python3
"""density_bench: how many idle sandboxes one host holds, and their execs.

Through the Python SDK against a real hostd on loopback, for each
admission.memory_overcommit in --overcommit (a hostd of its own each):
  count            default `Sandbox()`s from the warm pool (1 GiB, numpy and
                   pandas preloaded), started one after another until hostd
                   refuses one with 503 (CapacityError: memory admission) or
                   --max are running. Each create waits (up to 30 s) for a
                   waiting pool VM first, so they are pool hits while
                   admission lets the pool refill.
  PSS / USS        per sandbox, from hostd's /metrics (vesicle_sandbox_pss_bytes,
                   vesicle_sandbox_uss_bytes; admin key), after each ran one
                   print(1) and all idled 5 s
  idle CPU         host CPU each idle sandbox's QEMU uses (utime + stime from
                   /proc, its vmm_pid from /v1/admin/sandboxes) over the next
                   --idle-seconds, in ms per second (10 = 1% of a core), and
                   all of them together in cores: under TCG, what idle
                   guests' timers cost decides how many fit on the CPU
  exec latency     --execs `print(1)` spread round robin over the first 25%,
                   50% and 100% of the sandboxes, one after another (the
                   others stay idle and running), p50/p99
The tier's sandbox cap, its request rate, the host's max_sandboxes, the
pool's max and the network's max_slots are raised past --max, and each
sandbox asks for a --disk-mib disk (default 1536, a little above the image's
1415; 0: hostd's default, 2 GiB), so that memory admission is what stops
it. A running sandbox is promised the disk it may still write (its
disk_mib less what its overlay holds; an idle one has written little), so
at admission.disk_overcommit 1.0 disk admission stops at the free disk
over disk_mib (~17 at 1536 MiB on 28 GB free). The default runs are
hostd's defaults (1.0 and 1.0) and 10 for both (memory_overcommit and,
with --disk-overcommit, disk_overcommit): the highest measured, where a
host relies on guests staying idle (BENCHMARKS.md says what it bets and
what a guest that does not meets). --disk-overcommit sets admission.disk_overcommit
alongside each memory overcommit other than hostd's default (0) and off
(-1); the refusal's message is printed and says which admission stopped
it. With an uplink (scripts/detect-network.sh), every sandbox has a network
slot and open egress, as an install gives it; --no-network leaves
networking out. Everything is closed at the end.
Prints p50/p95/p99, writes JSON.

  tests/bench/density_bench.py --hostd build/hostd/hostd --images build/images \\
      [--max 200] [--overcommit 0 10] [--disk-overcommit 10] [--execs 200] \\
      [--idle-seconds 20] [--disk-mib 1536] [--no-network] [--json out.json]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "sdk" / "python"))
sys.path.insert(0, str(REPO / "tests" / "sdk"))

from hostd_process import hostd_session  # noqa: E402
from vesicle import Client, Sandbox  # noqa: E402
from vesicle.errors import CapacityError  # noqa: E402
from bench_series import summary, write_report  # noqa: E402
from bench_support import (  # noqa: E402
    cpu_ms, metrics, network_section, per_sandbox_mib, qemu_pids_of, wait_for_pool,
)

FRACTIONS = (25, 50, 100)


def config_for(options, overcommit):
    room = options.max + 16
    pools = (
        "pools {\n"
        '  template: "default"\n'
        "  min_ready: 2\n"
        f"  max: {room}\n"
        '  preload_modules: "numpy"\n'
        '  preload_modules: "pandas"\n'
        "}\n"
    )
    tiers = (
        "tiers { free { max_concurrent: 100000 max_requests_per_s: 100000 "
        "max_idle_timeout_s: 86400 max_lifetime_s: 86400 } }\n"
    )
    if overcommit < 0:
        # Not a safe setting: how many idle sandboxes the host itself
        # holds, with memory and disk admission off (sandbox slots only).
        admission = "admission { disabled: true }\n"
    elif overcommit:
        disk = f" disk_overcommit: {options.disk_overcommit}" if options.disk_overcommit else ""
        admission = f"admission {{ memory_overcommit: {overcommit}{disk} }}\n"
    else:
        admission = ""
    network = (
        network_section("vdn", "10.226.0.0/16", 7326, f"  max_slots: {room}\n")
        if options.network
        else ""
    )
    return pools + tiers + admission + network


def print_ms(sb):
    started = time.monotonic()
    out = sb.run_code("print(1)")
    took = (time.monotonic() - started) * 1000
    assert out.stdout == "1\n" and out.error is None, out
    return took


def idle_cpu(hostd, ids, seconds):
    """ms of host CPU per second each of sandboxes `ids`' QEMUs used over `seconds` idle."""
    pids = qemu_pids_of(hostd, ids)
    before, started = {pid: cpu_ms(pid) for pid in pids}, time.monotonic()
    time.sleep(seconds)
    after, took = {pid: cpu_ms(pid) for pid in pids}, time.monotonic() - started
    return [(after[pid] - before[pid]) / took for pid in pids]


def fill(args, options):
    """Starts sandboxes until admission refuses or --max; returns them and why it stopped."""
    sandboxes, sources = [], {}
    while len(sandboxes) < options.max:
        try:
            wait_for_pool(Client(**args), ready=1, timeout_s=30)
        except SystemExit:
            pass  # admission keeps the pool from refilling: the create says so
        try:
            disk = {"disk_mib": options.disk_mib} if options.disk_mib else {}
            sb = Sandbox(idle_timeout_s=86400, **disk, **args)
        except CapacityError as refused:
            return sandboxes, sources, f"refused: {refused}"
        sandboxes.append(sb)
        source = sb.info.get("source", "?")
        sources[source] = sources.get(source, 0) + 1
        if len(sandboxes) % 8 == 0:
            print(f"   {len(sandboxes)} sandboxes ({sources})", flush=True)
    return sandboxes, sources, f"--max {options.max} reached"


def run_one(options, overcommit, results, runs):
    label = "admission off" if overcommit < 0 else f"overcommit {overcommit or 'default (1.0)'}"
    disk_overcommit = options.disk_overcommit if overcommit > 0 and options.disk_overcommit else 1.0
    if disk_overcommit != 1.0:
        label += f", disk overcommit {disk_overcommit}"
    with hostd_session(
        REPO, max_sandboxes=options.max + 16, extra_config=config_for(options, overcommit),
        admin_key=True,
    ) as hostd:
        args = {"url": hostd.url, "api_key": hostd.key}
        accel = Client(**args).health().get("accel")
        wait_for_pool(Client(**args), ready=2)
        started = time.monotonic()
        sandboxes, sources = [], {}
        try:
            sandboxes, sources, why = fill(args, options)
            fill_s = time.monotonic() - started
            count = len(sandboxes)
            net = "open egress, a network slot each" if options.network else "no networking"
            print(f"-- {label}: {count} idle sandboxes ({sources}, {net}) in {fill_s:.0f} s; {why}")
            for sb in sandboxes:
                print_ms(sb)
            time.sleep(5)
            text = metrics(hostd.url, hostd.admin_key)
            ours = {sb.id for sb in sandboxes}
            pss = [v for k, v in per_sandbox_mib(text, "vesicle_sandbox_pss_bytes").items() if k in ours]
            uss = [v for k, v in per_sandbox_mib(text, "vesicle_sandbox_uss_bytes").items() if k in ours]
            results.append(summary(f"{label}: idle sandboxes held", "count", [count]))
            results.append(summary(f"{label}: PSS per idle sandbox", "MiB", pss))
            results.append(summary(f"{label}: USS per idle sandbox", "MiB", uss))
            idle = idle_cpu(hostd, ours, options.idle_seconds)
            results.append(summary(f"{label}: idle CPU per sandbox", "ms/s", idle))
            print(f"   all {len(idle)} idle sandboxes together: {sum(idle) / 1000:.2f} cores")
            for fraction in FRACTIONS:
                active = sandboxes[: max(1, round(count * fraction / 100))]
                latencies = [print_ms(active[i % len(active)]) for i in range(options.execs)]
                results.append(summary(
                    f"{label}: exec print(1) over {fraction}% ({len(active)})", "ms", latencies))
            runs.append({"overcommit": overcommit or 1.0, "disk_overcommit": disk_overcommit,
                         "count": count, "stopped": why,
                         "sources": sources, "fill_s": fill_s})
        finally:
            for sb in sandboxes:
                try:
                    sb.close()
                except Exception as exc:  # noqa: BLE001
                    print(f"closing {sb.id}: {exc}", file=sys.stderr)
    return accel


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hostd", default=str(REPO / "build" / "hostd" / "hostd"))
    parser.add_argument("--images", default=str(REPO / "build" / "images"))
    parser.add_argument("--max", type=int, default=200)
    parser.add_argument("--overcommit", type=float, nargs="+", default=[0, 10],
                        help="admission.memory_overcommit per run (0: hostd's default; "
                        "-1: admission disabled, which is not safe: what the host holds)")
    parser.add_argument("--disk-overcommit", type=float, default=10,
                        help="admission.disk_overcommit (0.1-100) for each --overcommit run above "
                        "0 (0: hostd's default, 1.0)")
    parser.add_argument("--execs", type=int, default=200)
    parser.add_argument("--idle-seconds", type=float, default=20)
    parser.add_argument("--disk-mib", type=int, default=1536)
    parser.add_argument("--no-network", dest="network", action="store_false")
    parser.add_argument("--json")
    options = parser.parse_args()
    os.environ["VESICLE_HOSTD"] = options.hostd
    os.environ["VESICLE_IMAGES_DIR"] = options.images

    results, runs, accel = [], [], None
    for overcommit in options.overcommit:
        accel = run_one(options, overcommit, results, runs)
    write_report(options.json, "density_bench", accel, results, runs=runs, max=options.max,
                 network=options.network, execs=options.execs, disk_mib=options.disk_mib,
                 disk_overcommit=options.disk_overcommit or 1.0)


if __name__ == "__main__":
    main()
