#!/usr/bin/env bash
# The test suite on a fresh machine, in two tiers (docs/testing.md says which to run when).
#
#   scripts/test.sh          the fast tier (what CI runs): every front door and shipped path --
#                            each CLI command, predict and eval, the JS API on WebGPU (SwiftShader)
#                            and on the wasm CPU path, the demo and chat pages, the evaluator end to
#                            end, the engine on the CPU and on lavapipe against the transformers
#                            goldens, every model format, the kernels' bit-for-bit batch
#                            invariance, the tokenizer goldens, the bad-input suite, every WGSL
#                            variant through naga and the stored fuzz inputs -- plus formatting
#                            and clippy on both targets.
#   scripts/test.sh --full   everything: the fast tier plus the Rust tests marked
#                            `#[ignore = "full tier: ..."]`, the browser tests in
#                            tests/browser/full/, the threaded and relaxed-SIMD wasm packages and
#                            wasm-opt, Ray, and fuzzing (scripts/fuzz.sh).
#
# Installs what is missing: the wasm32 target, rustfmt and clippy, wasm-bindgen-cli, Mesa's
# Vulkan driver (lavapipe) and Debian's Chromium, the npm packages and the test assets. With
# CI=true the build outputs (target/, fuzz/target/) and the downloaded assets live in a cache
# folder outside the clone (GUARDREASONER_CI_CACHE, default ~/.cache/guardreasoner-ci), as CI
# services cache target/: a second run on the same machine rebuilds only what changed (cargo's
# fingerprints decide); no test result is ever kept. Ends with each phase's time and the ten
# slowest tests of each runner.
set -euo pipefail
cd "$(dirname "$0")/.."
full=0
for arg in "$@"; do
  case "$arg" in
    --full) full=1 ;;
    -h | --help) sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown option $arg (use --full)" >&2; exit 2 ;;
  esac
done
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"
logs=$(mktemp -d)

# Each phase's wall time, printed as it ends and again at the end (where CI's minutes go), with
# the slowest tests of each runner.
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
  echo "== time per phase (${SECONDS}s in all, $([ "$full" = 1 ] && echo "full" || echo "fast") tier)"
  printf '  %s\n' "${timings[@]}"
  if [ -s "$logs/cargo-test.log" ]; then
    echo "== the ten slowest Rust tests"
    # libtest's --report-time: `test name ... ok <12.345s>`. (awk reads to the end: `head` would
    # close the pipe on sort, whose SIGPIPE fails the pipeline under pipefail.)
    sed -n 's/^test \(.*\) \.\.\. [a-zA-Z]* <\([0-9.]*\)s>$/\2 \1/p' "$logs/cargo-test.log" | sort -rn |
      awk 'NR <= 10 { printf "  %7.1fs  %s\n", $1, $2 }'
  fi
  if [ -s "$logs/browser-tests.log" ]; then
    echo "== the ten slowest browser tests"
    # node's spec reporter: `✔ name (12345.678ms)` for each test (files and suites included)
    sed -n 's/^ *[✔✖] \(.*\) (\([0-9.]*\)ms)$/\2\t\1/p' "$logs/browser-tests.log" | sort -rn |
      awk -F'\t' 'NR <= 10 { printf "  %7.1fs  %s\n", $1 / 1000, $2 }'
  fi
  rm -rf "$logs"
}
kill_tree() { # pid: it and every process below it
  local child
  for child in $(pgrep -P "$1" || true); do kill_tree "$child"; done
  kill "$1" 2>/dev/null || true
}
finish() {
  [ -z "${wasm_pid:-}" ] || kill_tree "$wasm_pid" # a failed run leaves no build behind
  report_timings
}
trap finish EXIT
phase "installs and test assets"

command -v cargo >/dev/null || { echo "needs Rust (https://rustup.rs)" >&2; exit 1; }
if [ "${CI:-}" = true ]; then
  # Build outputs and downloads in a cache outside the clone, linked into it (tests and scripts
  # name target/ and .cache/ paths). Test outputs (.cache/tiny-rebuilt, screenshots) stay in
  # the clone.
  ci_cache="${GUARDREASONER_CI_CACHE:-$HOME/.cache/guardreasoner-ci}"
  echo "CI: build outputs and downloads cached in $ci_cache"
  link_cached() { # path in the clone, folder in the cache
    mkdir -p "$ci_cache/$2" "$(dirname "$1")"
    [ -e "$1" ] || [ -L "$1" ] || ln -s "$ci_cache/$2" "$1"
  }
  link_cached target target
  link_cached fuzz/target fuzz-target
  for asset in models npm pylib ray-venv wheels; do link_cached ".cache/$asset" "assets/$asset"; done
