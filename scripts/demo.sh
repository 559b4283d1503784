#!/usr/bin/env bash
# Build the wasm packages when the sources are newer (or they are missing) and serve the demo on 127.0.0.1 (installs what is missing: the wasm32
# target, wasm-bindgen-cli, npm packages). Open the printed URL in a browser with WebGPU
# (Chrome/Edge 113+); without WebGPU the page runs on the CPU.
# Usage: scripts/demo.sh [--port N]     then e.g. http://127.0.0.1:8080/www/?model=owner/name
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build-wasm.sh --if-stale # seconds when nothing changed
exec node scripts/serve.mjs "$@"
