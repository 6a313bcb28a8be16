"""Typed errors of the vesicle SDK.

Every error hostd answers with (`{"error": {"code", "message"}}` and an HTTP
status) becomes one of these, carrying the server's code, message and status,
so callers can catch the case they care about and show the server's message,
which says what to do next.
"""

from __future__ import annotations

import json
from typing import Optional


class VesicleError(Exception):
    """Base of every error the SDK raises.

    `code` is the server's error code ("not_found", "sandbox_died", ...) or a
    local one ("closed", "config", "connection"); `status` is the HTTP status
    the server answered with, or None when no answer was involved.
    """

    default_code = "error"

    def __init__(self, message: str, code: Optional[str] = None, status: Optional[int] = None):
        super().__init__(message)
        self.message = message
        self.code = code if code is not None else self.default_code
        self.status = status

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(code={self.code!r}, status={self.status!r}, "
            f"message={self.message!r})"
        )


class InvalidRequestError(VesicleError):
    """400: malformed input; the message names the field."""

    default_code = "invalid_argument"


class AuthenticationError(VesicleError):
    """401: no API key, or one hostd does not know."""

    default_code = "unauthenticated"


class PermissionDeniedError(AuthenticationError):
    """403: the key is valid but may not do this (e.g. /metrics needs an admin key)."""

    default_code = "forbidden"


class NotFoundError(VesicleError):
    """404: unknown id, another key's sandbox or Space, or no such file."""

    default_code = "not_found"


class MethodNotAllowedError(VesicleError):
    """405: the route exists but not with this method (an SDK/hostd version mismatch)."""

    default_code = "method_not_allowed"


class ConflictError(VesicleError):
    """409: the sandbox (or Space) is in the wrong state for this call.

    E.g. code or files on a frozen sandbox, a freeze while code runs, a
    resume of a Space another resume is already restoring.
    """

    default_code = "failed_precondition"


class SandboxDiedError(VesicleError):
    """410: the sandbox's VM died; it cannot run code or move files any more."""

    default_code = "sandbox_died"


class PayloadTooLargeError(VesicleError):
    """413: a request body or an upload over its cap."""

    default_code = "too_large"


class SpaceCorruptedError(VesicleError):
    """422: a Space's files fail their checks (truncated, changed); it cannot be resumed.

    hostd keeps the Space (the message says which file and why); delete it
    when it is of no more use.
    """

    default_code = "space_corrupted"


class QuotaExceededError(VesicleError):
    """429: the API key's quota (e.g. concurrent sandboxes) is used up."""

    default_code = "quota_exceeded"


class DeadlineExceededError(VesicleError):
    """504: hostd gave up waiting for the sandbox (its guest did not answer in time)."""

    default_code = "timeout"


class ServerError(VesicleError):
    """500: a hostd bug; the message says what failed."""

    default_code = "internal"


class CapacityError(VesicleError):
    """503: the host has no room for another sandbox right now; retry later."""

    default_code = "no_capacity"


class UnavailableError(CapacityError):
    """503: hostd cannot serve this now (it is shutting down); retry after it restarts."""

    default_code = "unavailable"


class NodeUnavailableError(UnavailableError):
    """503: a cluster gateway cannot reach the node holding this sandbox or Space; retry later."""

    default_code = "node_unavailable"


class SandboxClosedError(VesicleError):
    """Raised locally, without a request, on a sandbox this object already closed (or froze)."""

    default_code = "closed"


class ConfigurationError(VesicleError):
    """Raised locally when the SDK is not configured (no API key, a bad URL)."""

    default_code = "config"


class VesicleConnectionError(VesicleError, ConnectionError):
    """hostd could not be reached, or the connection broke mid-answer."""

    default_code = "connection"


class VesicleTimeoutError(VesicleConnectionError, TimeoutError):
    """hostd did not answer within the client's timeout."""

    default_code = "timeout"


class ProtocolError(VesicleError):
    """hostd answered with something that breaks the API contract."""

    default_code = "protocol"


_BY_STATUS = {
    400: InvalidRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    405: MethodNotAllowedError,
    409: ConflictError,
    410: SandboxDiedError,
    413: PayloadTooLargeError,
    422: SpaceCorruptedError,
    429: QuotaExceededError,
    500: ServerError,
    503: CapacityError,
    504: DeadlineExceededError,
}

# Statuses that more than one server code shares: the code picks the class.
_SHARED_STATUS = {
    (503, "unavailable"): UnavailableError,
    (503, "node_unavailable"): NodeUnavailableError,
}

_BY_CODE = {cls.default_code: cls for cls in _BY_STATUS.values()}
_BY_CODE["unavailable"] = UnavailableError
_BY_CODE["node_unavailable"] = NodeUnavailableError
# hostd ended the sandbox because its guest broke the agent protocol.
_BY_CODE["guest_protocol_violation"] = SandboxDiedError


def error_for_code(code: str, message: str, status: Optional[int] = None) -> VesicleError:
    """The typed error for a server error code, e.g. an exec's `failure`.

    Used where the code arrives without a meaningful HTTP status (inside a 200
    stream); an unknown code gives the base class so nothing is lost.
    """
    cls = _BY_CODE.get(code, VesicleError)
    return cls(message, code=code, status=status)


def error_from_response(status: int, reason: str, body: bytes) -> VesicleError:
    """The typed error for an HTTP error answer.

    The status picks the class (it is what the contract fixes); the body's
    code and message are kept as sent. A body that is not the contract's error
    JSON (a proxy's HTML page, say) still gives an error naming the status.
    """
    code = None
    message = None
    try:
        doc = json.loads(body.decode("utf-8"))
        err = doc.get("error") if isinstance(doc, dict) else None
        if isinstance(err, dict):
            if isinstance(err.get("code"), str):
                code = err["code"]
            if isinstance(err.get("message"), str) and err["message"]:
                message = err["message"]
    except (UnicodeDecodeError, ValueError):
        pass
    if message is None:
        text = body[:300].decode("utf-8", errors="replace").strip()
        message = f"hostd answered HTTP {status} {reason}".rstrip()
        if text:
            message += f": {text}"
    cls = _SHARED_STATUS.get((status, code or "")) or _BY_STATUS.get(status)
    if cls is None:
        cls = _BY_CODE.get(code or "", VesicleError)
    return cls(message, code=code, status=status)
