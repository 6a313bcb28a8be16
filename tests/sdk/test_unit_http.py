"""Unit tests of the client's HTTP handling against a scripted server on 127.0.0.1.

These check what the SDK sends and how it reads answers (streaming, errors,
chunked uploads, keep-alive); test_e2e.py runs the same calls against hostd.
"""

import base64
import io
import json
import socket
import threading
import time

import pytest

import vesicle
from vesicle import Sandbox, errors
from vesicle.sandbox import CHUNK_BYTES

from fakehostd import SANDBOX, exit_event

KEY = "vsk_unit"
SB = SANDBOX["id"]
EXEC = f"/v1/sandboxes/{SB}/exec"
FILES = f"/v1/sandboxes/{SB}/files"


def _created(fake, **fields):
    fake.route("POST", "/v1/sandboxes", lambda r: r.reply_json(201, dict(SANDBOX, **fields)))
    return Sandbox(url=fake.url, api_key=KEY, memory_mib=512)


def test_create_sends_only_given_fields_and_the_key(fake):
    fake.route("POST", "/v1/sandboxes", lambda r: r.reply_json(201, SANDBOX))
    sb = Sandbox(egress=False, memory_mib=512, egress_allow=["pypi.org"], url=fake.url, api_key=KEY)
    req = fake.requests[-1]
    assert req.json() == {"egress": False, "memory_mib": 512, "egress_allow": ["pypi.org"]}
    assert req.headers["authorization"] == f"Bearer {KEY}"
    assert req.headers["content-type"] == "application/json"
    assert sb.id == SB and sb.state == "ready" and sb.info == SANDBOX
    assert repr(sb) == f"<Sandbox {SB} state=ready>"


def test_create_with_nothing_sends_an_empty_object(fake):
    fake.route("POST", "/v1/sandboxes", lambda r: r.reply_json(201, SANDBOX))
    Sandbox(url=fake.url, api_key=KEY)
    assert fake.requests[-1].json() == {}


def test_config_comes_from_the_environment(fake, monkeypatch):
    fake.route("POST", "/v1/sandboxes", lambda r: r.reply_json(201, SANDBOX))
    monkeypatch.setenv("VESICLE_URL", fake.url)
    monkeypatch.setenv("VESICLE_API_KEY", "vsk_from_env")
    Sandbox()
    assert fake.requests[-1].headers["authorization"] == "Bearer vsk_from_env"


def test_missing_key_fails_before_any_request(fake):
    with pytest.raises(errors.ConfigurationError, match="VESICLE_API_KEY"):
        Sandbox(url=fake.url)
    assert fake.requests == []


def test_egress_allow_as_a_string_is_refused_locally(fake):
    with pytest.raises(errors.InvalidRequestError, match=r"\['pypi.org'\]"):
        Sandbox(egress_allow="pypi.org", url=fake.url, api_key=KEY)
    assert fake.requests == []


def test_egress_is_reported(fake):
    sb = _created(fake, egress=True, egress_allow=["pypi.org"], egress_mode="allowlist")
    assert sb.egress == "allowlist" and sb.egress_allow == ["pypi.org"]
    sb = _created(fake, egress=False, egress_mode="off")
    assert sb.egress == "off" and sb.egress_allow == []
    sb = _created(fake)
    assert sb.egress == "open" and sb.egress_allow == []
    # An older hostd without egress_mode: derived from egress and egress_allow.
    old = {k: v for k, v in SANDBOX.items() if k != "egress_mode"}
    fake.route("POST", "/v1/sandboxes", lambda r: r.reply_json(201, dict(old, egress=False)))
    assert Sandbox(url=fake.url, api_key=KEY).egress == "off"


def test_error_answers_become_typed_errors(fake):
    fake.route("POST", "/v1/sandboxes", lambda r: r.reply_error(503, "no_capacity", "host full: retry later"))
    with pytest.raises(errors.CapacityError) as info:
        Sandbox(url=fake.url, api_key=KEY)
    assert (info.value.status, info.value.code, info.value.message) == (503, "no_capacity", "host full: retry later")
    fake.route("POST", "/v1/sandboxes", lambda r: r.reply_error(401, "unauthenticated", "bad key"))
    with pytest.raises(errors.AuthenticationError):
        Sandbox(url=fake.url, api_key=KEY)


