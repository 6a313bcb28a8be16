#!/usr/bin/env bash
# Installs every Debian package vesicle's build, images and tests need.
# Idempotent: apt-get skips what is already installed; the package list is
# checked first so a warm machine pays nothing.
set -euo pipefail

packages=(
  # build
  build-essential cmake ninja-build pkg-config clang-format ccache libspdlog-dev
  libcaf-dev libboost1.74-dev libboost-program-options1.74-dev
  libprotobuf-dev protobuf-compiler
  libnl-3-dev libnl-route-3-dev libnftables-dev
  libgtest-dev libgmock-dev libssl-dev libsqlite3-dev
  libseccomp-dev # the jail's seccomp filter (vmm/jail.cpp)
  # the fuzz build (scripts/fuzz.sh): clang, and libFuzzer with the
  # sanitizer runtimes (Debian 12 ships them in libclang-rt-14-dev)
  clang libclang-rt-14-dev
  # VMs and images
  qemu-system-x86 qemu-utils debootstrap e2fsprogs cpio zstd xz-utils kmod
  # tests
  python3 python3-pytest python3-pip python3-venv iproute2 nftables
  procps psmisc curl
  # the TypeScript SDK's build and tests (Debian 12: Node 18)
  nodejs
  # the operator page's browser test (tests/ui: headless, driven by playwright-core)
  chromium
)
# npm is its own Debian package; a nodejs from elsewhere (NodeSource) bundles
# npm and conflicts with Debian's, so it is asked for only when missing.
command -v npm >/dev/null || packages+=(npm)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "install-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
echo "install-deps: all ${#packages[@]} packages present"
