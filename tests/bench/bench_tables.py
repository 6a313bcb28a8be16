#!/usr/bin/env python3
"""bench_tables: issue 15's table from the JSON the benchmarks wrote.

Reads the reports scripts/bench.sh writes into --dir (default build/bench/),
and writes issue 15's table as Markdown to --out (default
<dir>/TABLES.md) and prints it: one row per measure of the issue, with the
figure last recorded in BENCHMARKS.md (--previous, default
tests/bench/recorded_figures.json), today's p50 / p95, the issue's target,
what the hosted product publishes and whether the target is met (from
p50). A row whose report is missing says "not run". --record rewrites the
--previous file with this run's figures (rows not run keep theirs), so the
next run compares against this one.

  tests/bench/bench_tables.py [--dir build/bench] [--out build/bench/TABLES.md] \\
      [--previous tests/bench/recorded_figures.json] [--record]
"""

from __future__ import annotations

import argparse
import datetime
import fnmatch
import json
import math
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RECORDED = REPO / "tests" / "bench" / "recorded_figures.json"
COLUMNS = ("measure", "previous", "now p50 / p95", "target", "hosted product", "met?")

# Series names as the writers spell them: fork_bench.py's summary() calls.
FORK_SERVER = "fork n={n}, server-side"
FORK_ANSWERED = "fork n={n}, call until all answered"
FORK_GROWTH = "fork n={n}, family memory growth"

# What the hosted product claims (the product brief's "Numbers the hosted
# product claims"; its docs pages say the same, and that a pool miss falls
# back to a cold boot). It publishes no figure for freeze / resume (its docs
# offer them), memory growth per fork (only "near-zero per-child memory
# overhead"), density, execs/s or its own CPU per exec.
HOSTED_FORK = "~24 ms server-side"
HOSTED_MEMORY = "– (\"near-zero per-child memory overhead\", no figure)"
HOSTED_MISS = "cold boot ~1.4 s (a miss falls back to one)"


class Reports:
    """The JSON reports of --dir, each read once; None for a missing file."""

    def __init__(self, directory):
        self.directory = Path(directory)
        self.read = {}

    def get(self, name):
        if name not in self.read:
            path = self.directory / name
            report = None
            if path.exists():
                # Python's json writes an empty series' NaN, which it reads back.
                report = json.loads(path.read_text())
                report["_written"] = datetime.datetime.fromtimestamp(
                    path.stat().st_mtime, datetime.timezone.utc)
            self.read[name] = report
        return self.read[name]


def find(report, pattern):
    """The first series whose name matches `pattern` (fnmatch: a `*` stands for
    a name's parameters), or None. The Python benchmarks list their series
    under "series" with a "name" (bench_series.summary); pool_bench under
    "steps" with a "step" (series.hpp's Series::json)."""
    for entry in report.get("series", []) + report.get("steps", []):
        if fnmatch.fnmatchcase(entry.get("name", entry.get("step", "")), pattern):
            return entry
    return None


def measured(entry):
    # series.hpp writes 0 for an empty series, bench_series NaN: n says which.
    return entry is not None and entry["n"] > 0 and not math.isnan(entry["p50"])


def number(value):
    """A figure as BENCHMARKS.md writes it: one decimal, two below 1."""
    return f"{value:.2f}" if abs(value) < 1 else f"{value:.1f}"


def p50_p95(entry, unit):
    return f"{number(entry['p50'])} / {number(entry['p95'])} {unit}"


def verdict(value, target, unit, at_least=False):
    """"yes", or by how much `value` misses: "+X unit" up to twice the
    target, "N.Nx" above it; "N short" for an at-least target."""
    if (value >= target) if at_least else (value <= target):
        return "yes"
    if at_least:
        return f"no, {target - value:g} short"
    if value >= 2 * target:
        return f"no, {value / target:.1f}x"
    return f"no, +{number(value - target)} {unit}"


