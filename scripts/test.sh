#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs what is missing (the wasm32 target, Mesa's
# Vulkan driver lavapipe for the GPU tests), fetches test assets, runs every test (release
# build), and checks the core still compiles to wasm32.
# Usage: scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"

command -v cargo >/dev/null || { echo "needs Rust (https://rustup.rs)" >&2; exit 1; }
rustup target list --installed | grep -q wasm32-unknown-unknown || rustup target add wasm32-unknown-unknown
if ! ls /usr/share/vulkan/icd.d/lvp_icd*.json >/dev/null 2>&1; then
  echo "installing Mesa's Vulkan drivers (lavapipe) for the GPU tests..."
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq mesa-vulkan-drivers >/dev/null
fi
scripts/fetch-test-assets.sh

echo "== cargo test (release)"
cargo test --release --all-targets
echo "== wasm32 check of the core"
cargo check --release --target wasm32-unknown-unknown --lib --no-default-features
