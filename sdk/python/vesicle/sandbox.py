"""A sandbox: one microVM with a persistent Python REPL, bash and a filesystem."""

from __future__ import annotations

import json
import math
import urllib.parse
from typing import Any, Dict, Iterator, List, Mapping, Optional, Union

from . import _config
from ._http import Transport
from .errors import InvalidRequestError, NotFoundError, ProtocolError, SandboxClosedError
from .execution import BytesCallback, ExecStream, Execution, ResultCallback, TextCallback
from .space import Space, resume_body, space_id_of, space_path
from .template import Template, save_body

# A freeze writes the VM's memory to disk and a resume reads it back; under
# TCG with a large guest either can take minutes without a byte on the wire,
# so they wait at least this long for hostd's answer.
SPACE_OP_TIMEOUT_S = 300.0

# Uploads are read and sent in pieces of this size: the same as the guest
# protocol's largest frame, so no piece has to be split or joined downstream.
CHUNK_BYTES = 256 * 1024

_LANGUAGES = ("python", "bash")


def secrets_body(secrets: Optional[Dict[str, Dict[str, str]]]) -> Optional[Dict[str, Dict[str, str]]]:
    """`secrets` checked for shape: {host name: {header name: value}}.

    hostd's egress proxy sets these headers on every HTTPS request the
    sandbox sends to that name (which must also be in egress_allow); the
    values never enter the sandbox. Errors name the host and header, never
    the value.
    """
    if secrets is None:
        return None
    if not isinstance(secrets, dict):
        raise InvalidRequestError(
            'secrets must be a dict of host name to headers, e.g. {"api.example.com": '
            '{"Authorization": "Bearer ..."}}'
        )
    out: Dict[str, Dict[str, str]] = {}
    for host, headers in secrets.items():
        if not isinstance(host, str) or not isinstance(headers, dict) or not headers:
            raise InvalidRequestError(
                f"secrets[{host!r}] must be a non-empty dict of header name to value"
            )
        for name, value in headers.items():
            if not isinstance(name, str) or not isinstance(value, str):
                raise InvalidRequestError(
                    f"secrets[{host!r}][{name!r}]: header names and values must be strings"
                )
        out[host] = dict(headers)
    return out


