"""`vesicle` commands for sandboxes and Spaces: create, get, ls, rm, fork, merge,
freeze, resume, spaces, space, rm-space."""

from __future__ import annotations

import os
from typing import Dict, List, Optional

from ._cli_output import egress_text, emit, print_table, report_error, size_text
from .client import Client
from .errors import InvalidRequestError, VesicleError
from .sandbox import Sandbox, _sandbox_path


def register(sub, common) -> None:
    p = sub.add_parser("create", parents=[common], help="create a sandbox and print its id")
    p.add_argument("--template", help="image template (default: hostd's; `vesicle templates` lists them)")
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
    _add_secret_argument(p)
    p.add_argument("--persistent", action="store_true", help="freeze to a Space when idle")
    p.add_argument("--idle-timeout-s", type=int, metavar="S", help="end (or freeze) it after S idle seconds")
    p.add_argument("--max-lifetime-s", type=int, metavar="S", help="end (or freeze) it S seconds after its create")
    p.add_argument("--region")
    p.set_defaults(run=_create)

    p = sub.add_parser("get", parents=[common], help="show one sandbox (state, size, timeouts, lineage)")
    p.add_argument("id", metavar="ID")
    p.set_defaults(run=_get)

    p = sub.add_parser("ls", parents=[common], help="list your sandboxes")
    p.set_defaults(run=_ls)

    p = sub.add_parser("rm", parents=[common], help="destroy sandboxes")
    p.add_argument("ids", nargs="+", metavar="ID")
    p.set_defaults(run=_rm)

    p = sub.add_parser(
        "fork",
        parents=[common],
        help="branch a sandbox N ways and print the children's ids",
        description=(
            "Fork a sandbox: N (1-32) new sandboxes, each starting from its state at "
            "this moment (memory, processes, files). All or none; the parent runs on."
        ),
    )
    p.add_argument("id", metavar="ID")
    p.add_argument("-n", type=int, default=1, metavar="N", help="how many children (default 1)")
    p.set_defaults(run=_fork)

    p = sub.add_parser(
        "merge",
        parents=[common],
        help="make a sandbox continue as one of its forked descendants",
        description=(
            "Merge WINNER into ID: ID now runs WINNER's world (memory, processes, files), "
            "WINNER's id is gone, ID's old world is destroyed. Other children are untouched."
        ),
    )
    p.add_argument("id", metavar="ID")
    p.add_argument("winner", metavar="WINNER")
    p.set_defaults(run=_merge)

    p = sub.add_parser(
        "freeze",
        parents=[common],
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
        parents=[common],
        help="bring a Space back as a new sandbox and print its id",
        description="Resume a Space as a new sandbox (a new id). The Space is used up.",
    )
    p.add_argument("space_id", metavar="SPACE_ID")
    p.add_argument(
        "--persistent", action="store_true", help="freeze the new sandbox again when idle"
    )
    _add_secret_argument(p)
    p.set_defaults(run=_resume)

    p = sub.add_parser("spaces", parents=[common], help="list your Spaces (frozen sandboxes)")
    p.set_defaults(run=_spaces)

    p = sub.add_parser("space", parents=[common], help="show one Space")
    p.add_argument("space_id", metavar="SPACE_ID")
    p.set_defaults(run=_space)

    p = sub.add_parser("rm-space", parents=[common], help="delete Spaces and their files")
    p.add_argument("space_ids", nargs="+", metavar="SPACE_ID")
    p.set_defaults(run=_rm_space)


def _add_secret_argument(p) -> None:
    p.add_argument(
        "--secret",
        action="append",
        metavar="HOST:HEADER=ENV",
        help="have hostd set HEADER on requests to HOST (also in --egress-allow) to the value "
        "of the environment variable ENV; the sandbox never sees it (repeatable)",
    )


def _secrets(args) -> Optional[Dict[str, Dict[str, str]]]:
    """--secret HOST:HEADER=ENV as the SDK's secrets. The value comes from the
    environment, never the command line (which other users can read in ps)."""
    if not args.secret:
        return None
    secrets: Dict[str, Dict[str, str]] = {}
    for spec in args.secret:
        host, colon, rest = spec.partition(":")
        header, equals, env = rest.partition("=")
        if not (host and colon and header and equals and env):
            raise InvalidRequestError(
                f"--secret {spec!r}: write HOST:HEADER=ENV, e.g. "
                "api.example.com:Authorization=API_TOKEN (ENV names an environment variable)"
            )
        if env not in os.environ:
            raise InvalidRequestError(
                f"--secret {spec!r}: the environment variable {env} is not set; "
                f"export {env}=... first"
            )
        secrets.setdefault(host, {})[header] = os.environ[env]
    return secrets


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
        secrets=_secrets(args),
        url=args.url,
    )
    emit(args, sb.info, lambda: print(sb.id, flush=True))
    return 0


