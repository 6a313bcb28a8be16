"""Unit tests of the SDK's cluster features against scripted servers on 127.0.0.1:
several gateways in VESICLE_URL with fail-over, region= and host= on create,
and NodeUnavailableError (docs/cluster.md)."""

import socket

import pytest

from vesicle import Sandbox, errors
from vesicle._config import resolve
from vesicle._http import Transport

from fakehostd import SANDBOX

KEY = "vsk_unit"


def _refused_url() -> str:
    # A port nothing listens on: bind, note it, close.
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}"


def test_several_urls_are_parsed_in_order():
    config = resolve(url="http://a:1, http://b:2/", api_key=KEY)
    assert config.urls == ("http://a:1", "http://b:2")
    assert config.url == "http://a:1"


def test_a_refused_gateway_fails_over_to_the_next(fake):
    fake.route("GET", "/v1/healthz", lambda r: r.reply_json(200, {"status": "ok"}))
    transport = Transport(resolve(url=_refused_url() + "," + fake.url, api_key=KEY))
    assert transport.json("GET", "/v1/healthz", auth=False) == {"status": "ok"}
    assert transport.config.url == fake.url


def test_a_create_fails_over_only_when_nothing_was_sent(fake):
    fake.route("POST", "/v1/sandboxes", lambda r: r.reply_json(201, SANDBOX))
    sb = Sandbox(region="eu", url=_refused_url() + "," + fake.url, api_key=KEY)
    assert sb.id == SANDBOX["id"]
    assert fake.requests[-1].json() == {"region": "eu"}


def test_host_pins_a_node_in_the_query(fake):
    fake.route("POST", "/v1/sandboxes", lambda r: r.reply_json(201, SANDBOX))
    Sandbox(host="n2", url=fake.url, api_key=KEY)
    assert fake.requests[-1].raw_target.endswith("?node=n2")


def test_node_unavailable_is_its_own_error_and_not_failed_over(fake):
    fake.route(
        "GET",
        "/v1/healthz",
        lambda r: r.reply_error(503, "node_unavailable", 'node "n1" (region "eu") is down'),
    )
    transport = Transport(resolve(url=fake.url + "," + _refused_url(), api_key=KEY))
    with pytest.raises(errors.NodeUnavailableError, match="n1"):
        transport.json("GET", "/v1/healthz", auth=False)
    assert transport.config.url == fake.url


def test_vesicle_nodes_lists_region_state_and_room(fake):
    from test_unit_cli import cli

    nodes = {
        "nodes": [
            {"name": "n1", "region": "eu", "state": "up", "url": "http://127.0.0.1:7311",
             "max_sandboxes": 3, "available": 2, "pool_ready": 1, "memory_free_mib": 2048,
             "last_report_ms_ago": 250},
            {"name": "n2", "region": "us", "state": "down", "down_reason": "no heartbeat for 2000 ms",
             "url": "http://127.0.0.1:7312", "last_report_ms_ago": 4000},
        ]
    }
    fake.route("GET", "/v1/admin/nodes", lambda r: r.reply_json(200, nodes))
    p = cli(fake.url, "nodes")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.decode().splitlines()
    assert lines[0].split()[:4] == ["NODE", "REGION", "STATE", "FREE"]
    assert lines[1].split()[:5] == ["n1", "eu", "up", "2/3", "1"]
    assert "down (no heartbeat for 2000 ms)" in lines[2]
    assert fake.requests[-1].headers["authorization"] == "Bearer vsk_unit"
