#!/usr/bin/env bash
# Install the npm packages (package-lock.json) unless node_modules is already up to date with it.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund
fi
