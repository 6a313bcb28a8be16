"""Runs a real hostd for the end-to-end tests, and checks it leaves nothing behind.

hostd gets its own temporary state dir (its keys made first with
`hostd --new-key`, which prints each once), runtime dir, shm dir and loopback port 0 (it prints the
port it got), through a text-format config file (messages/config.proto),
with its images from VESICLE_IMAGES_DIR. At the end it is stopped
with SIGTERM and the test checks that no QEMU process of this hostd is left
and that its runtime and shm dirs hold no per-VM files.

A test may stop and start hostd in between (RunningHostd.restart: after
SIGKILL, a crash, or SIGTERM, a clean stop) on the same config and dirs;
the key stays the one made first, the port is a new one.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import List

import pytest

# What hostd prints on stdout (hostd/main.cpp): `hostd --new-key` prints
# "vesicle API key <id> (...):" and then the key on its own line ("vsk_" and
# hex digits, hostd/keys.cpp); once serving, "hostd <version> listening on
# http://<address>:<port> (...)", which gives the port when we ask for port 0.
# (A first start without keys writes its key to state_dir/first-key, never to
# the log, so the keys are made before the start.)
KEY_PATTERN = re.compile(r"^(vsk_[0-9A-Za-z]+)$", re.MULTILINE)
LISTEN_PATTERN = re.compile(r"listening on (http://[0-9.]+:[0-9]+)")
START_TIMEOUT_S = 60
STOP_TIMEOUT_S = 30


@dataclass
class RunningHostd:
    url: str
    key: str
    pid: int
    log_path: Path
    state_dir: Path
    runtime_dir: Path
    shm_dir: Path
    config_path: Path = field(default=None, repr=False)
    # An admin key (`hostd --new-key --admin`), when the session asked for one.
    admin_key: str = field(default=None, repr=False)
    binary: Path = field(default=None, repr=False)
    _proc: "subprocess.Popen" = field(default=None, repr=False)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT_S) -> int:
        """Stop hostd with `sig` and wait for it; returns its exit status.

        SIGKILL takes its QEMUs with it (they die with their parent); this
        waits until they are gone, so a restart finds only what a crash
        leaves on disk. SIGTERM lets hostd shut down (freezing persistent
        sandboxes, which under TCG takes a while: pass a long `timeout`).
        """
        proc = self._proc
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise AssertionError(
                    f"hostd did not exit within {timeout:g} s of signal {sig}:\n" + self.log()[-4000:]
                ) from None
        ours = [self.runtime_dir, self.shm_dir]
        deadline = time.monotonic() + 10
        while qemu_processes_under(ours) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = qemu_processes_under(ours)
        if left:
            raise AssertionError(f"QEMU processes outlived hostd (signal {sig}): {left}")
        return proc.returncode

    def start(self) -> None:
        """Start hostd again on the same config (state, runtime and shm dirs).

        The keys stay the ones made before the first start. Its port is new (port 0):
        `url` and `pid` are updated in place.
        """
        assert self._proc is None or self._proc.poll() is not None, "hostd is still running"
        self._proc, self.url = _launch(self.binary, self.config_path, self.log_path)
        self.pid = self._proc.pid

    def restart(self, sig: int = signal.SIGKILL, timeout: float = STOP_TIMEOUT_S) -> None:
        """stop(sig, timeout), then start()."""
        self.stop(sig, timeout)
        self.start()

    def new_key(self, tier: str = "") -> str:
        """Add another API key to the keys file (`hostd --new-key`) and return it.

        The running hostd read the keys file at its start: the key works
        after the next start() or a keys reload (SIGHUP).
        """
        return _new_key(self.binary, self.config_path, tier)


def _new_key(binary: Path, config: Path, tier: str = "", admin: bool = False) -> str:
    command = [str(binary), "--config", str(config), "--new-key"]
    if tier:
        command += ["--tier", tier]
    if admin:
        command.append("--admin")
    done = subprocess.run(command, capture_output=True, text=True, timeout=30)
    found = KEY_PATTERN.search(done.stdout)
    if done.returncode != 0 or not found:
        raise AssertionError(f"hostd --new-key failed ({done.returncode}): {done.stdout}{done.stderr}")
    return found.group(1)


def _healthy(url: str) -> bool:
    parts = urllib.parse.urlsplit(url)
    try:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=2)
        conn.request("GET", "/v1/healthz")
        resp = conn.getresponse()
        body = resp.read()
        conn.close()
        return resp.status == 200 and json.loads(body).get("status") == "ok"
    except (OSError, ValueError, http.client.HTTPException):
        return False


def qemu_processes_under(paths: List[Path]) -> List[int]:
    """PIDs of QEMU processes whose command line names one of `paths` (ours only)."""
    needles = [str(p).encode() for p in paths]
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if b"qemu" in cmdline.split(b"\0", 1)[0] and any(n in cmdline for n in needles):
            found.append(int(entry))
    return found


def _launch(binary: Path, config: Path, log_path: Path):
    """Start hostd, appending to its log; wait until it answers. Returns (proc, url).

    Only what this start wrote is searched for the address.
    """
    offset = log_path.stat().st_size if log_path.exists() else 0
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [str(binary), "--config", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if proc.poll() is not None:
            pytest.fail(
                f"hostd exited with status {proc.returncode} at start:\n"
                + log_path.read_bytes()[offset:].decode(errors="replace")
            )
        output = log_path.read_bytes()[offset:].decode(errors="replace")
        url_match = LISTEN_PATTERN.search(output)
        url = url_match.group(1) if url_match else None
        if url is not None and _healthy(url):
            return proc, url
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            pytest.fail(
                f"hostd did not print its address and answer "
                f"/v1/healthz within {START_TIMEOUT_S} s:\n"
                + log_path.read_bytes()[offset:].decode(errors="replace")
            )
        time.sleep(0.1)


def remove_cgroups(parent: str) -> None:
    """Remove hostd's cgroup parent and any leaf left in it (cgroup v1)."""
    for controller in ("memory", "pids", "cpu"):
        root = Path("/sys/fs/cgroup") / controller / parent
        if not root.is_dir():
            continue
        for attempt in range(50):
            try:
                for leaf in root.iterdir():
                    if leaf.is_dir():
                        leaf.rmdir()
                root.rmdir()
                break
            except OSError:
                time.sleep(0.1)


