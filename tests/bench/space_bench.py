#!/usr/bin/env python3
"""space_bench: freeze and resume through the Python SDK against a real hostd on loopback.

Two sandboxes, each frozen and resumed --reps times in a chain (every
resume is a new sandbox, frozen again in the next round):
  idle   a fresh sandbox with `x = 1` in its REPL
  data   one holding --data-mib (default 200) MiB of random bytes in the REPL
         (random: no page of it is zero or compresses; written a MiB at a
         time, so no freed temporary of that size is left in guest RAM)
For each round:
  freeze at the SDK       Sandbox.freeze() from call to return (VM saved and stopped)
  resume at the SDK       Sandbox.resume() from call to return (new sandbox ready)
  first exec              from the resume's return until `x` (and len(blob)) answered
  Space size              size_bytes, and its state_bytes and disk_bytes, as hostd reports
Prints p50/p95/p99, writes JSON. Starts its own hostd (a temporary state
dir, no warm pools), or with --url (or $VESICLE_URL) uses a running one
with $VESICLE_API_KEY; its Spaces then go to that hostd's disk for the
length of a round.

  tests/bench/space_bench.py --hostd build/hostd/hostd --images build/images \\
      [--reps 5] [--memory-mib 1024] [--data-mib 200] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "sdk" / "python"))
sys.path.insert(0, str(REPO / "tests" / "sdk"))

from vesicle import Client, Sandbox  # noqa: E402
from bench_series import summary, write_report  # noqa: E402

MIB = 1024 * 1024


@contextlib.contextmanager
def target_hostd(options):
    """The hostd to measure: --url's, or one started here for the run."""
    url = options.url or os.environ.get("VESICLE_URL")
    if url:
        key = os.environ.get("VESICLE_API_KEY")
        if not key:
            raise SystemExit("--url / VESICLE_URL needs VESICLE_API_KEY set to a key of that hostd")
        yield SimpleNamespace(url=url, key=key, log_path=None)
        return
    os.environ["VESICLE_HOSTD"] = options.hostd
    os.environ["VESICLE_IMAGES_DIR"] = options.images
    from hostd_process import hostd_session

    with hostd_session(REPO, max_sandboxes=3) as hostd:
        yield hostd


def run_case(name, args, options, setup, check, expected):
    """--reps rounds of freeze, resume, first exec on one chain of sandboxes."""
    freeze_ms, resume_ms, first_exec_ms = [], [], []
    size_mib, state_mib, disk_mib = [], [], []
    sb = Sandbox(memory_mib=options.memory_mib, **args)
    space_id = None
    try:
        result = sb.run_code(setup)
        assert result.error is None, result.error
        for _ in range(options.reps):
            started = time.monotonic()
            space_id = sb.freeze()
            freeze_ms.append((time.monotonic() - started) * 1000)
            space = sb.space
            size_mib.append(space.size_bytes / MIB)
            state_mib.append(space.state_bytes / MIB)
            disk_mib.append(space.disk_bytes / MIB)
            sb.close()  # the frozen record only; the Space stays

            started = time.monotonic()
            sb = Sandbox.resume(space_id, **args)
            resumed = time.monotonic()
            space_id = None
            resume_ms.append((resumed - started) * 1000)
            out = sb.run_code(check)
            first_exec_ms.append((time.monotonic() - resumed) * 1000)
            assert out.error is None and out.result == expected, out
    finally:
        try:
            sb.close()
        except Exception as exc:  # noqa: BLE001
            print(f"closing {sb.id}: {exc}", file=sys.stderr)
        if space_id is not None:
            try:
                Client(**args).delete_space(space_id)
            except Exception as exc:  # noqa: BLE001
                print(f"deleting Space {space_id}: {exc}", file=sys.stderr)
    print(f"-- {name} ({options.memory_mib} MiB guest)")
    return [
        summary(f"{name}: freeze at the SDK", "ms", freeze_ms),
        summary(f"{name}: resume at the SDK", "ms", resume_ms),
        summary(f"{name}: first exec after resume", "ms", first_exec_ms),
        summary(f"{name}: Space size on disk", "MiB", size_mib),
        summary(f"{name}: Space state file", "MiB", state_mib),
        summary(f"{name}: Space disk", "MiB", disk_mib),
    ]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hostd", default=str(REPO / "build" / "hostd" / "hostd"))
    parser.add_argument("--images", default=str(REPO / "build" / "images"))
    parser.add_argument("--url", help="a running hostd's URL (default: start one; or $VESICLE_URL)")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--memory-mib", type=int, default=1024)
    parser.add_argument("--data-mib", type=int, default=200)
    parser.add_argument("--json")
    options = parser.parse_args()

    results = []
    with target_hostd(options) as hostd:
        args = {"url": hostd.url, "api_key": hostd.key}
        accel = Client(**args).health().get("accel")
        results += run_case("idle", args, options, "x = 1", "x", "1")
        data_bytes = options.data_mib * MIB
        results += run_case(
            f"{options.data_mib} MiB data",
            args,
            options,
            # Filled a MiB at a time: bytearray(os.urandom(n)) would also leave
            # the freed n-byte temporary's pages dirty in guest RAM, and a
            # Space holds every non-zero page, in use or free.
            f"import os\nx = 1\nblob = bytearray({data_bytes})\n"
            f"for i in range(0, {data_bytes}, {MIB}):\n    blob[i:i + {MIB}] = os.urandom({MIB})",
            "(x, len(blob))",
            f"(1, {data_bytes})",
        )
        if hostd.log_path is not None:
            # hostd logs the steps of each freeze and resume (save_ms,
            # write_ms; check_ms, disk_copy_ms, restore_ms): every round's.
            steps = [
                l
                for l in Path(hostd.log_path).read_text(errors="replace").splitlines()
                if "frozen into a Space" in l
                or "Space opened" in l
                or "Space restored" in l
                or ("info request" in l and ("/freeze " in l or "/resume " in l))
            ]
            for line in steps:
                print(line)

    write_report(options.json, "space_bench", accel, results, reps=options.reps,
                 memory_mib=options.memory_mib, data_mib=options.data_mib)

if __name__ == "__main__":
    main()
