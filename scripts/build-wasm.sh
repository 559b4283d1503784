#!/usr/bin/env bash
# Build the wasm packages into www/, beside the worker that loads them: www/pkg/
# (single-threaded), www/pkg-threads/ (threads: rayon on Web Workers sharing the memory, for
# cross-origin isolated pages) and www/pkg-threads-relaxed/ (the same with relaxed-SIMD dot
# products); www/worker.js picks one at load. Each is
# cargo (wasm32, SIMD) + wasm-bindgen (--target web) + wasm-opt from npm binaryen (Debian's
# wasm-opt 108 emits broken modules). The threaded build needs atomics in std, so a pinned
# nightly rebuilds std (-Z build-std) into its own target dir.
# Installs what is missing: the wasm32 target, the pinned nightly with rust-src,
# wasm-bindgen-cli 0.2.130, npm packages.
# Usage: scripts/build-wasm.sh [--dev] [--single] [--if-stale] [--clippy]   (--dev skips wasm-opt;
# --single skips the threaded builds; --if-stale does nothing when every package is a finished
# release build newer than the Rust sources and this script, as scripts/demo.sh and
# evaluator/evaluate.sh ask; --clippy compiles our crate's single-threaded build through
# clippy-driver with -D warnings, so the build is also the wasm32 lint, as scripts/test.sh asks)
set -euo pipefail
cd "$(dirname "$0")/.."
NIGHTLY=nightly-2026-05-20
# What `cargo clippy -- -D warnings` hands clippy-driver (its arguments, each ended by this marker).
CLIPPY_DENY_WARNINGS="-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__"
dev=0
single=0
if_stale=0
lint=()
for arg in "$@"; do
  case "$arg" in
    --dev) dev=1 ;;
    --single) single=1 ;;
    --if-stale) if_stale=1 ;;
    --clippy) lint=(env RUSTC_WORKSPACE_WRAPPER=clippy-driver "CLIPPY_ARGS=$CLIPPY_DENY_WARNINGS") ;;
    *) echo "unknown option $arg (use --dev, --single, --if-stale, --clippy)" >&2; exit 2 ;;
  esac
done
if [ "$if_stale" = 1 ]; then
  packages=(www/pkg); [ "$single" = 1 ] || packages+=(www/pkg-threads www/pkg-threads-relaxed)
  fresh=1
  for p in "${packages[@]}"; do
    stamp="$p/.build-stamp"
    if [ "$(cat "$stamp" 2>/dev/null)" != release ] || [ -n "$(find src Cargo.toml Cargo.lock .cargo scripts/build-wasm.sh -newer "$stamp" -print -quit 2>/dev/null)" ]; then
      fresh=0
    fi
  done
  if [ "$fresh" = 1 ]; then
    echo "wasm packages are up to date (${packages[*]})"
    scripts/npm-deps.sh
    exit 0
  fi
  echo "building the wasm packages (sources are newer, or a package is missing)..."
fi
rustup target list --installed | grep -q wasm32-unknown-unknown || rustup target add wasm32-unknown-unknown
if ! wasm-bindgen --version 2>/dev/null | grep -q "0.2.130"; then
  echo "installing wasm-bindgen-cli 0.2.130 (a minute or two)..."
  # An unoptimized build: it compiles in half the time (1 against 2.3 minutes on 2 cores) and
  # writes the same package, taking 3 s a package instead of 1.
  cargo install --debug wasm-bindgen-cli --version 0.2.130
