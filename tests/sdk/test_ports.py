"""A server inside a sandbox, reached through hostd with vesicle's own SDK
(`sb.url(port)`, `sb.port_headers()`): ANY /v1/sandboxes/{id}/ports/{port}/...
relayed over the agent channel. The harness's hostd has no network section,
so the sandbox has no network at all: the relay never leaves the host.
"""

import hashlib
import pathlib
import urllib.error
import urllib.request

import pytest

from vesicle import Sandbox, errors

SERVER = pathlib.Path(__file__).resolve().parents[1] / "e2b" / "port_server.py"
PORT = 8000


@pytest.fixture(scope="module")
def sb(hostd):
    with Sandbox(url=hostd.url, api_key=hostd.key) as sandbox:
        sandbox.upload(SERVER.read_bytes(), "/tmp/port_server.py")
        sandbox.run_code(f"setsid nohup python3 /tmp/port_server.py {PORT} >/dev/null 2>&1 &", language="bash")
        waited = sandbox.run_code(
            "import socket, time\n"
            "for _ in range(300):\n"
            "    try:\n"
            f"        socket.create_connection(('127.0.0.1', {PORT})); break\n"
            "    except OSError: time.sleep(0.1)\n"
            "else: raise SystemExit('the server did not start')\n"
        )
        assert waited.error is None, waited.error
        yield sandbox


def fetch(url, headers, data=None):
    request = urllib.request.Request(url, headers=headers, data=data)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as failed:
        return failed.code, failed.read()


def test_url_reaches_the_server_with_the_key(sb):
    assert sb.url(PORT, "/a/b?c=d").endswith(f"/v1/sandboxes/{sb.id}/ports/{PORT}/a/b?c=d")
    status, body = fetch(sb.url(PORT, "/a/b?c=d"), sb.port_headers())
    assert status == 200, body
    # The key is hostd's: it is not passed on to the sandbox's server.
    assert body.decode().startswith("hello /a/b?c=d host=") and body.decode().endswith("auth=none")


def test_a_large_answer_and_body(sb):
    status, body = fetch(sb.url(PORT, "/big"), sb.port_headers())
    assert status == 200
    assert body == bytes(i % 251 for i in range(1 << 20))
    data = bytes(range(256)) * 8192  # 2 MiB
    status, body = fetch(sb.url(PORT, "/echo"), sb.port_headers(), data=data)
    assert status == 200
    assert body.decode() == f"{hashlib.sha256(data).hexdigest()} {len(data)}"


def test_without_the_key_or_with_nothing_listening(sb, hostd):
    status, _ = fetch(sb.url(PORT), {})
    assert status == 401
    status, body = fetch(sb.url(PORT), {"Authorization": "Bearer not-a-key"})
    assert status == 401
    status, body = fetch(sb.url(8001), sb.port_headers())
    assert status >= 500 and b"nothing accepts connections on port 8001" in body
    with pytest.raises(errors.InvalidRequestError):
        sb.url(0)
