"""`vesicle` commands about the host: health, capacity, templates, metrics, and
the admin commands (an admin key: every key's sandboxes)."""

from __future__ import annotations

import re
import urllib.parse
from typing import Any, Dict, List

from ._cli_code import add_exec_arguments, run_exec
from ._cli_output import emit, print_table
from ._cli_sandboxes import attach, delete_each
from .client import Client
from .errors import ProtocolError

ADMIN_PATH = "/v1/admin/sandboxes"


def register(sub, common) -> None:
    p = sub.add_parser("health", parents=[common], help="check that hostd answers (no API key needed)")
    p.set_defaults(run=_health)

    p = sub.add_parser("capacity", parents=[common], help="the host's room: sandboxes running, booting, free")
    p.set_defaults(run=_capacity)

    p = sub.add_parser(
        "templates",
        parents=[common],
        help="the templates this host creates sandboxes from, with their warm pools",
    )
    p.set_defaults(run=_templates)

    p = sub.add_parser("metrics", parents=[common], help="hostd's Prometheus metrics (needs an admin key)")
    p.set_defaults(run=_metrics)

    p = sub.add_parser(
        "nodes",
        parents=[common],
        help="a cluster gateway's nodes with region, state and room (needs an admin key)",
    )
    p.set_defaults(run=_nodes)

    p = sub.add_parser(
        "mcp",
        parents=[common],
        help="serve the sandbox tools over the Model Context Protocol (stdio)",
        description=(
            "Run an MCP server on stdin/stdout for an MCP client (a desktop assistant, an "
            "agent framework) to start: tools to create sandboxes, run Python and bash, move "
            "files, fork, freeze and resume, against the hostd of $VESICLE_URL with "
            "$VESICLE_API_KEY."
        ),
    )
    p.set_defaults(run=_mcp)

    admin = sub.add_parser(
        "admin",
        help="an operator's view of every key's sandboxes (needs an admin key: hostd --new-key --admin)",
    )
    admin_sub = admin.add_subparsers(dest="admin_command", metavar="COMMAND")
    admin_sub.required = True
    p = admin_sub.add_parser("ls", parents=[common], help="every key's sandboxes with owner, memory, CPU")
    p.set_defaults(run=_admin_ls)
    p = admin_sub.add_parser("rm", parents=[common], help="destroy any key's sandboxes")
    p.add_argument("ids", nargs="+", metavar="ID")
    p.set_defaults(run=_admin_rm)
    p = admin_sub.add_parser("exec", parents=[common], help="run code in any key's sandbox")
    add_exec_arguments(p)
    p.set_defaults(run=_admin_exec)


def _mcp(args) -> int:
    from . import mcp

    return mcp.main(args.url)


def _health(args) -> int:
    emit(args, Client(url=args.url).health())
    return 0


def _capacity(args) -> int:
    cap = Client(url=args.url).capacity()

    def text() -> None:
        print(
            f"{cap.get('running', 0)} running, {cap.get('booting', 0)} booting, "
            f"{cap.get('available', 0)} of {cap.get('max_sandboxes', 0)} free ({cap.get('accel', '-')})"
        )
        if cap.get("pools"):
            _print_pools(cap["pools"])

    emit(args, cap, text)
    return 0


# hostd's base image: always a template (an empty or "default" template in a
# create), with or without a warm pool of its own.
DEFAULT_TEMPLATE = "default"


def _templates(args) -> int:
    # The templates a create accepts are "default" and those of hostd's
    # configured pools, which /v1/capacity lists (one pool per template size).
    pools = Client(url=args.url).capacity().get("pools", [])
    names = [DEFAULT_TEMPLATE] + sorted({p.get("template", "") for p in pools} - {DEFAULT_TEMPLATE, ""})
    templates = [
        {"name": name, "pools": [p for p in pools if (p.get("template") or DEFAULT_TEMPLATE) == name]}
        for name in names
    ]

    def text() -> None:
        for template in templates:
            sizes = ", ".join(
                f"{p.get('vcpus')} vCPU/{p.get('memory_mib')} MiB ({p.get('ready', 0)} ready)"
                for p in template["pools"]
            )
            print(f"{template['name']}  {sizes or 'no warm pool: restored or booted on demand'}")

    emit(args, {"templates": templates}, text)
    return 0


