#!/usr/bin/env bash
# Build the wasm package into pkg/: cargo (wasm32, SIMD via .cargo/config.toml) + wasm-bindgen
# (--target web) + wasm-opt from npm binaryen (Debian's wasm-opt 108 emits broken modules).
# Installs what is missing: the wasm32 target, wasm-bindgen-cli 0.2.130, npm packages.
# Usage: scripts/build-wasm.sh [--dev]   (--dev skips wasm-opt)
set -euo pipefail
cd "$(dirname "$0")/.."
rustup target list --installed | grep -q wasm32-unknown-unknown || rustup target add wasm32-unknown-unknown
if ! wasm-bindgen --version 2>/dev/null | grep -q "0.2.130"; then
  echo "installing wasm-bindgen-cli 0.2.130 (a few minutes)..."
  cargo install wasm-bindgen-cli --version 0.2.130
fi
scripts/npm-deps.sh
cargo build --release --target wasm32-unknown-unknown --lib --no-default-features
rm -rf pkg
wasm-bindgen --target web --out-dir pkg target/wasm32-unknown-unknown/release/guardreasoner.wasm
if [ "${1:-}" != "--dev" ]; then
  node_modules/.bin/wasm-opt -O3 --enable-simd --enable-bulk-memory --enable-nontrapping-float-to-int --enable-sign-ext --enable-mutable-globals --enable-reference-types --enable-multivalue \
    pkg/guardreasoner_bg.wasm -o pkg/guardreasoner_bg.opt.wasm
  mv pkg/guardreasoner_bg.opt.wasm pkg/guardreasoner_bg.wasm
fi
echo "pkg/guardreasoner_bg.wasm: $(du -h pkg/guardreasoner_bg.wasm | cut -f1)"
