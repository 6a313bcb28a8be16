"""Calls about the host rather than one sandbox: health, capacity, the key's sandboxes and Spaces."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Union

from . import _config
from ._http import Transport
from .errors import ProtocolError
from .sandbox import Sandbox
from .space import Space, space_id_of, space_path, spaces_from_list
from .template import Template, template_name_of, template_path, templates_from_list


class Client:
    """One hostd, one API key. Sandboxes it hands out share its connections."""

    def __init__(
        self,
        url: Optional[str] = None,
        api_key: Optional[str] = None,
        timeout: Optional[float] = None,
    ):
        self._transport = Transport(_config.resolve(url, api_key, timeout))

    @property
    def url(self) -> str:
        return self._transport.config.url

    def health(self) -> Dict[str, Any]:
        """hostd's liveness: {"status": "ok", "accel", "version"}. Needs no API key."""
        return self._transport.json("GET", "/v1/healthz", auth=False, what="checking health")

    def capacity(self) -> Dict[str, Any]:
        """{"max_sandboxes", "running", "booting", "available", "accel"}."""
        return self._transport.json("GET", "/v1/capacity", what="reading capacity")

    def sandboxes(self) -> List[Sandbox]:
        """The API key's sandboxes, each attached (closing one destroys it)."""
        doc = self._transport.json("GET", "/v1/sandboxes", what="listing sandboxes")
        items = doc.get("sandboxes", []) if isinstance(doc, dict) else None
        if not isinstance(items, list):
            raise ProtocolError(f"hostd answered the sandbox list with {doc!r}")
        return [Sandbox._from_info(self._transport, info) for info in items]

    def connect(self, sandbox_id: str) -> Sandbox:
        """Attach to an existing sandbox (NotFoundError if the key has no such sandbox)."""
        return Sandbox.connect(
            sandbox_id,
            url=self._transport.config.url,
            api_key=self._transport.config.api_key,
            timeout=self._transport.config.timeout,
        )

    def spaces(self) -> List[Space]:
        """The API key's Spaces (frozen sandboxes), oldest first."""
        doc = self._transport.json("GET", "/v1/spaces", what="listing Spaces")
        return spaces_from_list(doc)

    def space(self, space: Union[Space, str]) -> Space:
        """One Space (NotFoundError if the key has no such Space)."""
        space_id = space_id_of(space)
        doc = self._transport.json("GET", space_path(space_id), what=f"looking up Space {space_id}")
        return Space.from_json(doc)

    def resume(
        self,
        space: Union[Space, str],
        persistent: bool = False,
        *,
        secrets: Optional[Dict[str, Dict[str, str]]] = None,
    ) -> Sandbox:
        """Bring a Space back as a new ready sandbox; see Sandbox.resume."""
        return Sandbox._resume(self._transport, space, persistent, secrets)

    def delete_space(self, space: Union[Space, str]) -> None:
        """Delete a Space and its files (NotFoundError if the key has no such Space)."""
        space_id = space_id_of(space)
        self._transport.json("DELETE", space_path(space_id), what=f"deleting Space {space_id}")

    def templates(self) -> List[Template]:
        """The templates this key can use (its own and global ones), oldest first."""
        doc = self._transport.json("GET", "/v1/templates", what="listing templates")
        return templates_from_list(doc)

    def template_usage(self) -> Dict[str, Any]:
        """What this key's own templates hold: {"count", "memory_bytes", "disk_bytes"}."""
        doc = self._transport.json("GET", "/v1/templates", what="listing templates")
        usage = doc.get("usage") if isinstance(doc, dict) else None
        return usage if isinstance(usage, dict) else {}

    def template(self, template: Union[Template, str]) -> Template:
        """One template (NotFoundError if this key can neither see nor use it)."""
        name = template_name_of(template)
        doc = self._transport.json("GET", template_path(name), what=f"looking up template {name!r}")
        return Template.from_json(doc)

    def delete_template(self, template: Union[Template, str]) -> None:
        """Delete one of this key's templates and its files."""
        name = template_name_of(template)
        self._transport.json("DELETE", template_path(name), what=f"deleting template {name!r}")

    def close(self) -> None:
        self._transport.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def health(url: Optional[str] = None, timeout: Optional[float] = None) -> Dict[str, Any]:
    """hostd's liveness answer; raises VesicleConnectionError if it is not listening."""
    with Client(url=url, timeout=timeout) as client:
        return client.health()


def capacity(
    url: Optional[str] = None, api_key: Optional[str] = None, timeout: Optional[float] = None
) -> Dict[str, Any]:
    """The host's free capacity."""
    with Client(url=url, api_key=api_key, timeout=timeout) as client:
        return client.capacity()
