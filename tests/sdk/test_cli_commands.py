"""The `vesicle` command's whole surface against a real hostd, as a script uses
it: --json on every command (hostd's objects on stdout, errors as
{"error": {"code", "message", "status"}} on stderr with a non-zero exit),
fork and merge, Spaces, the host's commands and the admin commands."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import REPO, sdk_env
from hostd_process import hostd_session

MEMORY_MIB = 512


@pytest.fixture(scope="module")
def cli_hostd():
    with hostd_session(REPO, max_sandboxes=4, admin_key=True) as running:
        yield running


def run(hostd, *args, key=None, timeout=300):
    env = sdk_env({"VESICLE_URL": hostd.url, "VESICLE_API_KEY": key or hostd.key})
    return subprocess.run(
        [sys.executable, "-m", "vesicle", *args],
        capture_output=True,
        env=env,
        timeout=timeout,
    )


def ok_json(hostd, *args, key=None):
    """Runs a --json command that must succeed; its stdout as JSON."""
    p = run(hostd, *args, "--json", key=key)
    assert p.returncode == 0, (args, p.stderr.decode())
    assert p.stderr == b"", p.stderr.decode()
    return json.loads(p.stdout)


def failed_json(hostd, *args, key=None, exit_code=1):
    """Runs a --json command that must fail; the error object it printed on stderr."""
    p = run(hostd, *args, "--json", key=key)
    assert p.returncode == exit_code, (args, p.returncode, p.stdout, p.stderr)
    assert p.stdout == b"", p.stdout
    lines = p.stderr.decode().splitlines()
    assert len(lines) == 1, lines
    error = json.loads(lines[0])["error"]
    assert error["code"] and error["message"]
    return error


def test_sandbox_commands_fork_merge_and_their_errors(cli_hostd):
    h = cli_hostd
    sb = ok_json(h, "create", "--memory-mib", str(MEMORY_MIB), "--idle-timeout-s", "120")
    sid = sb["id"]
    assert (sb["state"], sb["memory_mib"], sb["idle_timeout_s"]) == ("ready", MEMORY_MIB, 120)
    child_id = None
    try:
        assert ok_json(h, "get", sid)["id"] == sid
        assert sid in [s["id"] for s in ok_json(h, "ls")]

        ex = ok_json(h, "exec", sid, "x = 6 * 7; print('x is', x); x")
        assert (ex["stdout"], ex["result"], ex["exit_code"], ex["error"]) == ("x is 42\n", "42", 0, None)
        # A Python exception: the error object, and exit status 1 as in text mode.
        p = run(h, "exec", sid, "undefined_name", "--json")
        assert p.returncode == 1
        assert json.loads(p.stdout)["error"]["name"] == "NameError"
        p = run(h, "exec", sid, "--bash", "echo out; exit 3", "--json")
        assert (p.returncode, json.loads(p.stdout)["stdout"]) == (3, "out\n")

        forked = ok_json(h, "fork", sid, "-n", "1")
        (child,) = forked["children"]
        child_id = child["id"]
        assert (child["source"], child["forked_from"]) == ("fork", sid)
        assert ok_json(h, "exec", child_id, "x += 1; x")["result"] == "43"
        assert ok_json(h, "exec", sid, "x")["result"] == "42"  # the parent is untouched

        # Bad input, each answered as JSON with hostd's (or the SDK's) code.
        assert failed_json(h, "fork", sid, "-n", "0")["code"] == "invalid_argument"
        itself = failed_json(h, "merge", sid, sid)
        assert (itself["code"], itself["status"]) == ("failed_precondition", 409)
        assert "itself" in itself["message"]
        unknown = failed_json(h, "get", "sb-000000000000")
        assert (unknown["code"], unknown["status"]) == ("not_found", 404)
        # Templates can be saved now (POST /v1/templates): an unknown name is
        # one this key has none of, 404, and the message says where to look.
        template = failed_json(h, "create", "--template", "no-such-template")
        assert (template["code"], template["status"]) == ("not_found", 404)
        assert "no-such-template" in template["message"]
        assert "/v1/templates" in template["message"]

        merged = ok_json(h, "merge", sid, child_id)
        assert merged["id"] == sid
        assert ok_json(h, "exec", sid, "x")["result"] == "43"  # the parent runs the child's world
        assert failed_json(h, "get", child_id)["code"] == "not_found"
        child_id = None
    finally:
        p = run(h, "rm", sid, *([child_id] if child_id else []), "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout) == {"deleted": [sid] + ([child_id] if child_id else [])}
    # rm goes on past an unknown id, reports it as JSON naming it, and exits 1.
    p = run(h, "rm", sid, "--json")
    assert p.returncode == 1 and json.loads(p.stdout) == {"deleted": []}
    error = json.loads(p.stderr)["error"]
    assert (error["code"], error["subject"]) == ("not_found", sid)


def test_files_and_spaces_commands(cli_hostd, tmp_path):
    h = cli_hostd
    sid = ok_json(h, "create", "--memory-mib", str(MEMORY_MIB))["id"]
    space_id = None
    try:
        local = tmp_path / "in.txt"
        local.write_bytes(b"hello from the host\n")
        written = ok_json(h, "upload", sid, str(local), "/root/in.txt")
        assert written == {"path": "/root/in.txt", "size": 20}
        got = ok_json(h, "download", sid, "/root/in.txt", str(tmp_path / "out.txt"))
        assert got == {"remote": "/root/in.txt", "path": str(tmp_path / "out.txt"), "size": 20}
        assert (tmp_path / "out.txt").read_bytes() == local.read_bytes()
        # stdout is the file there: no room for JSON.
        assert failed_json(h, "download", sid, "/root/in.txt", "-")["code"] == "invalid_argument"
        missing = failed_json(h, "download", sid, "/root/nothing", str(tmp_path / "x"))
        assert missing["code"] == "not_found"
        assert not (tmp_path / "x").exists()
        assert failed_json(h, "upload", sid, str(tmp_path / "absent"), "/root/x")["code"] == "local_file_error"

        ok_json(h, "exec", sid, "y = 'kept'")
        space = ok_json(h, "freeze", sid)
        space_id = space["space_id"]
        assert space["sandbox_id"] == sid and space["size_bytes"] > 0
        assert ok_json(h, "space", space_id)["space_id"] == space_id
        assert space_id in [s["space_id"] for s in ok_json(h, "spaces")]
        assert failed_json(h, "exec", sid, "1")["code"] == "failed_precondition"  # frozen

        resumed = ok_json(h, "resume", space_id)
        assert (resumed["source"], resumed["resumed_from"]) == ("space", space_id)
        assert ok_json(h, "exec", resumed["id"], "y")["result"] == "'kept'"
        assert ok_json(h, "rm", resumed["id"]) == {"deleted": [resumed["id"]]}
        assert failed_json(h, "resume", space_id)["code"] == "not_found"  # used up
        space_id = None
    finally:
        run(h, "rm", sid)
        if space_id:
            run(h, "rm-space", space_id)
    assert failed_json(h, "space", "sp-000000000000")["code"] == "not_found"


def test_host_commands(cli_hostd):
    h = cli_hostd
    health = ok_json(h, "health")
    assert (health["status"], health["accel"]) == ("ok", "tcg") or health["accel"] == "kvm"
    capacity = ok_json(h, "capacity")
    assert capacity["max_sandboxes"] == 4 and capacity["available"] <= 4
    # disable_pools: hostd's base image, no warm pool.
    assert ok_json(h, "templates") == {"templates": [{"name": "default", "pools": []}]}
    p = run(h, "templates")
    assert p.returncode == 0 and p.stdout.decode().startswith("default  no warm pool")
    # /metrics shows every key's figures: an admin key's only (403 otherwise).
    refused = failed_json(h, "metrics")
    assert (refused["code"], refused["status"]) == ("forbidden", 403)
    samples = ok_json(h, "metrics", key=h.admin_key)["samples"]
    maximum = [s for s in samples if s["name"] == "vesicle_max_sandboxes"]
    assert maximum == [{"name": "vesicle_max_sandboxes", "labels": {}, "value": 4.0}]
    assert {"state": "ready"} in [s["labels"] for s in samples if s["name"] == "vesicle_sandboxes"]
    # A key hostd does not know: its 401, as JSON.
    for command in ("capacity", "templates", "metrics"):
        bad = failed_json(h, command, key="vsk_" + "0" * 32)
        assert (bad["code"], bad["status"]) == ("unauthenticated", 401), command
    # A usage error is JSON too under --json, and exits 2.
    usage = failed_json(h, "fork", exit_code=2)
    assert usage["code"] == "usage_error" and "ID" in usage["message"]


def test_admin_commands_see_and_end_any_keys_sandbox(cli_hostd):
    h = cli_hostd
    sid = ok_json(h, "create", "--memory-mib", str(MEMORY_MIB))["id"]
    try:
        listing = ok_json(h, "admin", "ls", key=h.admin_key)
        (entry,) = [e for e in listing["sandboxes"] if e["sandbox"]["id"] == sid]
        assert entry["owner_key_id"].startswith("key-")
        assert entry["owner_key_id"] != listing["admin_key_id"]
        assert entry["has_vm"] and entry["rss_bytes"] > 16 * 2**20 and entry["cpu_seconds"] > 0
        p = run(h, "admin", "ls", key=h.admin_key)
        assert p.returncode == 0 and sid in p.stdout.decode() and entry["owner_key_id"] in p.stdout.decode()

        ex = ok_json(h, "admin", "exec", sid, "print(6 * 7)", key=h.admin_key)
        assert ex["stdout"] == "42\n"
        unknown = failed_json(h, "admin", "exec", "sb-000000000000", "1", key=h.admin_key)
        assert (unknown["code"], unknown["status"]) == ("not_found", 404)
        # An ordinary key is no admin: refused, saying what is needed.
        refused = failed_json(h, "admin", "ls")
        assert (refused["code"], refused["status"]) == ("unauthenticated", 401)
        assert "--admin" in refused["message"]
        # rm reports what it did on stdout and each id it could not remove on stderr.
        p = run(h, "admin", "rm", sid, "--json")
        assert (p.returncode, json.loads(p.stdout)) == (1, {"deleted": []})
        assert json.loads(p.stderr)["error"]["code"] == "unauthenticated"
        p = run(h, "admin", "rm", "sb-000000000000", "--json", key=h.admin_key)
        assert (p.returncode, json.loads(p.stdout)) == (1, {"deleted": []})
        unknown = json.loads(p.stderr)["error"]
        assert (unknown["code"], unknown["subject"]) == ("not_found", "sb-000000000000")

        assert ok_json(h, "admin", "rm", sid, key=h.admin_key) == {"deleted": [sid]}
        assert failed_json(h, "get", sid)["code"] == "not_found"  # gone for its owner too
        sid = None
    finally:
        if sid:
            run(h, "rm", sid)
