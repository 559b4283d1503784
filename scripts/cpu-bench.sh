#!/usr/bin/env bash
# CPU speed next to llama.cpp, in one run on this machine: `guardreasoner bench` and llama.cpp's
# `llama-bench` on the same GGUF files (the synthetic GuardReasoner-1B in Q4_0 and Q8_0 from
# `guardreasoner synth`, and SmolLM2-135M Q4_1), same prompt length, new tokens and threads.
# Prints a markdown table with the ratios; the JSON lines go to .cache/cpu-bench/results.jsonl.
#
#   scripts/cpu-bench.sh [--prompt 512] [--gen 64] [--threads 2] [--models "a.gguf b.gguf"]
#
# llama-bench is built once, for this CPU (GGML_NATIVE), from the llama.cpp that llama-cpp-python
# 0.3.36 vendors (its sdist from PyPI; cmake and ninja from PyPI too), under .cache/llamacpp.
# Needs the test assets (scripts/fetch-test-assets.sh) for the tokenizer and SmolLM2.
set -euo pipefail
cd "$(dirname "$0")/.."

prompt=512
gen=64
threads=2
models=""
while [ $# -gt 0 ]; do
    case "$1" in
        --prompt) prompt="$2"; shift 2 ;;
        --gen) gen="$2"; shift 2 ;;
        --threads) threads="$2"; shift 2 ;;
        --models) models="$2"; shift 2 ;;
        -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
        *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

out=.cache/cpu-bench
mkdir -p "$out"
bin=target/release/guardreasoner
[ -x "$bin" ] || cargo build --release

tools=.cache/llamacpp/tools
src=.cache/llamacpp/src/llama_cpp_python-0.3.36/vendor/llama.cpp
llama_bench="$src/build/bin/llama-bench"
if [ ! -x "$llama_bench" ]; then
    echo "building llama.cpp's llama-bench for this CPU (several minutes)..." >&2
    mkdir -p .cache/llamacpp/src
    pip install -q --target "$tools" scikit-build-core cmake ninja
    [ -f .cache/llamacpp/src/llama_cpp_python-0.3.36.tar.gz ] ||
        PYTHONPATH="$PWD/$tools" pip download -q llama-cpp-python==0.3.36 --no-deps --no-binary :all: \
            --no-build-isolation -d .cache/llamacpp/src
    tar xzf .cache/llamacpp/src/llama_cpp_python-0.3.36.tar.gz -C .cache/llamacpp/src
    (
        export PATH="$PWD/$tools/bin:$PATH" PYTHONPATH="$PWD/$tools"
        cmake -S "$src" -B "$src/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
            -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF >&2
        cmake --build "$src/build" --target llama-bench -j "$(nproc)" >&2
    )
fi

if [ -z "$models" ]; then
    for quant in q4_0 q8_0; do
        model="$out/synth-1b-$quant.gguf"
        [ -f "$model" ] || "$bin" synth --out "$model" --quant "$quant" >&2
        models="$models $model"
    done
    models="$models .cache/models/SmolLM2-135M-Instruct.Q4_1.gguf"
fi

results="$out/results.jsonl"
: > "$results"
cpu="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
for model in $models; do
    echo "ours: $model" >&2
    # As llama-bench measures: prefill of the whole prompt, and decode from an empty context
    # (its tg test has no prompt), so two runs: the prompt, then one token and the new tokens.
    prefill="$("$bin" bench --model "$model" --quiet --prompt-tokens "$prompt" --gen 1 --threads "$threads" --json)"
    decode="$("$bin" bench --model "$model" --quiet --prompt-tokens 1 --gen "$gen" --threads "$threads" --json)"
    python3 -c '
import json, sys
p, d = json.loads(sys.argv[1]), json.loads(sys.argv[2])
p["engine"] = "guardreasoner"
p["decode_tokens_per_s"] = d["decode_tokens_per_s"]
p["peak_host_bytes"] = max(p["peak_host_bytes"] or 0, d["peak_host_bytes"] or 0)
print(json.dumps(p))
' "$prefill" "$decode" >> "$results"
    echo "llama.cpp: $model" >&2
    "$llama_bench" -m "$model" -p "$prompt" -n "$gen" -t "$threads" -r 2 -o json 2>/dev/null | python3 -c '
import json, sys
model = sys.argv[1]
r = {"engine": "llama.cpp", "model": model}
for t in json.load(sys.stdin):
    r["prefill_tokens_per_s" if t["n_prompt"] > 0 else "decode_tokens_per_s"] = t["avg_ts"]
print(json.dumps(r))
' "$model" >> "$results"
done

python3 - "$results" "$cpu" "$threads" "$prompt" "$gen" <<'EOF'
import json, os, sys
path, cpu, threads, prompt, gen = sys.argv[1:]
rows = {}
for line in open(path):
    r = json.loads(line)
    rows.setdefault(r["model"], {})[r["engine"]] = r
print(f"\n{cpu}, {threads} threads, {prompt}-token prompt, {gen} new tokens\n")
print("| model | ours prefill / decode (tokens/s) | llama.cpp prefill / decode | ratio | our kernel, peak memory |")
print("|---|---|---|---|---|")
for model, r in rows.items():
    o, l = r.get("guardreasoner", {}), r.get("llama.cpp", {})
    op, od = o.get("prefill_tokens_per_s", 0), o.get("decode_tokens_per_s", 0)
    lp, ld = l.get("prefill_tokens_per_s", 0), l.get("decode_tokens_per_s", 0)
    ratio = f"{op / lp:.2f}x / {od / ld:.2f}x" if lp and ld else "-"
    kernel = o.get("backend", "").split(", ")[-1].rstrip(")")
    peak = f"{o.get('peak_host_bytes', 0) / 2**20:.0f} MiB"
    print(f"| {os.path.basename(model)} | {op:.1f} / {od:.1f} | {lp:.1f} / {ld:.1f} | {ratio} | {kernel}, {peak} |")
EOF
