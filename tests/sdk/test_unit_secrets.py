"""Sandbox(secrets=...) and Sandbox.resume(secrets=...): what the SDK sends
(fakehostd records it) and what it refuses before sending anything."""

import pytest

from vesicle import Sandbox, errors

from fakehostd import SANDBOX

KEY = "vsk_unit"
SECRET = "Bearer sk-unit-0123456789"


def test_create_sends_the_secrets_with_the_allowlist(fake):
    fake.route("POST", "/v1/sandboxes", lambda r: r.reply_json(201, SANDBOX))
    Sandbox(
        egress_allow=["api.example.com"],
        secrets={"api.example.com": {"Authorization": SECRET}},
        url=fake.url,
        api_key=KEY,
    )
    assert fake.requests[-1].json() == {
        "egress_allow": ["api.example.com"],
        "secrets": {"api.example.com": {"Authorization": SECRET}},
    }


def test_without_secrets_nothing_is_sent(fake):
    fake.route("POST", "/v1/sandboxes", lambda r: r.reply_json(201, SANDBOX))
    Sandbox(egress_allow=["api.example.com"], url=fake.url, api_key=KEY)
    assert "secrets" not in fake.requests[-1].json()


@pytest.mark.parametrize(
    "bad",
    [
        "Bearer x",
        {"api.example.com": "Bearer x"},
        {"api.example.com": {}},
        {"api.example.com": {"Authorization": 5}},
    ],
)
def test_bad_shapes_are_refused_locally_without_the_value(fake, bad):
    with pytest.raises(errors.InvalidRequestError, match="secrets") as raised:
        Sandbox(egress_allow=["api.example.com"], secrets=bad, url=fake.url, api_key=KEY)
    assert fake.requests == []
    assert "Bearer x" not in str(raised.value)


def test_resume_sends_the_secrets_again(fake):
    fake.route(
        "POST",
        "/v1/spaces/sp_1/resume",
        lambda r: r.reply_json(201, dict(SANDBOX, resumed_from="sp_1")),
    )
    Sandbox.resume("sp_1", secrets={"api.example.com": {"Authorization": SECRET}}, url=fake.url, api_key=KEY)
    assert fake.requests[-1].json() == {
        "persistent": False,
        "secrets": {"api.example.com": {"Authorization": SECRET}},
    }


def test_cli_reads_a_secret_from_the_environment_not_the_command_line(fake):
    from test_unit_cli import cli
    import os

    fake.route("POST", "/v1/sandboxes", lambda r: r.reply_json(201, SANDBOX))
    os.environ["VESICLE_UNIT_TOKEN"] = SECRET
    try:
        p = cli(
            fake.url,
            "create",
            "--egress-allow",
            "api.example.com",
            "--secret",
            "api.example.com:Authorization=VESICLE_UNIT_TOKEN",
        )
    finally:
        del os.environ["VESICLE_UNIT_TOKEN"]
    assert p.returncode == 0, p.stderr
    assert fake.requests[-1].json()["secrets"] == {"api.example.com": {"Authorization": SECRET}}


@pytest.mark.parametrize(
    "spec, says",
    [
        ("api.example.com=X", "HOST:HEADER=ENV"),
        ("api.example.com:Authorization=VESICLE_UNIT_UNSET", "VESICLE_UNIT_UNSET is not set"),
    ],
)
def test_cli_refuses_a_bad_secret_before_sending(fake, spec, says):
    from test_unit_cli import cli

    p = cli(fake.url, "create", "--egress-allow", "api.example.com", "--secret", spec)
    assert p.returncode == 1, p.stderr
    assert says in p.stderr.decode()
    assert fake.requests == []
