"""Where the SDK finds hostd and its API key: arguments first, then the environment."""

from __future__ import annotations

import os
import urllib.parse
from dataclasses import dataclass
from typing import Mapping, Optional, Tuple

from .errors import ConfigurationError

DEFAULT_URL = "http://127.0.0.1:7070"
# A create waits for the VM to boot, which under TCG on a loaded host can take
# tens of seconds (hostd's own boot timeout is 90 s), so the default is generous.
DEFAULT_TIMEOUT_S = 120.0

URL_ENV = "VESICLE_URL"
KEY_ENV = "VESICLE_API_KEY"


@dataclass(frozen=True)
class Config:
    url: str  # scheme://host:port[/prefix], no trailing slash
    api_key: Optional[str]
    timeout: float  # seconds a socket may wait (connect, or between bytes)
    # Every URL given, `url` first: a cluster's gateway replicas
    # (docs/cluster.md), tried in turn when one cannot be reached.
    urls: Tuple[str, ...] = ()

    @property
    def parsed(self) -> urllib.parse.SplitResult:
        return urllib.parse.urlsplit(self.url)

    def require_key(self) -> str:
        if not self.api_key:
            raise ConfigurationError(
                f"no vesicle API key: set {KEY_ENV} to a key hostd printed or stored "
                f"(or pass api_key=...)"
            )
        return self.api_key


def resolve(
    url: Optional[str] = None,
    api_key: Optional[str] = None,
    timeout: Optional[float] = None,
    env: Optional[Mapping[str, str]] = None,
) -> Config:
    """The effective configuration; a missing key is reported only when a call needs it."""
    if env is None:
        env = os.environ
    chosen_url = url if url else env.get(URL_ENV) or DEFAULT_URL
    # Several comma-separated URLs: gateways of one cluster, in order.
    source = "url argument" if url else URL_ENV
    urls = tuple(_check_url(one, source) for one in chosen_url.split(",") if one.strip())
    if not urls:
        raise ConfigurationError(f"{source} {chosen_url!r} names no URL (for example {DEFAULT_URL})")
    chosen_url = urls[0]
    key = api_key if api_key else env.get(KEY_ENV) or None
    if key is not None:
        key = key.strip()
        if not key or any(c in key for c in "\r\n"):
            raise ConfigurationError(f"the vesicle API key is malformed: check {KEY_ENV}")
    if timeout is None:
        chosen_timeout = DEFAULT_TIMEOUT_S
    else:
        try:
            chosen_timeout = float(timeout)
        except (TypeError, ValueError):
            raise ConfigurationError(f"timeout must be a number of seconds, not {timeout!r}") from None
        if not chosen_timeout > 0:
            raise ConfigurationError(f"timeout must be a positive number of seconds, not {timeout!r}")
    return Config(url=chosen_url, api_key=key, timeout=chosen_timeout, urls=urls)


def _check_url(url: str, source: str) -> str:
    url = url.strip()
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigurationError(
            f"{source} {url!r} is not an http:// or https:// URL with a host "
            f"(for example {DEFAULT_URL})"
        )
    try:
        parts.port
    except ValueError:
        raise ConfigurationError(f"{source} {url!r} has a bad port number") from None
    if parts.query or parts.fragment:
        raise ConfigurationError(f"{source} {url!r} must not carry a query or fragment")
    return url.rstrip("/")
