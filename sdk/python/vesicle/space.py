"""A Space: a sandbox frozen to disk (memory, processes, files), waiting to be resumed.

`Sandbox.freeze()` makes one; hostd makes one too when it freezes a
persistent sandbox that went idle, reached its lifetime, or was running
when hostd stopped. `Sandbox.resume(space_id)` brings it back as a new
sandbox. A Space lives on the host's disk and survives hostd restarts.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Dict, List, Union

from .errors import InvalidRequestError, ProtocolError


@dataclass(frozen=True)
class Space:
    """One Space as hostd described it; `raw` is hostd's object as sent.

    `sandbox_id` is the sandbox it was frozen from; the sandbox's settings
    (template, sizes, egress, timeouts, `created_at`) are those it had.
    `reason` is why it was frozen: "freeze" (an explicit freeze), "idle"
    or "lifetime" (hostd's reaper), "shutdown" (hostd stopping).
    `size_bytes` is what it takes on disk: `state_bytes` (memory and device
    state) plus `disk_bytes` (the disk's changes) plus bookkeeping.
    """

    space_id: str
    sandbox_id: str = ""
    template: str = ""
    persistent: bool = False
    vcpus: int = 0
    memory_mib: int = 0
    disk_mib: int = 0
    egress: bool = False
    egress_allow: List[str] = field(default_factory=list)
    egress_mode: str = ""
    idle_timeout_s: int = 0
    max_lifetime_s: int = 0
    created_at: str = ""
    frozen_at: str = ""
    size_bytes: int = 0
    state_bytes: int = 0
    disk_bytes: int = 0
    reason: str = ""
    raw: Dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def __hash__(self) -> int:
        # By id: the generated hash would fail on the egress_allow list.
        return hash(self.space_id)

    @classmethod
    def from_json(cls, doc: Any) -> "Space":
        """A Space from hostd's JSON object (ProtocolError if it is not one)."""
        if not isinstance(doc, dict) or not isinstance(doc.get("space_id"), str) or not doc["space_id"]:
            raise ProtocolError(f"hostd answered with a Space object without a space_id: {doc!r}")
        try:
            return cls(
                space_id=doc["space_id"],
                sandbox_id=str(doc.get("sandbox_id") or ""),
                template=str(doc.get("template") or ""),
                persistent=bool(doc.get("persistent", False)),
                vcpus=_int(doc, "vcpus"),
                memory_mib=_int(doc, "memory_mib"),
                disk_mib=_int(doc, "disk_mib"),
                egress=bool(doc.get("egress", False)),
                egress_allow=[str(d) for d in doc.get("egress_allow") or []],
                egress_mode=str(doc.get("egress_mode") or ""),
                idle_timeout_s=_int(doc, "idle_timeout_s"),
                max_lifetime_s=_int(doc, "max_lifetime_s"),
                created_at=str(doc.get("created_at") or ""),
                frozen_at=str(doc.get("frozen_at") or ""),
                size_bytes=_int(doc, "size_bytes"),
                state_bytes=_int(doc, "state_bytes"),
                disk_bytes=_int(doc, "disk_bytes"),
                reason=str(doc.get("reason") or ""),
                raw=doc,
            )
        except (TypeError, ValueError) as exc:
            raise ProtocolError(f"hostd answered with a malformed Space object ({exc}): {doc!r}") from None


def _int(doc: Dict[str, Any], name: str) -> int:
    # hostd sends the byte counts as JSON numbers that may carry a fraction
    # (doubles); protobuf's JSON mapping would send 64-bit integers as
    # strings. Either is taken.
    value = doc.get(name)
    if value is None or value == "":
        return 0
    if isinstance(value, bool):
        raise ValueError(f"{name} is a bool")
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            return int(float(value))
    return int(value)


def space_id_of(space: "Union[Space, str]") -> str:
    """The id of a Space given as a Space or as its id."""
    space_id = space.space_id if isinstance(space, Space) else space
    if not isinstance(space_id, str) or not space_id:
        raise InvalidRequestError(f"a Space must be a Space or a space id like 'sp-...', not {space!r}")
    return space_id


def space_path(space: "Union[Space, str]") -> str:
    return "/v1/spaces/" + urllib.parse.quote(space_id_of(space), safe="")


def spaces_from_list(doc: Any) -> "List[Space]":
    items = doc.get("spaces", []) if isinstance(doc, dict) else None
    if not isinstance(items, list):
        raise ProtocolError(f"hostd answered the Space list with {doc!r}")
    return [Space.from_json(item) for item in items]


def resume_body(persistent: bool) -> Dict[str, Any]:
    if not isinstance(persistent, bool):
        raise InvalidRequestError(f"persistent must be True or False, not {persistent!r}")
    return {"persistent": persistent}