def _print_pools(pools: List[Dict[str, Any]]) -> None:
    rows = [["TEMPLATE", "SIZE", "STATE", "READY", "RESTORING", "IN USE", "MIN READY", "MAX"]]
    for pool in pools:
        rows.append(
            [
                str(pool.get("template", "-")),
                f"{pool.get('vcpus', '-')} vCPU, {pool.get('memory_mib', '-')} MiB",
                str(pool.get("template_state", "-")),
                *(str(pool.get(k, 0)) for k in ("ready", "booting", "in_use", "min_ready", "max")),
            ]
        )
    print_table(rows)


# One sample line of the Prometheus text format: name{labels} value.
_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str) -> List[Dict[str, Any]]:
    """Prometheus text as [{name, labels, value}] (comments dropped)."""
    samples = []
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        if not match:
            raise ProtocolError(f"hostd's /metrics has a line that is not a sample: {line!r}")
        name, labels, value = match.groups()
        samples.append(
            {"name": name, "labels": dict(_LABEL.findall(labels or "")), "value": float(value)}
        )
    return samples


def _metrics(args) -> int:
    transport = Client(url=args.url)._transport
    transport.config.require_key()
    with transport.stream("GET", "/metrics", what="reading metrics") as resp:
        text = resp.read_all().decode("utf-8", errors="replace")
    emit(args, {"samples": parse_metrics(text)}, lambda: print(text, end="", flush=True))
    return 0


NODES_PATH = "/v1/admin/nodes"


def _nodes(args) -> int:
    doc = Client(url=args.url)._transport.json("GET", NODES_PATH, what="listing the cluster's nodes")
    items = doc.get("nodes", []) if isinstance(doc, dict) else None
    if not isinstance(items, list):
        raise ProtocolError(f"the gateway answered the node list with {doc!r}")

    def text() -> None:
        rows = [["NODE", "REGION", "STATE", "FREE", "WARM", "MEMORY FREE", "LAST REPORT", "URL"]]
        for node in items:
            state = str(node.get("state", "-"))
            if state == "down" and node.get("down_reason"):
                state += f" ({node['down_reason']})"
            rows.append(
                [
                    str(node.get("name", "-")),
                    str(node.get("region", "-")),
                    state,
                    f"{node.get('available', 0)}/{node.get('max_sandboxes', 0)}",
                    str(node.get("pool_ready", 0)),
                    f"{int(node.get('memory_free_mib', 0))} MiB",
                    f"{node.get('last_report_ms_ago', 0) / 1000:.1f} s ago",
                    str(node.get("url", "-")),
                ]
            )
        print_table(rows)

    emit(args, doc, text)
    return 0


def _admin_ls(args) -> int:
    doc = Client(url=args.url)._transport.json("GET", ADMIN_PATH, what="listing every sandbox")
    items = doc.get("sandboxes", []) if isinstance(doc, dict) else None
    if not isinstance(items, list):
        raise ProtocolError(f"hostd answered the admin list with {doc!r}")

    def text() -> None:
        rows = [["ID", "OWNER", "STATE", "TEMPLATE", "EGRESS", "MEMORY", "CPU", "CREATED"]]
        for item in items:
            sb = item.get("sandbox", {})
            rss = f"{item.get('rss_bytes', 0) / 2**20:.0f}" if item.get("has_vm") else "-"
            rows.append(
                [
                    str(sb.get("id", "-")),
                    str(item.get("owner_key_id", "-")),
                    str(sb.get("state", "-")),
                    str(sb.get("template") or "default"),
                    str(sb.get("egress_mode", "-")),
                    f"{rss}/{sb.get('memory_mib', '-')} MiB",
                    f"{item.get('cpu_seconds', 0):.1f} s" if item.get("has_vm") else "-",
                    str(sb.get("created_at", "-")),
                ]
            )
        print_table(rows)

    emit(args, doc, text)
    return 0


def _admin_path(sandbox_id: str) -> str:
    return ADMIN_PATH + "/" + urllib.parse.quote(sandbox_id, safe="")


def _admin_rm(args) -> int:
    return delete_each(args, _admin_path, "destroying (as an admin)")


def _admin_exec(args) -> int:
    return run_exec(args, attach(args, args.id), path=_admin_path(args.id) + "/exec")
