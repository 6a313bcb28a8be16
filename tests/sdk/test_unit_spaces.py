"""Spaces in the SDK and CLI (freeze, resume, list, delete) against the scripted server.

test_spaces.py runs the same calls against a real hostd and real VMs.
"""

import json

import pytest

import vesicle
from vesicle import Client, Sandbox, Space, errors
from vesicle.sandbox import SPACE_OP_TIMEOUT_S

from fakehostd import SANDBOX, SPACE, FakeSpaces
from test_unit_cli import cli

KEY = "vsk_unit"
SB = SANDBOX["id"]


@pytest.fixture
def host(fake):
    return FakeSpaces(fake)


def args(fake):
    return {"url": fake.url, "api_key": KEY}


def test_freeze_returns_the_space_id_and_the_sandbox_runs_no_more_code(fake, host):
    host.add_sandbox(persistent=True)
    sb = Sandbox.connect(SB, **args(fake))
    sent = len(fake.requests)
    space_id = sb.freeze()
    req = fake.requests[sent]
    assert (req.method, req.path, req.body) == ("POST", f"/v1/sandboxes/{SB}/freeze", b"")
    assert req.headers["authorization"] == f"Bearer {KEY}"
    assert space_id.startswith("sp-") and sb.space_id == space_id
    assert sb.state == "frozen" and sb.space.space_id == space_id
    assert sb.space.sandbox_id == SB and sb.space.reason == "freeze"
    assert repr(sb) == f"<Sandbox {SB} state=frozen>"

    count = len(fake.requests)
    with pytest.raises(errors.SandboxClosedError, match=f"frozen into Space {space_id}") as info:
        sb.run_code("x")
    assert f"Sandbox.resume('{space_id}')" in str(info.value)
    for call in (lambda: sb.upload(b"x", "/x"), lambda: sb.download("/x"), sb.fork, sb.freeze):
        with pytest.raises(errors.SandboxClosedError):
            call()
    assert len(fake.requests) == count  # refused without a request

    # The record can still be read; hostd's own object says the same.
    assert sb.refresh()["state"] == "frozen" and sb.space_id == space_id
    # close() drops the record only: the Space stays.
    sb.close()
    assert sb.closed and SB not in host.sandboxes
    assert [s.space_id for s in Client(**args(fake)).spaces()] == [space_id]


def test_freeze_refused_by_hostd_leaves_the_sandbox_usable(fake, host):
    host.add_sandbox()
    fake.route(
        "POST",
        f"/v1/sandboxes/{SB}/freeze",
        lambda r: r.reply_error(409, "failed_precondition", "an exec is running; wait for it"),
    )
    sb = Sandbox.connect(SB, **args(fake))
    with pytest.raises(errors.ConflictError, match="exec is running"):
        sb.freeze()
    assert sb.space_id is None and sb.space is None and sb.state == "ready"
    assert sb.refresh()["state"] == "ready"


def test_freeze_and_resume_wait_longer_than_the_usual_timeout(fake, host, monkeypatch):
    # Saving or restoring a large guest under TCG can be silent for minutes:
    # both calls read with at least SPACE_OP_TIMEOUT_S, whatever `timeout` is.
    host.add_sandbox()
    space = host.add_space()
    seen = []
    from vesicle import _http

    original = _http.Transport.stream

    def spy(self, method, path, **kw):
        seen.append((path, kw.get("read_timeout")))
        return original(self, method, path, **kw)

    monkeypatch.setattr(_http.Transport, "stream", spy)
    Sandbox.connect(SB, url=fake.url, api_key=KEY, timeout=5).freeze()
    Sandbox.resume(space["space_id"], url=fake.url, api_key=KEY, timeout=5)
    waits = {path.rsplit("/", 1)[-1]: t for path, t in seen if path.endswith(("/freeze", "/resume"))}
    assert waits == {"freeze": SPACE_OP_TIMEOUT_S, "resume": SPACE_OP_TIMEOUT_S}


