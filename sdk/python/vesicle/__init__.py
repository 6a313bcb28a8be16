"""vesicle: sandboxes for AI agents, each a microVM with a persistent Python REPL.

    from vesicle import Sandbox

    with Sandbox() as sb:
        sb.run_code("x = 42")
        print(sb.run_code("print(x)").stdout)

Configure with VESICLE_URL (default http://127.0.0.1:7070) and VESICLE_API_KEY.
"""

from ._version import __version__
from .client import Client, capacity, health
from .errors import (
    AuthenticationError,
    CapacityError,
    ConfigurationError,
    ConflictError,
    DeadlineExceededError,
    InvalidRequestError,
    MethodNotAllowedError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    ProtocolError,
    QuotaExceededError,
    SandboxClosedError,
    SandboxDiedError,
    ServerError,
    SpaceCorruptedError,
    NodeUnavailableError,
    UnavailableError,
    VesicleConnectionError,
    VesicleError,
    VesicleTimeoutError,
)
from .execution import Execution, ExecutionError, Result
from .sandbox import Sandbox
from .space import Space
from .template import Template

__all__ = [
    "AuthenticationError",
    "CapacityError",
    "Client",
    "ConfigurationError",
    "ConflictError",
    "DeadlineExceededError",
    "Execution",
    "ExecutionError",
    "InvalidRequestError",
    "MethodNotAllowedError",
    "NotFoundError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "ProtocolError",
    "QuotaExceededError",
    "Result",
    "Sandbox",
    "SandboxClosedError",
    "SandboxDiedError",
    "ServerError",
    "Space",
    "SpaceCorruptedError",
    "NodeUnavailableError",
    "Template",
    "UnavailableError",
    "VesicleConnectionError",
    "VesicleError",
    "VesicleTimeoutError",
    "__version__",
    "capacity",
    "health",
]
