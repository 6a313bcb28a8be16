#!/usr/bin/env bash
# Runs vesicle's whole test suite. On a fresh machine it first installs the
# packages, builds the project and the guest images (each step is a no-op
# when already done; images are cached under /var/cache/vesicle).
#
# Order: the format check of changed lines, unit tests (no VM), the same
# unit tests built with ASan + UBSan, the fuzz targets for a few seconds
# each (clang, libFuzzer), then integration tests that boot real
# VMs (one at a time: two cores under TCG), the embedding example
# (examples/embed, built against the installed package, real VMs too), then
# the Python and TypeScript SDK tests and the MCP client tests against a
# real hostd. Finally a leak
# check: no QEMU process, memory file or runtime directory may be left by
# the tests.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
build_dir=$repo/build
asan_dir=$repo/build-asan
cd "$repo"

bash scripts/install-deps.sh

status=0
section() { printf '\n=== %s ===\n' "$1"; }

section "format check (clang-format on changed lines)"
bash scripts/check-format.sh || status=1

bash scripts/build.sh "$build_dir"
export VESICLE_IMAGES_DIR=$build_dir/images
start=$SECONDS
bash scripts/build.sh --sanitize "$asan_dir"
echo "sanitizer build: $((SECONDS - start)) s"

section "unit tests (ctest -L unit)"
# Serially: several unit tests run the real agent and python3, and their
# timing margins are for a quiet machine.
ctest --test-dir "$build_dir" -L unit --output-on-failure || status=1

section "unit tests under ASan + UBSan (build-asan, ctest -L unit)"
# The sanitizer options (fatal reports, suppressions) are set on the tests
# by CMakeLists.txt.
start=$SECONDS
ctest --test-dir "$asan_dir" -L unit --output-on-failure || status=1
echo "sanitizer unit tests: $((SECONDS - start)) s"

section "fuzz targets (scripts/fuzz.sh: clang, libFuzzer, ASan + UBSan)"
# Each parser of untrusted bytes for a fixed short time from its seed
# corpus (tests/fuzz); a crash fails the suite and leaves the input under
# build-fuzz/artifacts/. The build is its own (clang), cached by ccache.
start=$SECONDS
bash scripts/fuzz.sh --seconds 15 --build-dir "$repo/build-fuzz" || status=1
echo "fuzzing: $((SECONDS - start)) s"

section "integration tests with real VMs (ctest -L integration)"
# Verbose: every test case prints its duration, so a slow run in CI shows
# where the time went.
ctest --test-dir "$build_dir" -L integration --output-on-failure --verbose || status=1

section "embedding: examples/embed against the installed package (scripts/test-embed.sh)"
if bash scripts/test-embed.sh "$build_dir"; then
  echo "embedding: PASS"
else
  echo "embedding: FAIL"
  status=1
fi

if [ -d tests/sdk ]; then
  section "Python SDK tests (pytest)"
  VESICLE_HOSTD=$build_dir/hostd/hostd PYTHONPATH=$repo/sdk/python \
    /usr/bin/python3 -m pytest -q -p no:cacheprovider tests/sdk || status=1
fi

# One folder's Node tests (node --test) against this build's hostd: its npm
# packages come from the cache keyed by its lockfile's hash; with "build",
# its own `npm run build` first. The tests start their own hostd and temp
# dirs, like the Python SDK's.
node_suite() { # DIR TESTS [build]
  local dir=$1 tests=$2
  if ! bash scripts/npm-install.sh "$dir" ||
    { [ "${3:-}" = build ] && ! (cd "$dir" && npm run --silent build); }; then
    echo "$dir: installing its npm packages or building it failed"
    status=1
    return
  fi
  (cd "$dir" && VESICLE_HOSTD=$build_dir/hostd/hostd VESICLE_ARTIFACTS_DIR=$build_dir/test-artifacts \
    nice -n 5 node --test --test-reporter=spec $tests) || status=1
}

# The TypeScript SDK (typescript, @types/node), run against its fresh dist/.
section "TypeScript SDK tests (node --test)"
node_suite sdk/typescript 'test/*.test.mjs' build
# The operator's page in headless chromium (playwright-core); leaves a
# screenshot in build/test-artifacts/ui.png.
section "operator page in a browser (node --test, chromium)"
node_suite tests/ui ui.test.mjs
# Both MCP servers with the official client (@modelcontextprotocol/sdk);
# the stdio one is `python3 -m vesicle mcp` from this tree.
section "MCP servers with the official MCP client (node --test tests/mcp)"
node_suite tests/mcp './*.test.mjs'
# The unmodified E2B SDKs (e2b@2.51.0, e2b@2.50.0, @e2b/code-interpreter@2.8.0)
# against hostd's E2B-compatible API (README "E2B compatibility").
section "E2B SDKs against hostd (node --test tests/e2b)"
node_suite tests/e2b './*.test.mjs'

section "leak check"
bash scripts/leak-check.sh || status=1

exit $status
