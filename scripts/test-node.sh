#!/usr/bin/env bash
# The Node tests: installs the npm dependencies, builds the addon (debug profile) and the TypeScript,
# then runs `node --test` on the compiled tests against a real PostgreSQL (see scripts/pg-env.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/pg-env.sh
if [ -f package-lock.json ]; then npm ci --no-audit --no-fund; else npm install --no-audit --no-fund; fi
npm run build:debug
npm run build:ts
node --test dist-tests/*.test.js
