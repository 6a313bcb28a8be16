"""`vesicle mcp`: a Model Context Protocol server on stdin/stdout.

An MCP client (a desktop assistant, an agent framework) starts this process
and talks JSON-RPC 2.0 to it, one message per line (the protocol's stdio
transport). Tools come from mcp_tools.json, the table hostd's /mcp serves
too, and run against hostd through this SDK ($VESICLE_URL, $VESICLE_API_KEY).
Only protocol messages go to stdout; problems of the server itself go to
stderr. Requests are answered one at a time, in order.

Protocol errors (bad JSON, no such method or tool) are JSON-RPC errors; a
tool that fails, or gets arguments its schema refuses, answers with an
`isError` result whose text says what was wrong, so a model can correct it.
"""

from __future__ import annotations

import base64
import binascii
import json
import sys
from pathlib import Path
from typing import Any, BinaryIO, Callable, Dict, List, Optional

from . import _config
from ._http import Transport
from ._version import __version__
from .errors import NotFoundError, VesicleError
from .execution import Execution
from .sandbox import Sandbox, _sandbox_path
from .space import space_path

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602

# The versions this server speaks, newest first (their differences do not
# touch tools); a client asking for another one gets the first and decides.
VERSIONS = ("2025-06-18", "2025-03-26", "2024-11-05")

# A line longer than this is refused unread (a client bug or an attack).
MAX_LINE_BYTES = 64 << 20
# Per run: output kept per stream, image bytes in all; per download: bytes.
MAX_STREAM_BYTES = 1 << 20
MAX_IMAGE_BYTES = 8 << 20
MAX_DOWNLOAD_BYTES = 8 << 20

TOOLS_FILE = Path(__file__).with_name("mcp_tools.json")

class ToolError(Exception):
    """A tool failed in a way the model should read (an isError result)."""


def load_table() -> Dict[str, Any]:
    """The table ({"instructions", "tools"}) without its comment keys (those starting with _)."""
    return _public(json.loads(TOOLS_FILE.read_text(encoding="utf-8")))


def _public(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _public(v) for k, v in value.items() if not k.startswith("_")}
    if isinstance(value, list):
        return [_public(v) for v in value]
    return value


# ---- argument checks (the schema subset the table uses) --------------------


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


_TYPE_CHECKS: Dict[str, Callable[[Any], bool]] = {
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
}


def _value_violation(name: str, schema: Dict[str, Any], value: Any) -> Optional[str]:
    kind = schema.get("type", "")
    check = _TYPE_CHECKS.get(kind)
    if check and not check(value):
        article = "an" if kind == "integer" else "a"
        return f"{name}: must be {article} {kind}, got {_type_name(value)}"
    if "enum" in schema and value not in schema["enum"]:
        options = ", ".join(f'"{o}"' for o in schema["enum"])
        return f'{name}: must be one of {options}, got "{value}"'
    if kind == "integer":
        if "minimum" in schema and value < schema["minimum"]:
            return f"{name}: must be at least {schema['minimum']}, got {value}"
        if "maximum" in schema and value > schema["maximum"]:
            return f"{name}: must be at most {schema['maximum']}, got {value}"
    if kind == "array" and "items" in schema:
        for index, item in enumerate(value):
            bad = _value_violation(f"{name}[{index}]", schema["items"], item)
            if bad:
                return bad
    return None


def schema_violation(schema: Dict[str, Any], arguments: Dict[str, Any]) -> Optional[str]:
    """What is wrong with `arguments` for this input schema, or None (as hostd/mcp.cpp words it)."""
    properties = schema.get("properties", {})
    for name in schema.get("required", []):
        if name not in arguments:
            return f"{name}: required"
    for name in sorted(arguments):
        if name not in properties:
            known = ", ".join(sorted(properties)) or "none"
            return f"{name}: not an argument of this tool (it takes: {known})"
        bad = _value_violation(name, properties[name], arguments[name])
        if bad:
            return bad
    return None


# ---- the tools ----------------------------------------------------------------


def _dumps(doc: Any) -> str:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _text(doc: Any) -> Dict[str, Any]:
    return {"content": [{"type": "text", "text": doc if isinstance(doc, str) else _dumps(doc)}], "isError": False}