def single(pattern, target, unit, aside=None):
    """A row of one series against an at-most target; `aside` is (label,
    pattern) of a second series shown beside it."""
    def figures(report):
        entry = find(report, pattern)
        if not measured(entry):
            return f"not measured (no `{pattern}`)", None
        now = p50_p95(entry, unit)
        beside = find(report, aside[1]) if aside else None
        if measured(beside):
            now += f" ({aside[0]} {p50_p95(beside, unit)})"
        return now, verdict(entry["p50"], target, unit)
    return figures


def freeze_resume(report):
    """Freeze and resume of the idle sandbox: space_bench's run_case "idle"."""
    parts, verdicts = [], []
    for step, limit in (("freeze", 300), ("resume", 250)):
        entry = find(report, f"idle: {step} at the SDK")
        if not measured(entry):
            parts.append(f"{step} not measured")
            continue
        parts.append(f"{step} {p50_p95(entry, 'ms')}")
        verdicts.append(f"{step} {verdict(entry['p50'], limit, 'ms')}")
    if report.get("memory_mib", 1024) != 1024:
        parts.append(f"a {report['memory_mib']} MiB guest")
    if not verdicts:
        return ", ".join(parts), None
    met = "yes" if verdicts == ["freeze yes", "resume yes"] else "; ".join(verdicts)
    return ", ".join(parts), met


def density(report):
    """How many idle sandboxes each admission setting held, and their execs.
    density_bench names every series after its setting ("overcommit 1.5",
    "admission off", ...): the settings are read from the count series."""
    held = ": idle sandboxes held"
    parts, qualifying = [], []
    for entry in report["series"]:
        if not entry["name"].endswith(held):
            continue
        label = entry["name"][: -len(held)]
        count = int(entry["p50"])
        execs = []
        for fraction in (25, 50, 100):
            # The name ends with how many sandboxes that is: "over 25% (8)".
            timed = find(report, f"{label}: exec print(1) over {fraction}% (*)")
            if measured(timed):
                execs.append((fraction, timed))
        text = f"{label}: {count}"
        if execs:
            text += (", exec p50 / p99 "
                     + ", ".join(f"{number(t['p50'])} / {number(t['p99'])}" for _, t in execs)
                     + " ms over " + " / ".join(f"{f}%" for f, _ in execs))
        parts.append(text)
        # The count counts when an exec over all of them still answers in < 10 ms.
        if execs and execs[-1][0] == 100 and execs[-1][1]["p50"] < 10:
            qualifying.append((count, label))
    if not parts:
        return "not measured", None
    if not qualifying:
        return "; ".join(parts), "no: exec p50 over all ≥ 10 ms (or not measured) everywhere"
    count, label = max(qualifying)
    return "; ".join(parts), f"{verdict(count, 150, '', at_least=True)} ({label}: {count})"


def throughput(report):
    """Total execs/s by client count (exec_bench's "clients=N, ..." series)
    and p99 / p50 of those execs."""
    rates, ratios = {}, {}
    for entry in report["series"]:
        if entry["name"].startswith("clients=") and entry["name"].endswith(", execs/s"):
            clients = int(entry["name"][len("clients="):].split(",")[0])
            rates[clients] = entry["p50"]  # one value: the run's total
            execs = find(report, f"clients={clients}, exec print(1)")
            if measured(execs):
                ratios[clients] = execs["p99"] / execs["p50"]
    if not rates:
        return "not measured", None
    counts = sorted(rates)
    now = (" / ".join(f"{rates[c]:.0f}" for c in counts) + " execs/s at "
           + " / ".join(map(str, counts)) + " clients; p99/p50 "
           + " / ".join(f"{ratios[c]:.1f}" if c in ratios else "–" for c in counts))
    # Past as many clients as cores, each client's VM has a core less to
    # itself: the rate need only grow up to the report's cpus.
    cores = report.get("cpus") or counts[-1]
    misses = [f"{a} -> {b} clients {rates[a]:.0f} -> {rates[b]:.0f}"
              for a, b in zip(counts, counts[1:]) if b <= cores and rates[b] <= rates[a]]
    misses += [f"p99/p50 {ratios[c]:.1f}x at {c}" for c in counts if ratios.get(c, 0) > 4]
    return now, "no: " + "; ".join(misses) if misses else "yes"


