"""`vesicle template ...`: saved templates (a sandbox's state under a name).

    vesicle template build NAME [--from base] --run CMD [--run CMD ...] [--upload LOCAL:REMOTE ...]
    vesicle template save SANDBOX NAME
    vesicle template list
    vesicle template delete NAME [NAME ...]

`build` makes a sandbox from --from (the host's "base" image, or another of
your templates), copies the uploads in, runs each command with bash (any
failure stops the build and deletes the sandbox), then saves it as NAME. It
is idempotent by the recipe's hash (base, commands, each upload's target and
content): when NAME exists with the same recipe it is returned as it is;
with another recipe the build refuses (delete it first, or pass --replace).
"""

from __future__ import annotations

from typing import Any, Dict, Optional

from ._cli_output import emit, note, print_table, size_text
from .client import Client
from .errors import NotFoundError, VesicleError
from .sandbox import Sandbox
from .template import Template, make_recipe

# The host's own image, as --from names it.
BASE = "base"


class _BuildFailed(VesicleError):
    code = "template_build_failed"
    status = None


def register(sub, common) -> None:
    template = sub.add_parser("template", help="saved templates: build, save, list, delete")
    tsub = template.add_subparsers(dest="template_command", metavar="COMMAND")
    tsub.required = True

    p = tsub.add_parser(
        "build",
        parents=[common],
        help="build a template from a recipe: a sandbox, uploads, commands, then save (idempotent)",
    )
    p.add_argument("name", metavar="NAME")
    p.add_argument("--from", dest="base", default=BASE, help="start from this template (default: base)")
    # dest "commands": "run" is the handler every subcommand sets.
    p.add_argument(
        "--run", dest="commands", action="append", default=[], metavar="CMD", help="a bash command (repeatable)"
    )
    p.add_argument(
        "--upload", action="append", default=[], metavar="LOCAL:REMOTE", help="copy a file in first (repeatable)"
    )
    p.add_argument("--pool-size", type=int, default=None, help="VMs kept waiting (default: hostd's; 0: none)")
    p.add_argument("--replace", action="store_true", help="delete NAME first when its recipe differs")
    p.set_defaults(run=_build)

    p = tsub.add_parser("save", parents=[common], help="save a running sandbox as a template")
    p.add_argument("sandbox", metavar="SANDBOX")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--global", dest="global_", action="store_true", help="every key may use it (admin key)")
    p.add_argument("--pool-size", type=int, default=None)
    p.set_defaults(run=_save)

    p = tsub.add_parser("list", aliases=["ls"], parents=[common], help="the templates this key can use")
    p.set_defaults(run=_list)

    p = tsub.add_parser("delete", aliases=["rm"], parents=[common], help="delete templates")
    p.add_argument("names", nargs="+", metavar="NAME")
    p.set_defaults(run=_delete)


def _existing(client: Client, name: str) -> Optional[Template]:
    try:
        return client.template(name)
    except NotFoundError:
        return None


def build(
    client: Client,
    name: str,
    base: str,
    runs,
    uploads,
    pool_size: Optional[int] = None,
    replace: bool = False,
    log=note,
) -> Dict[str, Any]:
    """Builds (or finds) the template; returns {"template": ..., "built": bool}."""
    recipe = make_recipe(base, runs, uploads)
    digest = recipe.digest()
    found = _existing(client, name)
    if found is not None:
        if found.recipe_hash == digest:
            return {"template": found.raw, "built": False}
        if not replace:
            raise _BuildFailed(
                f"template {name!r} exists with another recipe ({found.recipe_hash or 'saved by hand'}); "
                "delete it (vesicle template delete) or pass --replace"
            )
        client.delete_template(name)
    config = client._transport.config
    sandbox = Sandbox(
        template=None if base == BASE else base, url=config.url, api_key=config.api_key, timeout=config.timeout
    )
    try:
        for local, remote in recipe.uploads:
            with open(local, "rb") as f:
                sandbox.upload(f, remote)
            log(f"uploaded {local} -> {remote}")
        for command in recipe.runs:
            log(f"$ {command}")
            result = sandbox.run_code(command, language="bash")
            if result.exit_code != 0:
                tail = (result.stderr or result.stdout or "")[-2000:]
                raise _BuildFailed(f"{command!r} exited with {result.exit_code}: {tail.strip()}")
        saved = sandbox.save_template(name, pool_size=pool_size, recipe_hash=digest)
    finally:
        sandbox.close()
    return {"template": saved.raw, "built": True}


def _build(args) -> int:
    out = build(
        Client(url=args.url), args.name, args.base, args.commands, args.upload, args.pool_size, args.replace
    )

    def text() -> None:
        print(("built " if out["built"] else "unchanged ") + out["template"].get("name", args.name))

    emit(args, out, text)
    return 0


def _save(args) -> int:
    sandbox = Client(url=args.url).connect(args.sandbox)
    saved = sandbox.save_template(args.name, global_=args.global_, pool_size=args.pool_size)
    emit(args, saved.raw, lambda: print(saved.name))
    return 0


def _list(args) -> int:
    client = Client(url=args.url)
    doc = client._transport.json("GET", "/v1/templates", what="listing templates")

    def text() -> None:
        rows = [["NAME", "OWNER", "SIZE", "MEMORY", "DISK", "POOL", "CREATED"]]
        for t in doc.get("templates", []):
            rows.append(
                [
                    t.get("name", ""),
                    "global" if t.get("global") else ("yours" if t.get("own") else "-"),
                    f"{t.get('vcpus', 0)} vCPU/{t.get('memory_mib', 0)} MiB",
                    size_text(t.get("memory_bytes", 0)),
                    size_text(t.get("disk_bytes", 0)),
                    str(t.get("pool_size", 0)),
                    t.get("created_at", ""),
                ]
            )
        print_table(rows)

    emit(args, doc, text)
    return 0


def _delete(args) -> int:
    client = Client(url=args.url)
    for name in args.names:
        client.delete_template(name)
    emit(args, {"deleted": args.names}, lambda: None)
    return 0
