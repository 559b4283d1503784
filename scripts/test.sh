#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs what is missing (the wasm32 target,
# wasm-bindgen-cli, Mesa's Vulkan driver lavapipe for the GPU tests, Debian's Chromium and the npm
# packages for the browser tests), fetches test assets, runs every Rust test (release build),
# checks formatting and clippy on both targets, fuzzes the parsers for a few seconds each
# (cargo-fuzz on the pinned nightly), builds the wasm package and runs the headless-browser
# tests.
# Usage: scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"
# Each phase's wall time, printed as it ends and again at the end (where CI's minutes go).
timings=()
phase_start=$SECONDS
phase() {
  if [ -n "${phase_name:-}" ]; then timings+=("$(printf '%5ss  %s' $((SECONDS - phase_start)) "$phase_name")"); fi
  phase_name="$1"
  phase_start=$SECONDS
  [ -z "$1" ] || echo "== $1"
}
report_timings() {
  phase ""
  echo "== time per phase (${SECONDS}s in all)"
  printf '  %s\n' "${timings[@]}"
}
trap report_timings EXIT
phase "installs and test assets"

command -v cargo >/dev/null || { echo "needs Rust (https://rustup.rs)" >&2; exit 1; }
rustup target list --installed | grep -q wasm32-unknown-unknown || rustup target add wasm32-unknown-unknown
cargo fmt --version >/dev/null 2>&1 || rustup component add rustfmt
cargo clippy --version >/dev/null 2>&1 || rustup component add clippy
missing=()
ls /usr/share/vulkan/icd.d/lvp_icd*.json >/dev/null 2>&1 || missing+=(mesa-vulkan-drivers)
[ -x /usr/bin/chromium ] || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]} (apt)..."
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
scripts/fetch-test-assets.sh

phase "format and lints (native and wasm32)"
cargo fmt --check
cargo clippy --release --all-targets -- -D warnings
cargo clippy --release --target wasm32-unknown-unknown --lib --no-default-features -- -D warnings
phase "cargo test (release)"
cargo test --release --all-targets
phase "fuzzing the parsers of untrusted input (15 s per target; scripts/fuzz.sh 600 for longer)"
scripts/fuzz.sh 15
phase "wasm packages"
scripts/build-wasm.sh
phase "browser tests (headless Chromium, WebGPU on SwiftShader without a GPU)"
node --test --test-reporter=spec tests/browser/
