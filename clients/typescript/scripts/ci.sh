#!/usr/bin/env bash
# CI for @tally-x402/batch-settlement, from a fresh clone: install, build, typecheck,
# lint, test against a real `tally serve`, pack, and check the tarball.
# Needs node >= 20, npm, and the tally binary (TALLY_BIN, default
# ${CARGO_TARGET_DIR:-$HOME/.cache/tally-target}/debug/tally).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

TALLY_BIN="${TALLY_BIN:-${CARGO_TARGET_DIR:-$HOME/.cache/tally-target}/debug/tally}"
export TALLY_BIN
if [[ ! -x "$TALLY_BIN" ]]; then
  echo "ci.sh: tally binary not found at $TALLY_BIN (set TALLY_BIN)" >&2
  exit 1
fi

node_major="$(node -p 'process.versions.node.split(".")[0]')"
if (( node_major < 20 )); then
  echo "ci.sh: node >= 20 required, found $(node --version)" >&2
  exit 1
fi

npm ci --no-audit --no-fund
npm run build
npm run typecheck
npm run lint
npm test

pack_dir="$(mktemp -d)"
trap 'rm -rf "$pack_dir"' EXIT
npm pack --silent --pack-destination "$pack_dir" >/dev/null
tarball="$(ls "$pack_dir"/*.tgz)"
contents="$(tar -tzf "$tarball")"
for entry in \
  package/package.json \
  package/README.md \
  package/dist/index.js package/dist/index.d.ts \
  package/dist/client/index.js package/dist/client/index.d.ts \
  package/dist/server/index.js package/dist/server/index.d.ts \
  package/dist/facilitator/index.js package/dist/facilitator/index.d.ts; do
  if ! grep -qxF "$entry" <<<"$contents"; then
    echo "ci.sh: $entry missing from $(basename "$tarball")" >&2
    exit 1
  fi
done
if grep -qE '^package/(src|test|\.test-build|node_modules)/' <<<"$contents"; then
  echo "ci.sh: the tarball contains sources, tests or dependencies" >&2
  exit 1
fi
echo "ci.sh: ok ($(basename "$tarball"), $(grep -c '\.js$' <<<"$contents") .js and $(grep -c '\.d\.ts$' <<<"$contents") .d.ts files)"
