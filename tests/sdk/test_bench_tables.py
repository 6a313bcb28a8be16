"""tests/bench/bench_tables.py: issue 15's table from benchmark reports in
the shapes their writers produce (bench_series.summary / write_report for
the Python benchmarks, series.hpp's own format string for pool_bench)."""

from __future__ import annotations

import datetime
import json
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "tests" / "bench"
sys.path.insert(0, str(BENCH))

import bench_tables  # noqa: E402
from bench_series import percentile, summary, write_report  # noqa: E402


def python_report(directory, file, bench, series, cpus=None, **settings):
    """A report as a Python benchmark writes it; `series` is (name, unit, values)."""
    path = directory / file
    write_report(str(path), bench, "tcg", [summary(*s) for s in series], **settings)
    if cpus is not None:  # write_report records this machine's count
        report = json.loads(path.read_text())
        report["cpus"] = cpus
        path.write_text(json.dumps(report))


def cpp_step(name, unit, values):
    """One entry of pool_bench's "steps", formatted with Series::json's own
    format string (read from series.hpp, so a change of its keys shows here)."""
    source = (BENCH / "series.hpp").read_text()
    call = source[source.index("std::snprintf(text, sizeof text,"):]
    call = call[: call.index(");")]
    fmt = "".join(re.findall(r'"((?:[^"\\]|\\.)*)"', call)).replace('\\"', '"')
    fmt = fmt.replace("%zu", "%d")
    stats = [percentile(values, p) if values else 0 for p in (50, 95, 99)]
    return fmt % (name, unit, len(values), *stats)


def pool_report(directory, file, steps):
    """pool_bench's JSON: its settings, then "steps" (pool_bench.cpp's main)."""
    text = ('{"accel": "tcg", "memory_mib": 512, "idle_sandboxes": 10, '
            '"tcg_translation_cache_mib": 0, "steps": ['
            + ", ".join(cpp_step(*s) for s in steps)
            + '], "pss_by_kind_idle": {}, "pss_by_kind_after_execs": {}}\n')
    (directory / file).write_text(text)


def rows_of(directory):
    """Each row's (now, met?) by its id."""
    rows = bench_tables.table_rows(bench_tables.Reports(directory))
    return {r["id"]: (r["now"], r["met"]) for r in rows}


def write_fork_and_exec(directory):
    python_report(directory, "fork_pool.json", "fork_bench", [
        ("fork n=1, server-side", "ms", [130.0, 137.0, 150.0]),
        ("fork n=5, server-side", "ms", [500.0, 520.0, 540.0]),
        ("fork n=5, call until all answered", "ms", [1000.0, 1040.0, 1100.0]),
    ], source="pool", parent_mib=100)
    python_report(directory, "exec_bench.json", "exec_bench", [
        ("exec print(1), sequential", "ms", [2.0, 2.5, 3.0]),
        ("hostd CPU per exec", "ms", [0.24]),
        ("clients=1, exec print(1)", "ms", [2.0] * 98 + [6.0, 7.0]),
        ("clients=1, execs/s", "1/s", [300.0]),
        ("clients=2, exec print(1)", "ms", [4.0] * 98 + [30.0, 40.0]),
        ("clients=2, execs/s", "1/s", [250.0]),
        ("clients=4, exec print(1)", "ms", [8.0] * 100),
        ("clients=4, execs/s", "1/s", [260.0]),
    ], cpus=2)


def test_met_missed_and_not_run_rows(tmp_path):
    write_fork_and_exec(tmp_path)
    rows = rows_of(tmp_path)
    assert rows["fork1_pool"] == ("137.0 / 148.7 ms", "yes")
    # Missed by 240 ms at p50; the server-side figure beside it.
    assert rows["fork5_pool"] == ("1040.0 / 1094.0 ms (server-side 520.0 / 538.0 ms)",
                                  "no, +240.0 ms")
    assert rows["hostd_cpu_per_exec"] == ("0.24 / 0.24 ms", "no, +0.09 ms")
    # No fork_memory.json: the row is there and says so.
    assert rows["fork4_memory_boot"] == ("not run", "–")
    assert rows["density"] == ("not run", "–")
    assert [r["id"] for r in bench_tables.table_rows(bench_tables.Reports(tmp_path))] == [
        "fork1_pool", "fork5_pool", "fork1_boot", "fork1_grandchild", "fork4_memory_boot",
        "fork4_memory_pool", "pool_miss", "pool_miss_cold", "pool_hit_net", "freeze_resume",
        "pss_idle_pool", "density", "hostd_cpu_per_exec", "execs_per_s"]


def test_execs_per_s_must_grow_to_the_cores_and_keep_p99_near_p50(tmp_path):
    write_fork_and_exec(tmp_path)
    # 2 cores: 1 -> 2 clients must grow, 2 -> 4 need not; 2 clients' p99 is 7.5x.
    assert rows_of(tmp_path)["execs_per_s"] == (
        "300 / 250 / 260 execs/s at 1 / 2 / 4 clients; p99/p50 3.0 / 7.5 / 1.0",
        "no: 1 -> 2 clients 300 -> 250; p99/p50 7.5x at 2")


def test_pool_bench_steps_and_an_empty_series(tmp_path):
    pool_report(tmp_path, "pool_bench.json", [
        ("create, pool hit", "ms", [3.0, 4.0]),
        ("create, pool miss (restore)", "ms", [20.0, 21.0, 25.0]),
        ("PSS per idle sandbox, from the pool", "MiB", [50.0]),
        ("PSS of an idle pool sandbox", "MiB", [56.0, 57.0, 58.0]),
        ("USS of an idle pool sandbox", "MiB", [44.0, 45.0, 46.0]),
    ])
    # bench.sh's cold run measures misses only; here none (series.hpp writes 0s).
    pool_report(tmp_path, "pool_bench_cold.json", [("create, pool miss (restore)", "ms", [])])
    rows = rows_of(tmp_path)
    assert rows["pool_miss"] == ("21.0 / 24.6 ms", "yes")
    assert rows["pss_idle_pool"] == ("57.0 / 57.9 MiB (USS 45.0 / 45.9 MiB)", "no, +22.0 MiB")
    assert rows["pool_miss_cold"] == ("not measured (no `create, pool miss (restore)`)", "–")


