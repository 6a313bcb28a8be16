#!/usr/bin/env python3
"""fork_bench: fork(n) through the Python SDK against a real hostd on loopback.

For n in --ns (default 1 2 4 8), --reps times each:
  fork at the SDK     Sandbox.fork(n) from call to return (every child ready)
  fork server-side    hostd's own figure for the same call (ForkResponse.server_ms)
  first exec          from the fork's return until every child has answered
                      a first `x` (run in parallel, one thread per child)
  memory per child    PSS of each child's QEMU (smaps_rollup: the fork
                      snapshot's shared pages are split among the VMs mapping them)
The parent holds a small DataFrame and, with --parent-mib, a block of
random bytes. --source boot forks a cold-booted parent (its RAM a file of
its own), --source pool one from the warm pool (its RAM a private copy of
the template's, saved whole first). Prints p50/p95/p99, writes JSON.

  tests/bench/fork_bench.py --hostd build/hostd/hostd --images build/images \\
      [--ns 1 2 4 8] [--reps 5] [--source boot|pool] [--parent-mib 0] [--json out.json]
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

BOOT_MEMORY_MIB = 768  # a size no pool serves: cold boots
POOL_MEMORY_MIB = 1024


def pss_mib(pid):
    with open(f"/proc/{pid}/smaps_rollup") as rollup:
        for line in rollup:
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def qemu_pid_of(runtime_dir: Path, sandbox_id: str):
    marker = f"{runtime_dir}/{sandbox_id}/".encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if b"qemu-system" in cmdline and marker in cmdline:
            return int(entry)
    return None


def wait_for_pool(args):
    deadline = time.monotonic() + 600
    while True:
        pools = Client(**args).capacity().get("pools", [])
        if pools and pools[0].get("ready", 0) >= 1:
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"the warm pool did not fill: {pools}")
        time.sleep(0.2)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hostd", default=str(REPO / "build" / "hostd" / "hostd"))
    parser.add_argument("--images", default=str(REPO / "build" / "images"))
    parser.add_argument("--ns", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--source", choices=["boot", "pool"], default="boot")
    parser.add_argument("--parent-mib", type=int, default=0)
    parser.add_argument("--json")
    options = parser.parse_args()
    os.environ["VESICLE_HOSTD"] = options.hostd
    os.environ["VESICLE_IMAGES_DIR"] = options.images

    memory = BOOT_MEMORY_MIB if options.source == "boot" else POOL_MEMORY_MIB
    pools = (
        "pools {\n"
        '  template: "default"\n'
        f"  memory_mib: {POOL_MEMORY_MIB}\n"
        "  min_ready: 1\n"
        "  max: 2\n"
        '  preload_modules: "numpy"\n'
        '  preload_modules: "pandas"\n'
        "}\n"
        if options.source == "pool"
        else "disable_pools: true\n"
    )
    results = []
    with hostd_session(REPO, max_sandboxes=max(options.ns) + 3, extra_config=pools) as hostd:
        args = {"url": hostd.url, "api_key": hostd.key}
        accel = Client(**args).health().get("accel")
        runtime_dir = Path(hostd.runtime_dir)
        for n in options.ns:
            sdk_ms, server_ms, first_exec_ms, child_pss = [], [], [], []
            for _ in range(options.reps):
                if options.source == "pool":
                    wait_for_pool(args)
                parent = Sandbox(memory_mib=memory, **args)
                kids = []
                try:
                    setup = "import pandas as pd\ndf = pd.DataFrame({'a': range(100_000)})\nx = 1\n"
                    if options.parent_mib:
                        setup += f"import os\nblock = bytearray(os.urandom({options.parent_mib} * 2**20))\n"
                    result = parent.run_code(setup)
                    assert result.error is None, result.error
                    started = time.monotonic()
                    answer = parent._transport.json(
                        "POST", f"/v1/sandboxes/{parent.id}/fork", body={"n": n}
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
                    for kid in kids:
                        pid = qemu_pid_of(runtime_dir, kid.id)
                        if pid:
                            child_pss.append(pss_mib(pid))
                finally:
                    for sb in [*kids, parent]:
                        try:
                            sb.close()
                        except Exception as exc:  # noqa: BLE001
                            print(f"closing {sb.id}: {exc}", file=sys.stderr)
            print(f"-- n={n} ({options.source} parent, {options.parent_mib} MiB block)")
            results.append(summary(f"fork n={n}, at the SDK", "ms", sdk_ms))
            results.append(summary(f"fork n={n}, server-side", "ms", server_ms))
            results.append(summary(f"fork n={n}, until all answered", "ms", first_exec_ms))
            results.append(summary(f"fork n={n}, PSS per child", "MiB", child_pss))
        # hostd logs the phases of each fork's parent step (save, resume).
        phases = [
            l for l in hostd.log_path.read_text().splitlines() if "fork: parent saved and resumed" in l
        ]
        for line in phases[-3:]:
            print(line)

    write_report(options.json, "fork_bench", accel, results, source=options.source,
                 parent_mib=options.parent_mib)

if __name__ == "__main__":
    main()