fi
rustup target list --installed | grep -q wasm32-unknown-unknown || rustup target add wasm32-unknown-unknown
cargo fmt --version >/dev/null 2>&1 || rustup component add rustfmt
cargo clippy --version >/dev/null 2>&1 || rustup component add clippy
NIGHTLY=nightly-2026-05-20 # the threaded wasm build's and the fuzzer's (scripts/build-wasm.sh, scripts/fuzz.sh)
if [ "$full" = 1 ] && { ! rustup run "$NIGHTLY" rustc --version >/dev/null 2>&1 ||
  ! rustup component list --toolchain "$NIGHTLY" --installed | grep -q rust-src; }; then
  # Installed here, once, before the wasm build and the fuzzer both want it.
  rustup toolchain install "$NIGHTLY" --profile minimal --component rust-src --target wasm32-unknown-unknown
fi

# The wasm package builds beside everything up to the browser tests (its own target dir and log;
# wasm-bindgen-cli and the npm packages installed first where missing): compiling it fills the
# cores while downloads and tests wait on other things.
wasm_args=(--single --dev --clippy)
[ "$full" = 1 ] && wasm_args=(--clippy)
# Its own time is written when it ends (the phase that waits for it only says how long it waited).
{
  start=$SECONDS
  status=0
  scripts/build-wasm.sh "${wasm_args[@]}" >"$logs/build-wasm.log" 2>&1 || status=$?
  echo $((SECONDS - start)) >"$logs/build-wasm.seconds"
  exit "$status"
} &
wasm_pid=$!
missing=()
ls /usr/share/vulkan/icd.d/lvp_icd*.json >/dev/null 2>&1 || missing+=(mesa-vulkan-drivers)
[ -x /usr/bin/chromium ] || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]} (apt)..."
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if [ "$full" = 1 ]; then scripts/fetch-test-assets.sh --full; else scripts/fetch-test-assets.sh; fi

# Lints without a second compile of the dependencies: clippy-driver, as `cargo clippy` runs it
# (its -D warnings handed over as `cargo clippy -- -D warnings` does), compiles our crate in the
# release builds themselves -- natively every target here, wasm32 in the wasm build above
# (build-wasm.sh --clippy) -- where `cargo clippy` would first check every dependency again.
CLIPPY_DENY_WARNINGS="-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__"
linted() { RUSTC_WORKSPACE_WRAPPER=clippy-driver CLIPPY_ARGS="$CLIPPY_DENY_WARNINGS" "$@"; }

phase "format"
cargo fmt --check
if [ "$full" = 1 ]; then
  # The library without the GPU backend, as the fuzz targets build it (its dependencies have other
  # features: a minute or two of building, so the full tier's).
  phase "clippy on the library without the GPU feature"
  linted cargo build --release --lib --no-default-features
fi

phase "cargo test --no-run (release; clippy on every target as it builds)"
linted cargo test --release --all-targets --no-run --message-format=json-render-diagnostics >"$logs/build.jsonl"
# The test binaries, longest-running first (the queue below is better packed that way).
python3 - "$logs/build.jsonl" >"$logs/test-binaries" <<'PY'
import json, sys
slow = ["smollm2", "tiny_goldens", "cli_predict", "zoo", "cli_commands", "ray_shards", "gpu_engine"]
found = []
for line in open(sys.argv[1]):
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("profile", {}).get("test") and m.get("executable"):
        found.append((m["target"]["name"], m["executable"], m["target"]["kind"][0]))
rank = lambda t: slow.index(t[0]) if t[0] in slow else len(slow)
for name, exe, kind in sorted(found, key=rank):
    print(f"{name}:{kind}\t{exe}")
PY

