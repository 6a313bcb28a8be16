#!/usr/bin/env python3
"""template_bench: create from a saved template's pool vs from the base pool, through the SDK.

A hostd with one base pool (default template, --memory-mib, one VM kept
waiting) and saved templates kept one VM waiting each. A sandbox from the
base pool gets a Python global and is saved as a template; then --reps
rounds, each:
  base create      Sandbox() from call to return (a base pool VM handed out)
  template create  Sandbox(template=...) from call to return (the template's pool VM)
  template restore a template saved with pool_size 0: restored on demand
Before each round it waits for both pools to have a VM waiting, so each
create meets one (the JSON and the table say how many did: `source`).
Prints p50/p95/p99, writes JSON.

  tests/bench/template_bench.py --hostd build/hostd/hostd --images build/images \\
      [--reps 10] [--memory-mib 512] [--json out.json]
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

from vesicle import Client, Sandbox  # noqa: E402
from bench_series import summary, write_report  # noqa: E402

def wait_for_pools(client, template, deadline_s=120.0):
    """Until the base pool and `template`'s pool each have a VM waiting."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        pools = client.capacity().get("pools", [])
        if pools and all(p.get("ready", 0) >= 1 for p in pools) and client.template(template).pool_ready >= 1:
            return
        time.sleep(0.2)


def timed_create(**kwargs):
    started = time.monotonic()
    sb = Sandbox(**kwargs)
    ms = (time.monotonic() - started) * 1000
    return sb, ms


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hostd", default=str(REPO / "build" / "hostd" / "hostd"))
    parser.add_argument("--images", default=str(REPO / "build" / "images"))
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--memory-mib", type=int, default=512)
    parser.add_argument("--json")
    options = parser.parse_args()
    os.environ["VESICLE_HOSTD"] = options.hostd
    os.environ["VESICLE_IMAGES_DIR"] = options.images
    from hostd_process import hostd_session

    extra = (
        f'pools {{ template: "default" vcpus: 2 memory_mib: {options.memory_mib} min_ready: 1 max: 4 }}\n'
        "template_pool_size: 1\n"
    )
    base_ms, tpl_ms, restore_ms = [], [], []
    sources = {"base": [], "template": [], "restore": []}
    with hostd_session(REPO, max_sandboxes=4, extra_config=extra) as hostd:
        args = {"url": hostd.url, "api_key": hostd.key}
        client = Client(**args)
        accel = client.health().get("accel")
        source = Sandbox(memory_mib=options.memory_mib, **args)
        source.run_code("import json, os; GLOBAL = list(range(1000))")
        source.save_template("bench-pooled")
        source.close()
        # A second template without a pool: every create restores it.
        other = Sandbox(memory_mib=options.memory_mib, **args)
        other.run_code("GLOBAL = 1")
        other.save_template("bench-ondemand", pool_size=0)
        other.close()
        for _ in range(options.reps):
            wait_for_pools(client, "bench-pooled")
            for name, series, kwargs in (
                ("base", base_ms, {"memory_mib": options.memory_mib}),
                ("template", tpl_ms, {"template": "bench-pooled"}),
                ("restore", restore_ms, {"template": "bench-ondemand"}),
            ):
                sb, ms = timed_create(**kwargs, **args)
                series.append(ms)
                sources[name].append(sb.info.get("source"))
                result = sb.run_code("len(GLOBAL)" if name == "template" else "1")
                assert result.error is None, result.error
                sb.close()
        for name in ("bench-pooled", "bench-ondemand"):
            client.delete_template(name)
    for name, seen in sources.items():
        print(f"{name}: sources {dict((s, seen.count(s)) for s in set(seen))}")
    results = [
        summary("create from the base pool", "ms", base_ms),
        summary("create from a template's pool", "ms", tpl_ms),
        summary("create from a template (no pool)", "ms", restore_ms),
    ]
    write_report(options.json, "template_bench", accel, results, reps=options.reps,
                 memory_mib=options.memory_mib, sources=sources)


if __name__ == "__main__":
    main()
