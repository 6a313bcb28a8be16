#!/usr/bin/env bash
# Fails, naming the files, when C++ lines changed since a base commit are not
# formatted as .clang-format says. Only the changed lines are checked: much of
# the tree predates this check, and reformatting whole files would collide
# with work going on in parallel branches.
#
# The base: $VESICLE_FORMAT_BASE if set; else the merge base with main (or
# origin/main) when HEAD is ahead of it; else HEAD~1 (a fresh clone of main:
# its last commit, a merge's first parent, is what is new). With no base (not
# a git checkout, or a single-commit clone) the check is skipped with a
# message. Uncommitted changes to tracked files are checked too.
#
# Usage: scripts/check-format.sh   (fix: git clang-format <base>)
set -euo pipefail
cd "$(dirname "$0")/.."

if ! git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  echo "format check: skipped (not a git checkout)"
  exit 0
fi
if ! command -v git-clang-format >/dev/null; then
  echo "format check: git-clang-format is missing; install clang-format (scripts/install-deps.sh)" >&2
  exit 1
fi

base=${VESICLE_FORMAT_BASE:-}
if [ -z "$base" ]; then
  head=$(git rev-parse HEAD)
  for ref in main origin/main; do
    mb=$(git merge-base HEAD "$ref" 2>/dev/null) || continue
    if [ "$mb" != "$head" ]; then
      base=$mb
      break
    fi
  done
fi
if [ -z "$base" ]; then
  base=$(git rev-parse -q --verify 'HEAD~1^{commit}') || {
    echo "format check: skipped (no earlier commit to compare with; set VESICLE_FORMAT_BASE)"
    exit 0
  }
fi
git rev-parse -q --verify "$base^{commit}" >/dev/null || {
  echo "format check: base '$base' is not a commit (VESICLE_FORMAT_BASE?)" >&2
  exit 1
}

exts=c,cc,cpp,h,hpp
label="C++ lines changed since $(git rev-parse --short "$base")"
# git-clang-format (14) exits 0 either way: it prints "no modified files to
# format" or "clang-format did not modify any files" when all is well, else a
# diff of what formatting would change.
out=$(git clang-format --diff --extensions "$exts" "$base" 2>&1) || {
  printf '%s\n' "$out" >&2
  echo "format check: git clang-format failed" >&2
  exit 1
}
files=$(printf '%s\n' "$out" | sed -n 's|^diff --git a/\(.*\) b/.*|\1|p')
if [ -z "$files" ]; then
  echo "format check: ok ($label)"
  exit 0
fi
printf '%s\n' "$out"
echo "format check: FAILED: $label are not formatted in:"
printf '  %s\n' $files
echo "Fix with: git clang-format --extensions $exts $(git rev-parse --short "$base")"
exit 1