def _get(args) -> int:
    info = Client(url=args.url)._transport.json(
        "GET", _sandbox_path(args.id), what=f"looking up {args.id}"
    )
    emit(args, info, lambda: _print_fields(info))
    return 0


def _print_fields(info: dict) -> None:
    rows = []
    for key in sorted(info):
        value = info[key]
        if value in ("", None, []):
            continue
        rows.append([key, ",".join(value) if isinstance(value, list) else str(value)])
    print_table(rows)


def _ls(args) -> int:
    sandboxes = Client(url=args.url).sandboxes()
    emit(args, [sb.info for sb in sandboxes], lambda: _print_sandboxes([sb.info for sb in sandboxes]))
    return 0


def _print_sandboxes(infos: List[dict]) -> None:
    rows: List[List[str]] = [["ID", "STATE", "VCPUS", "MEMORY", "EGRESS", "CREATED"]]
    for info in infos:
        memory = info.get("memory_mib")
        rows.append(
            [
                str(info.get("id", "-")),
                str(info.get("state", "-")),
                str(info.get("vcpus", "-")),
                f"{memory} MiB" if memory is not None else "-",
                egress_text(info),
                str(info.get("created_at", "-")),
            ]
        )
    print_table(rows)


def for_each_id(args, ids: List[str], act) -> int:
    """Runs act(id) for every id, going on past failures; prints what was done."""
    client = Client(url=args.url)
    done, status = [], 0
    for item in ids:
        try:
            act(client, item)
        except VesicleError as exc:
            report_error(args, exc, subject=item)
            status = 1
            continue
        done.append(item)
        if not args.json:
            print(item, flush=True)
    if args.json:
        emit(args, {"deleted": done})
    return status


def delete_each(args, path_of, doing: str) -> int:
    """DELETE path_of(id) for every id in args.ids (see for_each_id)."""
    return for_each_id(
        args,
        args.ids,
        lambda client, item: client._transport.json("DELETE", path_of(item), what=f"{doing} {item}"),
    )


def _rm(args) -> int:
    # Straight to DELETE: an unknown id must be reported here, where
    # Sandbox.close() would take it as already closed.
    return delete_each(args, _sandbox_path, "destroying")


def _fork(args) -> int:
    children = attach(args, args.id).fork(n=args.n)
    emit(
        args,
        {"children": [child.info for child in children]},
        lambda: print("\n".join(child.id for child in children), flush=True),
    )
    return 0


def _merge(args) -> int:
    sb = attach(args, args.id)
    sb.merge_into(args.winner)
    emit(args, sb.info, lambda: print(sb.id, flush=True))
    return 0


def _freeze(args) -> int:
    sb = attach(args, args.id)
    space_id = sb.freeze()
    emit(args, sb.space.raw if sb.space is not None else {"space_id": space_id},
         lambda: print(space_id, flush=True))
    return 0


def _resume(args) -> int:
    sb = Client(url=args.url).resume(
        args.space_id, persistent=args.persistent, secrets=_secrets(args)
    )
    emit(args, sb.info, lambda: print(sb.id, flush=True))
    return 0


def _spaces(args) -> int:
    spaces = Client(url=args.url).spaces()
    emit(args, [space.raw for space in spaces], lambda: _print_spaces(spaces))
    return 0


def _print_spaces(spaces) -> None:
    rows: List[List[str]] = [["SPACE", "SANDBOX", "REASON", "SIZE", "MEMORY", "FROZEN"]]
    for space in spaces:
        rows.append(
            [
                space.space_id,
                space.sandbox_id or "-",
                space.reason or "-",
                size_text(space.size_bytes),
                f"{space.memory_mib} MiB" if space.memory_mib else "-",
                space.frozen_at or "-",
            ]
        )
    print_table(rows)


def _space(args) -> int:
    space = Client(url=args.url).space(args.space_id)
    emit(args, space.raw, lambda: _print_fields(space.raw))
    return 0


def _rm_space(args) -> int:
    return for_each_id(args, args.space_ids, lambda client, space_id: client.delete_space(space_id))


def attach(args, sandbox_id: str) -> Sandbox:
    """A Sandbox object for `sandbox_id`, without a round trip.

    One GET would only confirm what the call itself will report (404).
    """
    client = Client(url=args.url)
    client._transport.config.require_key()
    return Sandbox._from_info(client._transport, {"id": sandbox_id})