def test_network_space_and_density_rows(tmp_path):
    python_report(tmp_path, "pool_net_bench.json", "pool_net_bench", [
        ("pool hit, default egress (open), client", "ms", [1.2, 1.5, 9.0]),
        ("pool hit, default egress (open), server", "ms", [0.0, 0.0, 5.0]),
        ("pool hit, egress off, client", "ms", [40.0]),
    ], hits=3)
    python_report(tmp_path, "space_bench.json", "space_bench", [
        ("idle: freeze at the SDK", "ms", [180.0, 190.0]),
        ("idle: resume at the SDK", "ms", [260.0, 270.0]),
    ], reps=2, memory_mib=1024, data_mib=200)
    density = []
    for label, count, p50 in (("overcommit default (1.0)", 17, 9.0), ("admission off", 160, 11.0)):
        density.append((f"{label}: idle sandboxes held", "count", [count]))
        for fraction, active in ((25, count // 4), (50, count // 2), (100, count)):
            density.append((f"{label}: exec print(1) over {fraction}% ({active})", "ms",
                            [p50] * 99 + [30.0]))
    python_report(tmp_path, "density_bench.json", "density_bench", density, runs=[], max=160)
    rows = rows_of(tmp_path)
    assert rows["pool_hit_net"] == ("1.5 / 8.2 ms (server 0.00 / 4.5 ms)", "yes")
    assert rows["freeze_resume"] == ("freeze 185.0 / 189.5 ms, resume 265.0 / 269.5 ms",
                                     "freeze yes; resume no, +15.0 ms")
    # 160 held, but their execs answer in 11 ms: only the 17 count.
    now, met = rows["density"]
    assert met == "no, 133 short (overcommit default (1.0): 17)"
    assert "admission off: 160, exec p50 / p99 11.0 / 11.2" in now


def run(*args):
    return subprocess.run([sys.executable, str(BENCH / "bench_tables.py"), *map(str, args)],
                          check=True, capture_output=True, text=True).stdout


def test_previous_figures_and_record_round_trip(tmp_path):
    write_fork_and_exec(tmp_path)
    previous = tmp_path / "recorded.json"
    previous.write_text(json.dumps({
        "fork1_pool": {"figure": "137.2 / 147.6 ms", "date": "2026-12-06"},
        "density": {"figure": "160", "date": "2026-12-07"},
    }))
    printed = run("--dir", tmp_path, "--previous", previous)
    table = (tmp_path / "TABLES.md").read_text()
    assert printed == table
    assert "accel TCG" in table
    line = next(l for l in table.splitlines() if l.startswith("| fork(1) of a default"))
    assert line.split(" | ")[1:3] == ["137.2 / 147.6 ms (2026-12-06)", "137.0 / 148.7 ms"]

    run("--dir", tmp_path, "--previous", previous, "--record")
    recorded = json.loads(previous.read_text())
    today = datetime.datetime.now(datetime.timezone.utc).date().isoformat()
    assert recorded["fork1_pool"] == {"figure": "137.0 / 148.7 ms", "date": today}
    assert recorded["hostd_cpu_per_exec"] == {"figure": "0.24 / 0.24 ms", "date": today}
    # Not run this time: the figure recorded before stays.
    assert recorded["density"] == {"figure": "160", "date": "2026-12-07"}
    assert "fork1_boot" not in recorded

    table = run("--dir", tmp_path, "--previous", previous)
    line = next(l for l in table.splitlines() if l.startswith("| fork(1) of a default"))
    assert line.split(" | ")[1] == f"137.0 / 148.7 ms ({today})"


def test_the_committed_figures_cover_every_row():
    recorded = json.loads(bench_tables.RECORDED.read_text())
    ids = {r["id"] for r in bench_tables.table_rows(bench_tables.Reports(REPO / "no-such-dir"))}
    assert set(recorded) == ids
    for entry in recorded.values():
        datetime.date.fromisoformat(entry["date"])
        assert entry["figure"]


def test_the_writers_still_name_their_series_so():
    """The series names bench_tables.py matches, as the benchmarks spell them."""
    expected = {
        "fork_bench.py": [f'f"{bench_tables.FORK_SERVER}"', f'f"{bench_tables.FORK_ANSWERED}"',
                          f'f"{bench_tables.FORK_GROWTH}"'],
        "pool_bench.cpp": ['"create, pool miss (restore)"', '"PSS of an idle pool sandbox"',
                           '"USS of an idle pool sandbox"'],
        "pool_net_bench.py": ['f"pool hit, {name}, client"', 'f"pool hit, {name}, server"',
                              '("default egress (open)", {})'],
        "space_bench.py": ['f"{name}: freeze at the SDK"', 'f"{name}: resume at the SDK"',
                           'run_case("idle"'],
        "density_bench.py": ['f"{label}: idle sandboxes held"',
                             'f"{label}: exec print(1) over {fraction}% ({len(active)})"'],
        "exec_bench.py": ['summary("hostd CPU per exec"', 'f"clients={clients}, execs/s"',
                          'f"clients={clients}, exec print(1)"'],
    }
    for file, names in expected.items():
        source = (BENCH / file).read_text()
        for name in names:
            assert name in source, (file, name)