def _clip(data: bytes) -> "tuple[str, bool]":
    cut = len(data) > MAX_STREAM_BYTES
    return data[:MAX_STREAM_BYTES].decode("utf-8", errors="replace"), cut


def run_output(ex: Execution) -> Dict[str, Any]:
    """The answer of run_python / run_bash: a JSON text block, then one image block per image."""
    stdout, cut_out = _clip(ex.stdout_bytes)
    stderr, cut_err = _clip(ex.stderr_bytes)
    images: List[Dict[str, Any]] = []
    display: List[str] = []
    image_bytes = 0
    dropped = False
    for result in ex.results:
        for mime in ("image/png", "image/jpeg"):
            data = result.data.get(mime)
            if isinstance(data, bytes):
                if image_bytes + len(data) > MAX_IMAGE_BYTES:
                    dropped = True
                else:
                    image_bytes += len(data)
                    images.append({"type": "image", "data": base64.b64encode(data).decode("ascii"), "mimeType": mime})
                break
        else:
            text = result.data.get("text/plain")
            if not result.is_main_result and isinstance(text, str):
                display.append(text)
    error = None
    if ex.error is not None:
        error = {"name": ex.error.name, "value": ex.error.value, "traceback": ex.error.traceback}
    doc = {
        "stdout": stdout,
        "stderr": stderr,
        "result": ex.result,
        "error": error,
        "exit_code": ex.exit_code if ex.exit_code is not None else 0,
        "timed_out": ex.timed_out,
        "truncated": ex.truncated or cut_out or cut_err or dropped,
        "repl_restarted": ex.repl_restarted,
        "display": display,
    }
    answer = _text(doc)
    answer["content"] += images
    return answer


class Tools:
    """The tools, run through the SDK against one hostd with one key."""

    def __init__(self, transport: Transport):
        self._transport = transport

    def _sandbox(self, sandbox_id: str) -> Sandbox:
        # Attached without a lookup: hostd says "no such sandbox" itself.
        return Sandbox._from_info(self._transport, {"id": sandbox_id})

    def create_sandbox(self, args: Dict[str, Any]) -> Dict[str, Any]:
        egress = args.get("egress")
        allow = args.get("allow")
        if allow is not None and egress != "allowlist":
            raise ToolError('allow: only applies with egress "allowlist"; set egress to "allowlist" or drop allow')
        if egress == "allowlist" and not allow:
            raise ToolError('allow: egress "allowlist" needs the host names to allow, e.g. ["pypi.org"]')
        body: Dict[str, Any] = {}
        if egress is not None:
            body["egress"] = egress != "off"
        if egress == "allowlist":
            body["egress_allow"] = list(allow)
        for name in ("template", "idle_timeout_s", "max_lifetime_s"):
            if name in args:
                body[name] = args[name]
        info = self._transport.json("POST", "/v1/sandboxes", body=body, what="creating a sandbox")
        return _text(info)

    def list_sandboxes(self, args: Dict[str, Any]) -> Dict[str, Any]:
        return _text(self._transport.json("GET", "/v1/sandboxes", what="listing sandboxes"))

    def close_sandbox(self, args: Dict[str, Any]) -> Dict[str, Any]:
        sandbox_id = args["sandbox_id"]
        try:
            self._transport.json("DELETE", _sandbox_path(sandbox_id), what=f"destroying {sandbox_id}")
        except NotFoundError:
            pass  # already gone: what closing wants
        return _text({"closed": sandbox_id})

    def run_python(self, args: Dict[str, Any]) -> Dict[str, Any]:
        ex = self._sandbox(args["sandbox_id"]).run_code(args["code"], timeout=args.get("timeout_s"))
        return run_output(ex)

    def run_bash(self, args: Dict[str, Any]) -> Dict[str, Any]:
        ex = self._sandbox(args["sandbox_id"]).run_code(
            args["command"], language="bash", timeout=args.get("timeout_s"), cwd=args.get("cwd")
        )
        return run_output(ex)

    def upload_file(self, args: Dict[str, Any]) -> Dict[str, Any]:
        content = args["content"]
        if args.get("encoding") == "base64":
            try:
                data = base64.b64decode(content, validate=True)
            except (binascii.Error, ValueError):
                raise ToolError("content: not valid base64 (standard alphabet, padded with =, no line breaks)")
        else:
            try:
                data = content.encode("utf-8")
            except UnicodeEncodeError:
                raise ToolError("content: not valid Unicode text (a lone surrogate?); send it as base64")
        return _text(self._sandbox(args["sandbox_id"]).upload(data, args["path"]))

    def download_file(self, args: Dict[str, Any]) -> Dict[str, Any]:
        path = args["path"]
        parts: List[bytes] = []
        size = 0

        def sink(chunk: bytes) -> None:
            nonlocal size
            size += len(chunk)
            if size > MAX_DOWNLOAD_BYTES:
                raise ToolError(
                    f"{path} is larger than {MAX_DOWNLOAD_BYTES >> 20} MiB; read it in parts (e.g. with run_bash and split)"
                )
            parts.append(chunk)

        self._sandbox(args["sandbox_id"])._download(path, sink)
        data = b"".join(parts)
        try:
            content, encoding = data.decode("utf-8"), "text"
        except UnicodeDecodeError:
            content, encoding = base64.b64encode(data).decode("ascii"), "base64"
        return _text({"path": path, "size": len(data), "encoding": encoding, "content": content})

    def fork(self, args: Dict[str, Any]) -> Dict[str, Any]:
        children = self._sandbox(args["sandbox_id"]).fork(args.get("n", 1))
        return _text({"children": [child.info for child in children]})

    def merge_into(self, args: Dict[str, Any]) -> Dict[str, Any]:
        sandbox = self._sandbox(args["sandbox_id"])
        sandbox.merge_into(args["winner_id"])
        return _text(sandbox.info)

    def freeze(self, args: Dict[str, Any]) -> Dict[str, Any]:
        sandbox_id = args["sandbox_id"]
        doc = self._transport.json(
            "POST",
            _sandbox_path(sandbox_id) + "/freeze",
            read_timeout=max(self._transport.config.timeout, 600),
            what=f"freezing {sandbox_id}",
        )
        return _text(doc)

    def resume(self, args: Dict[str, Any]) -> Dict[str, Any]:
        space_id = args["space_id"]
        doc = self._transport.json(
            "POST",
            space_path(space_id) + "/resume",
            body={},
            read_timeout=max(self._transport.config.timeout, 600),
            what=f"resuming Space {space_id}",
        )
        return _text(doc)