def test_connect_unknown_id_is_not_found(fake):
    with pytest.raises(errors.NotFoundError) as info:
        Sandbox.connect("sb-000000000000", url=fake.url, api_key=KEY)
    assert info.value.status == 404
    assert fake.requests[-1].path == "/v1/sandboxes/sb-000000000000"


def test_connect_and_refresh(fake):
    state = {"s": "booting"}
    fake.route("GET", f"/v1/sandboxes/{SB}", lambda r: r.reply_json(200, dict(SANDBOX, state=state["s"])))
    sb = Sandbox.connect(SB, url=fake.url, api_key=KEY)
    assert sb.state == "booting"
    state["s"] = "dead"
    assert sb.refresh()["state"] == "dead" and sb.state == "dead"


def test_list_and_client_helpers(fake):
    fake.route("GET", "/v1/sandboxes", lambda r: r.reply_json(200, {"sandboxes": [SANDBOX, dict(SANDBOX, id="sb-ffffffffffff")]}))
    fake.route("GET", "/v1/healthz", lambda r: r.reply_json(200, {"status": "ok", "accel": "tcg", "version": "0.1.0"}))
    fake.route("GET", "/v1/capacity", lambda r: r.reply_json(200, {"max_sandboxes": 4, "running": 1, "booting": 0, "available": 3, "accel": "tcg"}))
    listed = Sandbox.list(url=fake.url, api_key=KEY)
    assert [s.id for s in listed] == [SB, "sb-ffffffffffff"]
    assert vesicle.health(url=fake.url)["status"] == "ok"
    assert "authorization" not in fake.requests[-1].headers  # healthz needs no key
    assert vesicle.capacity(url=fake.url, api_key=KEY)["available"] == 3


def test_run_code_request_body(fake):
    sb = _created(fake)
    fake.route("POST", EXEC, lambda r: r.stream_events([exit_event()]))
    sb.run_code("ls", language="bash", timeout=2.5, env={"A": "1"}, cwd="/tmp")
    req = fake.requests[-1]
    assert req.json() == {"code": "ls", "language": "bash", "timeout_s": 3, "env": {"A": "1"}, "cwd": "/tmp"}
    sb.run_code("1")
    assert fake.requests[-1].json() == {"code": "1", "language": "python"}


def test_run_code_rejects_a_bad_language_locally(fake):
    sb = _created(fake)
    with pytest.raises(errors.InvalidRequestError, match="language"):
        sb.run_code("x", language="ruby")


def test_run_code_streams_chunks_before_returning(fake):
    sb = _created(fake)
    events = [
        {"type": "stdout", "data": f"{i}\n", "seq": i + 1, "ts": "t"} for i in range(3)
    ] + [exit_event(4)]
    fake.route("POST", EXEC, lambda r: r.stream_events(events, delay=0.4))
    arrivals = []
    start = time.monotonic()
    ex = sb.run_code("...", on_stdout=lambda s: arrivals.append((time.monotonic() - start, s)))
    total = time.monotonic() - start
    assert [s for _, s in arrivals] == ["0\n", "1\n", "2\n"]
    assert ex.stdout == "0\n1\n2\n"
    # The first line came long before the call returned: it was streamed.
    assert arrivals[0][0] < 0.3 and total >= 1.1
    assert arrivals[1][0] - arrivals[0][0] >= 0.3


