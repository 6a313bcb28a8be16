"""Percentiles and the one-line summaries the Python benchmarks print (and
write as JSON), like series.hpp for the C++ ones."""

from __future__ import annotations

import json
import os
import platform
import statistics
from pathlib import Path


def percentile(values, p):
    """The p-th percentile, interpolated between the two nearest ranks."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = (len(ordered) - 1) * p / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summary(name, unit, values, name_width=44):
    """Prints one series' count and percentiles; returns them as a JSON-ready dict."""
    line = {
        "name": name,
        "unit": unit,
        "n": len(values),
        "p50": percentile(values, 50),
        "p95": percentile(values, 95),
        "p99": percentile(values, 99),
        "mean": statistics.fmean(values) if values else float("nan"),
    }
    print(
        f"{name:<{name_width}} n={line['n']:<4} p50={line['p50']:9.1f} p95={line['p95']:9.1f} "
        f"p99={line['p99']:9.1f} {unit}",
        flush=True,
    )
    return line


def write_report(path, bench, accel, series, **settings):
    """Writes a run's series as JSON with what it ran on (nothing when path is empty)."""
    if not path:
        return
    report = {"bench": bench, **settings, "accel": accel,
              "machine": platform.processor() or platform.machine(),
              "cpus": os.cpu_count(), "series": series}
    Path(path).write_text(json.dumps(report, indent=2))