# ---- the protocol ---------------------------------------------------------------


def _error(msg_id: Any, code: int, message: str) -> Dict[str, Any]:
    return {"jsonrpc": "2.0", "id": msg_id, "error": {"code": code, "message": message}}


def _result(msg_id: Any, result: Dict[str, Any]) -> Dict[str, Any]:
    return {"jsonrpc": "2.0", "id": msg_id, "result": result}


class Server:
    """Answers MCP messages; `handle` takes one line and returns the reply (or None)."""

    def __init__(self, tools: Any):
        self.tools = tools
        table = load_table()
        self.table: List[Dict[str, Any]] = table["tools"]
        self.instructions: str = table["instructions"]
        self._by_name = {tool["name"]: tool for tool in self.table}

    def handle(self, line: bytes) -> Optional[Dict[str, Any]]:
        try:
            message = json.loads(line.decode("utf-8"))
        except UnicodeDecodeError:
            return _error(None, PARSE_ERROR, "parse error: the message is not valid UTF-8")
        except (ValueError, RecursionError) as exc:
            return _error(None, PARSE_ERROR, f"parse error: {exc}; send one JSON-RPC 2.0 object per line")
        if isinstance(message, list):
            return _error(None, INVALID_REQUEST, "batches are not supported: send one JSON-RPC message per line")
        if not isinstance(message, dict):
            return _error(None, INVALID_REQUEST, f"invalid request: a JSON-RPC message is an object, got {_type_name(message)}")
        has_id = "id" in message
        msg_id = message.get("id")
        if has_id and (isinstance(msg_id, bool) or not isinstance(msg_id, (str, int))):
            return _error(None, INVALID_REQUEST, f"invalid request: id must be a string or an integer, got {_type_name(msg_id)}")
        if message.get("jsonrpc") != "2.0":
            return _error(msg_id, INVALID_REQUEST, 'invalid request: "jsonrpc" must be "2.0"')
        if "method" not in message:
            if has_id and ("result" in message or "error" in message):
                return None  # a response: this server sends no requests
            return _error(msg_id, INVALID_REQUEST, 'invalid request: "method" is missing')
        method = message["method"]
        if not isinstance(method, str):
            return _error(msg_id, INVALID_REQUEST, 'invalid request: "method" must be a string')
        params = message.get("params", {})
        if "params" in message and not isinstance(params, dict):
            return _error(msg_id, INVALID_PARAMS, f'invalid params: "params" must be an object, got {_type_name(params)}')
        if not has_id:
            return None  # notifications (initialized, cancelled...) need no answer

        if method == "initialize":
            asked = params.get("protocolVersion")
            if not isinstance(asked, str):
                return _error(msg_id, INVALID_PARAMS, f'initialize: params.protocolVersion must be a string such as "{VERSIONS[0]}"')
            return _result(
                msg_id,
                {
                    "protocolVersion": asked if asked in VERSIONS else VERSIONS[0],
                    "capabilities": {"tools": {"listChanged": False}},
                    "serverInfo": {"name": "vesicle", "version": __version__},
                    "instructions": self.instructions,
                },
            )
        if method == "ping":
            return _result(msg_id, {})
        if method == "tools/list":
            return _result(msg_id, {"tools": self.table})
        if method == "tools/call":
            return self._call(msg_id, params)
        return _error(
            msg_id, METHOD_NOT_FOUND, f'method not found: "{method}"; this server has initialize, ping, tools/list and tools/call'
        )

    def _call(self, msg_id: Any, params: Dict[str, Any]) -> Dict[str, Any]:
        name = params.get("name")
        if not isinstance(name, str):
            return _error(msg_id, INVALID_PARAMS, "tools/call: params.name must be the tool's name")
        tool = self._by_name.get(name)
        if tool is None:
            return _error(msg_id, INVALID_PARAMS, f'tools/call: no tool named "{name}"; tools/list names them')
        arguments = params.get("arguments")
        if arguments is None:
            arguments = {}
        if not isinstance(arguments, dict):
            return _error(msg_id, INVALID_PARAMS, f"tools/call: params.arguments must be an object, got {_type_name(arguments)}")
        bad = schema_violation(tool["inputSchema"], arguments)
        if bad:
            return _result(msg_id, _failure(f"{name}: {bad}"))
        try:
            return _result(msg_id, getattr(self.tools, name)(arguments))
        except (ToolError, VesicleError) as exc:
            return _result(msg_id, _failure(str(exc)))
        except Exception as exc:  # a bug here must not end the session
            print(f"vesicle mcp: {name} failed: {exc!r}", file=sys.stderr, flush=True)
            return _result(msg_id, _failure(f"{name} failed inside vesicle mcp: {exc}"))


