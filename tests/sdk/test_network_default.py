"""Network on by default: a hostd configured the way scripts/install.sh
configures it (scripts/detect-network.sh's uplink, gateway and resolver)
gives a default Sandbox() open egress through NAT, so it resolves and
reaches Debian's package mirror; `egress=False` reaches nothing.

The one test of the suite that leaves this machine (issue 16 names it):
every other network test talks to test hosts in namespaces it makes.
"""

import subprocess
from pathlib import Path

import pytest

import vesicle
from vesicle import Sandbox

from hostd_process import hostd_session

REPO = Path(__file__).resolve().parents[2]

# Names and ranges of its own, so this hostd's slots never meet those of
# another hostd on the host (an installed one uses the defaults).
OWN_NAMES = (
    '  prefix: "vd"\n'
    '  transit: "10.223.0.0/16"\n'
    "  route_table: 7319\n"
    "  rule_priority: 7319\n"
)


@pytest.fixture(scope="module")
def net_hostd():
    detected = subprocess.run(
        ["bash", str(REPO / "scripts" / "detect-network.sh")], capture_output=True, text=True
    )
    if detected.returncode != 0:
        pytest.fail(
            "scripts/detect-network.sh found no uplink on this host, which the install would "
            f"then run with egress off: {detected.stderr.strip()}"
        )
    network = detected.stdout.rstrip()
    assert network.endswith("}"), network
    network = network[:-1] + OWN_NAMES + "}\n"
    with hostd_session(REPO, max_sandboxes=2, extra_config="disable_pools: true\n" + network) as h:
        yield h


def test_healthz_and_a_default_sandbox_say_egress_is_open(net_hostd):
    assert vesicle.health(net_hostd.url)["default_egress"] == "open"
    with Sandbox(url=net_hostd.url, api_key=net_hostd.key) as sb:
        assert sb.egress == "open"


def test_a_default_sandbox_resolves_and_updates_apt_through_nat(net_hostd):
    with Sandbox(url=net_hostd.url, api_key=net_hostd.key) as sb:
        r = sb.run_code("getent hosts deb.debian.org", language="bash", timeout=60)
        assert r.exit_code == 0 and "deb.debian.org" in r.stdout, (r.stdout, r.stderr)
        r = sb.run_code("apt-get update 2>&1", language="bash", timeout=600)
        assert r.exit_code == 0, r.stdout[-2000:]
        assert "deb.debian.org" in r.stdout and "Err:" not in r.stdout, r.stdout[-2000:]


def test_egress_false_reaches_nothing(net_hostd):
    with Sandbox(egress=False, url=net_hostd.url, api_key=net_hostd.key) as sb:
        assert sb.egress == "off"
        r = sb.run_code("getent hosts deb.debian.org", language="bash", timeout=60)
        assert r.exit_code != 0 and r.stdout == "", (r.stdout, r.stderr)
        r = sb.run_code("timeout 60 apt-get update 2>&1", language="bash", timeout=120)
        assert r.exit_code != 0 or "Err:" in r.stdout or "W: Failed" in r.stdout, r.stdout[-2000:]