# Issue 15's rows in its order: id (the key in recorded_figures.json),
# measure, report file, target, hosted product, and what reads the row's
# figures from the report: (now, met), met None when it holds none.
ROWS = [
    ("fork1_pool", "fork(1) of a default Sandbox() from the pool holding 100 MB, server-side",
     "fork_pool.json", "≤ 250 ms", HOSTED_FORK, single(FORK_SERVER.format(n=1), 250, "ms")),
    ("fork5_pool", "fork(5) of the same, call until every child answered its first exec",
     "fork_pool.json", "≤ 800 ms", "~80–100 ms end to end for n=1–5",
     single(FORK_ANSWERED.format(n=5), 800, "ms", ("server-side", FORK_SERVER.format(n=5)))),
    ("fork1_boot", "fork(1) of a cold-booted sandbox, server-side",
     "fork_boot.json", "≤ 250 ms", HOSTED_FORK, single(FORK_SERVER.format(n=1), 250, "ms")),
    ("fork1_grandchild", "fork(1) of a fork child, a grandchild, server-side",
     "fork_grandchild.json", "≤ 250 ms", HOSTED_FORK, single(FORK_SERVER.format(n=1), 250, "ms")),
    ("fork4_memory_boot", "host memory growth, fork(4) of a cold-booted parent holding 200 MB",
     "fork_memory.json", "≤ 120 MiB", HOSTED_MEMORY, single(FORK_GROWTH.format(n=4), 120, "MiB")),
    ("fork4_memory_pool", "host memory growth, fork(4) of a pool parent holding 200 MB",
     "fork_pool_memory.json", "≤ 120 MiB", HOSTED_MEMORY,
     single(FORK_GROWTH.format(n=4), 120, "MiB")),
    ("pool_miss", "create, pool miss, a QEMU started ahead", "pool_bench.json", "≤ 130 ms",
     HOSTED_MISS, single("create, pool miss (restore)", 130, "ms")),
    ("pool_miss_cold", "create, pool miss, QEMU started on demand, --prestarted 0",
     "pool_bench_cold.json", "≤ 130 ms", HOSTED_MISS,
     single("create, pool miss (restore)", 130, "ms")),
    # pool_net_bench names each variant: "default egress (open)" today; the
    # `*` keeps the row if the parenthesis changes.
    ("pool_hit_net", "create, pool hit, networking on at the default egress, client",
     "pool_net_bench.json", "≤ 3 ms", "7–11 ms server-side (~187 ms p50 over the internet)",
     single("pool hit, default egress*, client", 3, "ms",
            ("server", "pool hit, default egress*, server"))),
    ("freeze_resume", "freeze / resume of an idle 1 GiB sandbox, at the SDK", "space_bench.json",
     "≤ 300 / ≤ 250 ms", "– (freeze to disk and resume offered, no figure published)",
     freeze_resume),
    # pool_bench's own PSS of each idle pool sandbox (hostd's /metrics), not
    # "PSS per idle sandbox, from the pool" (every QEMU's total over their
    # number, waiting pool VMs included: the old method).
    ("pss_idle_pool", "PSS of an idle pool sandbox", "pool_bench.json", "≤ 35 MiB",
     "~40 MB RSS per idle VM (RSS, not PSS)",
     single("PSS of an idle pool sandbox", 35, "MiB", ("USS", "USS of an idle pool sandbox"))),
    ("density", "idle sandboxes one host holds with exec p50 < 10 ms", "density_bench.json",
     "≥ 150", "–", density),
    ("hostd_cpu_per_exec", "hostd CPU time per exec print(1), 1000 sequential",
     "exec_bench.json", "≤ 0.15 ms", "–", single("hostd CPU per exec", 0.15, "ms")),
    ("execs_per_s", "total execs/s with 1, 2, 4, 6 clients, and p99 / p50", "exec_bench.json",
     "grows with clients until the cores are busy; p99 ≤ 4x p50",
     "– (run_code \"a few ms\" each, no rate)", throughput),
]


