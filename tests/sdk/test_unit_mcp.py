"""`vesicle mcp` (the stdio MCP server) against hostile and broken input.

The process is the real one (`python3 -m vesicle mcp`); hostd is an address
nobody listens on, so tool calls that get past the checks fail with a
connection error, as an isError result. The server must answer every bad
message with the right JSON-RPC error and keep going. The real tools over
both transports are tested with the official MCP client in tests/mcp/.
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys

import pytest

from conftest import SDK

from vesicle import mcp


def _dead_url() -> str:
    # A port that was free a moment ago: connections are refused.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


@pytest.fixture
def server():
    env = dict(os.environ, PYTHONPATH=str(SDK), VESICLE_URL=_dead_url(), VESICLE_API_KEY="vsk_test")
    proc = subprocess.Popen(
        [sys.executable, "-m", "vesicle", "mcp"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )

    def ask(raw: bytes):
        proc.stdin.write(raw + b"\n")
        proc.stdin.flush()
        line = proc.stdout.readline()
        assert line, f"vesicle mcp closed stdout; stderr: {proc.stderr.read().decode()}"
        return json.loads(line)

    try:
        yield proc, ask
    finally:
        proc.stdin.close()
        assert proc.wait(timeout=10) == 0
        proc.stdout.close()
        proc.stderr.close()


def _request(method: str, params=None, msg_id=1) -> bytes:
    doc = {"jsonrpc": "2.0", "id": msg_id, "method": method}
    if params is not None:
        doc["params"] = params
    return json.dumps(doc).encode()


def test_protocol_errors_are_json_rpc_errors_and_the_server_keeps_going(server):
    _, ask = server
    cases = [
        (b"{not json", None, -32700, "parse error"),
        (b"\xff\xfe", None, -32700, "not valid UTF-8"),
        (b"[" * 100000, None, -32700, "parse error"),
        (b'[{"jsonrpc":"2.0","id":1,"method":"ping"}]', None, -32600, "batches"),
        (b"42", None, -32600, "got an integer"),
        (b'{"jsonrpc":"2.0","id":{"a":1},"method":"ping"}', None, -32600, "id must be"),
        (b'{"jsonrpc":"2.0","id":true,"method":"ping"}', None, -32600, "id must be"),
        (b'{"jsonrpc":"1.0","id":7,"method":"ping"}', 7, -32600, '"jsonrpc" must be "2.0"'),
        (b'{"jsonrpc":"2.0","id":8}', 8, -32600, '"method" is missing'),
        (b'{"jsonrpc":"2.0","id":9,"method":5}', 9, -32600, "must be a string"),
        (b'{"jsonrpc":"2.0","id":10,"method":"ping","params":[1]}', 10, -32602, '"params" must be an object'),
        (_request("resources/list", msg_id="r"), "r", -32601, "resources/list"),
        (_request("tools/call", {"name": "rm_rf"}, 11), 11, -32602, 'no tool named "rm_rf"'),
        (_request("tools/call", {"arguments": {}}, 12), 12, -32602, "params.name"),
        (_request("tools/call", {"name": "run_python", "arguments": [1]}, 13), 13, -32602, "arguments must be an object"),
        (_request("initialize", {}, 14), 14, -32602, "protocolVersion"),
    ]
    for raw, msg_id, code, words in cases:
        answer = ask(raw)
        assert answer["jsonrpc"] == "2.0"
        assert answer["id"] == msg_id, raw
        assert answer["error"]["code"] == code, (raw, answer)
        assert words in answer["error"]["message"], (raw, answer)
    # Still alive and answering.
    assert ask(_request("ping", msg_id=99)) == {"jsonrpc": "2.0", "id": 99, "result": {}}


def test_initialize_negotiates_and_notifications_get_no_answer(server):
    proc, ask = server
    answer = ask(_request("initialize", {"protocolVersion": "2025-03-26", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}))
    assert answer["result"]["protocolVersion"] == "2025-03-26"
    assert answer["result"]["capabilities"] == {"tools": {"listChanged": False}}
    assert answer["result"]["serverInfo"]["name"] == "vesicle"
    table = json.loads(mcp.TOOLS_FILE.read_text())
    assert answer["result"]["instructions"] == table["instructions"]
    answer = ask(_request("initialize", {"protocolVersion": "1999-01-01"}, 2))
    assert answer["result"]["protocolVersion"] == "2025-06-18"
    # A notification and a stray response: no line back, so the next answer
    # is the ping's.
    proc.stdin.write(b'{"jsonrpc":"2.0","method":"notifications/initialized"}\n')
    proc.stdin.write(b'{"jsonrpc":"2.0","id":"x","result":{}}\n')
    proc.stdin.write(b"\n")
    assert ask(_request("ping", msg_id=3))["id"] == 3


def test_tools_list_is_the_shared_table(server):
    _, ask = server
    tools = ask(_request("tools/list"))["result"]["tools"]
    table = json.loads(mcp.TOOLS_FILE.read_text())
    assert [t["name"] for t in tools] == [t["name"] for t in table["tools"]]
    assert {
        "create_sandbox", "list_sandboxes", "close_sandbox", "run_python", "run_bash", "upload_file",
        "download_file", "fork", "merge_into", "freeze", "resume",
    } == {t["name"] for t in tools}
    for tool in tools:
        assert tool["description"] and tool["inputSchema"]["type"] == "object"
        assert not any(key.startswith("_") for key in tool)


def test_bad_arguments_and_failures_are_tool_errors(server):
    _, ask = server
    cases = [
        ({"name": "run_python", "arguments": {"sandbox_id": "sb-1"}}, "run_python: code: required"),
        ({"name": "run_python", "arguments": {"sandbox_id": "sb-1", "code": 5}}, "code: must be a string, got an integer"),
        ({"name": "run_python", "arguments": {"sandbox_id": "sb-1", "code": "1", "timeout_s": 0}}, "timeout_s: must be at least 1"),
        ({"name": "fork", "arguments": {"sandbox_id": "sb-1", "n": 33}}, "n: must be at most 32"),
        ({"name": "create_sandbox", "arguments": {"egress": "sometimes"}}, 'egress: must be one of "off", "open", "allowlist"'),
        ({"name": "create_sandbox", "arguments": {"allow": [1]}}, "allow[0]: must be a string"),
        ({"name": "create_sandbox", "arguments": {"egress": "open", "allow": ["pypi.org"]}}, 'only applies with egress "allowlist"'),
        ({"name": "create_sandbox", "arguments": {"egress": "allowlist"}}, "needs the host names"),
        ({"name": "list_sandboxes", "arguments": {"x": 1}}, "x: not an argument of this tool (it takes: none)"),
        ({"name": "upload_file", "arguments": {"sandbox_id": "sb-1", "path": "/a", "content": "!!", "encoding": "base64"}}, "not valid base64"),
        # Past the checks: hostd is unreachable, and that is said.
        ({"name": "list_sandboxes"}, "127.0.0.1"),
    ]
    for n, (params, words) in enumerate(cases):
        answer = ask(_request("tools/call", params, n))
        result = answer["result"]
        assert result["isError"] is True, answer
        assert result["content"][0]["type"] == "text"
        assert words in result["content"][0]["text"], (params, result)


def test_an_oversized_line_is_refused_and_skipped(monkeypatch):
    monkeypatch.setattr(mcp, "MAX_LINE_BYTES", 1000)
    server = mcp.Server(tools=None)
    stdin = io.BytesIO(b"x" * 5000 + b"\n" + _request("ping", msg_id=2) + b"\n")
    stdout = io.BytesIO()
    mcp.serve(stdin, stdout, server)
    lines = [json.loads(line) for line in stdout.getvalue().splitlines()]
    assert lines[0]["error"]["code"] == -32600 and "longer than" in lines[0]["error"]["message"]
    assert lines[1] == {"jsonrpc": "2.0", "id": 2, "result": {}}


def test_without_a_key_it_says_so_and_exits():
    env = dict(os.environ, PYTHONPATH=str(SDK))
    env.pop("VESICLE_API_KEY", None)
    done = subprocess.run([sys.executable, "-m", "vesicle", "mcp"], input=b"", capture_output=True, env=env, timeout=30)
    assert done.returncode == 1
    assert b"VESICLE_API_KEY" in done.stderr
    assert done.stdout == b""
