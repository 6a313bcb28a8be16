"""What one run_code call produced, and the reader of the exec NDJSON stream."""

from __future__ import annotations

import base64
import binascii
import codecs
import json
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

from .errors import ProtocolError, VesicleError, error_for_code

TextCallback = Optional[Callable[[str], Any]]
BytesCallback = Optional[Callable[[str, bytes], Any]]
ResultCallback = Optional[Callable[["Result"], Any]]

# The short names of Result.formats(), by MIME type.
_FORMAT_NAMES = {
    "text/plain": "text",
    "text/html": "html",
    "text/markdown": "markdown",
    "text/latex": "latex",
    "image/png": "png",
    "image/jpeg": "jpeg",
    "image/svg+xml": "svg",
    "application/json": "json",
    "application/javascript": "javascript",
    "application/pdf": "pdf",
}


def _text_format(mime: str) -> property:
    return property(lambda self: self._text(mime), doc=f"The {mime} output as str, or None.")


def _bytes_format(mime: str) -> property:
    return property(lambda self: self._bytes(mime), doc=f"The {mime} output as bytes, or None.")


class Result:
    """One display output of a Python cell: one thing in one or more formats (a MIME bundle).

    A cell makes one with ``display(obj)``, with ``plt.show()`` (one per
    open matplotlib figure), by leaving figures open at its end, and with a
    trailing expression whose value has a rich representation (a pandas
    DataFrame's HTML, an object's ``_repr_png_``...): that one has
    ``is_main_result`` set, and its ``text`` equals ``Execution.result``.

    ``png``, ``jpeg`` and ``pdf`` are bytes; ``text``, ``html``,
    ``markdown``, ``latex``, ``svg`` and ``javascript`` are str; ``json`` is
    the parsed JSON value. Each is None when the output lacks that format.
    ``data`` maps every MIME type to its data (bytes, or str for text types).
    """

    __slots__ = ("data", "is_main_result")

    def __init__(self, data: Dict[str, Union[str, bytes]], is_main_result: bool = False):
        self.data = data
        self.is_main_result = is_main_result

    def _text(self, mime: str) -> Optional[str]:
        value = self.data.get(mime)
        if isinstance(value, bytes):
            return value.decode("utf-8", errors="replace")
        return value

    def _bytes(self, mime: str) -> Optional[bytes]:
        value = self.data.get(mime)
        if isinstance(value, str):
            return value.encode("utf-8", errors="surrogatepass")
        return value

    text = _text_format("text/plain")
    html = _text_format("text/html")
    markdown = _text_format("text/markdown")
    latex = _text_format("text/latex")
    svg = _text_format("image/svg+xml")
    javascript = _text_format("application/javascript")
    png = _bytes_format("image/png")
    jpeg = _bytes_format("image/jpeg")
    pdf = _bytes_format("application/pdf")

    @property
    def json(self) -> Any:
        """The application/json output, parsed; None when there is none."""
        raw = self.data.get("application/json")
        if raw is None:
            return None
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise ValueError(f"the cell's application/json output is not valid JSON: {exc}") from None

    def formats(self) -> List[str]:
        """The formats this output has: short names ("png", "html", "text"...) or else MIME types."""
        return [_FORMAT_NAMES.get(mime, mime) for mime in self.data]

    def __repr__(self) -> str:
        main = ", is_main_result=True" if self.is_main_result else ""
        return f"Result(formats={self.formats()!r}{main})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Result):
            return NotImplemented
        return (self.data, self.is_main_result) == (other.data, other.is_main_result)


class ExecutionError:
    """A Python exception raised by the cell: its class name, str() and formatted traceback."""

    __slots__ = ("name", "value", "traceback")

    def __init__(self, name: str, value: str, traceback: str):
        self.name = name
        self.value = value
        self.traceback = traceback

    def __repr__(self) -> str:
        return f"ExecutionError(name={self.name!r}, value={self.value!r})"

    def __str__(self) -> str:
        return f"{self.name}: {self.value}" if self.value else self.name

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ExecutionError):
            return NotImplemented
        return (self.name, self.value, self.traceback) == (other.name, other.value, other.traceback)