def test_run_code_display_events_stream_as_results(fake):
    sb = _created(fake)
    png = b"\x89PNG\r\n\x1a\n...."
    events = [
        {"type": "stdout", "data": "plotting\n", "seq": 1, "ts": "t"},
        {
            "type": "display",
            "data": {"text/plain": "<Figure>"},
            "data_b64": {"image/png": base64.b64encode(png).decode()},
            "is_main_result": False,
            "seq": 2,
            "ts": "t",
        },
        {"type": "display", "data": {"text/html": "<table/>", "text/plain": "t"}, "is_main_result": True, "seq": 3, "ts": "t"},
        {"type": "result", "data": "t", "seq": 4, "ts": "t"},
        exit_event(5),
    ]
    fake.route("POST", EXEC, lambda r: r.stream_events(events, delay=0.3))
    start = time.monotonic()
    arrivals = []
    ex = sb.run_code("plot()", on_result=lambda res: arrivals.append((time.monotonic() - start, res)))
    assert [res for _, res in arrivals] == ex.results and len(ex.results) == 2
    # Each result reached the callback as its line came, before the call returned.
    assert arrivals[0][0] < time.monotonic() - start - 0.3
    assert ex.results[0].png == png and ex.results[0].text == "<Figure>"
    assert ex.results[1].is_main_result and ex.results[1].html == "<table/>" and ex.result == "t"


def test_run_code_splits_lines_across_chunks_and_joins_chunks(fake):
    sb = _created(fake)

    def handler(r):
        lines = json.dumps({"type": "stdout", "data": "a" * 1000, "seq": 1, "ts": "t"}).encode() + b"\n"
        lines += json.dumps({"type": "result", "data": "'x'", "seq": 2, "ts": "t"}).encode() + b"\n"
        lines += json.dumps(exit_event(3)).encode()  # no final newline
        r.start_chunked()
        for i in range(0, len(lines), 7):  # odd pieces: every line spans chunks
            r.chunk(lines[i : i + 7])
        r.end_chunked()

    fake.route("POST", EXEC, handler)
    ex = sb.run_code("x")
    assert ex.stdout == "a" * 1000 and ex.result == "'x'" and ex.exit_code == 0


def test_run_code_failure_event_raises_sandbox_died(fake):
    sb = _created(fake)
    fake.route(
        "POST",
        EXEC,
        lambda r: r.stream_events(
            [{"type": "stdout", "data": "before\n", "seq": 1, "ts": "t"},
             exit_event(2, exit_code=-1, failure={"code": "sandbox_died", "message": "the VM died (QEMU exited); create a new sandbox"})]
        ),
    )
    with pytest.raises(errors.SandboxDiedError, match="create a new sandbox") as info:
        sb.run_code("import os; os._exit(0)")
    assert info.value.execution.stdout == "before\n"


def test_run_code_before_stream_errors(fake):
    sb = _created(fake)
    fake.route("POST", EXEC, lambda r: r.reply_error(409, "failed_precondition", "the sandbox is booting; retry"))
    with pytest.raises(errors.ConflictError, match="booting"):
        sb.run_code("1")
    fake.route("POST", EXEC, lambda r: r.reply_error(410, "sandbox_died", "dead"))
    with pytest.raises(errors.SandboxDiedError):
        sb.run_code("1")


def test_stream_cut_mid_way_is_a_connection_error(fake):
    sb = _created(fake)

    def handler(r):
        r.start_chunked()
        r.chunk(json.dumps({"type": "stdout", "data": "x", "seq": 1, "ts": "t"}).encode() + b"\n")
        r.abort()

    fake.route("POST", EXEC, handler)
    with pytest.raises(errors.VesicleConnectionError, match="closed in the middle") as info:
        sb.run_code("1")
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_stream_ended_cleanly_without_exit_is_a_protocol_error(fake):
    sb = _created(fake)
    fake.route("POST", EXEC, lambda r: r.stream_events([{"type": "stdout", "data": "x", "seq": 1, "ts": "t"}]))
    with pytest.raises(errors.ProtocolError, match="without an exit event"):
        sb.run_code("1")