fi
scripts/npm-deps.sh
# wasm-opt (binaryen's own wasm build, one thread) takes a minute or two per package: each runs in
# the background while the next package compiles, and the script waits for all of them.
optimizing=()
optimize_in_background() { # pkg dir, extra wasm-opt features
  optimize "$@" &
  optimizing+=($!)
}
wait_for_optimize() {
  local failed=0
  for pid in "${optimizing[@]}"; do wait "$pid" || failed=1; done
  optimizing=()
  [ "$failed" = 0 ] || { echo "wasm-opt failed" >&2; exit 1; }
}
optimize() { # pkg dir, extra wasm-opt features
  if [ "$dev" = 0 ]; then
    node_modules/.bin/wasm-opt -O3 --enable-simd --enable-bulk-memory --enable-nontrapping-float-to-int --enable-sign-ext --enable-mutable-globals --enable-reference-types --enable-multivalue $2 \
      "$1/guardreasoner_bg.wasm" -o "$1/guardreasoner_bg.opt.wasm"
    mv "$1/guardreasoner_bg.opt.wasm" "$1/guardreasoner_bg.wasm"
  fi
  echo "$1/guardreasoner_bg.wasm: $(du -h "$1/guardreasoner_bg.wasm" | cut -f1)"
  # Written last: a package without it (an interrupted build) or with "dev" is rebuilt by --if-stale.
  if [ "$dev" = 0 ]; then echo release >"$1/.build-stamp"; else echo dev >"$1/.build-stamp"; fi
}

# Its own target dir, so it builds beside a native cargo run (scripts/test.sh runs it during the
# native tests) instead of waiting for that run's lock.
"${lint[@]}" cargo build --release --target wasm32-unknown-unknown --lib --no-default-features --features gpu --target-dir target/wasm
rm -rf www/pkg
wasm-bindgen --target web --out-dir www/pkg target/wasm/wasm32-unknown-unknown/release/guardreasoner.wasm
optimize_in_background www/pkg ""

[ "$single" = 1 ] && { wait_for_optimize; exit 0; }
if ! rustup run "$NIGHTLY" rustc --version >/dev/null 2>&1 || ! rustup component list --toolchain "$NIGHTLY" --installed | grep -q rust-src; then
  echo "installing $NIGHTLY with rust-src (the threaded build rebuilds std with atomics)..."
  rustup toolchain install "$NIGHTLY" --profile minimal --component rust-src --target wasm32-unknown-unknown
fi
# RUSTFLAGS replaces .cargo/config.toml's flags, so simd128 is named again. The memory is shared
# and imported (the pool's workers instantiate the module over it) and may grow to 4 GiB, as
# the single-threaded module's; the thread-local storage symbols are exported for wasm-bindgen.
link=""
for arg in --shared-memory --import-memory --max-memory=4294967296 --export=__wasm_init_tls --export=__tls_size --export=__tls_align --export=__tls_base; do
  link="$link -C link-arg=$arg"
done
# Both threaded packages share one target dir: std and the dependencies are built once, with the
# same flags; `cargo rustc` hands the relaxed build's extra feature to our crate alone.
threaded() { # pkg dir, extra rustc flags for our crate, extra wasm-opt features
  RUSTFLAGS="-C target-feature=+simd128,+atomics,+bulk-memory,+mutable-globals$link" \
    cargo "+$NIGHTLY" rustc --release --target wasm32-unknown-unknown --lib --no-default-features --features gpu,threads \
    -Z build-std=panic_abort,std --target-dir target/wasm-threads -- $2
  rm -rf "$1"
  wasm-bindgen --target web --out-dir "$1" target/wasm-threads/wasm32-unknown-unknown/release/guardreasoner.wasm
  optimize_in_background "$1" "--enable-threads $3"
}
threaded www/pkg-threads "" ""
# The same with relaxed-SIMD integer dot products, for browsers that have them (the worker checks).
threaded www/pkg-threads-relaxed "-C target-feature=+relaxed-simd" "--enable-relaxed-simd"
wait_for_optimize
# The kernel's name is chosen at compile time: a relaxed package without it was built without
# the feature (a build cargo thought fresh).
grep -q "simd128+relaxed" www/pkg-threads-relaxed/guardreasoner_bg.wasm || { echo "www/pkg-threads-relaxed lacks relaxed SIMD" >&2; exit 1; }
! grep -q "simd128+relaxed" www/pkg-threads/guardreasoner_bg.wasm || { echo "www/pkg-threads has relaxed SIMD" >&2; exit 1; }
