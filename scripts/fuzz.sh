#!/usr/bin/env bash
# Fuzz the parsers of untrusted input with cargo-fuzz (libFuzzer, AddressSanitizer): GGUF (header,
# metadata, embedded tokenizer, tensors), safetensors, config.json + generation_config.json, the
# reasoning parser, and predictions/benchmark files (the bodies are `guardreasoner::fuzz`, which
# tests/fuzz_corpus.rs also replays on stable). Seeds come from fuzz/seeds.py and the committed
# inputs in tests/fixtures/fuzz/; what the fuzzer learns is kept in .cache/fuzz/corpus for the
# next run. The fuzz build leaves out the GPU backend (no default features: no wgpu). A crash, a panic, a leak, an
# allocation over 512 MiB or 2 GiB of memory fails the run and leaves the input in
# fuzz/artifacts/<target>/ (reproduce: cargo +NIGHTLY fuzz run <target> <file>).
# Usage: scripts/fuzz.sh [SECONDS_PER_TARGET (default 20)] [TARGET ...]
set -euo pipefail
cd "$(dirname "$0")/.."
NIGHTLY=nightly-2026-05-20 # the toolchain of the threaded wasm build too
CARGO_FUZZ_VERSION=0.13.2
seconds="${1:-20}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(gguf_model safetensors_index hf_config reasoning_parser predictions)

rustup toolchain list | grep -q "^$NIGHTLY" || rustup toolchain install "$NIGHTLY" --profile minimal
if ! cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
  echo "installing cargo-fuzz $CARGO_FUZZ_VERSION..."
  cargo +"$NIGHTLY" install cargo-fuzz --locked --version "$CARGO_FUZZ_VERSION"
fi
PYTHONPATH=.cache/pylib python3 -c "import gguf" 2>/dev/null || scripts/fetch-test-assets.sh
seeds=.cache/fuzz/seeds
rm -rf "$seeds"
PYTHONPATH=.cache/pylib python3 fuzz/seeds.py "$seeds" ../shared/guardreasoner

echo "== building the fuzz targets (nightly, AddressSanitizer)"
cargo +"$NIGHTLY" fuzz build --fuzz-dir fuzz "${targets[@]:0:1}" >/dev/null 2>&1 || true # warm the shared deps
for target in "${targets[@]}"; do cargo +"$NIGHTLY" fuzz build --fuzz-dir fuzz "$target"; done

summary=()
for target in "${targets[@]}"; do
  corpus=".cache/fuzz/corpus/$target"
  mkdir -p "$corpus"
  log=".cache/fuzz/$target.log"
  echo "== fuzzing $target for ${seconds}s"
  status=0
  cargo +"$NIGHTLY" fuzz run --fuzz-dir fuzz "$target" "$corpus" "$seeds/$target" "tests/fixtures/fuzz/$target" -- \
    -max_total_time="$seconds" -rss_limit_mb=2048 -malloc_limit_mb=512 -timeout=10 -print_final_stats=1 \
    >"$log" 2>&1 || status=$?
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*' || echo "?")
  if [ "$status" -ne 0 ]; then
    tail -40 "$log" >&2
    echo "FINDING in $target: input saved under fuzz/artifacts/$target/ (log: $log)" >&2
    summary+=("$target: FINDING after $runs executions")
  else
    summary+=("$target: $runs executions, coverage $cov, no findings")
  fi
done
echo "== fuzz summary (${seconds}s per target)"
printf '  %s\n' "${summary[@]}"
! printf '%s\n' "${summary[@]}" | grep -q FINDING