def test_close_is_idempotent_and_then_calls_fail_locally(fake):
    sb = _created(fake)
    fake.route("DELETE", f"/v1/sandboxes/{SB}", lambda r: r.reply_raw(204, b"", "application/json"))
    sb.close()
    sb.close()
    deletes = [r for r in fake.requests if r.method == "DELETE"]
    assert len(deletes) == 1 and sb.closed
    count = len(fake.requests)
    with pytest.raises(errors.SandboxClosedError, match="closed"):
        sb.run_code("1")
    with pytest.raises(errors.SandboxClosedError):
        sb.upload(b"x", "/x")
    with pytest.raises(errors.SandboxClosedError):
        sb.download("/x")
    assert len(fake.requests) == count  # nothing was sent
    assert "closed" in repr(sb)


def test_close_of_a_sandbox_already_gone_is_fine(fake):
    sb = _created(fake)
    sb.close()  # the fake has no DELETE route: 404
    assert sb.closed


def test_context_manager_closes_and_keeps_the_original_error(fake):
    fake.route("DELETE", f"/v1/sandboxes/{SB}", lambda r: r.reply_error(500, "internal", "disk on fire"))
    with pytest.raises(KeyError) as info:
        with _created(fake):
            raise KeyError("mine")
    assert any("disk on fire" in note for note in getattr(info.value, "__notes__", []))
    fake.route("DELETE", f"/v1/sandboxes/{SB}", lambda r: r.reply_json(200, {}))
    with _created(fake) as sb:
        pass
    assert sb.closed


def test_upload_bytes_and_str(fake):
    sb = _created(fake)
    fake.route("PUT", FILES, lambda r: r.reply_json(200, {"path": r.query["path"][0], "size": len(r.body)}))
    assert sb.upload(b"\x00\x01\xff", "/data/a.bin", mode=0o755) == {"path": "/data/a.bin", "size": 3}
    req = fake.requests[-1]
    assert req.body == b"\x00\x01\xff" and req.headers["content-length"] == "3"
    assert req.query == {"path": ["/data/a.bin"], "mode": ["0755"]}
    sb.upload("héllo", "/data/t.txt")
    assert fake.requests[-1].body == "héllo".encode()


def test_upload_path_with_spaces_and_unicode_is_percent_encoded(fake):
    sb = _created(fake)
    fake.route("PUT", FILES, lambda r: r.reply_json(200, {"path": r.query["path"][0], "size": len(r.body)}))
    path = "/data/my files/naïve 文件 +&=#?.txt"
    assert sb.upload(b"x", path)["path"] == path
    target = fake.requests[-1].raw_target
    assert " " not in target and "+" not in target and "#" not in target


class _CountingReader(io.RawIOBase):
    """A file that must never be read whole: records every read's size."""

    def __init__(self, size):
        self.remaining = size
        self.reads = []
        self.pos = 0

    def readable(self):
        return True

    def read(self, n=-1):
        if n is None or n < 0:
            raise AssertionError("the upload tried to read the whole file at once")
        n = min(n, self.remaining)
        self.reads.append(n)
        data = bytes((self.pos + i) % 251 for i in range(n))
        self.pos += n
        self.remaining -= n
        return data


def test_upload_file_object_is_streamed_chunked(fake):
    sb = _created(fake)
    fake.route("PUT", FILES, lambda r: r.reply_json(200, {"path": "/big", "size": len(r.body)}))
    size = 3 * CHUNK_BYTES + 123
    reader = _CountingReader(size)
    assert sb.upload(reader, "/big")["size"] == size
    req = fake.requests[-1]
    assert req.headers.get("transfer-encoding") == "chunked" and "content-length" not in req.headers
    assert req.body == bytes(i % 251 for i in range(size))
    assert max(reader.reads) <= CHUNK_BYTES and len(req.chunk_sizes) >= 4


def test_upload_error_while_sending_is_reported(fake):
    sb = _created(fake)
    fake.route("PUT", FILES, lambda r: r.reply_error(413, "too_large", "over the disk quota"))
    fake.read_bodies = False  # answer and close without reading the (large) body
    with pytest.raises((errors.PayloadTooLargeError, errors.VesicleConnectionError)):
        sb.upload(io.BytesIO(b"x" * (8 * 1024 * 1024)), "/big")


