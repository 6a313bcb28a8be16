"""The CLI's exit codes, streams and error output, against the scripted server.

Run as a subprocess (`python3 -m vesicle`), as a user would; test_e2e.py runs
it against a real hostd.
"""

import base64
import json
import subprocess
import sys

from conftest import sdk_env
from fakehostd import SANDBOX, exit_event

SB = SANDBOX["id"]
EXEC = f"/v1/sandboxes/{SB}/exec"


def cli(fake_url, *args, stdin=b"", key="vsk_unit", timeout=30):
    env = sdk_env({"VESICLE_URL": fake_url} if fake_url else None)
    if key:
        env["VESICLE_API_KEY"] = key
    return subprocess.run(
        [sys.executable, "-m", "vesicle", *args],
        input=stdin,
        capture_output=True,
        env=env,
        timeout=timeout,
    )


def _events(*events):
    return [dict(e, seq=i + 1, ts="t") for i, e in enumerate(events)]


def test_exec_bash_passes_exit_code_and_streams(fake):
    fake.route(
        "POST",
        EXEC,
        lambda r: r.stream_events(
            _events(
                {"type": "stdout", "data": "out\n"},
                {"type": "stderr", "data": "err\n"},
                {"type": "stdout", "data_b64": "AP8K"},  # b"\x00\xff\n"
                exit_event(exit_code=3),
            )
        ),
    )
    p = cli(fake.url, "exec", SB, "--bash", "--env", "A=1", "--cwd", "/tmp", "echo out; exit 3")
    assert p.returncode == 3, p.stderr
    assert p.stdout == b"out\n\x00\xff\n" and p.stderr == b"err\n"
    assert fake.requests[-1].json() == {"code": "echo out; exit 3", "language": "bash", "env": {"A": "1"}, "cwd": "/tmp"}


def test_exec_python_result_and_error(fake):
    tb = "Traceback (most recent call last):\n  File \"<cell>\", line 1\nNameError: name 'y' is not defined\n"
    fake.route("POST", EXEC, lambda r: r.stream_events(_events({"type": "result", "data": "42"}, exit_event())))
    p = cli(fake.url, "exec", SB, "6 * 7")
    assert (p.returncode, p.stdout, p.stderr) == (0, b"42\n", b"")
    fake.route(
        "POST",
        EXEC,
        lambda r: r.stream_events(_events({"type": "error", "name": "NameError", "value": "name 'y' is not defined", "traceback": tb}, exit_event())),
    )
    p = cli(fake.url, "exec", SB, "y")
    assert p.returncode == 1 and p.stderr.decode() == tb and p.stdout == b""


def test_exec_timeout_exits_124(fake):
    fake.route("POST", EXEC, lambda r: r.stream_events(_events(exit_event(exit_code=-1, timed_out=True))))
    p = cli(fake.url, "exec", SB, "--timeout", "2", "while True: pass")
    assert p.returncode == 124
    assert b"timed out" in p.stderr
    assert fake.requests[-1].json()["timeout_s"] == 2


def test_exec_code_from_stdin(fake):
    fake.route("POST", EXEC, lambda r: r.stream_events(_events(exit_event())))
    p = cli(fake.url, "exec", SB, "-", stdin=b"print('from stdin')\n")
    assert p.returncode == 0, p.stderr
    assert fake.requests[-1].json()["code"] == "print('from stdin')\n"


def test_exec_sandbox_died_is_an_error_message(fake):
    fake.route(
        "POST",
        EXEC,
        lambda r: r.stream_events(_events(exit_event(failure={"code": "sandbox_died", "message": "the VM died; create a new sandbox"}))),
    )
    p = cli(fake.url, "exec", SB, "1")
    assert p.returncode == 1
    assert p.stderr == b"vesicle: the VM died; create a new sandbox\n"


def test_errors_print_one_line_and_exit_1(fake):
    p = cli(fake.url, "exec", "sb-000000000000", "1")  # the fake answers 404
    assert p.returncode == 1
    assert p.stderr.startswith(b"vesicle: ") and b"Traceback" not in p.stderr
    p = cli(fake.url, "ls", key=None)
    assert p.returncode == 1 and b"VESICLE_API_KEY" in p.stderr and b"Traceback" not in p.stderr


def test_hostd_not_listening_says_how_to_start_it():
    p = cli("http://127.0.0.1:9", "ls")  # port 9 (discard): nothing listens on loopback
    assert p.returncode == 1
    assert b"is hostd running?" in p.stderr and b"Traceback" not in p.stderr


def test_usage_errors_exit_2(fake):
    p = cli(fake.url, "exec", SB)
    assert p.returncode == 2 and b"usage:" in p.stderr
    p = cli(fake.url, "frobnicate")
    assert p.returncode == 2


