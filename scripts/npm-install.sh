#!/usr/bin/env bash
# Installs an npm project's node_modules exactly as its package-lock.json
# says, once per lockfile: the result is kept under
# /var/cache/vesicle/npm/<first 16 hex digits of the lockfile's sha256>/ and
# copied from there, so CI on a fresh clone asks the registry once and later
# runs stay offline.
#
#   scripts/npm-install.sh sdk/typescript
#
# A node_modules that already came from the same lockfile is left alone.
set -euo pipefail

dir=${1:?usage: npm-install.sh DIR (a folder with package.json and package-lock.json)}
dir=$(cd "$dir" && pwd)
lock=$dir/package-lock.json
if [ ! -f "$lock" ]; then
  echo "npm-install: $lock is missing: run 'npm install' in $dir once and commit the lockfile" >&2
  exit 1
fi
for tool in node npm; do
  if ! command -v "$tool" >/dev/null; then
    echo "npm-install: $tool is not installed: run scripts/install-deps.sh" >&2
    exit 1
  fi
done

cache_root=${VESICLE_NPM_CACHE:-/var/cache/vesicle/npm}
hash=$(sha256sum "$lock" | cut -c1-16)
cached=$cache_root/$hash
stamp=$dir/node_modules/.vesicle-lock-hash

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$hash" ]; then
  echo "npm-install: $dir/node_modules is current (lockfile $hash)"
  exit 0
fi

if [ ! -f "$cached/complete" ]; then
  echo "npm-install: installing $dir's dependencies from the registry (lockfile $hash)"
  mkdir -p "$cache_root"
  work=$(mktemp -d "$cache_root/.tmp-$hash-XXXXXX")
  trap 'rm -rf "$work"' EXIT
  cp "$dir/package.json" "$lock" "$work/"
  # --ignore-scripts: nothing of the project's own runs here (a prepack
  # would build before the sources are there); npm's own cache sits beside.
  (cd "$work" && npm ci --ignore-scripts --no-audit --no-fund --cache "$cache_root/_npm" >/dev/null)
  touch "$work/complete"
  # Atomic: a concurrent run sees either no entry or a whole one.
  if ! mv -T "$work" "$cached" 2>/dev/null; then
    rm -rf "$work"
  fi
  trap - EXIT
fi

rm -rf "$dir/node_modules"
cp -a "$cached/node_modules" "$dir/node_modules"
echo "$hash" >"$stamp"
echo "npm-install: $dir/node_modules from the cache (lockfile $hash)"
