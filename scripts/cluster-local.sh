#!/usr/bin/env bash
# A vesicle cluster on this machine, for trying it and for tests
# (docs/cluster.md): N hostd nodes on loopback, each with its own state,
# runtime and memory directories, cgroup parent, VM uid range and ports,
# in regions given round-robin, plus one gateway. Prints the gateway's URL
# and keys (also in <dir>/env).
#
#   scripts/cluster-local.sh start [--nodes N] [--regions eu,us] [--pool N]
#                                  [--dir DIR] [--port BASE] [--build BUILD_DIR]
#   scripts/cluster-local.sh stop [--dir DIR]
#
# Ports: the gateway's REST API on BASE (default 7300), its actor port on
# BASE+1, node i's REST API on BASE+10+i. --pool N keeps N warm VMs per
# node (default 0: every create cold-boots; the template is built once, in
# a templates directory the nodes share). Run as root (hostd needs it).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
command=${1:-}
shift || true
nodes=3
regions=eu,us
pool=0
dir=/tmp/vesicle-cluster
base=7300
build=$repo/build
while [ $# -gt 0 ]; do
  case $1 in
  --nodes) nodes=$2; shift 2 ;;
  --regions) regions=$2; shift 2 ;;
  --pool) pool=$2; shift 2 ;;
  --dir) dir=$2; shift 2 ;;
  --port) base=$2; shift 2 ;;
  --build) build=$2; shift 2 ;;
  *) echo "cluster-local.sh: unknown argument $1 (see the head of this script)" >&2; exit 2 ;;
  esac
done

# Sends SIGTERM to the process in pid file $1, waits up to 30 s, then SIGKILL.
stop_pid() {
  local file=$1 pid
  [ -f "$file" ] || return 0
  pid=$(cat "$file")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$file"
}

# Waits until log $1 has hostd's or the gateway's "listening on" line.
wait_listening() {
  local log=$1 name=$2
  for _ in $(seq 600); do
    grep -q "listening on http://" "$log" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "cluster-local.sh: $name did not start; its log ($log):" >&2
  cat "$log" >&2
  return 1
}

stop_all() {
  [ -d "$dir" ] || return 0
  # Nodes first (each destroys its sandboxes), then the gateway.
  for pidfile in "$dir"/node-*/pid; do [ -e "$pidfile" ] && stop_pid "$pidfile"; done
  stop_pid "$dir/gateway/pid"
  for node_dir in "$dir"/node-*; do
    [ -d "$node_dir" ] || continue
    name=$(basename "$node_dir")
    rm -rf "/dev/shm/vcl-$name"
    for controller in memory pids cpu; do
      rmdir /sys/fs/cgroup/$controller/vcl-"$name"/* /sys/fs/cgroup/$controller/vcl-"$name" \
        2>/dev/null || true
    done
  done
  rm -rf "$dir"
}

start_all() {
  [ -x "$build/hostd/hostd" ] && [ -x "$build/hostd/vesicle-gateway" ] || {
    echo "cluster-local.sh: build hostd and vesicle-gateway first: ninja -C $build hostd vesicle-gateway" >&2
    exit 1
  }
  [ -e "$build/images/rootfs.ext4" ] || {
    echo "cluster-local.sh: no guest images in $build/images (scripts/build.sh makes them)" >&2
    exit 1
  }
  if [ -e "$dir" ]; then
    echo "cluster-local.sh: $dir exists: a cluster runs there (stop it first) or remove it" >&2
    exit 1
  fi
  mkdir -p "$dir/gateway/state" "$dir/templates"
  chmod 700 "$dir"
  (umask 077 && od -An -N32 -tx1 /dev/urandom | tr -d ' \n' >"$dir/secret")
  local gw="$build/hostd/vesicle-gateway"
  local key admin_key
  key=$("$gw" --state-dir "$dir/gateway/state" --new-key | grep -o 'vsk_[0-9a-f]*')
  admin_key=$("$gw" --state-dir "$dir/gateway/state" --new-key --admin | grep -o 'vsk_[0-9a-f]*')
  cat >"$dir/gateway/gateway.json" <<JSON
{"listen": "127.0.0.1:$base", "state_dir": "$dir/gateway/state",
 "cluster": {"actor_listen": "127.0.0.1:$((base + 1))", "secret_file": "$dir/secret",
             "heartbeat_ms": 500, "down_after_ms": 2000}}
JSON
  setsid "$gw" --config "$dir/gateway/gateway.json" >"$dir/gateway/log" 2>&1 </dev/null &
  echo $! >"$dir/gateway/pid"
  wait_listening "$dir/gateway/log" gateway

  IFS=, read -r -a region_list <<<"$regions"
  local pools='"disable_pools": true'
  [ "$pool" -gt 0 ] && pools="\"pools\": [{\"min_ready\": $pool, \"max\": $((pool + 2))}]"
  for i in $(seq 1 "$nodes"); do
    local name=node-$i node_dir=$dir/node-$i
    local region=${region_list[$(((i - 1) % ${#region_list[@]}))]}
    mkdir -p "$node_dir/state" "/dev/shm/vcl-$name"
    # One keys file for the whole cluster: the gateway authenticates, the
    # node checks the same key again.
    install -m 600 "$dir/gateway/state/keys" "$node_dir/state/keys"
    cat >"$node_dir/hostd.json" <<JSON
{"listen": "127.0.0.1:$((base + 10 + i))", "state_dir": "$node_dir/state",
 "runtime_dir": "$node_dir/run", "shm_dir": "/dev/shm/vcl-$name",
 "images_dir": "$build/images", "templates_dir": "$dir/templates",
 "max_sandboxes": 3, "default_memory_mib": 512, $pools,
 "confinement": {"cgroup_parent": "vcl-$name", "uid_first": $((1900000000 + i * 65536)),
                 "uid_count": 4096},
 "cluster": {"node_name": "$name", "region": "$region",
             "gateways": ["127.0.0.1:$((base + 1))"], "secret_file": "$dir/secret",
             "heartbeat_ms": 500, "down_after_ms": 2000}}
JSON
    setsid "$build/hostd/hostd" --config "$node_dir/hostd.json" >"$node_dir/log" 2>&1 </dev/null &
    echo $! >"$node_dir/pid"
  done
  for i in $(seq 1 "$nodes"); do wait_listening "$dir/node-$i/log" "node-$i"; done
  # Until every node has registered with the gateway.
  for _ in $(seq 100); do
    up=$(curl -s -H "Authorization: Bearer $admin_key" "http://127.0.0.1:$base/v1/admin/nodes" |
      grep -o '"state":"up"' | wc -l || true)
    [ "$up" -ge "$nodes" ] && break
    sleep 0.2
  done
  cat >"$dir/env" <<ENV
export VESICLE_URL=http://127.0.0.1:$base
export VESICLE_API_KEY=$key
export VESICLE_ADMIN_KEY=$admin_key
ENV
  echo "cluster up in $dir: $nodes nodes ($up registered) in regions $regions"
  cat "$dir/env"
}

case $command in
start) start_all ;;
stop) stop_all ;;
*) echo "usage: cluster-local.sh start|stop [options] (see the head of this script)" >&2; exit 2 ;;
esac