def test_create_ls_rm(fake):
    fake.route("POST", "/v1/sandboxes", lambda r: r.reply_json(201, SANDBOX))
    fake.route("GET", "/v1/sandboxes", lambda r: r.reply_json(200, {"sandboxes": [SANDBOX]}))
    fake.route("DELETE", f"/v1/sandboxes/{SB}", lambda r: r.reply_raw(204, b"", "application/json"))
    p = cli(fake.url, "create", "--memory-mib", "512", "--vcpus", "1", "--no-egress")
    assert (p.returncode, p.stdout) == (0, f"{SB}\n".encode()), p.stderr
    assert fake.requests[-1].json() == {"egress": False, "vcpus": 1, "memory_mib": 512}
    p = cli(fake.url, "ls")
    lines = p.stdout.decode().splitlines()
    assert lines[0].split() == ["ID", "STATE", "VCPUS", "MEMORY", "EGRESS", "CREATED"]
    assert lines[1].split()[:3] == [SB, "ready", "2"]
    p = cli(fake.url, "ls", "--json")
    assert json.loads(p.stdout) == [SANDBOX]
    p = cli(fake.url, "rm", SB, "sb-000000000000")
    assert p.returncode == 1
    assert p.stdout == f"{SB}\n".encode()
    assert p.stderr.startswith(b"vesicle: sb-000000000000: ")


def test_upload_and_download(fake, tmp_path):
    files = {}

    def put(r):
        files[r.query["path"][0]] = r.body
        r.reply_json(200, {"path": r.query["path"][0], "size": len(r.body)})

    def get(r):
        path = r.query["path"][0]
        if path not in files:
            r.reply_error(404, "not_found", f"no file {path} in the sandbox")
        else:
            r.reply_raw(200, files[path], "application/octet-stream")

    fake.route("PUT", f"/v1/sandboxes/{SB}/files", put)
    fake.route("GET", f"/v1/sandboxes/{SB}/files", get)
    local = tmp_path / "in.bin"
    local.write_bytes(bytes(range(256)))
    p = cli(fake.url, "upload", SB, str(local), "/data/in.bin", "--mode", "600")
    assert p.returncode == 0 and p.stdout == b"/data/in.bin: 256 bytes\n", p.stderr
    assert fake.requests[-1].query["mode"] == ["0600"]
    p = cli(fake.url, "download", SB, "/data/in.bin", "-")
    assert p.stdout == bytes(range(256))
    p = cli(fake.url, "download", SB, "/data/in.bin", str(tmp_path))  # into a directory
    assert (tmp_path / "in.bin").read_bytes() == bytes(range(256))
    p = cli(fake.url, "download", SB, "/data/missing", str(tmp_path / "out"))
    assert p.returncode == 1 and b"no file /data/missing" in p.stderr
    assert sorted(x.name for x in tmp_path.iterdir()) == ["in.bin"]  # no partial file left
    p = cli(fake.url, "upload", SB, str(tmp_path / "nope"), "/x")
    assert p.returncode == 1 and p.stderr.startswith(b"vesicle: ") and b"nope" in p.stderr
    p = cli(fake.url, "upload", SB, "-", "/data/stdin", stdin=b"piped")
    assert files["/data/stdin"] == b"piped"


def _display_events():
    png = b"\x89PNG\r\n\x1a\nfake"
    return _events(
        {"type": "stdout", "data": "drawing\n"},
        {"type": "display", "data": {"text/plain": "<Figure>"}, "data_b64": {"image/png": base64.b64encode(png).decode()}},
        {"type": "display", "data": {"text/plain": "a table", "text/html": "<table></table>"}},
        {"type": "display", "data": {"text/html": "<b>only html</b>"}},
        {"type": "display", "data": {"text/plain": "main", "text/html": "<i>main</i>"}, "is_main_result": True},
        {"type": "result", "data": "main"},
        exit_event(),
    ), png


def test_exec_prints_display_outputs_and_notes_images(fake):
    events, _ = _display_events()
    fake.route("POST", EXEC, lambda r: r.stream_events(events))
    p = cli(fake.url, "exec", SB, "plot()")
    assert p.returncode == 0, p.stderr
    # The main result's text is the result, printed once at the end.
    assert p.stdout.decode() == (
        "drawing\n[image/png 12 bytes]\na table\n[text/html]\nmain\n"
    )


def test_exec_save_images_writes_them(fake, tmp_path):
    events, png = _display_events()
    fake.route("POST", EXEC, lambda r: r.stream_events(events))
    target = tmp_path / "images"
    p = cli(fake.url, "exec", SB, "--save-images", str(target), "plot()")
    assert p.returncode == 0, p.stderr
    saved = target / "output-1.png"
    assert saved.read_bytes() == png
    assert f"[image/png 12 bytes: {saved}]\n" in p.stdout.decode()
