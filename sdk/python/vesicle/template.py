"""A template: a sandbox's state (memory, processes, files) saved under a name.

`Sandbox.save_template("pandas-ml")` makes one from a running sandbox (which
runs on); `Sandbox(template="pandas-ml")` starts a new sandbox from it, with
the packages, files and Python globals it had. A template belongs to the
API key that saved it (another key cannot see or use it) unless an admin
key saved it with `global_=True`. Templates live on the host's disk and
survive hostd restarts.
"""

from __future__ import annotations

import hashlib
import json
import os
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Dict, List, Sequence, Tuple

from .errors import InvalidRequestError, ProtocolError
from .space import _int


@dataclass(frozen=True)
class Template:
    """One template as hostd described it; `raw` is hostd's object as sent.

    `own` is True when the key that asked saved it. `memory_bytes` and
    `disk_bytes` are what it keeps on the host (its RAM image's data; its
    device state and disk changes): they count against the key's quotas.
    `pool_size` VMs are kept restored from it, waiting (0: restored on demand);
    `pool_ready` is how many wait now (filled in by `Client.template(name)`
    only; 0 in lists).
    """

    name: str
    template_id: str = ""
    global_: bool = False
    own: bool = False
    from_sandbox: str = ""
    created_at: str = ""
    vcpus: int = 0
    memory_mib: int = 0
    disk_mib: int = 0
    recipe_hash: str = ""
    pool_size: int = 0
    memory_bytes: int = 0
    disk_bytes: int = 0
    pool_ready: int = 0
    raw: Dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, doc: Any) -> "Template":
        """A Template from hostd's JSON object (ProtocolError if it is not one)."""
        if not isinstance(doc, dict) or not isinstance(doc.get("name"), str) or not doc["name"]:
            raise ProtocolError(f"hostd answered with a template object without a name: {doc!r}")
        try:
            return cls(
                name=doc["name"],
                template_id=str(doc.get("template_id") or ""),
                global_=bool(doc.get("global", False)),
                own=bool(doc.get("own", False)),
                from_sandbox=str(doc.get("from_sandbox") or ""),
                created_at=str(doc.get("created_at") or ""),
                vcpus=_int(doc, "vcpus"),
                memory_mib=_int(doc, "memory_mib"),
                disk_mib=_int(doc, "disk_mib"),
                recipe_hash=str(doc.get("recipe_hash") or ""),
                pool_size=_int(doc, "pool_size"),
                memory_bytes=_int(doc, "memory_bytes"),
                disk_bytes=_int(doc, "disk_bytes"),
                pool_ready=_int(doc, "pool_ready"),
                raw=doc,
            )
        except (TypeError, ValueError) as exc:
            raise ProtocolError(f"hostd answered with a malformed template object ({exc}): {doc!r}") from None


def template_name_of(template: "Template | str") -> str:
    name = template.name if isinstance(template, Template) else template
    if not isinstance(name, str) or not name:
        raise InvalidRequestError(f"a template must be a Template or a template name, not {template!r}")
    return name


def template_path(template: "Template | str") -> str:
    return "/v1/templates/" + urllib.parse.quote(template_name_of(template), safe="")


def templates_from_list(doc: Any) -> "List[Template]":
    items = doc.get("templates", []) if isinstance(doc, dict) else None
    if not isinstance(items, list):
        raise ProtocolError(f"hostd answered the template list with {doc!r}")
    return [Template.from_json(item) for item in items]


def save_body(
    sandbox_id: str, name: str, global_: bool = False, recipe_hash: str = "", pool_size: "int | None" = None
) -> Dict[str, Any]:
    if not isinstance(name, str) or not name:
        raise InvalidRequestError(f"a template name must be a non-empty string, not {name!r}")
    body: Dict[str, Any] = {"from_sandbox": sandbox_id, "name": name}
    if global_:
        body["global"] = True
    if recipe_hash:
        body["recipe_hash"] = recipe_hash
    if pool_size is not None:
        if isinstance(pool_size, bool) or not isinstance(pool_size, int) or pool_size < 0:
            raise InvalidRequestError(f"pool_size must be a whole number >= 0, not {pool_size!r}")
        body["pool_size"] = pool_size
    return body


# ---- recipes (vesicle template build) ----------------------------------------


@dataclass(frozen=True)
class Recipe:
    """How a template is built: a sandbox from `base`, `uploads` (local file
    -> path in the sandbox) copied in, then `runs` (shell commands) in order.
    Its hash names the recipe: an unchanged recipe finds its template."""

    base: str = "base"
    runs: Tuple[str, ...] = ()
    uploads: Tuple[Tuple[str, str], ...] = ()

    def digest(self) -> str:
        """sha256 over the base, each upload's target and content, and each
        command, in order (so a changed file changes the hash)."""
        h = hashlib.sha256()
        uploads = []
        for local, remote in self.uploads:
            with open(local, "rb") as f:
                uploads.append([remote, hashlib.sha256(f.read()).hexdigest()])
        doc = {"v": 1, "base": self.base, "uploads": uploads, "runs": list(self.runs)}
        h.update(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode())
        return "sha256:" + h.hexdigest()


def parse_upload(spec: str) -> Tuple[str, str]:
    """"local:remote" -> (local, remote); remote must be absolute."""
    local, sep, remote = spec.rpartition(":")
    if not sep or not local or not remote.startswith("/"):
        raise InvalidRequestError(
            f"--upload wants LOCAL:REMOTE with an absolute REMOTE path (e.g. ./req.txt:/root/req.txt), got {spec!r}"
        )
    if not os.path.isfile(local):
        raise InvalidRequestError(f"--upload: {local!r} is not a file here")
    return local, remote


def make_recipe(base: str, runs: Sequence[str], uploads: Sequence[str]) -> Recipe:
    return Recipe(base=base, runs=tuple(runs), uploads=tuple(parse_upload(u) for u in uploads))
