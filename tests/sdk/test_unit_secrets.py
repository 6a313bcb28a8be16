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