def test_resume_makes_a_new_sandbox_and_uses_the_space_up(fake, host):
    space = host.add_space()
    sid = space["space_id"]
    sb = Sandbox.resume(sid, **args(fake))
    req = fake.requests[-1]
    assert (req.method, req.path, req.json()) == ("POST", f"/v1/spaces/{sid}/resume", {"persistent": False})
    assert req.headers["content-type"] == "application/json"
    assert sb.id != SB and sb.state == "ready"
    assert sb.resumed_from == sid and sb.info["source"] == "space" and sb.space_id is None
    assert sb.info["persistent"] is False
    assert not sb.closed
    with pytest.raises(errors.NotFoundError) as again:
        Sandbox.resume(sid, **args(fake))
    assert again.value.status == 404


def test_resume_persistent_and_from_a_space_object(fake, host):
    space = Space.from_json(host.add_space())
    sb = Client(**args(fake)).resume(space, persistent=True)
    assert fake.requests[-1].json() == {"persistent": True}
    assert sb.info["persistent"] is True and sb.resumed_from == space.space_id
    with pytest.raises(errors.InvalidRequestError, match="persistent"):
        Sandbox.resume("sp-000000000001", persistent="yes", **args(fake))
    with pytest.raises(errors.InvalidRequestError, match="space id"):
        Sandbox.resume("", **args(fake))


def test_resume_needs_a_key_before_any_request(fake, host):
    host.add_space()
    count = len(fake.requests)
    with pytest.raises(errors.ConfigurationError, match="VESICLE_API_KEY"):
        Sandbox.resume(SPACE["space_id"], url=fake.url)
    assert len(fake.requests) == count


def test_a_corrupted_space_is_a_typed_error_and_stays(fake, host):
    sid = host.add_space()["space_id"]
    host.corrupted[sid] = f"Space {sid}: its state file is 4096 bytes, the manifest says 157286400"
    with pytest.raises(errors.SpaceCorruptedError, match="state file") as info:
        Sandbox.resume(sid, **args(fake))
    assert (info.value.status, info.value.code) == (422, "space_corrupted")
    assert isinstance(info.value, vesicle.VesicleError)
    assert [s.space_id for s in Sandbox.spaces(**args(fake))] == [sid]


@pytest.mark.parametrize(
    "status,code,cls",
    [
        (409, "failed_precondition", errors.ConflictError),  # being resumed right now
        (503, "no_capacity", errors.CapacityError),
        (429, "quota_exceeded", errors.QuotaExceededError),
    ],
)
def test_resume_refusals_are_typed(fake, status, code, cls):
    fake.route("POST", "/v1/spaces/sp-000000000001/resume", lambda r: r.reply_error(status, code, "no"))
    with pytest.raises(cls):
        Sandbox.resume("sp-000000000001", **args(fake))


def test_list_get_and_delete_spaces(fake, host):
    first = host.add_space(space_id="sp-000000000001", reason="idle")
    host.add_space(space_id="sp-000000000002", reason="shutdown", egress_allow=["pypi.org"])
    spaces = Sandbox.spaces(**args(fake))
    assert fake.requests[-1].path == "/v1/spaces"
    assert [(s.space_id, s.reason) for s in spaces] == [
        ("sp-000000000001", "idle"),
        ("sp-000000000002", "shutdown"),
    ]
    one = spaces[0]
    # Sizes come as JSON doubles; they are ints here.
    assert (one.size_bytes, one.state_bytes, one.disk_bytes) == (161480704, 157286400, 4194304)
    assert type(one.size_bytes) is int
    # Protobuf's mapping of a 64-bit integer, a string, is taken too.
    assert Space.from_json(dict(SPACE, size_bytes="161480704")).size_bytes == 161480704
    assert one.sandbox_id == SB and one.persistent is True and one.memory_mib == 512
    assert one.frozen_at == SPACE["frozen_at"] and one.created_at == SPACE["created_at"]
    assert one.raw == first and spaces[1].egress_allow == ["pypi.org"]

    client = Client(**args(fake))
    assert client.space("sp-000000000002").reason == "shutdown"
    assert client.space(one) == one and len({one, client.space(one), spaces[1]}) == 2
    client.delete_space(one)
    req = fake.requests[-1]
    assert (req.method, req.path) == ("DELETE", "/v1/spaces/sp-000000000001")
    assert [s.space_id for s in client.spaces()] == ["sp-000000000002"]
    with pytest.raises(errors.NotFoundError):
        client.delete_space("sp-000000000001")
    with pytest.raises(errors.NotFoundError):
        client.space("sp-000000000001")


