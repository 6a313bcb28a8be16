#!/usr/bin/env python3
"""pool_net_bench: a pool hit with networking on, at the default egress and not.

Pool VMs wait with a network slot set to the install's default egress
(actors/sandbox/vm_host_acquire.cpp): a create asking for that egress should
cost no netlink or nftables work, one asking for another pays the change
before the answer. Against a real hostd on loopback configured the way
scripts/install.sh does (scripts/detect-network.sh's uplink: open egress by
default), with hostd's default pool (1 GiB, numpy and pandas), --hits times
each:
  create, pool hit, default egress      POST /v1/sandboxes {}
  create, pool hit, egress off          {"egress": false}
  create, pool hit, allowlist           {"egress_allow": ["example.com"]}
  create, pool hit, no networking       the same {} on a hostd without a network
                                        section (the baseline; --no-baseline skips it)
each timed at the client (one keep-alive connection, raw HTTP: no SDK work)
and server-side (the `ms=` of hostd's "sandbox created" log line), after the
pool is full again; then the sandbox's first and second exec `print(1)`
(client-side: the first includes what its hand-out left the guest to do,
its identity and its disk's growth), and then it is destroyed. Prints
p50/p95/p99, writes JSON.

  tests/bench/pool_net_bench.py --hostd build/hostd/hostd --images build/images \\
      [--hits 30] [--no-baseline] [--json out.json]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import sys
import time
import urllib.parse
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "sdk" / "python"))
sys.path.insert(0, str(REPO / "tests" / "sdk"))

from hostd_process import hostd_session  # noqa: E402
from vesicle import Client  # noqa: E402
from bench_series import summary, write_report  # noqa: E402
from bench_support import network_section, wait_for_pool  # noqa: E402

CREATED = re.compile(r"sandbox created sandbox=(\S+) .*source=(\S+) ms=(\d+)")


class Api:
    """Raw requests on one keep-alive connection."""

    def __init__(self, url, key):
        parts = urllib.parse.urlsplit(url)
        self.conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=120)
        self.headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}

    def call(self, method, path, body=None):
        self.conn.request(method, path, body=json.dumps(body) if body is not None else None,
                          headers=self.headers)
        answer = self.conn.getresponse()
        data = answer.read()
        if answer.status >= 300:
            raise SystemExit(f"{method} {path}: {answer.status} {data[:500]!r}")
        return json.loads(data) if data else None

    def print_one(self, sandbox_id):
        """ms for an exec of print(1) (its NDJSON events read to the end)."""
        started = time.monotonic()
        self.conn.request("POST", f"/v1/sandboxes/{sandbox_id}/exec",
                          body=json.dumps({"code": "print(1)"}), headers=self.headers)
        answer = self.conn.getresponse()
        data = answer.read()
        took = (time.monotonic() - started) * 1000
        events = [json.loads(line) for line in data.splitlines() if line.strip()]
        stdout = "".join(e.get("data", "") for e in events if e.get("type") == "stdout")
        if answer.status != 200 or stdout != "1\n":
            raise SystemExit(f"exec print(1): {answer.status} {data[:500]!r}")
        return took


def hits(hostd, body, count):
    """`count` pool hits with `body`: client-side ms, server-side ms, and each
    sandbox's first and second exec."""
    args = {"url": hostd.url, "api_key": hostd.key}
    api = Api(hostd.url, hostd.key)
    client_ms, ids, first_ms, second_ms = [], [], [], []
    for _ in range(count):
        wait_for_pool(Client(**args), ready=2)
        started = time.monotonic()
        created = api.call("POST", "/v1/sandboxes", body)
        client_ms.append((time.monotonic() - started) * 1000)
        if created.get("source") != "pool":
            raise SystemExit(f"not a pool hit: {created}")
        ids.append(created["id"])
        first_ms.append(api.print_one(created["id"]))
        second_ms.append(api.print_one(created["id"]))
        api.call("DELETE", f"/v1/sandboxes/{created['id']}")
    logged = {m.group(1): float(m.group(3)) for m in CREATED.finditer(hostd.log())}
    return client_ms, [logged[i] for i in ids if i in logged], first_ms, second_ms


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hostd", default=str(REPO / "build" / "hostd" / "hostd"))
    parser.add_argument("--images", default=str(REPO / "build" / "images"))
    parser.add_argument("--hits", type=int, default=30)
    parser.add_argument("--no-baseline", dest="baseline", action="store_false")
    parser.add_argument("--json")
    options = parser.parse_args()
    os.environ["VESICLE_HOSTD"] = options.hostd
    os.environ["VESICLE_IMAGES_DIR"] = options.images

    results, accel = [], None
    variants = [
        ("default egress (open)", {}),
        ("egress off", {"egress": False}),
        ("allowlist", {"egress_allow": ["example.com"]}),
    ]
    network = network_section("vpn", "10.227.0.0/16", 7327)
    # The default pool (2 waiting, up to 8) and hostd's defaults otherwise.
    with hostd_session(REPO, max_sandboxes=12, extra_config=network) as hostd:
        accel = Client(url=hostd.url, api_key=hostd.key).health().get("accel")
        for name, body in variants:
            client_ms, server_ms, first_ms, second_ms = hits(hostd, body, options.hits)
            results.append(summary(f"pool hit, {name}, client", "ms", client_ms))
            results.append(summary(f"pool hit, {name}, server", "ms", server_ms))
            results.append(summary(f"pool hit, {name}, first exec", "ms", first_ms))
            results.append(summary(f"pool hit, {name}, second exec", "ms", second_ms))
    if options.baseline:
        with hostd_session(REPO, max_sandboxes=12, extra_config="") as hostd:
            client_ms, server_ms, first_ms, second_ms = hits(hostd, {}, options.hits)
            results.append(summary("pool hit, no networking, client", "ms", client_ms))
            results.append(summary("pool hit, no networking, server", "ms", server_ms))
            results.append(summary("pool hit, no networking, first exec", "ms", first_ms))
            results.append(summary("pool hit, no networking, second exec", "ms", second_ms))
    write_report(options.json, "pool_net_bench", accel, results, hits=options.hits)


if __name__ == "__main__":
    main()