class Sandbox:
    """A sandbox on a vesicle host.

    `Sandbox(...)` creates one (and returns when it is ready); only the
    arguments given are sent, hostd fills in the rest. Use it as a context
    manager to close it on exit, or call `close()`. `Sandbox.connect(id)`
    attaches to an existing sandbox, `Sandbox.list()` lists the key's.
    `freeze()` saves it to disk as a Space; `Sandbox.resume(space_id)`
    brings a Space back as a new sandbox, `Sandbox.spaces()` lists them.
    With `persistent=True` hostd freezes the sandbox itself when it has been
    idle for `idle_timeout_s` (or reaches `max_lifetime_s`, or hostd stops)
    instead of destroying it.

    `url`, `api_key` default to $VESICLE_URL (else http://127.0.0.1:7070) and
    $VESICLE_API_KEY. `timeout` is how many seconds a request may wait for
    the next bytes from hostd (default 120; a create waits for a boot).
    """

    def __init__(
        self,
        template: Optional[str] = None,
        egress: Optional[bool] = None,
        egress_allow: Optional[List[str]] = None,
        persistent: Optional[bool] = None,
        idle_timeout_s: Optional[int] = None,
        max_lifetime_s: Optional[int] = None,
        vcpus: Optional[int] = None,
        memory_mib: Optional[int] = None,
        disk_mib: Optional[int] = None,
        region: Optional[str] = None,
        *,
        secrets: Optional[Dict[str, Dict[str, str]]] = None,
        url: Optional[str] = None,
        api_key: Optional[str] = None,
        timeout: Optional[float] = None,
        host: Optional[str] = None,
    ):
        # `region` places the sandbox in a cluster's region; `host` pins it
        # to one named node of the cluster, for debugging (docs/cluster.md).
        if isinstance(egress_allow, str):
            # A bare string would be sent as a string and rejected; the
            # caller almost surely meant a one-name list.
            raise InvalidRequestError(
                f"egress_allow must be a list of domain names, e.g. [{egress_allow!r}]"
            )
        fields = {
            "template": template,
            "egress": egress,
            "egress_allow": list(egress_allow) if egress_allow is not None else None,
            "persistent": persistent,
            "idle_timeout_s": idle_timeout_s,
            "max_lifetime_s": max_lifetime_s,
            "vcpus": vcpus,
            "memory_mib": memory_mib,
            "disk_mib": disk_mib,
            "region": region,
            "secrets": secrets_body(secrets),
        }
        body = {k: v for k, v in fields.items() if v is not None}
        transport = Transport(_config.resolve(url, api_key, timeout))
        transport.config.require_key()
        info = transport.json(
            "POST",
            "/v1/sandboxes",
            query={"node": host} if host else None,
            body=body,
            what="creating a sandbox",
        )
        self._attach(transport, info)

    def _attach(self, transport: Transport, info: Dict[str, Any]) -> None:
        if not isinstance(info, dict) or not isinstance(info.get("id"), str):
            raise ProtocolError(f"hostd answered with a sandbox object without an id: {info!r}")
        self._transport = transport
        self.id: str = info["id"]
        self.info: Dict[str, Any] = info
        self._closed = False
        self._space: Optional[Space] = None  # what freeze() made

    @classmethod
    def _from_info(cls, transport: Transport, info: Dict[str, Any]) -> "Sandbox":
        sb = cls.__new__(cls)
        sb._attach(transport, info)
        return sb

    @classmethod
    def connect(
        cls,
        sandbox_id: str,
        *,
        url: Optional[str] = None,
        api_key: Optional[str] = None,
        timeout: Optional[float] = None,
    ) -> "Sandbox":
        """Attach to an existing sandbox (NotFoundError if the key has no such sandbox)."""
        transport = Transport(_config.resolve(url, api_key, timeout))
        info = transport.json("GET", _sandbox_path(sandbox_id), what=f"looking up {sandbox_id}")
        return cls._from_info(transport, info)

    @classmethod
    def resume(
        cls,
        space: "Union[Space, str]",
        persistent: bool = False,
        *,
        secrets: Optional[Dict[str, Dict[str, str]]] = None,
        url: Optional[str] = None,
        api_key: Optional[str] = None,
        timeout: Optional[float] = None,
    ) -> "Sandbox":
        """Bring a Space back as a new sandbox (a new id); returns when it is ready.

        A Space keeps only the names its sandbox had secrets for, never the
        values: pass `secrets` again to have them set (see Sandbox()).

        The sandbox continues where the frozen one stopped: Python globals,
        running processes, files. `resumed_from` names the Space. The Space
        is used up: resuming it again is a NotFoundError. With
        `persistent=True` the new sandbox is frozen again when idle.
        A Space whose files fail their checks raises SpaceCorruptedError
        (and is kept); one another resume is restoring, ConflictError.
        """
        transport = Transport(_config.resolve(url, api_key, timeout))
        return cls._resume(transport, space, persistent, secrets)

    @classmethod
    def _resume(
        cls,
        transport: Transport,
        space: "Union[Space, str]",
        persistent: bool,
        secrets: Optional[Dict[str, Dict[str, str]]] = None,
    ) -> "Sandbox":
        transport.config.require_key()
        body = resume_body(persistent)
        if secrets is not None:
            body["secrets"] = secrets_body(secrets)
        space_id = space_id_of(space)
        info = transport.json(
            "POST",
            space_path(space_id) + "/resume",
            body=body,
            read_timeout=max(transport.config.timeout, SPACE_OP_TIMEOUT_S),
            what=f"resuming Space {space_id}",
        )
        return cls._from_info(transport, info)

    @classmethod
    def spaces(
        cls,
        *,
        url: Optional[str] = None,
        api_key: Optional[str] = None,
        timeout: Optional[float] = None,
    ) -> "List[Space]":
        """The API key's Spaces, oldest first."""
        from .client import Client

        with Client(url=url, api_key=api_key, timeout=timeout) as client:
            return client.spaces()

    @classmethod
    def list(
        cls,
        *,
        url: Optional[str] = None,
        api_key: Optional[str] = None,
        timeout: Optional[float] = None,
    ) -> "List[Sandbox]":
        """The API key's sandboxes, each attached (closing one destroys it)."""
        from .client import Client

        return Client(url=url, api_key=api_key, timeout=timeout).sandboxes()

    # ---- state --------------------------------------------------------------

    @property
    def state(self) -> Optional[str]:
        """"booting", "ready", "dead" or "frozen" as of the last answer (see refresh())."""
        return self.info.get("state")

    @property
    def space_id(self) -> Optional[str]:
        """The Space this sandbox was frozen into (state "frozen"), else None."""
        return self.info.get("space_id") or None

    @property
    def resumed_from(self) -> Optional[str]:
        """The Space this sandbox was resumed from (its source is "space"), else None."""
        return self.info.get("resumed_from") or None

    @property
    def space(self) -> Optional[Space]:
        """The Space freeze() made, as hostd described it; None before a freeze()."""
        return self._space

    @property
    def secret_hosts(self) -> List[str]:
        """The hosts hostd sets secret headers for on this sandbox's requests
        (the values are never sent back)."""
        return list(self.info.get("secret_hosts") or [])

    @property
    def egress(self) -> Optional[str]:
        """The sandbox's network egress: "open", "off" or "allowlist" (see egress_allow)."""
        mode = self.info.get("egress_mode")
        if mode:
            return mode
        # A hostd that predates egress_mode says only whether egress is on.
        if "egress" not in self.info:
            return None
        if not self.info["egress"]:
            return "off"
        return "allowlist" if self.info.get("egress_allow") else "open"

    @property
    def egress_allow(self) -> List[str]:
        """The names an "allowlist" sandbox may reach ("pypi.org", "*.example.com"); else []."""
        return list(self.info.get("egress_allow") or [])

    @property
    def closed(self) -> bool:
        return self._closed

    def refresh(self) -> Dict[str, Any]:
        """Fetch the sandbox object again; returns (and stores in `info`) the new one."""
        self._check_open("refresh", frozen_ok=True)
        self.info = self._transport.json(
            "GET", _sandbox_path(self.id), what=f"looking up {self.id}"
        )
        return self.info

    # ---- code ---------------------------------------------------------------

    def run_code(
        self,
        code: str,
        language: str = "python",
        timeout: Optional[float] = None,
        on_stdout: TextCallback = None,
        on_stderr: TextCallback = None,
        env: Optional[Mapping[str, str]] = None,
        cwd: Optional[str] = None,
        on_result: ResultCallback = None,
    ) -> Execution:
        """Run code in the sandbox and return what it produced.

        Python runs in the sandbox's one persistent REPL (globals survive);
        bash runs the command in the same machine (env and cwd apply to bash
        only; hostd refuses them for Python). Output streams: on_stdout and
        on_stderr are called with str chunks as they arrive, on_result with
        each display output (a Result: a chart, a table) as it arrives; all
        of them are in the Execution's `results` too.
        `timeout` (seconds) interrupts the code; the Execution says timed_out.
        If the sandbox dies meanwhile, SandboxDiedError (with `.execution`,
        what came before) is raised.
        """
        return self._exec(code, language, timeout, on_stdout, on_stderr, env, cwd, on_result=on_result)

    def _exec(
        self,
        code: str,
        language: str = "python",
        timeout: Optional[float] = None,
        on_stdout: TextCallback = None,
        on_stderr: TextCallback = None,
        env: Optional[Mapping[str, str]] = None,
        cwd: Optional[str] = None,
        on_bytes: BytesCallback = None,
        on_result: ResultCallback = None,
        path: Optional[str] = None,
    ) -> Execution:
        # `path`: another exec route for the same request (the CLI's admin
        # exec, /v1/admin/sandboxes/{id}/exec).
        self._check_open("run code in")
        if not isinstance(code, str):
            raise InvalidRequestError(f"code must be a str, not {type(code).__name__}")
        if language not in _LANGUAGES:
            raise InvalidRequestError(
                f"language must be 'python' or 'bash', not {language!r}"
            )
        body: Dict[str, Any] = {"code": code, "language": language}
        read_timeout: Optional[float] = None  # a silent cell may run for hours
        if timeout is not None:
            if not timeout > 0:
                raise InvalidRequestError(f"timeout must be a positive number of seconds, not {timeout!r}")
            body["timeout_s"] = int(math.ceil(timeout))
            # hostd answers by the timeout; allow the usual slack beyond it.
            read_timeout = body["timeout_s"] + self._transport.config.timeout
        if env is not None:
            body["env"] = {str(k): str(v) for k, v in env.items()}
        if cwd is not None:
            body["cwd"] = cwd
        parser = ExecStream(
            on_stdout=on_stdout, on_stderr=on_stderr, on_bytes=on_bytes, on_result=on_result
        )
        payload = _json_bytes(body)
        with self._transport.stream(
            "POST",
            path or _sandbox_path(self.id) + "/exec",
            body=payload,
            headers={"Content-Type": "application/json", "Accept": "application/x-ndjson"},
            read_timeout=read_timeout,
            what=f"running code in {self.id}",
        ) as resp:
            for line in resp.iter_lines():
                parser.feed(line)
        return parser.finish()

    # ---- files --------------------------------------------------------------

    def upload(self, data: Union[bytes, bytearray, memoryview, str, Any], path: str, mode: Optional[int] = None) -> Dict[str, Any]:
        """Write `data` to `path` (absolute) in the sandbox, making parent folders.

        `data` is bytes, a str (written as UTF-8), or a binary file object,
        which is streamed in chunks and never read whole. `mode` is the file's
        permission bits (e.g. 0o755). Returns hostd's {"path", "size"}.
        """
        self._check_open("upload to")
        query = {"path": _check_path(path)}
        if mode is not None:
            if isinstance(mode, bool) or not isinstance(mode, int) or not 0 <= mode <= 0o7777:
                raise InvalidRequestError(f"mode must be permission bits like 0o644, not {mode!r}")
            query["mode"] = format(mode, "04o")
        if isinstance(data, str):
            body: Any = data.encode("utf-8")
        elif isinstance(data, (bytes, bytearray, memoryview)):
            body = bytes(data) if isinstance(data, memoryview) else data
        elif hasattr(data, "read"):
            body = _file_chunks(data)
        else:
            raise InvalidRequestError(
                f"upload data must be bytes, str or a binary file object, not {type(data).__name__}"
            )
        with self._transport.stream(
            "PUT",
            _sandbox_path(self.id) + "/files",
            query=query,
            body=body,
            headers={"Content-Type": "application/octet-stream", "Accept": "application/json"},
            what=f"uploading {path} to {self.id}",
        ) as resp:
            answer = resp.read_all()
        return self._transport.decode_json(answer, f"uploading {path}")

    def download(self, path: str) -> bytes:
        """The bytes of the file at `path` (absolute) in the sandbox."""
        parts: List[bytes] = []
        self._download(path, parts.append)
        return b"".join(parts)

    def download_to(self, path: str, fileobj: Any) -> int:
        """Stream the file at `path` in the sandbox into a binary file object; returns its size."""
        return self._download(path, fileobj.write)

    def _download(self, path: str, sink) -> int:
        self._check_open("download from")
        total = 0
        with self._transport.stream(
            "GET",
            _sandbox_path(self.id) + "/files",
            query={"path": _check_path(path)},
            headers={"Accept": "application/octet-stream"},
            what=f"downloading {path} from {self.id}",
        ) as resp:
            while True:
                data = resp.read1(CHUNK_BYTES)
                if not data:
                    break
                sink(data)
                total += len(data)
        return total

    # ---- ports --------------------------------------------------------------

    def url(self, port: int, path: str = "/") -> str:
        """The URL of `path` on the server listening on TCP `port` inside the sandbox.

        hostd relays any HTTP request (and WebSocket) sent there to
        127.0.0.1:`port` in the guest, so it works with egress off. Send the
        key with it: `headers=sb.port_headers()`.
        """
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise InvalidRequestError(f"port must be a TCP port number from 1 to 65535, not {port!r}")
        if not isinstance(path, str) or not path.startswith("/"):
            raise InvalidRequestError(f"path must start with '/', not {path!r}")
        return f"{self._transport.config.url}{_sandbox_path(self.id)}/ports/{port}{path}"

    def port_headers(self) -> Dict[str, str]:
        """The header a request to `url(port)` needs: this key's Authorization."""
        return {"Authorization": f"Bearer {self._transport.config.require_key()}"}

    # ---- fork and merge -----------------------------------------------------

    def fork(self, n: int = 1) -> "List[Sandbox]":
        """Branch this sandbox `n` ways (1 to 32); returns the children, each ready.

        Each child starts from this sandbox's state at this moment: Python
        globals, running processes, files. They share its memory and disk
        copy-on-write and get their own identity (hostname, machine-id,
        entropy). This sandbox keeps running. Either all `n` children are
        made or none (the error says why) and this sandbox is unchanged.
        Wait for running code to finish first: a fork refuses a sandbox with
        an exec or file transfer in flight.
        """
        self._check_open("fork")
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 32:
            raise InvalidRequestError(f"n must be an int from 1 to 32, not {n!r}")
        answer = self._transport.json(
            "POST", _sandbox_path(self.id) + "/fork", body={"n": n}, what=f"forking {self.id}"
        )
        children = answer.get("children") if isinstance(answer, dict) else None
        if not isinstance(children, list) or len(children) != n:
            raise ProtocolError(f"hostd answered a fork of {n} with {answer!r}")
        return [Sandbox._from_info(Transport(self._transport.config), info) for info in children]

    def merge_into(self, winner: "Union[Sandbox, str]") -> None:
        """Make this sandbox continue as `winner`, one of its forked descendants.

        Afterwards this sandbox's id runs the winner's world (memory,
        processes, files), its own old world is destroyed, and the winner's
        id is gone (the `winner` object is closed). Other children are
        untouched.
        """
        self._check_open("merge into")
        winner_id = winner.id if isinstance(winner, Sandbox) else winner
        if not isinstance(winner_id, str) or not winner_id:
            raise InvalidRequestError(f"winner must be a Sandbox or a sandbox id, not {winner!r}")
        self.info = self._transport.json(
            "POST",
            _sandbox_path(self.id) + "/merge_into/" + urllib.parse.quote(winner_id, safe=""),
            what=f"merging {winner_id} into {self.id}",
        )
        if isinstance(winner, Sandbox) and not winner._closed:
            winner._closed = True
            winner._transport.close()

    @property
    def forked_from(self) -> Optional[str]:
        """The id of the sandbox this one was forked from, else None."""
        return self.info.get("forked_from") or None

    # ---- Spaces -------------------------------------------------------------

    def freeze(self) -> str:
        """Save this sandbox to disk as a Space and stop its VM; returns the space_id.

        The Space holds everything: memory (Python globals), running
        processes, files. Resume it with `Sandbox.resume(space_id)`, from
        this process or another, also after hostd restarts. Afterwards this
        object runs no code (SandboxClosedError) and `space_id` names the
        Space; the sandbox stays listed as "frozen" until close(), which
        then only forgets that record (the Space stays). Wait for running
        code to finish first: a freeze refuses a sandbox with an exec in
        flight (ConflictError). Under TCG a freeze takes seconds.
        """
        self._check_open("freeze")
        doc = self._transport.json(
            "POST",
            _sandbox_path(self.id) + "/freeze",
            read_timeout=max(self._transport.config.timeout, SPACE_OP_TIMEOUT_S),
            what=f"freezing {self.id}",
        )
        space = Space.from_json(doc)
        self._space = space
        # What hostd's own object now says; refresh() would fetch the same.
        self.info = dict(self.info, state="frozen", space_id=space.space_id)
        return space.space_id

    def save_template(
        self,
        name: str,
        *,
        global_: bool = False,
        pool_size: Optional[int] = None,
        recipe_hash: str = "",
    ) -> Template:
        """Save this sandbox's state (memory, processes, files) as the template `name`.

        `Sandbox(template=name)` then starts new sandboxes from it, with the
        packages, files and Python globals this one has now. This sandbox
        runs on. The template is this API key's: another key gets
        NotFoundError for it, unless an admin key saves it with
        `global_=True`. `pool_size` VMs are kept restored from it, waiting
        (default from hostd's configuration; 0: restore on demand). A name the
        key already uses is a ConflictError (delete that template first).
        Wait for running code to finish first: a save refuses a sandbox with
        an exec in flight (ConflictError). Under TCG a save takes seconds.
        """
        self._check_open("save a template of")
        doc = self._transport.json(
            "POST",
            "/v1/templates",
            body=save_body(self.id, name, global_, recipe_hash, pool_size),
            read_timeout=max(self._transport.config.timeout, SPACE_OP_TIMEOUT_S),
            what=f"saving {self.id} as template {name!r}",
        )
        return Template.from_json(doc)

    @classmethod
    def templates(
        cls,
        *,
        url: Optional[str] = None,
        api_key: Optional[str] = None,
        timeout: Optional[float] = None,
    ) -> "List[Template]":
        """The templates the API key can use (its own and global ones), oldest first."""
        from .client import Client

        with Client(url=url, api_key=api_key, timeout=timeout) as client:
            return client.templates()

    @classmethod
    def delete_template(
        cls,
        name: "Union[Template, str]",
        *,
        url: Optional[str] = None,
        api_key: Optional[str] = None,
        timeout: Optional[float] = None,
    ) -> None:
        """Delete one of the key's templates (ConflictError while sandboxes made from it run)."""
        from .client import Client

        with Client(url=url, api_key=api_key, timeout=timeout) as client:
            client.delete_template(name)

    # ---- lifetime -----------------------------------------------------------

    def close(self) -> None:
        """Destroy the sandbox and free everything it held. Closing twice is fine.

        For a frozen sandbox this only drops its "frozen" record: its Space
        stays (delete it with Client.delete_space).
        """
        if self._closed:
            return
        try:
            self._transport.json(
                "DELETE", _sandbox_path(self.id), what=f"destroying {self.id}"
            )
        except NotFoundError:
            pass  # already gone (destroyed elsewhere, or reaped): the goal is met
        self._closed = True
        self._transport.close()

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is None:
            self.close()
            return
        # Do not let a failing close hide the error that ended the block.
        try:
            self.close()
        except Exception as close_exc:  # noqa: BLE001 - reported on the original error
            if hasattr(exc, "add_note"):
                exc.add_note(f"closing sandbox {self.id} also failed: {close_exc}")

    def _check_open(self, doing: str, frozen_ok: bool = False) -> None:
        if self._closed:
            raise SandboxClosedError(
                f"cannot {doing} sandbox {self.id}: it was closed (destroyed); create a new Sandbox()"
            )
        if self._space is not None and not frozen_ok:
            raise SandboxClosedError(
                f"cannot {doing} sandbox {self.id}: it was frozen into Space "
                f"{self._space.space_id}; resume it with Sandbox.resume({self._space.space_id!r})"
            )

    def __repr__(self) -> str:
        state = "closed" if self._closed else self.state
        return f"<Sandbox {self.id} state={state}>"


def _sandbox_path(sandbox_id: str) -> str:
    if not isinstance(sandbox_id, str) or not sandbox_id:
        raise InvalidRequestError(f"a sandbox id must be a non-empty string, not {sandbox_id!r}")
    return "/v1/sandboxes/" + urllib.parse.quote(sandbox_id, safe="")


def _check_path(path: str) -> str:
    if not isinstance(path, str) or not path.startswith("/"):
        raise InvalidRequestError(f"a sandbox path must be absolute (start with /), not {path!r}")
    return path


def _json_bytes(body: Dict[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode("utf-8")


def _file_chunks(fileobj: Any) -> Iterator[bytes]:
    while True:
        chunk = fileobj.read(CHUNK_BYTES)
        if not chunk:
            return
        if isinstance(chunk, str):
            # A file opened in text mode: send its text as UTF-8.
            chunk = chunk.encode("utf-8")
        yield chunk
