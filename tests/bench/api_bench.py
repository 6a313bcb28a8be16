#!/usr/bin/env python3
"""Times hostd's REST API on loopback: create (cold boot, no pool yet), the
round trip of exec `print(1)`, and destroy. Prints p50/p95/p99 and writes
JSON. Plain http.client, so the figures are the API's, not the SDK's.

usage: api_bench.py --url http://127.0.0.1:7070 --key KEY [--sandboxes 5] [--calls 200] [--json out.json]
"""
import argparse
import http.client
import json
import os
import platform
import statistics
import sys
import time
import urllib.parse


def percentile(values, fraction):
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


class Api:
    def __init__(self, url, key):
        parsed = urllib.parse.urlparse(url)
        self.conn = http.client.HTTPConnection(parsed.hostname, parsed.port or 80, timeout=300)
        self.headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}

    def call(self, method, path, body=None):
        payload = None if body is None else json.dumps(body)
        self.conn.request(method, path, body=payload, headers=self.headers)
        response = self.conn.getresponse()
        data = response.read()
        if response.status >= 300:
            sys.exit(f"api_bench: {method} {path} -> {response.status}: {data.decode(errors='replace')}")
        return json.loads(data) if data.strip() and not path.endswith("/exec") else data


def summary(name, values_ms):
    return {
        "name": name,
        "n": len(values_ms),
        "p50_ms": round(percentile(values_ms, 0.50), 2),
        "p95_ms": round(percentile(values_ms, 0.95), 2),
        "p99_ms": round(percentile(values_ms, 0.99), 2),
        "mean_ms": round(statistics.fmean(values_ms), 2),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("VESICLE_URL", "http://127.0.0.1:7070"))
    parser.add_argument("--key", default=os.environ.get("VESICLE_API_KEY"))
    parser.add_argument("--sandboxes", type=int, default=5, help="sequential create/destroy cycles")
    parser.add_argument("--calls", type=int, default=200, help="exec print(1) round trips")
    parser.add_argument("--memory-mib", type=int, default=512)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    if not args.key:
        sys.exit("api_bench: pass --key or set VESICLE_API_KEY")

    api = Api(args.url, args.key)
    health = api.call("GET", "/v1/healthz")
    creates, destroys, execs = [], [], []
    for cycle in range(args.sandboxes):
        started = time.perf_counter()
        sandbox = api.call("POST", "/v1/sandboxes", {"memory_mib": args.memory_mib})
        creates.append((time.perf_counter() - started) * 1000)
        if cycle == 0:
            api.call("POST", f"/v1/sandboxes/{sandbox['id']}/exec", {"code": "pass"})  # REPL warm
            for _ in range(args.calls):
                started = time.perf_counter()
                out = api.call("POST", f"/v1/sandboxes/{sandbox['id']}/exec", {"code": "print(1)"})
                execs.append((time.perf_counter() - started) * 1000)
                events = [json.loads(line) for line in out.splitlines() if line.strip()]
                printed = "".join(e.get("data", "") for e in events if e["type"] == "stdout")
                if printed != "1\n" or events[-1]["type"] != "exit":
                    sys.exit(f"api_bench: print(1) did not print 1: {out!r}")
        started = time.perf_counter()
        api.call("DELETE", f"/v1/sandboxes/{sandbox['id']}")
        destroys.append((time.perf_counter() - started) * 1000)

    results = {
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
        "accel": health.get("accel"),
        "results": [summary("create (cold boot)", creates), summary("exec print(1)", execs),
                    summary("destroy", destroys)],
    }
    print(f"hostd API on {args.url}, accel {results['accel']}, {os.cpu_count()} cores")
    print(f"{'operation':<22}{'n':>5}{'p50 ms':>10}{'p95 ms':>10}{'p99 ms':>10}")
    for row in results["results"]:
        print(f"{row['name']:<22}{row['n']:>5}{row['p50_ms']:>10}{row['p95_ms']:>10}{row['p99_ms']:>10}")
    if args.json:
        with open(args.json, "w") as out:
            json.dump(results, out, indent=2)


if __name__ == "__main__":
    main()
