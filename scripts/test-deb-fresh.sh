#!/usr/bin/env bash
# Installs the vesicle .deb on a fresh Debian 12 root and brings a node and a
# gateway up in it exactly as docs/cluster.md says for hosts without systemd,
# then creates a sandbox through the gateway with curl and runs print(1).
# Run by hand, as root (not in CI: a cold run downloads ~300 MB):
#   scripts/test-deb-fresh.sh [--build-dir DIR] [--fresh-images | --copy-images DIR]
#
#   1. builds hostd, vesicle-gateway and the guest binaries, packs the .deb
#      (cpack -G DEB in the build dir);
#   2. debootstraps Debian 12 (minbase: the smallest root, so a dependency
#      the package forgets shows) from the mirror in /etc/apt/sources.list*,
#      cached as a tarball under /var/cache/vesicle/debootstrap keyed by
#      suite, variant, mirror and debootstrap version;
#   3. in that root, in private mount and pid namespaces: apt-get install
#      ./vesicle_*.deb (dependencies from the mirror), the guest images with
#      the package's recipe, systemd-analyze verify on the shipped units;
#   4. in private mount, pid and network namespaces: the node and the
#      gateway started with the documented commands, a sandbox created and
#      print(1) run through the gateway, both stopped.
#
# The images: the package's recipe builds them on the node, caching each
# stage under /var/cache/vesicle/images by content. By default the test binds
# this machine's cache into the root, so the kernel and the Debian tree of
# the guest come from it and only the stages holding the package's (stripped)
# agent and init are built. --fresh-images uses an empty cache instead (what
# a fresh machine does; 541 s here: kernel 6 s, the guest's Debian tree
# 377 s, rootfs.ext4 157 s) and deletes it. --copy-images DIR copies the
# images in DIR (e.g. build/images) into the root with the tar command
# docs/cluster.md gives for further nodes, instead of building them.
#
# The .debs apt fetches are kept in /var/cache/vesicle/debfresh-apt for the
# next run. Figures (2 cores shared with other builds, load ~14): a first
# run 8 + 124 s debootstrap, ~200 s apt-get install; with the caches
# 250-370 s in all, most of it dpkg unpacking ~400 packages.
#
# Everything the test makes (the root under /var/tmp, its mounts, the
# namespaces and every process in them, the cgroups its hostd made) is
# removed on exit, also on failure. Mounts live only in the private mount
# namespaces; the pid namespaces take their processes (QEMUs included) with
# them when they end.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
build_dir=$repo/build
fresh_images=0
copy_images=
while (($#)); do
  case $1 in
    --build-dir) build_dir=$(realpath "$2"); shift 2 ;;
    --fresh-images) fresh_images=1; shift ;;
    --copy-images) copy_images=$(realpath "$2"); shift 2 ;;
    -h | --help) awk 'NR > 1 && !/^#/ {exit} NR > 1 {sub(/^# ?/, ""); print}' "$0"; exit 0 ;;
    *) echo "test-deb-fresh: unknown argument '$1'" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" = 0 ] || { echo "test-deb-fresh: run as root (debootstrap, chroot, namespaces)" >&2; exit 2; }

# The hostd in the root uses the host's cgroup v1 hierarchies and uids: a
# parent and a uid range of its own so it never sweeps or shares another
# hostd's (the lead's, CI's) on this machine.
cgroup_parent=vesicle-debfresh
uid_first=1960000000
started=$SECONDS
say() { printf '[test-deb-fresh %4ds] %s\n' $((SECONDS - started)) "$*" >&2; }

