#!/usr/bin/env bash
# Runs vesicle's whole test suite. On a fresh machine it first installs the
# packages, builds the project and the guest images (each step is a no-op
# when already done; images are cached under /var/cache/vesicle).
#
# Order: the format check of changed lines, unit tests (no VM), the same
# unit tests built with ASan + UBSan, then integration tests that boot real
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

if [ -d sdk/typescript ]; then
  section "TypeScript SDK tests (node --test)"
  # node_modules (typescript, @types/node) come from a cache keyed by the
  # lockfile's hash; the fake-server tests and the real-hostd tests (their
  # own hostd and temp dirs, like the Python SDK's) run against the freshly
  # compiled dist/.
  if bash scripts/npm-install.sh sdk/typescript && (cd sdk/typescript && npm run --silent build); then
    (cd sdk/typescript && VESICLE_HOSTD=$build_dir/hostd/hostd \
      nice -n 5 node --test --test-reporter=spec test/*.test.mjs) || status=1
  else
    echo "TypeScript SDK: installing its build dependencies or compiling it failed"
    status=1
  fi
fi

if [ -d tests/ui ]; then
  section "operator page in a browser (node --test, chromium)"
  # playwright-core from the lockfile-keyed cache; the test starts its own
  # hostd and leaves a screenshot in build/test-artifacts/ui.png.
  if bash scripts/npm-install.sh tests/ui; then
    (cd tests/ui && VESICLE_HOSTD=$build_dir/hostd/hostd VESICLE_ARTIFACTS_DIR=$build_dir/test-artifacts \
      nice -n 5 node --test --test-reporter=spec ui.test.mjs) || status=1
  else
    echo "operator page: installing playwright-core failed"
    status=1
  fi
fi

if [ -d tests/mcp ]; then
  section "MCP servers with the official MCP client (node --test tests/mcp)"
  # @modelcontextprotocol/sdk from the lockfile-keyed cache; the tests start
  # their own hostd (sdk/typescript/test/hostd_process.mjs) and run
  # `python3 -m vesicle mcp` from this tree.
  if bash scripts/npm-install.sh tests/mcp; then
    (cd tests/mcp && VESICLE_HOSTD=$build_dir/hostd/hostd \
      nice -n 5 node --test --test-reporter=spec ./*.test.mjs) || status=1
  else
    echo "MCP tests: installing @modelcontextprotocol/sdk failed"
    status=1
  fi
fi

section "leak check"
bash scripts/leak-check.sh || status=1

exit $status
