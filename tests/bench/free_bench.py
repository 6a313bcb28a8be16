#!/usr/bin/env python3
"""free_bench: what a guest pays for zeroing the memory it frees.

The guest kernel runs with init_on_free=1 (vmm/qemu.cpp, kernel_cmdline):
every page it frees is zeroed, so a fork or a freeze, which copy only
non-zero pages, leaves out memory a program used and gave back. This
times what that zeroing costs, on one sandbox from the default pool,
through the Python SDK against a real hostd on loopback:
  print(1)            --execs of them, p50/p95/p99
  fill and free       a cell that writes --mib MiB (`b'\\x01' * n`) and
                      drops it, --cells times: the kernel zeroes those pages
                      when Python gives them back
  bash true           --execs `true` through bash: a process started and
                      ended, its pages freed
To compare, build with init_on_free removed from kernel_cmdline and run
it again. Prints p50/p95/p99, writes JSON.

  tests/bench/free_bench.py --hostd build/hostd/hostd --images build/images \\
      [--execs 100] [--cells 10] [--mib 200] [--json out.json]
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
from bench_series import summary, write_report  # noqa: E402
from bench_support import wait_for_pool  # noqa: E402


def timed(call):
    started = time.monotonic()
    call()
    return (time.monotonic() - started) * 1000


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hostd", default=str(REPO / "build" / "hostd" / "hostd"))
    parser.add_argument("--images", default=str(REPO / "build" / "images"))
    parser.add_argument("--execs", type=int, default=100)
    parser.add_argument("--cells", type=int, default=10)
    parser.add_argument("--mib", type=int, default=200)
    parser.add_argument("--json")
    options = parser.parse_args()
    os.environ["VESICLE_HOSTD"] = options.hostd
    os.environ["VESICLE_IMAGES_DIR"] = options.images

    results = []
    # The default pool (extra_config without disable_pools): a `Sandbox()`.
    with hostd_session(REPO, max_sandboxes=6, extra_config="") as hostd:
        args = {"url": hostd.url, "api_key": hostd.key}
        accel = Client(**args).health().get("accel")
        wait_for_pool(Client(**args))
        with Sandbox(**args) as sb:
            cmdline = sb.run_code("print(open('/proc/cmdline').read().strip())").stdout.strip()
            print(f"guest kernel command line: {cmdline}")

            def print_one():
                out = sb.run_code("print(1)")
                assert out.stdout == "1\n" and out.error is None, out

            def fill_and_free():
                out = sb.run_code(f"b = b'\\x01' * ({options.mib} * 2**20)\ndel b\nprint(2)")
                assert out.stdout == "2\n" and out.error is None, out

            def bash_true():
                out = sb.run_code("true", language="bash")
                assert out.exit_code == 0, out

            print_one()  # the first exec's translation is not what is measured
            results.append(summary("print(1)", "ms", [timed(print_one) for _ in range(options.execs)]))
            results.append(summary(f"fill {options.mib} MiB and free it", "ms",
                                   [timed(fill_and_free) for _ in range(options.cells)]))
            results.append(summary("bash true", "ms", [timed(bash_true) for _ in range(options.execs)]))
    write_report(options.json, "free_bench", accel, results, init_on_free="init_on_free=1" in cmdline,
                 mib=options.mib)


if __name__ == "__main__":
    main()