@contextlib.contextmanager
def hostd_session(
    repo: Path,
    max_sandboxes: int = 4,
    extra_config: str = "disable_pools: true\n",
    admin_key: bool = False,
    runtime_tmpfs_mib: int = 0,
):
    """A hostd on temp dirs for a test session; with `admin_key`, `admin_key` too.

    `runtime_tmpfs_mib`: its runtime dir (the VMs' disk overlays) is a
    tmpfs of that size, a host disk that fills up; unmounted at the end.
    """
    # Absolute: hostd wants its config's paths so (VESICLE_HOSTD=build/hostd/hostd is fine).
    binary = Path(os.environ.get("VESICLE_HOSTD") or repo / "build" / "hostd" / "hostd").absolute()
    images = Path(os.environ.get("VESICLE_IMAGES_DIR") or repo / "build" / "images").absolute()
    if not binary.exists():
        pytest.skip(
            f"the hostd binary {binary} does not exist: build the tree "
            f"(cmake -S . -B build -G Ninja && ninja -C build) or set VESICLE_HOSTD"
        )
    missing = [n for n in ("vmlinuz", "initrd.img", "rootfs.ext4") if not (images / n).exists()]
    if missing:
        pytest.fail(
            f"hostd exists but the guest images dir {images} lacks {', '.join(missing)}: "
            f"build them with images/build.sh or set VESICLE_IMAGES_DIR"
        )

    top = Path(tempfile.mkdtemp(prefix="vesicle-sdk-test-"))
    shm_dir = Path(tempfile.mkdtemp(prefix="vesicle-sdk-test-", dir="/dev/shm"))
    state_dir, runtime_dir = top / "state", top / "run"
    state_dir.mkdir()
    runtime_dir.mkdir()
    if runtime_tmpfs_mib:
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={runtime_tmpfs_mib}m,mode=0755", "tmpfs",
             str(runtime_dir)],
            check=True,
        )
    config = top / "hostd.conf"
    config.write_text(
        'listen: "127.0.0.1:0"\n'
        f'state_dir: "{state_dir}"\n'
        f'images_dir: "{images}"\n'
        f'runtime_dir: "{runtime_dir}"\n'
        f'shm_dir: "{shm_dir}"\n'
        f"max_sandboxes: {max_sandboxes}\n"
        # Its own cgroup parent, which the session removes at the end even
        # when hostd could not (killed, or a leaf still busy).
        f'confinement {{ cgroup_parent: "{top.name}" }}\n' + extra_config
    )
    log_path = top / "hostd.log"
    proc = None
    running = None
    try:
        admin = None
        key = _new_key(binary, config)
        if admin_key:
            admin = _new_key(binary, config, admin=True)
        proc, url = _launch(binary, config, log_path)
        running = RunningHostd(
            url=url,
            key=key,
            pid=proc.pid,
            log_path=log_path,
            state_dir=state_dir,
            runtime_dir=runtime_dir,
            shm_dir=shm_dir,
            config_path=config,
            binary=binary,
            _proc=proc,
            admin_key=admin,
        )
        yield running
    finally:
        problems = []
        if running is not None:
            proc = running._proc  # a restart replaces it
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                problems.append(f"hostd did not exit within {STOP_TIMEOUT_S} s of SIGTERM")
                proc.kill()
                proc.wait()
        # QEMU children may take a moment to go after hostd.
        ours = [runtime_dir, shm_dir]
        deadline = time.monotonic() + 10
        left = qemu_processes_under(ours)
        while left and time.monotonic() < deadline:
            time.sleep(0.2)
            left = qemu_processes_under(ours)
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if left:
            problems.append(f"QEMU processes of this hostd outlived it: {left}")
        remove_cgroups(top.name)
        # Template snapshots' RAM files stay by design (the next hostd reuses them).
        leftovers = [
            p
            for d in ours
            if d.exists()
            for p in d.rglob("*")
            if not p.name.startswith("vesicle-template-")
        ]
        if leftovers:
            problems.append(f"hostd left per-VM files behind: {[str(p) for p in leftovers[:10]]}")
        log_text = log_path.read_text(errors="replace") if log_path.exists() else ""
        if runtime_tmpfs_mib:
            subprocess.run(["umount", "--lazy", str(runtime_dir)], check=False)
        shutil.rmtree(top, ignore_errors=True)
        shutil.rmtree(shm_dir, ignore_errors=True)
        if problems:
            raise AssertionError("; ".join(problems) + "\nhostd log:\n" + log_text[-4000:])


def close_all(*sandboxes):
    """Closes every sandbox given, going on past failures (cleanup in a test's finally)."""
    for sb in sandboxes:
        try:
            sb.close()
        except Exception:  # noqa: BLE001 - best effort in cleanup
            pass
