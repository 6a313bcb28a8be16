"""The `vesicle` command: create sandboxes, run code in them, move files, list, destroy,
freeze them to Spaces and resume those.

Configuration comes from VESICLE_URL and VESICLE_API_KEY (or --url). Every
failure prints `vesicle: <message>` to stderr and exits 1 (2 for a usage
error); `vesicle exec` exits with the code's own exit status.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from typing import List, Optional, Sequence

from . import _config
from ._version import __version__
from .client import Client
from .errors import VesicleError
from .sandbox import Sandbox, _sandbox_path

EXIT_TIMEOUT = 124  # as timeout(1) does


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except VesicleError as exc:
        _error(str(exc))
        return 1
    except KeyboardInterrupt:
        _error("interrupted")
        return 130
    except BrokenPipeError:
        # The reader of our stdout went away (`| head`): stop quietly, and keep
        # Python from complaining again when it flushes stdout at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except OSError as exc:
        # Local files: a LOCAL path that cannot be read or written.
        where = f" {exc.filename}" if exc.filename else ""
        _error(f"{exc.strerror or exc}:{where}")
        return 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vesicle",
        description="Sandboxes for AI agents: microVMs with a persistent Python REPL.",
        epilog=(
            f"Environment: {_config.URL_ENV} (default {_config.DEFAULT_URL}), "
            f"{_config.KEY_ENV} (required)."
        ),
    )
    parser.add_argument("--version", action="version", version=f"vesicle {__version__}")
    parser.add_argument("--url", help=f"hostd's URL (overrides ${_config.URL_ENV})")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("create", help="create a sandbox and print its id")
    p.add_argument("--template", help="image template (default: hostd's)")
    p.add_argument("--vcpus", type=int, metavar="N")
    p.add_argument("--memory-mib", type=int, metavar="N")
    p.add_argument("--disk-mib", type=int, metavar="N")
    p.add_argument("--no-egress", action="store_true", help="no network route out")
    p.add_argument(
        "--egress-allow",
        action="append",
        metavar="DOMAIN",
        help="allow egress only to this name (repeatable)",
    )
    p.add_argument("--persistent", action="store_true", help="freeze to a Space when idle")
    p.add_argument("--idle-timeout-s", type=int, metavar="S")
    p.add_argument("--max-lifetime-s", type=int, metavar="S")
    p.add_argument("--region")
    p.set_defaults(run=_create)

    p = sub.add_parser(
        "exec",
        help="run code in a sandbox, streaming its output",
        description=(
            "Run Python (default) or bash in a sandbox. Exits with the code's exit "
            "status: bash's, 1 after a Python exception, 124 on timeout."
        ),
    )
    p.add_argument("id", metavar="ID")
    p.add_argument("code", metavar="CODE", help="the code; - reads it from stdin")
    p.add_argument("--bash", action="store_true", help="run CODE with bash instead of Python")
    p.add_argument("--timeout", type=float, metavar="S", help="interrupt the code after S seconds")
    p.add_argument(
        "--env", action="append", default=[], metavar="K=V", help="environment (bash; repeatable)"
    )
    p.add_argument("--cwd", metavar="DIR", help="working directory (bash)")
    p.add_argument(
        "--save-images",
        metavar="DIR",
        help="write the cell's images (charts, display outputs) into DIR as output-N.png etc.; "
        "without it each is noted as [image/png N bytes]",
    )
    p.set_defaults(run=_exec)

    p = sub.add_parser("upload", help="copy a local file into a sandbox")
    p.add_argument("id", metavar="ID")
    p.add_argument("local", metavar="LOCAL", help="local file; - reads stdin")
    p.add_argument("remote", metavar="REMOTE", help="absolute path in the sandbox")
    p.add_argument("--mode", metavar="OCTAL", help="permission bits, e.g. 755")
    p.set_defaults(run=_upload)

    p = sub.add_parser("download", help="copy a file out of a sandbox")
    p.add_argument("id", metavar="ID")
    p.add_argument("remote", metavar="REMOTE", help="absolute path in the sandbox")
    p.add_argument("local", metavar="LOCAL", help="local file; - writes stdout")
    p.set_defaults(run=_download)

    p = sub.add_parser("ls", help="list your sandboxes")
    p.add_argument("--json", action="store_true", help="print hostd's objects as JSON")
    p.set_defaults(run=_ls)

    p = sub.add_parser("rm", help="destroy sandboxes")
    p.add_argument("ids", nargs="+", metavar="ID")
    p.set_defaults(run=_rm)

    p = sub.add_parser(
        "freeze",
        help="save a sandbox to disk as a Space and print the Space's id",
        description=(
            "Freeze a sandbox: its memory, processes and files are saved to a Space "
            "and its VM stops. `vesicle resume SPACE_ID` brings it back."
        ),
    )
    p.add_argument("id", metavar="ID")
    p.set_defaults(run=_freeze)

    p = sub.add_parser(
        "resume",
        help="bring a Space back as a new sandbox and print its id",
        description="Resume a Space as a new sandbox (a new id). The Space is used up.",
    )
    p.add_argument("space_id", metavar="SPACE_ID")
    p.add_argument(
        "--persistent", action="store_true", help="freeze the new sandbox again when idle"
    )
    p.set_defaults(run=_resume)

    p = sub.add_parser("spaces", help="list your Spaces (frozen sandboxes)")
    p.add_argument("--json", action="store_true", help="print hostd's objects as JSON")
    p.set_defaults(run=_spaces)

    p = sub.add_parser("rm-space", help="delete Spaces and their files")
    p.add_argument("space_ids", nargs="+", metavar="SPACE_ID")
    p.set_defaults(run=_rm_space)

    p = sub.add_parser("health", help="check that hostd answers (no API key needed)")
    p.set_defaults(run=_health)

    p = sub.add_parser(
        "mcp",
        help="serve the sandbox tools over the Model Context Protocol (stdio)",
        description=(
            "Run an MCP server on stdin/stdout for an MCP client (a desktop assistant, an "
            "agent framework) to start: tools to create sandboxes, run Python and bash, move "
            "files, fork, freeze and resume, against the hostd of $VESICLE_URL with "
            "$VESICLE_API_KEY."
        ),
    )
    p.set_defaults(run=_mcp)
    return parser


def _error(message: str) -> None:
    print(f"vesicle: {message}", file=sys.stderr, flush=True)


def _create(args) -> int:
    sb = Sandbox(
        template=args.template,
        egress=False if args.no_egress else None,
        egress_allow=args.egress_allow,
        persistent=True if args.persistent else None,
        idle_timeout_s=args.idle_timeout_s,
        max_lifetime_s=args.max_lifetime_s,
        vcpus=args.vcpus,
        memory_mib=args.memory_mib,
        disk_mib=args.disk_mib,
        region=args.region,
        url=args.url,
    )
    print(sb.id, flush=True)
    return 0


def _exec(args) -> int:
    env = {}
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise VesicleError(f"--env takes KEY=VALUE, not {item!r}")
        env[key] = value
    code = sys.stdin.read() if args.code == "-" else args.code
    out, err = sys.stdout.buffer, sys.stderr.buffer

    def on_bytes(stream: str, data: bytes) -> None:
        # Exact bytes, flushed at once: binary output survives and a
        # progress line shows up while the code is still running.
        target = out if stream == "stdout" else err
        target.write(data)
        target.flush()

    sys.stdout.flush()
    sb = _attach(args, args.id)
    ex = sb._exec(
        code,
        language="bash" if args.bash else "python",
        timeout=args.timeout,
        env=env or None,
        cwd=args.cwd,
        on_bytes=on_bytes,
        on_result=_DisplayPrinter(out, args.save_images),
    )
    if ex.result is not None:
        text = ex.result if ex.result.endswith("\n") else ex.result + "\n"
        out.write(text.encode("utf-8", errors="replace"))
        out.flush()
    if ex.error is not None:
        tb = ex.error.traceback or str(ex.error)
        err.write((tb if tb.endswith("\n") else tb + "\n").encode("utf-8", errors="replace"))
        err.flush()
    if ex.truncated:
        _error("output was truncated by hostd (over its cap)")
    if ex.repl_restarted:
        _error("the Python REPL was restarted: variables and imports are gone")
    if ex.timed_out:
        _error(f"timed out after {args.timeout:g} s")
        return EXIT_TIMEOUT
    if ex.error is not None:
        return ex.exit_code or 1
    if ex.exit_code == 0 and ex.signal:
        return 128 + ex.signal  # the shell's convention for a killed process
    return ex.exit_code or 0


# File name extensions of the display formats --save-images writes.
_EXTENSIONS = {
    "image/png": ".png",
    "image/jpeg": ".jpg",
    "image/gif": ".gif",
    "image/webp": ".webp",
    "image/svg+xml": ".svg",
    "application/pdf": ".pdf",
}


class _DisplayPrinter:
    """Shows a cell's display outputs on a terminal as they arrive.

    Images (and PDFs) are written to `save_dir` as output-N.EXT, or noted as
    "[image/png N bytes]"; the text of any other output is printed. The main
    result's text is the cell's result, printed at the end anyway.
    """

    def __init__(self, out, save_dir: Optional[str]):
        self._out = out
        self._save_dir = save_dir
        self._count = 0

    def __call__(self, result) -> None:
        self._count += 1
        lines = []
        for mime, data in result.data.items():
            if mime not in _EXTENSIONS:
                continue
            raw = data.encode("utf-8") if isinstance(data, str) else data
            if self._save_dir is None:
                lines.append(f"[{mime} {len(raw)} bytes]")
                continue
            os.makedirs(self._save_dir, exist_ok=True)
            path = os.path.join(self._save_dir, f"output-{self._count}{_EXTENSIONS[mime]}")
            with open(path, "wb") as f:
                f.write(raw)
            lines.append(f"[{mime} {len(raw)} bytes: {path}]")
        if not lines and not result.is_main_result:
            text = result.text
            lines.append(text if text is not None else "[" + ", ".join(result.data) + "]")
        if lines:
            self._out.write(("\n".join(lines) + "\n").encode("utf-8", errors="replace"))
            self._out.flush()


def _upload(args) -> int:
    mode = None
    if args.mode is not None:
        try:
            mode = int(args.mode, 8)
        except ValueError:
            raise VesicleError(f"--mode takes octal permission bits like 644, not {args.mode!r}")
    sb = _attach(args, args.id)
    if args.local == "-":
        answer = sb.upload(sys.stdin.buffer, args.remote, mode=mode)
    else:
        with open(args.local, "rb") as f:
            answer = sb.upload(f, args.remote, mode=mode)
    size = answer.get("size")
    size_text = f"{int(size)} bytes" if isinstance(size, (int, float)) else "done"
    print(f"{answer.get('path', args.remote)}: {size_text}", flush=True)
    return 0


def _download(args) -> int:
    sb = _attach(args, args.id)
    if args.local == "-":
        sb.download_to(args.remote, sys.stdout.buffer)
        sys.stdout.buffer.flush()
        return 0
    local = args.local
    if os.path.isdir(local):
        local = os.path.join(local, args.remote.rstrip("/").rsplit("/", 1)[-1])
    # Into a temporary file beside LOCAL, renamed at the end, so a failed
    # download never leaves a truncated LOCAL behind.
    directory = os.path.dirname(os.path.abspath(local))
    fd, tmp = tempfile.mkstemp(prefix=".vesicle-download-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            sb.download_to(args.remote, f)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, local)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return 0


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _ls(args) -> int:
    client = Client(url=args.url)
    sandboxes = client.sandboxes()
    if args.json:
        print(json.dumps([sb.info for sb in sandboxes], indent=2))
        return 0
    rows: List[List[str]] = [["ID", "STATE", "VCPUS", "MEMORY", "EGRESS", "CREATED"]]
    for sb in sandboxes:
        info = sb.info
        egress = info.get("egress")
        if info.get("egress_allow"):
            egress_text = ",".join(info["egress_allow"])
        else:
            egress_text = "on" if egress else "off" if egress is not None else "-"
        memory = info.get("memory_mib")
        rows.append(
            [
                sb.id,
                str(info.get("state", "-")),
                str(info.get("vcpus", "-")),
                f"{memory} MiB" if memory is not None else "-",
                egress_text,
                str(info.get("created_at", "-")),
            ]
        )
    _print_table(rows)
    return 0


def _rm(args) -> int:
    client = Client(url=args.url)
    status = 0
    for sandbox_id in args.ids:
        try:
            # Straight to DELETE: an unknown id must be reported here, where
            # Sandbox.close() would take it as already closed.
            client._transport.json(
                "DELETE", _sandbox_path(sandbox_id), what=f"destroying {sandbox_id}"
            )
        except VesicleError as exc:
            _error(f"{sandbox_id}: {exc}")
            status = 1
            continue
        print(sandbox_id, flush=True)
    return status


def _freeze(args) -> int:
    sb = _attach(args, args.id)
    print(sb.freeze(), flush=True)
    return 0


def _resume(args) -> int:
    sb = Client(url=args.url).resume(args.space_id, persistent=args.persistent)
    print(sb.id, flush=True)
    return 0


def _spaces(args) -> int:
    spaces = Client(url=args.url).spaces()
    if args.json:
        print(json.dumps([space.raw for space in spaces], indent=2))
        return 0
    rows: List[List[str]] = [["SPACE", "SANDBOX", "REASON", "SIZE", "MEMORY", "FROZEN"]]
    for space in spaces:
        rows.append(
            [
                space.space_id,
                space.sandbox_id or "-",
                space.reason or "-",
                _size_text(space.size_bytes),
                f"{space.memory_mib} MiB" if space.memory_mib else "-",
                space.frozen_at or "-",
            ]
        )
    _print_table(rows)
    return 0


def _rm_space(args) -> int:
    client = Client(url=args.url)
    status = 0
    for space_id in args.space_ids:
        try:
            client.delete_space(space_id)
        except VesicleError as exc:
            _error(f"{space_id}: {exc}")
            status = 1
            continue
        print(space_id, flush=True)
    return status


def _size_text(size: int) -> str:
    if size >= 1024 * 1024 * 1024:
        return f"{size / (1024 * 1024 * 1024):.1f} GiB"
    if size >= 1024 * 1024:
        return f"{size / (1024 * 1024):.0f} MiB"
    if size >= 1024:
        return f"{size / 1024:.0f} KiB"
    return f"{size} B"


def _print_table(rows: List[List[str]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


def _mcp(args) -> int:
    from . import mcp

    return mcp.main(args.url)


def _health(args) -> int:
    print(json.dumps(Client(url=args.url).health()))
    return 0


def _attach(args, sandbox_id: str) -> Sandbox:
    # One GET would only confirm what the call itself will report (404), so
    # attach by id without a round trip.
    client = Client(url=args.url)
    client._transport.config.require_key()
    return Sandbox._from_info(client._transport, {"id": sandbox_id})


if __name__ == "__main__":
    sys.exit(main())
