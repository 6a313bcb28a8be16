"""The `vesicle` command: every operation of hostd's REST API from a shell.

Sandboxes (create, get, ls, rm, fork, merge), code and files (exec, upload,
download), Spaces (freeze, resume, spaces, space, rm-space), the host
(health, capacity, templates, metrics), saved templates (template build,
save, list, delete) and, with an admin key, every key's sandboxes (admin
ls, admin rm, admin exec). The commands live in _cli_sandboxes.py,
_cli_code.py, _cli_host.py and _cli_templates.py; output in _cli_output.py.

Configuration comes from VESICLE_URL and VESICLE_API_KEY (or --url). Every
failure prints `vesicle: <message>` to stderr and exits 1 (2 for a usage
error); `vesicle exec` exits with the code's own exit status. Every command
takes --json: one JSON document on stdout, and a failure as
{"error": {"code", "message", "status"}} on stderr, with the same exit codes.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

from . import _cli_code, _cli_host, _cli_sandboxes, _cli_templates, _config
from ._cli_output import report_error
from ._version import __version__
from .errors import VesicleError

EXIT_USAGE = 2


class _UsageError(Exception):
    """A malformed command line (exit 2), reported like any other failure."""

    code = "usage_error"
    status = None


class _Parser(argparse.ArgumentParser):
    # argparse prints usage errors itself and exits; raising instead lets
    # main() report them as text or, under --json, as JSON.
    def error(self, message: str):
        exc = _UsageError(f"{message} (see {self.prog} --help)")
        exc.usage = self.format_usage()
        raise exc


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except _UsageError as exc:
        # Not parsed, so look for the flag itself.
        as_json = "--json" in argv
        if not as_json:
            sys.stderr.write(exc.usage)
        report_error(argparse.Namespace(json=as_json), exc)
        return EXIT_USAGE
    try:
        return args.run(args)
    except VesicleError as exc:
        report_error(args, exc)
        return 1
    except KeyboardInterrupt:
        report_error(args, _Interrupted("interrupted"))
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
        report_error(args, _LocalFileError(f"{exc.strerror or exc}:{where}"))
        return 1


class _Interrupted(Exception):
    code = "interrupted"
    status = None


class _LocalFileError(Exception):
    code = "local_file_error"
    status = None


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="vesicle",
        description="Sandboxes for AI agents: microVMs with a persistent Python REPL.",
        epilog=(
            f"Environment: {_config.URL_ENV} (default {_config.DEFAULT_URL}), "
            f"{_config.KEY_ENV} (required). Every command takes --json."
        ),
    )
    parser.add_argument("--version", action="version", version=f"vesicle {__version__}")
    url_help = f"hostd's URL (overrides ${_config.URL_ENV})"
    json_help = "print one JSON document (hostd's objects; errors as JSON on stderr)"
    parser.add_argument("--url", help=url_help)
    parser.add_argument("--json", action="store_true", help=json_help)
    # The same after the command's name (`vesicle ls --json`); SUPPRESS keeps
    # a command's parser from resetting what was given before the name.
    common = _Parser(add_help=False)
    common.add_argument("--url", default=argparse.SUPPRESS, help=url_help)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help=json_help)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    _cli_sandboxes.register(sub, common)
    _cli_code.register(sub, common)
    _cli_host.register(sub, common)
    _cli_templates.register(sub, common)
    return parser


if __name__ == "__main__":
    sys.exit(main())