phase "cargo test (release; the test binaries two at a time)"
ignored=()
[ "$full" = 1 ] && ignored=(--include-ignored)
# As `cargo test` runs them (from the repository root), but two binaries at a time: many tests wait
# on processes, lavapipe or files, so one binary at a time leaves a core idle. Each test's time:
# libtest's --report-time, unstable, allowed for the test binaries alone by RUSTC_BOOTSTRAP.
# Both queues (these binaries, then the browser files) run a job with `run_logged`: its output
# in a log of its own, printed whole when it ends, and "ok" or "failed" in LOG.status.
run_logged() { # log, command...
  local log=$1
  shift
  if "$@" >"$log" 2>&1; then echo "ok" >>"$log.status"; else echo "failed" >>"$log.status"; fi
}
export -f run_logged
run_test_binary() { # name, executable
  local log="$logs/test-$1.log"
  run_logged "$log" env RUSTC_BOOTSTRAP=1 "$2" "${ignored[@]}" -Z unstable-options --report-time
  { echo "     Running $1 ($2)"; cat "$log"; } >>"$logs/cargo-test.log"
  echo "  $1: $(grep -E '^test result' "$log" | tail -1)"
}
export -f run_test_binary
export logs
export ignored_args="${ignored[*]:-}"
while IFS=$'\t' read -r name exe; do printf '%s\0%s\0' "$name" "$exe"; done <"$logs/test-binaries" |
  xargs -0 -n 2 -P 2 bash -c 'ignored=($ignored_args); run_test_binary "$0" "$1"'
cat "$logs/cargo-test.log"
failed=$(grep -l failed "$logs"/test-*.status 2>/dev/null || true)
if [ -n "$failed" ]; then
  echo "test binaries that failed: $(basename -a $failed | sed 's/^test-//; s/\.log\.status$//' | tr '\n' ' ')" >&2
  exit 1
fi

if [ "$full" = 1 ]; then
  phase "fuzzing the parsers of untrusted input (15 s per target; scripts/fuzz.sh 600 for longer)"
  scripts/fuzz.sh 15
fi

if [ "$full" = 1 ]; then
  phase "waiting for the wasm packages (single-threaded, threaded, relaxed SIMD; wasm-opt)"
else
  phase "waiting for the wasm package (single-threaded, without wasm-opt)"
fi
wasm_status=0
wait "$wasm_pid" || wasm_status=$?
wasm_pid=""
timings+=("$(printf '%5ss  %s' "$(cat "$logs/build-wasm.seconds" 2>/dev/null || echo '?')" "(beside the phases above) scripts/build-wasm.sh ${wasm_args[*]}")")
tail -5 "$logs/build-wasm.log"
[ "$wasm_status" = 0 ] || { cat "$logs/build-wasm.log" >&2; echo "scripts/build-wasm.sh failed" >&2; exit 1; }

phase "browser tests (headless Chromium, WebGPU on SwiftShader without a GPU)"
# The fast tier's files two at a time (each has its own server, browser and scratch folders, and
# waits on SwiftShader or a worker much of the time), longest first as measured (node's own
# --test-concurrency sorts them by name, which left the longest for last); a file not named here
# runs after those. Each file's output is printed whole when it ends. The full tier's files run
# after them, one at a time (its fault and soak runs time items).
browser_slow=(zoo evaluate api demo quant storage)
browser_files=()
for name in "${browser_slow[@]}"; do
  if [ -f "tests/browser/$name.test.mjs" ]; then browser_files+=("tests/browser/$name.test.mjs"); fi
done
for file in tests/browser/*.test.mjs; do
  [[ " ${browser_files[*]} " == *" $file "* ]] || browser_files+=("$file")
done
run_browser_file() { # file
  local log
  log="$logs/browser-$(basename "$1" .test.mjs).log"
  run_logged "$log" node --test --test-reporter=spec "$1"
  { echo "== $1"; cat "$log"; } >>"$logs/browser-tests.log"
  echo "  $1: $(grep -E '^ℹ (pass|fail) ' "$log" | tr '\n' ' ')"
}
export -f run_browser_file
printf '%s\0' "${browser_files[@]}" | xargs -0 -n 1 -P 2 bash -c 'run_browser_file "$0"'
cat "$logs/browser-tests.log"
failed=$(grep -l failed "$logs"/browser-*.status 2>/dev/null || true)
if [ -n "$failed" ]; then
  echo "browser test files that failed: $(basename -a $failed | sed 's/^browser-//; s/\.log\.status$//' | tr '\n' ' ')" >&2
  exit 1
fi
if [ "$full" = 1 ]; then
  node --test --test-reporter=spec tests/browser/full/ 2>&1 | tee -a "$logs/browser-tests.log"
fi