def test_space_ids_are_quoted_in_paths(fake):
    with pytest.raises(errors.NotFoundError):
        Client(**args(fake)).space("sp-../../x y")
    assert "/" not in fake.requests[-1].raw_target[len("/v1/spaces/"):]


def test_malformed_space_answers_are_protocol_errors(fake):
    fake.route("GET", "/v1/spaces", lambda r: r.reply_json(200, {"spaces": [{"size_bytes": 1}]}))
    with pytest.raises(errors.ProtocolError, match="space_id"):
        Client(**args(fake)).spaces()
    fake.route("GET", "/v1/spaces", lambda r: r.reply_json(200, {"spaces": "none"}))
    with pytest.raises(errors.ProtocolError, match="Space list"):
        Client(**args(fake)).spaces()
    fake.route("GET", "/v1/spaces", lambda r: r.reply_json(200, {"spaces": [dict(SPACE, size_bytes="many")]}))
    with pytest.raises(errors.ProtocolError, match="malformed Space"):
        Client(**args(fake)).spaces()


def test_a_sandbox_frozen_by_hostd_reports_its_space(fake, host):
    host.add_sandbox(persistent=True, state="frozen", space_id="sp-0000000000aa")
    sb = Sandbox.connect(SB, **args(fake))
    assert sb.state == "frozen" and sb.space_id == "sp-0000000000aa"
    # Its exec goes to hostd, which says why (409 naming the Space).
    fake.route(
        "POST",
        f"/v1/sandboxes/{SB}/exec",
        lambda r: r.reply_error(409, "failed_precondition", "sandbox is frozen into Space sp-0000000000aa"),
    )
    with pytest.raises(errors.ConflictError, match="sp-0000000000aa"):
        sb.run_code("x")


def test_space_corrupted_error_mapping():
    body = json.dumps({"error": {"code": "space_corrupted", "message": "bad checksum"}}).encode()
    err = errors.error_from_response(422, "Unprocessable Entity", body)
    assert type(err) is errors.SpaceCorruptedError and err.message == "bad checksum"
    assert type(errors.error_for_code("space_corrupted", "m")) is errors.SpaceCorruptedError
    assert vesicle.SpaceCorruptedError is errors.SpaceCorruptedError


# ---- CLI ----------------------------------------------------------------------


def test_cli_freeze_resume_spaces_rm_space(fake, host):
    host.add_sandbox(persistent=True)
    p = cli(fake.url, "freeze", SB)
    assert p.returncode == 0, p.stderr
    space_id = p.stdout.decode().strip()
    assert space_id in host.spaces and fake.requests[-1].path == f"/v1/sandboxes/{SB}/freeze"

    p = cli(fake.url, "spaces")
    lines = p.stdout.decode().splitlines()
    assert lines[0].split() == ["SPACE", "SANDBOX", "REASON", "SIZE", "MEMORY", "FROZEN"]
    assert lines[1].split()[:5] == [space_id, SB, "freeze", "154", "MiB"]
    p = cli(fake.url, "spaces", "--json")
    assert json.loads(p.stdout) == [host.spaces[space_id]]

    p = cli(fake.url, "resume", space_id, "--persistent")
    assert p.returncode == 0, p.stderr
    new_id = p.stdout.decode().strip()
    assert host.sandboxes[new_id]["resumed_from"] == space_id
    assert host.sandboxes[new_id]["persistent"] is True
    assert fake.requests[-1].json() == {"persistent": True}

    p = cli(fake.url, "resume", space_id)  # used up
    assert p.returncode == 1 and p.stderr.startswith(b"vesicle: ") and b"Traceback" not in p.stderr

    other = host.add_space(space_id="sp-000000000077")["space_id"]
    p = cli(fake.url, "rm-space", other, "sp-000000000099")
    assert p.returncode == 1
    assert p.stdout == f"{other}\n".encode()
    assert p.stderr.startswith(b"vesicle: sp-000000000099: ")
    assert other not in host.spaces


def test_cli_resume_of_a_corrupted_space_says_why(fake, host):
    sid = host.add_space()["space_id"]
    host.corrupted[sid] = "the Space's state file is truncated"
    p = cli(fake.url, "resume", sid)
    assert p.returncode == 1
    assert p.stderr == b"vesicle: the Space's state file is truncated\n"
