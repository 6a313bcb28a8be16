#!/usr/bin/env bash
# Fails when a file includes a header from a layer above its own. The
# layers, lowest first (README, "Design"):
#   common -> messages -> vmm, net -> actors -> hostd -> runtime
# runtime/ implements the public headers in include/vesicle/ (included as
# "vesicle/...").
# guest/ (the agent inside the VM) sits beside them on common and messages.
# Run by the build (target check_layers) so an upward include fails it.
set -euo pipefail
repo=${1:-$(cd "$(dirname "$0")/.." && pwd)}
cd "$repo"

allowed() {
  case $1 in
  common) echo "common" ;;
  messages) echo "common messages" ;;
  vmm) echo "common messages vmm" ;;
  net) echo "common messages net" ;;
  guest) echo "common messages guest" ;;
  actors) echo "common messages vmm net actors" ;;
  hostd) echo "common messages vmm net actors hostd" ;;
  include) echo "common messages include" ;; # public headers: only what they expose
  runtime) echo "common messages vmm net actors hostd vesicle runtime" ;;
  esac
}

bad=0
for layer in common messages vmm net guest actors hostd include runtime; do
  [ -d "$layer" ] || continue
  ok=" $(allowed "$layer") "
  while IFS=: read -r file line text; do
    target=$(sed -E 's/^#include "([a-z_]+)\/.*/\1/' <<<"$text")
    [[ $target == "$text" ]] && continue # same-folder include ("x.hpp")
    case $ok in
    *" $target "*) ;;
    *)
      echo "check-layers: $file:$line includes $target/, a layer above $layer/ ($text)" >&2
      bad=1
      ;;
    esac
  done < <(grep -rnE '^#include "' "$layer" --include='*.cpp' --include='*.hpp' --include='*.h' || true)
done
if ((bad)); then
  echo "check-layers: move the code to the right layer, or pass what it needs in from above" >&2
  exit 1
fi