work=
tree=
ns_pid=
# remove_tree DIR: deletes DIR unless a mount is still under it (one left
# in this namespace, e.g. by an interrupted debootstrap, is unmounted first).
remove_tree() {
  findmnt -rn -o TARGET | grep "^$1/" | sort -r | xargs -r -n1 umount -l
  if findmnt -rn -o TARGET | grep -q "^$1/"; then
    echo "test-deb-fresh: mounts left under $1; not deleting it" >&2
  else
    rm -rf --one-file-system "$1"
  fi
}
cleanup() {
  local status=$?
  set +e
  if [ -n "$ns_pid" ] && kill -0 "$ns_pid" 2>/dev/null; then
    # unshare blocks SIGTERM and SIGINT while it waits for its child: KILL
    # it, and --kill-child has the kernel kill the namespace's first
    # process, which takes every process of the pid namespace with it.
    kill -KILL "$ns_pid"
    wait "$ns_pid" 2>/dev/null
  fi
  # The root's mounts were made in private namespaces that ended with their
  # processes; remove_tree checks anyway.
  [ -n "$work" ] && remove_tree "$work"
  [ -n "$tree" ] && remove_tree "$tree" && rm -f "$tree.log"
  # The cgroups of the QEMUs a killed namespace took along: a leaf can be
  # busy for a moment while its processes exit.
  for _ in $(seq 20); do
    local left=0
    for controller in memory pids cpu; do
      if [ -d "/sys/fs/cgroup/$controller/$cgroup_parent" ]; then
        find "/sys/fs/cgroup/$controller/$cgroup_parent" -depth -type d -exec rmdir {} + 2>/dev/null
        [ -d "/sys/fs/cgroup/$controller/$cgroup_parent" ] && left=1
      fi
    done
    ((left == 0)) && break
    sleep 0.25
  done
  ((status == 0)) && say "PASS" || say "FAIL (exit $status)"
  exit $status
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# 1. The package.
export CCACHE_DIR=${CCACHE_DIR:-/var/cache/vesicle/ccache} CCACHE_BASEDIR=$repo CCACHE_NOHASHDIR=1
if [ ! -f "$build_dir/build.ninja" ]; then
  cmake -S "$repo" -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_C_COMPILER_LAUNCHER=ccache >/dev/null
fi
nice -n 10 ninja -C "$build_dir" -j2 hostd vesicle-gateway vesicle-agent vesicle-init >/dev/null
rm -f "$build_dir"/vesicle_*.deb
(cd "$build_dir" && cpack -G DEB >/dev/null)
deb=$(ls "$build_dir"/vesicle_*_amd64.deb)
say "package: $(basename "$deb") ($(($(stat -c %s "$deb") >> 20)) MiB)"

# 2. A fresh Debian 12 root, from the cache when it holds one.
sources() { cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null || true; }
mirror=$(sources | grep -oE 'https?://[^ ]+/debian/?( |$)' | head -n 1 | tr -d ' ' || true)
mirror=${mirror:-http://deb.debian.org/debian}
security=$(sources | grep -oE 'https?://[^ ]+/debian-security/?( |$)' | head -n 1 | tr -d ' ' || true)
security=${security:-http://deb.debian.org/debian-security}
key=$(printf '%s\n' bookworm minbase "$mirror" "$(debootstrap --version)" | sha256sum | cut -c1-16)
mkdir -p /var/cache/vesicle/debootstrap
tarball=/var/cache/vesicle/debootstrap/bookworm-minbase-$key.tar.gz
exec {lock}>"$tarball.lock"
flock "$lock"
if [ ! -f "$tarball" ]; then
  say "debootstrap bookworm (minbase) from $mirror"
  tree=$(mktemp -d /var/tmp/vesicle-debootstrap.XXXXXX)
  if ! debootstrap --variant=minbase bookworm "$tree" "$mirror" >"$tree.log" 2>&1; then
    tail -n 20 "$tree.log" >&2
    exit 1
  fi
  tar --numeric-owner -C "$tree" -czf "$tarball.tmp" .
  mv "$tarball.tmp" "$tarball"
  remove_tree "$tree"
  rm -f "$tree.log"
  tree=
fi
exec {lock}>&-
work=$(mktemp -d /var/tmp/vesicle-debfresh.XXXXXX)
root=$work/root
mkdir "$root"
tar --numeric-owner -C "$root" -xzf "$tarball"
chmod 0755 "$root" # the tarball holds mktemp's 0700 for the top
say "root: $root from $(basename "$tarball") ($(($(stat -c %s "$tarball") >> 20)) MiB)"
cat >"$root/etc/apt/sources.list" <<SOURCES
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb $security bookworm-security main
SOURCES
cp /etc/resolv.conf "$root/etc/resolv.conf"
cp "$deb" "$root/root/"
images_cache=/var/cache/vesicle/images
if [ $fresh_images = 1 ]; then
  images_cache=$work/images-cache
fi
mkdir -p "$images_cache" "$root/var/cache/vesicle/images"
# The .debs apt fetches, kept for the next run (apt checks them against the
# archive's hashes, so a stale one is fetched again).
apt_cache=/var/cache/vesicle/debfresh-apt
mkdir -p "$apt_cache"

# in_root [--net] SCRIPT: runs SCRIPT (bash) in the root, in new mount and pid
# namespaces (and a new network namespace with --net) holding /proc, /sys
# with the cgroup hierarchies, /dev with /dev/shm, a tmpfs /run and the
# images cache. The namespaces end with the script.
in_root() {
  local net=()
  if [ "$1" = --net ]; then net=(--net); shift; fi
  unshare --mount --propagation private --pid --fork --kill-child "${net[@]}" \
    bash -euc '
      root=$1 images_cache=$2 apt_cache=$3 script=$4
      # / must be a mount point, as on a machine: each QEMU'"'"'s jail makes
      # the mount tree private from "/", which fails on a bare directory.
      mount --bind "$root" "$root"
      mount -t proc proc "$root/proc"
      mount -t sysfs sysfs "$root/sys"
      mount --rbind /sys/fs/cgroup "$root/sys/fs/cgroup"
      mount --rbind /dev "$root/dev"
      mount -t tmpfs -o mode=755 tmpfs "$root/run"
      mount --bind "$images_cache" "$root/var/cache/vesicle/images"
      mount --bind "$apt_cache" "$root/var/cache/apt/archives"
      exec chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
        DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8 bash -euo pipefail -c "cd /root; $script"
    ' in_root "$root" "$images_cache" "$apt_cache" "$1" &
  ns_pid=$!
  wait "$ns_pid"
  ns_pid=
}

# 3. Install, as a fresh machine would: apt pulls the dependencies.
say "apt-get install ./$(basename "$deb")"
in_root '
  apt-get update -qq
  apt-get install -y -q ./'"$(basename "$deb")"' >/root/apt.log 2>&1 || { tail -n 30 /root/apt.log; exit 1; }
  grep -E "^(Setting up|The following NEW)" /root/apt.log | wc -l | xargs echo "  packages set up:"
  dpkg -s vesicle | grep -E "^(Version|Depends|Recommends):" | sed "s/^/  /"
  apt-get install -y -q curl >/dev/null 2>&1
'
images_started=$SECONDS
if [ -n "$copy_images" ]; then
  # docs/cluster.md's copy to a further node, with the ssh left out.
  say "images: copied from $copy_images"
  tar -C "$copy_images" -chSf - . |
    chroot "$root" sh -c 'install -d /var/lib/vesicle/images && tar -C /var/lib/vesicle/images -xSf -'
  sed "s/^/  /" "$root/var/lib/vesicle/images/manifest.txt"
else
  say "images: the package's recipe (cache: $images_cache)"
  in_root '
    d=/usr/share/vesicle/images
    $d/build.sh --agent $d/guest/vesicle-agent --init $d/guest/vesicle-init \
                --repl $d/guest/repl.py --out /var/lib/vesicle/images 2>&1 | sed "s/^/  /"
    cat /var/lib/vesicle/images/manifest.txt | sed "s/^/  /"
  '
fi
say "images ready in $((SECONDS - images_started)) s"

# 4. A node and a gateway, as docs/cluster.md says for hosts without systemd.
# Only the addresses (both on one host here), the cgroup parent and uid range
# (see above) differ from the documented example.
say "node and gateway, started without systemd"
in_root --net '
  ip link set lo up
  install -d -m 700 /etc/vesicle
  (umask 077; openssl rand -hex 32 >/etc/vesicle/cluster-secret)
  cat >/etc/vesicle/gateway.conf <<CONF
listen: "127.0.0.1:8080"
state_dir: "/var/lib/vesicle-gateway"
cluster {
  actor_listen: "127.0.0.1:7171"
  secret_file: "/etc/vesicle/cluster-secret"
}
CONF
  cat >/etc/vesicle/hostd.conf <<CONF
listen: "127.0.0.1:7070"
cluster {
  node_name: "eu-1"
  region: "eu"
  gateways: "127.0.0.1:7171"
  secret_file: "/etc/vesicle/cluster-secret"
}
confinement {
  cgroup_parent: "'"$cgroup_parent"'"
  uid_first: '"$uid_first"'
}
CONF
  key=$(vesicle-gateway --config /etc/vesicle/gateway.conf --new-key --admin | tail -n 1)
  install -d -m 700 /var/lib/vesicle
  cp /var/lib/vesicle-gateway/keys /var/lib/vesicle/keys

  # The documented start (docs/cluster.md, "Without systemd").
  ulimit -n 1048576 2>/dev/null || ulimit -n "$(ulimit -Hn)"
  start-stop-daemon --start --background --make-pidfile --pidfile /run/vesicle-hostd.pid \
    --output /var/log/vesicle-hostd.log --exec /usr/bin/hostd -- --config /etc/vesicle/hostd.conf
  start-stop-daemon --start --background --make-pidfile --pidfile /run/vesicle-gateway.pid \
    --output /var/log/vesicle-gateway.log --exec /usr/bin/vesicle-gateway -- --config /etc/vesicle/gateway.conf

  logs() { for f in /var/log/vesicle-hostd.log /var/log/vesicle-gateway.log; do echo "--- $f"; tail -n 25 $f; done; }
  trap "logs" ERR
  # JSON by the python3 the package depends on; curl is the test'"'"'s own
  # tool (installed after the package).
  field() { python3 -c "import json, sys; print(eval(sys.argv[1], {\"j\": json.load(sys.stdin)}))" "$1"; }
  auth="Authorization: Bearer $key"
  gw=http://127.0.0.1:8080
  up=False
  for i in $(seq 1 240); do
    up=$(curl -sf -H "$auth" $gw/v1/admin/nodes 2>/dev/null | field "any(n[\"state\"] == \"up\" for n in j[\"nodes\"])" 2>/dev/null || echo False)
    [ "$up" = True ] && break
    sleep 0.5
  done
  [ "$up" = True ] || { echo "  node not up at the gateway after 120 s"; curl -s -H "$auth" $gw/v1/admin/nodes; exit 1; }
  echo "  node up at the gateway after $((i / 2)) s: $(curl -sf -H "$auth" $gw/v1/admin/nodes | tr -d "\n" | cut -c1-240)"
  # A new node builds its template and boots its warm pool first; a create
  # meanwhile cold-boots a fourth VM, which under TCG on a loaded machine
  # can pass the 90 s boot timeout. Wait (up to 10 min) for a warm VM.
  for i in $(seq 1 1200); do
    ready=$(curl -sf -H "$auth" $gw/v1/admin/nodes 2>/dev/null | field "j[\"nodes\"][0].get(\"pool_ready\", 0)" 2>/dev/null || echo 0)
    [ "$ready" -ge 1 ] && break
    sleep 0.5
  done
  echo "  warm VMs in the node'"'"'s pool after $((i / 2)) s: $ready"
  t0=$(date +%s%N)
  created=$(curl -sf -H "$auth" -H "Content-Type: application/json" -d "{\"region\": \"eu\"}" $gw/v1/sandboxes)
  id=$(printf "%s" "$created" | field "j[\"id\"]")
  echo "  created $id in $((($(date +%s%N) - t0) / 1000000)) ms: node $(printf "%s" "$created" | field "j[\"node\"], j[\"region\"], j.get(\"source\")")"
  t0=$(date +%s%N)
  out=$(curl -sf -H "$auth" -H "Content-Type: application/json" -d "{\"code\": \"print(1)\"}" $gw/v1/sandboxes/$id/exec)
  echo "  exec print(1) in $((($(date +%s%N) - t0) / 1000000)) ms:"
  echo "$out" | sed "s/^/    /"
  stdout=$(echo "$out" | python3 -c "import json, sys; sys.stdout.write(\"\".join(e.get(\"data\", \"\") for e in map(json.loads, sys.stdin) if e.get(\"type\") == \"stdout\"))")
  echo "  stdout: $stdout"
  [ "$stdout" = 1 ]
  curl -sf -X DELETE -H "$auth" $gw/v1/sandboxes/$id >/dev/null
  echo "  deleted $id"

  # The documented stop.
  start-stop-daemon --stop --pidfile /run/vesicle-gateway.pid --remove-pidfile --retry TERM/30/KILL/5
  start-stop-daemon --stop --pidfile /run/vesicle-hostd.pid --remove-pidfile --retry TERM/60/KILL/5
  trap - ERR
  left=$(cat /proc/[0-9]*/comm 2>/dev/null | grep -cE "^(qemu|hostd|vesicle-gatewa)" || true)
  echo "  stopped; processes left: $left"
  [ "$left" = 0 ]
'

# 5. The shipped units parse and check out (systemd is installed only now,
# after the run, so it cannot stand in for a dependency the package lacks).
say "systemd-analyze verify on the shipped units"
in_root '
  apt-get install -y -q --no-install-recommends systemd >/root/apt-systemd.log 2>&1 || { tail -n 20 /root/apt-systemd.log; exit 1; }
  # It must fail on a unit that is wrong, or its passes mean nothing.
  printf "[Service]\nExecStart=relative/hostd\n" >/root/broken.service
  if systemd-analyze verify --man=no /root/broken.service >/dev/null 2>&1; then
    echo "  systemd-analyze verify passed a broken unit"; exit 1
  fi
  for unit in /lib/systemd/system/vesicle-hostd.service /lib/systemd/system/vesicle-gateway.service; do
    systemd-analyze verify --man=no "$unit" 2>&1 | sed "s/^/  /"
    [ "${PIPESTATUS[0]}" = 0 ] || { echo "  $unit: systemd-analyze verify failed"; exit 1; }
    echo "  $unit: verified"
  done
'