class Execution:
    """The outcome of one run_code call.

    stdout/stderr are the exact bytes the code wrote (`stdout_bytes`,
    `stderr_bytes`) and their UTF-8 decoding with undecodable bytes replaced
    (`stdout`, `stderr`). `result` is repr() of a Python cell's trailing
    expression, `results` the cell's display outputs in order (Result
    objects: charts, tables, `display()` calls; a trailing expression with
    only a text repr is in `result` alone), `error` the exception it raised. `exit_code` is bash's exit
    status (for Python, what the REPL reports). `timed_out` says the timeout
    interrupted the code, `repl_restarted` that the REPL had to be restarted
    (its variables are gone), `truncated` that hostd dropped output over its
    cap.
    """

    def __init__(self) -> None:
        # Output in arrival order, so `text` can interleave the two streams as
        # a terminal would have shown them.
        self._chunks: List[Tuple[str, bytes]] = []
        self._joined: Dict[str, bytes] = {}
        self.result: Optional[str] = None
        self.results: List[Result] = []
        self.error: Optional[ExecutionError] = None
        self.exit_code: Optional[int] = None
        self.signal: int = 0
        self.timed_out: bool = False
        self.truncated: bool = False
        self.repl_restarted: bool = False
        self.duration_ms: Optional[int] = None

    def _append(self, stream: str, data: bytes) -> None:
        self._chunks.append((stream, data))
        self._joined.pop(stream, None)

    def _bytes(self, stream: str) -> bytes:
        cached = self._joined.get(stream)
        if cached is None:
            cached = b"".join(d for s, d in self._chunks if s == stream)
            self._joined[stream] = cached
        return cached

    @property
    def stdout_bytes(self) -> bytes:
        return self._bytes("stdout")

    @property
    def stderr_bytes(self) -> bytes:
        return self._bytes("stderr")

    @property
    def stdout(self) -> str:
        return self.stdout_bytes.decode("utf-8", errors="replace")

    @property
    def stderr(self) -> str:
        return self.stderr_bytes.decode("utf-8", errors="replace")

    @property
    def text(self) -> str:
        """Everything a notebook would show: output as it interleaved, the result, the traceback."""
        decoders = {s: _decoder() for s in ("stdout", "stderr")}
        pieces = [decoders[s].decode(d) for s, d in self._chunks]
        pieces += [d.decode(b"", final=True) for d in decoders.values()]
        out = "".join(pieces)
        for extra in (self.result, self._error_text()):
            if extra is None:
                continue
            if out and not out.endswith("\n"):
                out += "\n"
            out += extra
        return out

    def _error_text(self) -> Optional[str]:
        if self.error is None:
            return None
        return self.error.traceback or str(self.error)

    def __repr__(self) -> str:
        fields = [f"exit_code={self.exit_code!r}"]
        for name in ("timed_out", "truncated", "repl_restarted"):
            if getattr(self, name):
                fields.append(f"{name}=True")
        if self.signal:
            fields.append(f"signal={self.signal}")
        for name in ("stdout", "stderr"):
            value = getattr(self, name)
            if value:
                fields.append(f"{name}={_clip(value)!r}")
        if self.result is not None:
            fields.append(f"result={_clip(self.result)!r}")
        if self.results:
            fields.append(f"results={self.results!r}")
        if self.error is not None:
            fields.append(f"error={self.error!r}")
        fields.append(f"duration_ms={self.duration_ms!r}")
        return f"Execution({', '.join(fields)})"


