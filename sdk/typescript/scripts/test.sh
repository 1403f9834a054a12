#!/usr/bin/env bash
# Builds and tests the TypeScript SDK against a live `bandsox serve` with real VMs:
# npm ci, tsc build, type-check of tests and examples, unit + live + auth tests, README examples.
# BANDSOX_BIN / BANDSOX_AGENT_BIN choose the binaries (see test/helpers.ts for the defaults).
set -euo pipefail

cd "$(dirname "$0")/.."

node_major=$(node -p 'process.versions.node.split(".")[0]')
if (( node_major < 18 )); then
  echo "error: Node.js >= 18 is needed (found $(node --version))" >&2
  echo "hint: install a newer nodejs (scripts/setup)" >&2
  exit 1
fi

npm ci --no-audit --no-fund --loglevel=error
npx tsc -p tsconfig.json
npx tsc -p tsconfig.test.json

# No ambient client configuration: the tests choose URLs and keys themselves.
unset BANDSOX_URL BANDSOX_API_KEY

# One file at a time (each starts its own server and VMs; Node 18 has no --test-concurrency).
failed=0
for t in unit auth live examples; do
  echo "== sdk/typescript: $t tests"
  node --test "build-test/test/$t.test.js" || failed=1
done
if (( failed )); then
  echo "error: TypeScript SDK tests failed" >&2
  exit 1
fi
