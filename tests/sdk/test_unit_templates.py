"""The SDK's template pieces without a hostd: recipe hashing (what makes
`vesicle template build` idempotent), upload specs, request bodies, parsing."""

from __future__ import annotations

import pytest

from vesicle import Template
from vesicle.errors import InvalidRequestError, ProtocolError
from vesicle.template import make_recipe, parse_upload, save_body, templates_from_list


def test_recipe_hash_changes_with_every_part(tmp_path):
    f = tmp_path / "req.txt"
    f.write_text("numpy\n")
    base = make_recipe("base", ["pip install -r /r.txt"], [f"{f}:/r.txt"]).digest()
    assert base.startswith("sha256:")
    assert make_recipe("base", ["pip install -r /r.txt"], [f"{f}:/r.txt"]).digest() == base
    assert make_recipe("other", ["pip install -r /r.txt"], [f"{f}:/r.txt"]).digest() != base
    assert make_recipe("base", ["pip install -r /r.txt", "true"], [f"{f}:/r.txt"]).digest() != base
    assert make_recipe("base", ["pip install -r /r.txt"], [f"{f}:/other.txt"]).digest() != base
    f.write_text("pandas\n")  # same path, new content
    assert make_recipe("base", ["pip install -r /r.txt"], [f"{f}:/r.txt"]).digest() != base


def test_upload_specs(tmp_path):
    f = tmp_path / "a:b.txt"  # a colon in the local name: the last one splits
    f.write_text("x")
    assert parse_upload(f"{f}:/root/a.txt") == (str(f), "/root/a.txt")
    for bad in ("nocolon", f"{f}:relative", f"{tmp_path}/missing:/x"):
        with pytest.raises(InvalidRequestError):
            parse_upload(bad)


def test_save_body():
    assert save_body("sb-1", "t") == {"from_sandbox": "sb-1", "name": "t"}
    assert save_body("sb-1", "t", True, "sha256:1", 0) == {
        "from_sandbox": "sb-1", "name": "t", "global": True, "recipe_hash": "sha256:1", "pool_size": 0}
    for bad in (-1, True, 1.5):
        with pytest.raises(InvalidRequestError):
            save_body("sb-1", "t", pool_size=bad)
    with pytest.raises(InvalidRequestError):
        save_body("sb-1", "")


def test_parsing():
    doc = {"templates": [{"name": "t", "template_id": "tp-1", "global": True, "own": False,
                          "memory_bytes": 1.0e8, "disk_bytes": "42", "pool_size": 1}]}
    [t] = templates_from_list(doc)
    assert isinstance(t, Template)
    assert (t.name, t.global_, t.own, t.memory_bytes, t.disk_bytes, t.pool_size) == ("t", True, False, 100000000, 42, 1)
    with pytest.raises(ProtocolError):
        templates_from_list({"templates": [{"template_id": "tp-1"}]})
    with pytest.raises(ProtocolError):
        templates_from_list([1])


def test_cli_build_arguments():
    """`--run` is repeatable and does not shadow the subcommand's handler."""
    from vesicle import _cli_templates, cli

    args = cli._parser().parse_args(
        ["template", "build", "ml", "--run", "pip install x", "--run", "true", "--pool-size", "0"]
    )
    assert args.commands == ["pip install x", "true"]
    assert args.run is _cli_templates._build
    assert (args.name, args.base, args.pool_size) == ("ml", "base", 0)
