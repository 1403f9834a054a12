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
npm run build --silent # dist/esm (import) and dist/cjs (require)
npx tsc -p tsconfig.test.json

# The packed package type-checks in a consumer project that has only @types/node (the published
# declarations must not need @types/ws or skipLibCheck): the examples, compiled against it.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
npm pack --silent --pack-destination "$tmp" >/dev/null
consumer="$tmp/consumer"
mkdir -p "$consumer/node_modules/bandsox" "$consumer/node_modules/@types"
tar -xzf "$tmp"/bandsox-*.tgz -C "$consumer/node_modules/bandsox" --strip-components=1
ln -s "$PWD/node_modules/@types/node" "$consumer/node_modules/@types/node"
ln -s "$PWD/node_modules/undici-types" "$consumer/node_modules/undici-types"
cp examples/*.ts "$consumer/"
echo '{"type": "module"}' >"$consumer/package.json"
npx tsc --noEmit --strict --module nodenext --moduleResolution nodenext --target es2022 \
  --types node --typeRoots "$consumer/node_modules/@types" "$consumer"/*.ts
# ...and a CommonJS consumer gets the "require" declarations (dist/cjs) with the same types.
cat >"$consumer/cjs.cts" <<'TS'
import bandsox = require("bandsox");
const client: bandsox.Client = new bandsox.Client({ baseURL: "http://127.0.0.1:8000", token: "t", projectID: "p" });
const status: bandsox.SandboxStatus | undefined = undefined;
export const shapes = [client.baseURL, status, bandsox.VM_STATUSES.length];
TS
npx tsc --noEmit --strict --module nodenext --moduleResolution nodenext --target es2022 \
  --types node --typeRoots "$consumer/node_modules/@types" "$consumer/cjs.cts"

# No ambient client configuration: the tests choose URLs and keys themselves.
unset BANDSOX_URL BANDSOX_API_KEY

# One file at a time (each starts its own server and VMs; Node 18 has no --test-concurrency).
failed=0
for t in unit auth live vtrix examples; do
  echo "== sdk/typescript: $t tests"
  node --test "build-test/test/$t.test.js" || failed=1
done
if (( failed )); then
  echo "error: TypeScript SDK tests failed" >&2
  exit 1
fi