def _failure(message: str) -> Dict[str, Any]:
    return {"content": [{"type": "text", "text": message}], "isError": True}


def serve(stdin: BinaryIO, stdout: BinaryIO, server: Server) -> None:
    """Reads messages until stdin closes; each reply is one line on stdout."""
    while True:
        line = stdin.readline(MAX_LINE_BYTES + 1)
        if not line:
            return
        if len(line) > MAX_LINE_BYTES and not line.endswith(b"\n"):
            # Skip the rest of the oversized line, then say why.
            while True:
                rest = stdin.readline(1 << 20)
                if not rest or rest.endswith(b"\n"):
                    break
            reply: Optional[Dict[str, Any]] = _error(
                None, INVALID_REQUEST, f"message longer than {MAX_LINE_BYTES >> 20} MiB refused"
            )
        elif not line.strip():
            continue
        else:
            reply = server.handle(line)
        if reply is not None:
            # ASCII on the wire: a lone surrogate from the input cannot
            # make the line unencodable.
            line_out = json.dumps(reply, separators=(",", ":"), ensure_ascii=True)
            stdout.write(line_out.encode("ascii") + b"\n")
            stdout.flush()


def main(url: Optional[str] = None) -> int:
    config = _config.resolve(url, None, None)
    config.require_key()
    server = Server(Tools(Transport(config)))
    try:
        serve(sys.stdin.buffer, sys.stdout.buffer, server)
    except KeyboardInterrupt:
        pass
    return 0
