"""The one HTTP layer every SDK call goes through.

It owns keep-alive connections to hostd, the Authorization header, timeouts,
and the translation of every failure -- an error answer, a refused
connection, a connection that broke mid-stream -- into a typed VesicleError,
so no raw http.client or socket traceback reaches a caller for a failure
that can be expected.
"""

from __future__ import annotations

import http.client
import json
import select
import socket
import threading
import dataclasses
import urllib.parse
from typing import Any, Iterable, Iterator, List, Mapping, Optional, Union

from . import _version
from ._config import Config
from .errors import (
    ProtocolError,
    VesicleConnectionError,
    VesicleError,
    VesicleTimeoutError,
    error_from_response,
)

USER_AGENT = f"vesicle-python/{_version.__version__}"

# Error bodies are small JSON documents; cap what is read of one so a broken
# server cannot make the client buffer without bound.
_MAX_ERROR_BODY = 64 * 1024
_MAX_IDLE_CONNECTIONS = 4

Body = Union[None, bytes, Iterable[bytes]]

# Raised by http.client or the socket when a kept-alive connection turned out
# to be closed by the server before it read our request: safe to resend once.
_STALE_CONNECTION_ERRORS = (
    http.client.RemoteDisconnected,
    ConnectionResetError,
    BrokenPipeError,
    ConnectionAbortedError,
)

_DEFAULT = object()

# Calls that may be sent again to another gateway when the first cannot be
# reached: repeating them changes nothing (a POST could create twice).
_IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
# 5xx codes a cluster answers alike through every gateway: another gateway
# would only say the same.
_CLUSTER_WIDE_CODES = frozenset({"node_unavailable", "no_capacity"})


