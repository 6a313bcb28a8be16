"""hostd's error kinds, as `hostd --error-table` prints them, each reach the
SDK as the exception class the table names, by HTTP answer and by stream code."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

import vesicle
from vesicle.errors import error_for_code, error_from_response


def _table():
    hostd = os.environ.get("VESICLE_HOSTD")
    if not hostd:
        pytest.skip("VESICLE_HOSTD is not set (scripts/test.sh sets it to the built hostd)")
    out = subprocess.run([hostd, "--error-table"], check=True, capture_output=True, text=True)
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def test_every_kind_maps_to_its_sdk_exception():
    rows = _table()
    assert len(rows) >= 13
    for row in rows:
        cls = getattr(vesicle, row["sdk_exception"])
        body = json.dumps({"error": {"code": row["api_code"], "message": "m"}}).encode()
        err = error_from_response(row["http_status"], "", body)
        assert type(err) is cls, row
        assert err.status == row["http_status"] and err.code == row["api_code"]
        assert type(error_for_code(row["api_code"], "m")) is cls, row


def test_kinds_are_unique():
    rows = _table()
    assert len({r["kind"] for r in rows}) == len(rows)
