#!/usr/bin/env bash
# The headless-browser batch evaluator (evaluator/evaluate.mjs): installs what it needs (Debian's
# Chromium, the npm packages, the wasm32 target and wasm-bindgen-cli), rebuilds the wasm package
# when the Rust sources are newer than it, then runs. Paths are taken from where you call it.
# Usage: evaluator/evaluate.sh --benchmark-dir DIR --out DIR [--model M] [...]   (--help for all)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"
if [ -z "${CHROMIUM:-}" ] && [ ! -x /usr/bin/chromium ]; then
  echo "installing chromium (apt)..." >&2
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium >/dev/null
fi
"$ROOT/scripts/npm-deps.sh" >&2
"$ROOT/scripts/build-wasm.sh" --if-stale >&2
exec node "$ROOT/evaluator/evaluate.mjs" "$@"