def _clip(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + f"...<{len(text) - limit} more chars>"


def _decoder():
    return codecs.getincrementaldecoder("utf-8")(errors="replace")


class ExecStream:
    """Reads the NDJSON events of one exec into an Execution, calling back as output arrives.

    Feed it the lines in order (`feed`), then call `finish`, which returns
    the Execution or raises: the server's typed error when the exit event
    carries a `failure`, a ProtocolError when the stream broke its contract.
    The text callbacks get str chunks decoded incrementally, so a character
    split across events is delivered whole, and their concatenation equals
    the final `stdout`/`stderr`.
    """

    def __init__(
        self,
        on_stdout: TextCallback = None,
        on_stderr: TextCallback = None,
        on_bytes: BytesCallback = None,
        on_result: ResultCallback = None,
    ):
        self.execution = Execution()
        self._text_callbacks = {"stdout": on_stdout, "stderr": on_stderr}
        self._decoders = {"stdout": _decoder(), "stderr": _decoder()}
        self._on_bytes = on_bytes
        self._on_result = on_result
        self._exited = False
        self._failure: Optional[VesicleError] = None
        self._lines = 0

    def feed(self, line: bytes) -> None:
        self._lines += 1
        if not line.strip():
            return
        try:
            event = json.loads(line)
        except ValueError as exc:
            raise ProtocolError(
                f"hostd sent a malformed exec event (line {self._lines}: {exc}): "
                f"{line[:120]!r}"
            ) from None
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            raise ProtocolError(
                f"hostd sent an exec event without a type (line {self._lines}): {line[:120]!r}"
            )
        if self._exited:
            raise ProtocolError(
                f"hostd sent a {event['type']!r} event after the exit event (line {self._lines})"
            )
        kind = event["type"]
        if kind in ("stdout", "stderr"):
            self._output(kind, event)
        elif kind == "result":
            self.execution.result = _text_field(event, "data", "result")
        elif kind == "display":
            self._display(event)
        elif kind == "error":
            self.execution.error = ExecutionError(
                name=_text_field(event, "name", "error"),
                value=_text_field(event, "value", "error", default=""),
                traceback=_text_field(event, "traceback", "error", default=""),
            )
        elif kind == "exit":
            self._exit(event)
        # Other types are newer than this SDK; skipping them keeps it working.

    def _output(self, stream: str, event: Dict[str, Any]) -> None:
        if "data_b64" in event and event["data_b64"] is not None:
            encoded = event["data_b64"]
            if not isinstance(encoded, str):
                raise ProtocolError(f"hostd sent a {stream} event whose data_b64 is not a string")
            try:
                data = base64.b64decode(encoded, validate=True)
            except (binascii.Error, ValueError):
                raise ProtocolError(
                    f"hostd sent a {stream} event whose data_b64 is not base64"
                ) from None
        else:
            text = _text_field(event, "data", stream)
            # surrogatepass: a lone surrogate escape is a server bug, but the
            # bytes it stands for still reach the caller instead of a crash.
            data = text.encode("utf-8", errors="surrogatepass")
        if not data:
            return
        self.execution._append(stream, data)
        if self._on_bytes is not None:
            self._on_bytes(stream, data)
        callback = self._text_callbacks[stream]
        if callback is not None:
            chunk = self._decoders[stream].decode(data)
            if chunk:
                callback(chunk)

    def _display(self, event: Dict[str, Any]) -> None:
        # Text types arrive as text in "data", the rest base64 in "data_b64".
        bundle: Dict[str, Union[str, bytes]] = {}
        for field in ("data", "data_b64"):
            entries = event.get(field)
            if entries is None:
                continue
            if not isinstance(entries, dict):
                raise ProtocolError(f"hostd sent a display event whose {field!r} is not an object")
            for mime, value in entries.items():
                if not isinstance(value, str):
                    raise ProtocolError(f"hostd sent a display event whose {mime} is not a string")
                if field == "data":
                    bundle[mime] = value
                    continue
                try:
                    bundle[mime] = base64.b64decode(value, validate=True)
                except (binascii.Error, ValueError):
                    raise ProtocolError(
                        f"hostd sent a display event whose {mime} in data_b64 is not base64"
                    ) from None
        result = Result(bundle, is_main_result=event.get("is_main_result") is True)
        self.execution.results.append(result)
        if self._on_result is not None:
            self._on_result(result)

    def _exit(self, event: Dict[str, Any]) -> None:
        ex = self.execution
        self._exited = True
        ex.exit_code = _int_field(event, "exit_code", 0)
        ex.signal = _int_field(event, "signal", 0)
        ex.duration_ms = _int_field(event, "duration_ms", 0)
        ex.timed_out = bool(event.get("timed_out", False))
        ex.truncated = bool(event.get("truncated", False))
        ex.repl_restarted = bool(event.get("repl_restarted", False))
        failure = event.get("failure")
        if failure:
            if not isinstance(failure, dict):
                raise ProtocolError("hostd sent an exit event whose failure is not an object")
            code = failure.get("code") if isinstance(failure.get("code"), str) else "internal"
            message = failure.get("message") if isinstance(failure.get("message"), str) else ""
            err = error_for_code(code, message or f"the exec failed ({code})")
            err.execution = ex  # what the code produced before it failed
            self._failure = err

    def finish(self) -> Execution:
        for stream, decoder in self._decoders.items():
            tail = decoder.decode(b"", final=True)
            callback = self._text_callbacks[stream]
            if tail and callback is not None:
                callback(tail)
        if self._failure is not None:
            raise self._failure
        if not self._exited:
            raise ProtocolError(
                "the exec stream ended without an exit event: hostd closed it early; "
                "check that hostd is still running and the sandbox's state"
            )
        return self.execution


def _text_field(event: Dict[str, Any], name: str, kind: str, default: Optional[str] = None) -> str:
    value = event.get(name, default)
    if not isinstance(value, str):
        raise ProtocolError(f"hostd sent a {kind} event whose {name!r} is not a string")
    return value


def _int_field(event: Dict[str, Any], name: str, default: int) -> int:
    value = event.get(name, default)
    # The JSON mapping may print 64-bit integers as strings.
    if isinstance(value, str) and value.lstrip("-").isdigit():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProtocolError(f"hostd sent an exit event whose {name!r} is not an integer")
    return value