def test_download_and_download_to(fake):
    sb = _created(fake)
    payload = bytes(range(256)) * 4096

    def handler(r):
        r.start_chunked(200, "application/octet-stream")
        for i in range(0, len(payload), 100_000):
            r.chunk(payload[i : i + 100_000])
        r.end_chunked()

    fake.route("GET", FILES, handler)
    assert sb.download("/data/x") == payload
    sink = io.BytesIO()
    assert sb.download_to("/data/x", sink) == len(payload) and sink.getvalue() == payload
    fake.route("GET", FILES, lambda r: r.reply_error(404, "not_found", "no file /nope"))
    with pytest.raises(errors.NotFoundError, match="no file"):
        sb.download("/nope")
    with pytest.raises(errors.InvalidRequestError, match="absolute"):
        sb.download("relative/path")


def test_keep_alive_reuses_one_connection(fake):
    sb = _created(fake)
    fake.route("POST", EXEC, lambda r: r.stream_events([exit_event()]))
    fake.route("GET", f"/v1/sandboxes/{SB}", lambda r: r.reply_json(200, SANDBOX))
    for _ in range(3):
        sb.run_code("1")
        sb.refresh()
    ports = {r.client_port for r in fake.requests[1:]}
    assert len(ports) == 1


def test_a_connection_the_server_closed_is_replaced(fake):
    sb = _created(fake)
    calls = []

    def handler(r):
        calls.append(1)
        # Answer, then close the kept-alive connection, as an idle timeout would.
        r.reply_json(200, SANDBOX, close=True)

    fake.route("GET", f"/v1/sandboxes/{SB}", handler)
    for _ in range(3):
        sb.refresh()
        time.sleep(0.05)
    assert len(calls) == 3


def test_refused_connection_says_how_to_start_hostd():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    with pytest.raises(errors.VesicleConnectionError) as info:
        Sandbox(url=f"http://127.0.0.1:{port}", api_key=KEY)
    msg = str(info.value)
    assert "connection refused" in msg and "hostd" in msg and "VESICLE_URL" in msg
    assert isinstance(info.value, ConnectionError)
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_silent_server_times_out_with_a_clear_error():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    accepted = []
    t = threading.Thread(target=lambda: accepted.append(listener.accept()), daemon=True)
    t.start()
    try:
        with pytest.raises(errors.VesicleTimeoutError, match="sent nothing for 0.5 s"):
            Sandbox(url=f"http://127.0.0.1:{port}", api_key=KEY, timeout=0.5)
    finally:
        t.join(2)
        for conn, _ in accepted:
            conn.close()
        listener.close()


def test_garbage_answer_is_a_protocol_error():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]

    def serve():
        conn, _ = listener.accept()
        conn.recv(65536)
        conn.sendall(b"SSH-2.0-OpenSSH_9.2\r\n")
        conn.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        with pytest.raises((errors.ProtocolError, errors.VesicleConnectionError)) as info:
            vesicle.health(url=f"http://127.0.0.1:{port}", timeout=5)
        assert "hostd" in str(info.value)
    finally:
        t.join(2)
        listener.close()


def test_non_json_success_body_is_a_protocol_error(fake):
    fake.route("GET", "/v1/healthz", lambda r: r.reply_raw(200, b"<html>hi</html>", "text/html"))
    with pytest.raises(errors.ProtocolError, match="not JSON"):
        vesicle.health(url=fake.url)


def test_request_on_a_connection_dropped_in_a_race_is_resent_once(fake):
    sb = _created(fake)
    seen_ports = set()

    def handler(r):
        if r.client_port in seen_ports:
            # A kept-alive connection the server closes as the request arrives.
            r.abort()
            return
        seen_ports.add(r.client_port)
        r.reply_json(200, SANDBOX)

    fake.route("GET", f"/v1/sandboxes/{SB}", handler)
    sb.refresh()
    sb.refresh()  # first try dies with the connection, the resend succeeds
    gets = [r for r in fake.requests if r.method == "GET"]
    assert len(gets) == 3 and len({r.client_port for r in gets}) == 2