def table_rows(reports):
    """Each row's figures; "not run" where its report is missing."""
    rows = []
    for row_id, measure, source, target, hosted, figures in ROWS:
        report = reports.get(source)
        now, met = figures(report) if report is not None else ("not run", None)
        rows.append({"id": row_id, "measure": measure, "source": source, "now": now,
                     "target": target, "hosted": hosted, "met": met or "–",
                     "ran": met is not None})
    return rows


def run_line(reports):
    """The run's accel, machine and when its reports were written (their
    files' times: the reports record no date)."""
    found = {name: r for name, r in reports.read.items() if r is not None}
    if not found:
        return "No reports found."
    accel = sorted({str(r.get("accel")).upper() for r in found.values() if r.get("accel")})
    machine = sorted({f"{r['machine']}, {r['cpus']} cpus" for r in found.values()
                      if "machine" in r})
    times = sorted(r["_written"] for r in found.values())
    span = f"{times[0]:%Y-%m-%d %H:%M}" + (
        f" to {times[-1]:%Y-%m-%d %H:%M}" if times[-1] != times[0] else "")
    return (f"Run: {span} UTC (the reports' file times), accel {' and '.join(accel) or 'unknown'}"
            f"{', ' + '; '.join(machine) if machine else ''}; "
            f"{len(found)} of {len(reports.read)} reports found in {reports.directory}.")


def markdown(rows, previous, reports):
    lines = ["# Issue 15's table", "", run_line(reports), "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    written = {n: r["_written"].date() for n, r in reports.read.items() if r is not None}
    for r in rows:
        before = previous.get(r["id"])
        shown = f"{before['figure']} ({before['date']})" if before else "–"
        now = r["now"]
        # A report left from an earlier run (bench.sh stopped before its
        # benchmark) says when it was written.
        if r["source"] in written and written[r["source"]] != max(written.values()):
            now += f" (report of {written[r['source']]})"
        cells = (f"{r['measure']} (`{r['source']}`)", shown, now, r["target"], r["hosted"],
                 r["met"])
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def record(rows, previous, reports, path):
    """This run's figures as the previous ones; a row not run keeps its own.
    Each is dated by its report's file (UTC): today's for what this run wrote."""
    kept = dict(previous)
    for r in rows:
        if r["ran"]:
            written = reports.get(r["source"])["_written"].date()  # UTC, as the table says
            kept[r["id"]] = {"figure": r["now"], "date": written.isoformat()}
    Path(path).write_text(json.dumps(kept, indent=2, ensure_ascii=False) + "\n")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default=str(REPO / "build" / "bench"))
    parser.add_argument("--out", help="default: <dir>/TABLES.md")
    parser.add_argument("--previous", default=str(RECORDED))
    parser.add_argument("--record", action="store_true",
                        help="rewrite --previous with this run's figures")
    options = parser.parse_args(argv)

    previous_path = Path(options.previous)
    previous = json.loads(previous_path.read_text()) if previous_path.exists() else {}
    reports = Reports(options.dir)
    rows = table_rows(reports)
    text = markdown(rows, previous, reports)
    out = Path(options.out or Path(options.dir) / "TABLES.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text, end="")
    if options.record:
        record(rows, previous, reports, previous_path)
        print(f"recorded this run's figures in {previous_path}")


if __name__ == "__main__":
    main()
