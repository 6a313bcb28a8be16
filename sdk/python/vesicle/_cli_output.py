"""How the `vesicle` command prints: tables and lines for people, JSON for scripts.

With --json every command prints one JSON document on stdout (hostd's own
objects where there are some, so the keys are the REST API's) and a failure
prints {"error": {"code", "message", "status"}} on stderr; the exit code is
non-zero either way.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Callable, List, Optional

from .errors import VesicleError


def emit(args, doc: Any, text: Optional[Callable[[], None]] = None) -> None:
    """Print `doc` as JSON under --json, else run `text` (or print doc as JSON)."""
    if getattr(args, "json", False) or text is None:
        print(json.dumps(doc, indent=2, sort_keys=True), flush=True)
    else:
        text()


def report_error(args, exc: BaseException, subject: Optional[str] = None) -> None:
    """One failure on stderr: `vesicle: [subject: ]message`, or its JSON."""
    if getattr(args, "json", False):
        error = {
            "code": getattr(exc, "code", None) or _local_code(exc),
            "message": str(exc) if not isinstance(exc, VesicleError) else exc.message,
            "status": getattr(exc, "status", None),
        }
        if subject is not None:
            error["subject"] = subject
        print(json.dumps({"error": error}, sort_keys=True), file=sys.stderr, flush=True)
        return
    prefix = f"{subject}: " if subject else ""
    print(f"vesicle: {prefix}{exc}", file=sys.stderr, flush=True)


def _local_code(exc: BaseException) -> str:
    # Failures that never reached hostd: named after what went wrong here.
    if isinstance(exc, VesicleError):
        return "client_error"
    if isinstance(exc, OSError):
        return "local_file_error"
    return "usage_error"


def note(message: str) -> None:
    """A remark on stderr that is not a failure (always text)."""
    print(f"vesicle: {message}", file=sys.stderr, flush=True)


def print_table(rows: List[List[str]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


def size_text(size: float) -> str:
    if size >= 1024 * 1024 * 1024:
        return f"{size / (1024 * 1024 * 1024):.1f} GiB"
    if size >= 1024 * 1024:
        return f"{size / (1024 * 1024):.0f} MiB"
    if size >= 1024:
        return f"{size / 1024:.0f} KiB"
    return f"{int(size)} B"


def egress_text(info: dict) -> str:
    if info.get("egress_allow"):
        return ",".join(info["egress_allow"])
    egress = info.get("egress")
    return "on" if egress else "off" if egress is not None else "-"
