"""`vesicle` commands that work inside a sandbox: exec (also as an admin, on any
key's sandbox), upload, download."""

from __future__ import annotations

import base64
import os
import sys
import tempfile
from typing import Any, Dict, Optional

from ._cli_output import emit, note
from ._cli_sandboxes import attach
from .errors import InvalidRequestError
from .execution import Execution

EXIT_TIMEOUT = 124  # as timeout(1) does


def register(sub, common) -> None:
    p = sub.add_parser(
        "exec",
        parents=[common],
        help="run code in a sandbox, streaming its output",
        description=(
            "Run Python (default) or bash in a sandbox. Exits with the code's exit "
            "status: bash's, 1 after a Python exception, 124 on timeout. With --json "
            "the output is collected and printed at the end as one object."
        ),
    )
    add_exec_arguments(p)
    p.set_defaults(run=_exec)

    p = sub.add_parser("upload", parents=[common], help="copy a local file into a sandbox")
    p.add_argument("id", metavar="ID")
    p.add_argument("local", metavar="LOCAL", help="local file; - reads stdin")
    p.add_argument("remote", metavar="REMOTE", help="absolute path in the sandbox")
    p.add_argument("--mode", metavar="OCTAL", help="permission bits, e.g. 755")
    p.set_defaults(run=_upload)

    p = sub.add_parser("download", parents=[common], help="copy a file out of a sandbox")
    p.add_argument("id", metavar="ID")
    p.add_argument("remote", metavar="REMOTE", help="absolute path in the sandbox")
    p.add_argument("local", metavar="LOCAL", help="local file; - writes stdout (not with --json)")
    p.set_defaults(run=_download)


def add_exec_arguments(p) -> None:
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


def _exec(args) -> int:
    return run_exec(args, attach(args, args.id))


def run_exec(args, sb, path: Optional[str] = None) -> int:
    """Runs args.code in `sb` (through `path` if given) and reports as `vesicle exec` does."""
    env = {}
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidRequestError(f"--env takes KEY=VALUE, not {item!r}")
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
    printer = _DisplayPrinter(out, args.save_images)
    ex = sb._exec(
        code,
        language="bash" if args.bash else "python",
        timeout=args.timeout,
        env=env or None,
        cwd=args.cwd,
        on_bytes=None if args.json else on_bytes,
        on_result=printer.save if args.json else printer,
        path=path,
    )
    if args.json:
        emit(args, _execution_doc(ex, printer.saved))
    else:
        _print_ending(ex, out, err, args.timeout)
    if ex.timed_out:
        return EXIT_TIMEOUT
    if ex.error is not None:
        return ex.exit_code or 1
    if ex.exit_code == 0 and ex.signal:
        return 128 + ex.signal  # the shell's convention for a killed process
    return ex.exit_code or 0


def _print_ending(ex: Execution, out, err, timeout: Optional[float]) -> None:
    if ex.result is not None:
        text = ex.result if ex.result.endswith("\n") else ex.result + "\n"
        out.write(text.encode("utf-8", errors="replace"))
        out.flush()
    if ex.error is not None:
        tb = ex.error.traceback or str(ex.error)
        err.write((tb if tb.endswith("\n") else tb + "\n").encode("utf-8", errors="replace"))
        err.flush()
    if ex.truncated:
        note("output was truncated by hostd (over its cap)")
    if ex.repl_restarted:
        note("the Python REPL was restarted: variables and imports are gone")
    if ex.timed_out:
        note(f"timed out after {timeout:g} s")


def _execution_doc(ex: Execution, saved: Dict[int, Dict[str, str]]) -> Dict[str, Any]:
    """An execution as JSON: the SDK's Execution, bytes as base64."""
    results = []
    for index, result in enumerate(ex.results, start=1):
        data = {}
        for mime, value in result.data.items():
            data[mime] = (
                {"base64": base64.b64encode(value).decode("ascii")}
                if isinstance(value, (bytes, bytearray))
                else value
            )
        doc = {"data": data, "is_main_result": result.is_main_result}
        if index in saved:
            doc["saved"] = saved[index]
        results.append(doc)
    return {
        "stdout": ex.stdout,
        "stderr": ex.stderr,
        "result": ex.result,
        "results": results,
        "error": None
        if ex.error is None
        else {"name": ex.error.name, "value": ex.error.value, "traceback": ex.error.traceback},
        "exit_code": ex.exit_code,
        "signal": ex.signal,
        "timed_out": ex.timed_out,
        "truncated": ex.truncated,
        "repl_restarted": ex.repl_restarted,
        "duration_ms": ex.duration_ms,
    }


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
    result's text is the cell's result, printed at the end anyway. save()
    only writes the files (for --json), remembering where: `saved`.
    """

    def __init__(self, out, save_dir: Optional[str]):
        self._out = out
        self._save_dir = save_dir
        self._count = 0
        self.saved: Dict[int, Dict[str, str]] = {}

    def save(self, result) -> list:
        """Writes the result's images (with a save dir); returns the lines to show."""
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
            self.saved.setdefault(self._count, {})[mime] = path
            lines.append(f"[{mime} {len(raw)} bytes: {path}]")
        return lines

    def __call__(self, result) -> None:
        lines = self.save(result)
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
            raise InvalidRequestError(
                f"--mode takes octal permission bits like 644, not {args.mode!r}"
            ) from None
    sb = attach(args, args.id)
    if args.local == "-":
        answer = sb.upload(sys.stdin.buffer, args.remote, mode=mode)
    else:
        with open(args.local, "rb") as f:
            answer = sb.upload(f, args.remote, mode=mode)
    size = answer.get("size")
    size_text = f"{int(size)} bytes" if isinstance(size, (int, float)) else "done"
    emit(args, answer, lambda: print(f"{answer.get('path', args.remote)}: {size_text}", flush=True))
    return 0


def _download(args) -> int:
    if args.local == "-" and args.json:
        raise InvalidRequestError("download to - writes the file to stdout: drop --json or name a LOCAL file")
    sb = attach(args, args.id)
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
            size = sb.download_to(args.remote, f)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, local)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    if args.json:
        emit(args, {"remote": args.remote, "path": os.path.abspath(local), "size": size})
    return 0


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
