#!/usr/bin/env bash
# Installs vesicle on this Debian 12 host and starts hostd:
#   1. the Debian packages (scripts/install-deps.sh),
#   2. the build and the guest images (scripts/build.sh; images cached in /var/cache/vesicle),
#   3. hostd and vesicle-vm into /usr/local/bin, the images into /var/lib/vesicle/images,
#      the Python SDK and the `vesicle` CLI into Debian's python3 (/usr/local/lib/python3*/dist-packages),
#   4. the network: hostd's config (state_dir/hostd.conf) gets the uplink,
#      gateway and resolver scripts/detect-network.sh finds, so a default
#      sandbox has open egress through NAT (or, where none is found, says so
#      and leaves egress off),
#   5. (re)starts hostd on 127.0.0.1:7070 and prints a fresh API key.
# Safe to run again: each step reuses what is already there; hostd is
# restarted on the new build (its running sandboxes are destroyed).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
state_dir=${VESICLE_STATE_DIR:-/var/lib/vesicle}
listen=${VESICLE_LISTEN:-127.0.0.1:7070}
log_dir=/var/log/vesicle
pid_file=/run/vesicle-hostd.pid

bash "$repo/scripts/install-deps.sh"
bash "$repo/scripts/build.sh" "$repo/build"

install -m 0755 "$repo/build/hostd/hostd" /usr/local/bin/hostd
install -m 0755 "$repo/build/vmm/cli/vesicle-vm" /usr/local/bin/vesicle-vm
install -d -m 0700 "$state_dir"
install -d -m 0755 "$state_dir/images" "$log_dir"
# The images themselves stay in the content-addressed cache; link them.
for image in vmlinuz initrd.img rootfs.ext4; do
  ln -sfn "$(readlink -f "$repo/build/images/$image")" "$state_dir/images/$image"
done

# The SDK is standard-library only and builds offline (in-tree PEP 517
# backend). Debian marks its python3 as externally managed; a root-installed
# package under /usr/local is the place Debian leaves for the administrator.
/usr/bin/python3 -m pip install --quiet --no-index --no-deps --break-system-packages \
  --root-user-action=ignore --force-reinstall "$repo/sdk/python"

# hostd's configuration: written here unless an operator took it over (a
# file without the first line below is theirs and stays as it is).
config=$state_dir/hostd.conf
marker="# Written by scripts/install.sh; remove this line to keep your edits across installs."
egress_note=
if [ ! -e "$config" ] || head -n 1 "$config" | grep -qxF "$marker"; then
  if network=$(bash "$repo/scripts/detect-network.sh" 2>"$state_dir/.detect-network.err"); then
    printf '%s\n%s\n' "$marker" "$network" >"$config.tmp"
  else
    egress_note="No uplink found ($(cat "$state_dir/.detect-network.err")): sandboxes have egress off. Add a network section to $config (messages/config.proto) and run install again."
    printf '%s\n' "$marker" >"$config.tmp"
  fi
  rm -f "$state_dir/.detect-network.err"
  chmod 0600 "$config.tmp"
  mv "$config.tmp" "$config"
fi

stop_hostd() {
  local pid
  pid=$(cat "$pid_file" 2>/dev/null || true)
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$pid_file"
}

# A key made before the start is one the new hostd loads.
key=$(/usr/local/bin/hostd --config "$config" --state-dir "$state_dir" --new-key | tail -n 1)

if [ -d /run/systemd/system ]; then
  cat >/etc/systemd/system/vesicle-hostd.service <<UNIT
[Unit]
Description=vesicle host daemon
After=network.target

[Service]
ExecStart=/usr/local/bin/hostd --config $config --state-dir $state_dir --images-dir $state_dir/images --listen $listen
KillSignal=SIGTERM
TimeoutStopSec=30
Restart=on-failure
# hostd manages cgroups for its QEMUs (cgroup v2: a delegated subtree), and
# namespaces, mounts, taps and nftables for them, as root. What a root
# daemon that does that can still give up:
Delegate=yes
UMask=0077
LimitNOFILE=65536
NoNewPrivileges=yes
ProtectSystem=full
ProtectHome=yes
PrivateTmp=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectClock=yes
RestrictSUIDSGID=yes
LockPersonality=yes
SystemCallArchitectures=native
# Left out on purpose: ProtectKernelTunables (the bridge manager sets
# net.ipv4 forwarding), ProtectControlGroups (hostd writes its cgroup
# subtree), RestrictNamespaces and PrivateDevices (every QEMU gets new
# namespaces and /dev/kvm, /dev/net/tun), MemoryDenyWriteExecute (QEMU's
# TCG writes and runs its own code).

[Install]
WantedBy=multi-user.target
UNIT
  systemctl daemon-reload
  systemctl enable --quiet vesicle-hostd
  systemctl restart vesicle-hostd
else
  stop_hostd
  setsid /usr/local/bin/hostd --config "$config" --state-dir "$state_dir" \
    --images-dir "$state_dir/images" --listen "$listen" >>"$log_dir/hostd.log" 2>&1 </dev/null &
  echo $! >"$pid_file"
fi

for _ in $(seq 150); do
  curl -fsS "http://$listen/v1/healthz" >/dev/null 2>&1 && break
  sleep 0.2
done
if ! curl -fsS "http://$listen/v1/healthz" >/dev/null 2>&1; then
  echo "install: hostd did not come up on $listen; see $log_dir/hostd.log (or journalctl -u vesicle-hostd)" >&2
  exit 1
fi

health=$(curl -fsS "http://$listen/v1/healthz")
cat <<DONE

vesicle is running: hostd on http://$listen ($health)
Your API key (shown once; hostd keeps only its hash):

  export VESICLE_URL=http://$listen
  export VESICLE_API_KEY=$key

Then (Debian's python3 has the SDK; /usr/local/bin/vesicle is the CLI):
  /usr/bin/python3 -c 'from vesicle import Sandbox; sb = Sandbox(); print(sb.run_code("print(6*7)").stdout); sb.close()'
  vesicle ls
In a virtualenv of any Python >= 3.9: pip install $repo/sdk/python
DONE
if [ -n "$egress_note" ]; then
  echo
  echo "$egress_note"
fi