class Transport:
    """Requests to one hostd with one configuration; safe to share between threads."""

    def __init__(self, config: Config):
        self.config = config
        self._urls = config.urls or (config.url,)
        self._use(0)
        self._idle: List[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    def _use(self, index: int) -> None:
        """Talk to the index-th URL (of several gateways) from now on."""
        self._index = index
        if self.config.url != self._urls[index]:
            self.config = dataclasses.replace(self.config, url=self._urls[index])
        parts = self.config.parsed
        self._https = parts.scheme == "https"
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or (443 if self._https else 80)
        self._prefix = parts.path.rstrip("/")

    def _fail_over(self, method: str, replayable: bool, failovers: int, refused: bool) -> bool:
        """Move to the next gateway if this call may be sent again; True if it moved."""
        if len(self._urls) < 2 or failovers >= len(self._urls) - 1 or not replayable:
            return False
        # A refused connection received nothing, so even a create may go again.
        if method.upper() not in _IDEMPOTENT and not refused:
            return False
        with self._lock:
            idle, self._idle = self._idle, []
            self._use((self._index + 1) % len(self._urls))
        for conn in idle:
            conn.close()
        return True

    # ---- public calls -------------------------------------------------------

    def json(
        self,
        method: str,
        path: str,
        *,
        query: Optional[Mapping[str, str]] = None,
        body: Any = _DEFAULT,
        auth: bool = True,
        read_timeout: Any = _DEFAULT,
        what: str = "",
    ) -> Any:
        """Send a request (with a JSON body if `body` is given) and return the decoded answer.

        A 204 or an empty body decodes to {}. `read_timeout` as for stream().
        """
        payload = None
        headers = {"Accept": "application/json"}
        if body is not _DEFAULT:
            payload = json.dumps(body, separators=(",", ":")).encode("utf-8")
            headers["Content-Type"] = "application/json"
        with self.stream(
            method,
            path,
            query=query,
            body=payload,
            headers=headers,
            auth=auth,
            read_timeout=read_timeout,
            what=what,
        ) as resp:
            data = resp.read_all()
        return self.decode_json(data, what or f"{method} {path}")

    def decode_json(self, data: bytes, what: str) -> Any:
        """A JSON answer's value; an empty body (e.g. a 204) is {}."""
        if not data.strip():
            return {}
        try:
            return json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise ProtocolError(
                f"hostd at {self.config.url} answered {what} with a body that is "
                f"not JSON ({exc}); is something other than hostd listening there?"
            ) from None

    def stream(
        self,
        method: str,
        path: str,
        *,
        query: Optional[Mapping[str, str]] = None,
        body: Body = None,
        headers: Optional[Mapping[str, str]] = None,
        auth: bool = True,
        read_timeout: Any = _DEFAULT,
        what: str = "",
    ) -> "Response":
        """Send a request and return the answer unread, for streaming.

        An error status is raised here as its typed error. `body` is bytes
        (sent with Content-Length) or an iterable of bytes (sent chunked).
        `read_timeout` is how long a read may wait for the next bytes; None
        waits forever (an exec that prints nothing for an hour is fine).
        """
        target = self._target(path, query)
        all_headers = {"User-Agent": USER_AGENT}
        if auth:
            all_headers["Authorization"] = "Bearer " + self.config.require_key()
        if headers:
            all_headers.update(headers)
        chunked = body is not None and not isinstance(body, (bytes, bytearray, memoryview))
        if chunked:
            all_headers["Transfer-Encoding"] = "chunked"
        what = what or f"{method} {path}"
        if read_timeout is _DEFAULT:
            read_timeout = self.config.timeout

        attempt = 0
        failovers = 0
        while True:
            conn, reused = self._checkout()
            try:
                resp = self._send(conn, method, target, body, all_headers, chunked, read_timeout)
            except _STALE_CONNECTION_ERRORS as exc:
                conn.close()
                if reused and not chunked and attempt == 0:
                    attempt += 1
                    continue
                if self._fail_over(method, not chunked, failovers, False):
                    failovers += 1
                    continue
                raise self._connection_error(exc, what) from None
            except BaseException as exc:
                conn.close()
                if isinstance(exc, (OSError, http.client.HTTPException)):
                    refused = isinstance(exc, ConnectionRefusedError)
                    if self._fail_over(method, not chunked, failovers, refused):
                        failovers += 1
                        continue
                    raise self._connection_error(exc, what, read_timeout) from None
                raise

            wrapped = Response(self, conn, resp, what, read_timeout)
            if resp.status >= 400:
                try:
                    err_body = wrapped.read_all(limit=_MAX_ERROR_BODY)
                except VesicleError:
                    err_body = b""
                finally:
                    wrapped.close()
                err = error_from_response(resp.status, resp.reason, err_body)
                if (
                    resp.status >= 500
                    and err.code not in _CLUSTER_WIDE_CODES
                    and self._fail_over(method, not chunked, failovers, False)
                ):
                    failovers += 1
                    continue
                raise err
            return wrapped

    def close(self) -> None:
        """Close idle keep-alive connections (open answers close themselves)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    # ---- internals ----------------------------------------------------------

    def _target(self, path: str, query: Optional[Mapping[str, str]]) -> str:
        target = self._prefix + path
        if query:
            # %20 rather than "+" for spaces: paths are data, and not every
            # server decodes "+" in a query as a space.
            target += "?" + urllib.parse.urlencode(
                query, quote_via=urllib.parse.quote, safe="/"
            )
        return target

    def _new_connection(self) -> http.client.HTTPConnection:
        if self._https:
            return http.client.HTTPSConnection(self._host, self._port, timeout=self.config.timeout)
        return http.client.HTTPConnection(self._host, self._port, timeout=self.config.timeout)

    def _checkout(self):
        with self._lock:
            while self._idle:
                conn = self._idle.pop()
                if _still_usable(conn):
                    return conn, True
                conn.close()
        return self._new_connection(), False

    def _checkin(self, conn: http.client.HTTPConnection) -> None:
        try:
            if conn.sock is not None:
                conn.sock.settimeout(self.config.timeout)
        except OSError:
            conn.close()
            return
        with self._lock:
            if len(self._idle) < _MAX_IDLE_CONNECTIONS:
                self._idle.append(conn)
                return
        conn.close()

    def _send(
        self, conn, method, target, body, headers, chunked, read_timeout
    ) -> http.client.HTTPResponse:
        # Connecting and sending wait at most the configured timeout; the
        # answer may legitimately take longer (a silent exec), so reading it
        # uses read_timeout.
        try:
            conn.request(method, target, body=body, headers=headers, encode_chunked=chunked)
        except (BrokenPipeError, ConnectionResetError) as exc:
            # The server may have answered (say 413 or 404) and closed while
            # we were still sending the body; its answer beats the broken pipe.
            try:
                return conn.getresponse()
            except (OSError, http.client.HTTPException):
                raise exc from None
        if conn.sock is not None:
            conn.sock.settimeout(read_timeout)
        return conn.getresponse()

    def _connection_error(
        self, exc: BaseException, what: str, timeout: Optional[float] = None
    ) -> VesicleError:
        url = self.config.url
        if isinstance(exc, (socket.timeout, TimeoutError)):
            waited = timeout if timeout is not None else self.config.timeout
            return VesicleTimeoutError(
                f"hostd at {url} sent nothing for {waited:g} s during {what}; "
                f"it may be overloaded (pass a larger timeout=) or stuck"
            )
        if isinstance(exc, ConnectionRefusedError):
            return VesicleConnectionError(
                f"cannot connect to hostd at {url} (connection refused): is hostd running? "
                f"Start it with `hostd --listen {self._host}:{self._port}`, or set "
                f"VESICLE_URL to the address it listens on"
            )
        if isinstance(exc, socket.gaierror):
            return VesicleConnectionError(
                f"cannot resolve the host {self._host!r} of the hostd URL {url} ({exc}); "
                f"check VESICLE_URL"
            )
        if isinstance(exc, http.client.IncompleteRead):
            return VesicleConnectionError(
                f"the connection to hostd at {url} closed in the middle of {what}; "
                f"check that hostd is still running (and its log)"
            )
        if isinstance(exc, http.client.RemoteDisconnected):
            return VesicleConnectionError(
                f"hostd at {url} closed the connection without answering {what}; "
                f"check that hostd is still running (and its log)"
            )
        if isinstance(exc, http.client.HTTPException):
            return ProtocolError(
                f"hostd at {url} sent a malformed HTTP answer to {what} "
                f"({type(exc).__name__}: {exc}); is something other than hostd listening there?"
            )
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return VesicleConnectionError(
            f"the connection to hostd at {url} failed during {what}: {detail or type(exc).__name__}"
        )


class Response:
    """An answer being read; returns its connection to the pool once fully read."""

    def __init__(
        self,
        transport: Transport,
        conn,
        resp: http.client.HTTPResponse,
        what: str,
        read_timeout: Optional[float],
    ):
        self._transport = transport
        self._read_timeout = read_timeout
        self._conn = conn
        self._resp = resp
        self._what = what
        self._done = False  # read to the end
        self._released = False

    @property
    def status(self) -> int:
        return self._resp.status

    def header(self, name: str) -> Optional[str]:
        return self._resp.getheader(name)

    def read1(self, n: int = 256 * 1024) -> bytes:
        """Whatever bytes are available (at least one, waiting if needed); b"" at the end."""
        if self._done or self._released:
            return b""
        try:
            data = self._resp.read1(n)
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            raise self._transport._connection_error(exc, self._what, self._read_timeout) from None
        if not data:
            self._done = True
            self.close()
        return data

    def read_all(self, limit: Optional[int] = None) -> bytes:
        parts = []
        total = 0
        while True:
            data = self.read1()
            if not data:
                break
            parts.append(data)
            total += len(data)
            if limit is not None and total >= limit:
                self.close()
                break
        return b"".join(parts)

    def iter_lines(self, max_line: int = 64 * 1024 * 1024) -> Iterator[bytes]:
        """The body split at b"\\n", each line yielded as soon as it is complete.

        A last line without a newline is yielded too. `max_line` bounds the
        memory one line may take (a line over it is a protocol error).
        """
        pending = bytearray()
        while True:
            data = self.read1()
            if not data:
                break
            start = 0
            while True:
                nl = data.find(b"\n", start)
                if nl < 0:
                    break
                if pending:
                    pending += data[start:nl]
                    line = bytes(pending)
                    pending.clear()
                else:
                    line = data[start:nl]
                yield line
                start = nl + 1
            pending += data[start:]
            if len(pending) > max_line:
                self.close()
                raise ProtocolError(
                    f"hostd sent a line over {max_line} bytes in {self._what}; "
                    f"this breaks the NDJSON stream contract"
                )
        if pending:
            yield bytes(pending)

    def close(self) -> None:
        """Release the connection: to the pool if the answer was read to its end."""
        if self._released:
            return
        self._released = True
        resp, conn = self._resp, self._conn
        if self._done and not resp.will_close:
            resp.close()
            self._transport._checkin(conn)
        else:
            # Unread bytes would be taken for the next answer: drop the connection.
            resp.close()
            conn.close()

    def __enter__(self) -> "Response":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _still_usable(conn: http.client.HTTPConnection) -> bool:
    """False if the server closed (or wrote to) an idle connection."""
    sock = conn.sock
    if sock is None:
        return False
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return False
    # An idle connection has nothing to read; readable means EOF or garbage.
    return not readable
