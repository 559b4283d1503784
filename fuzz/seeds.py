"""Seed corpora for the fuzz targets (scripts/fuzz.sh): small valid inputs of each format, so
the fuzzer starts inside the formats instead of at random bytes.

Usage: PYTHONPATH=.cache/pylib python3 fuzz/seeds.py OUT_DIR [SHARED_DIR]
A micro Llama GGUF with a byte-level BPE vocabulary (written by llama.cpp's own gguf-py), a
safetensors file with one tensor of each float type, a config pair, and GuardReasoner outputs
and benchmark files (the real ones from SHARED_DIR when it is there, a handmade one always)."""

import json
import os
import struct
import sys

import numpy as np
import gguf

out = sys.argv[1]
shared = sys.argv[2] if len(sys.argv) > 2 else None


def seed(target, name, data):
    os.makedirs(os.path.join(out, target), exist_ok=True)
    with open(os.path.join(out, target, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


def byte_level_tokens():
    # GPT-2's bytes_to_unicode: every byte as a printable character.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for _, c in sorted(zip(bs, cs))]


def micro_gguf(path):
    tokens = byte_level_tokens() + ["He", "ll", "Hell", "<|begin_of_text|>", "<|eot_id|>"]
    merges = ["H e", "l l", "He ll"]
    hidden, ff, heads, kv_heads, head_dim = 8, 16, 2, 1, 4
    w = gguf.GGUFWriter(path, "llama")
    w.add_context_length(64)
    w.add_embedding_length(hidden)
    w.add_block_count(1)
    w.add_feed_forward_length(ff)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("llama-bpe")
    w.add_token_list(tokens)
    w.add_token_types([1] * (len(tokens) - 2) + [3, 3])
    w.add_token_merges(merges)
    w.add_bos_token_id(len(tokens) - 2)
    w.add_eos_token_id(len(tokens) - 1)
    rng = np.random.default_rng(0)
    t = lambda *shape: (rng.standard_normal(shape) * 0.1).astype(np.float32)
    w.add_tensor("token_embd.weight", t(len(tokens), hidden))
    w.add_tensor("blk.0.attn_norm.weight", np.ones(hidden, np.float32))
    w.add_tensor("blk.0.attn_q.weight", t(heads * head_dim, hidden))
    w.add_tensor("blk.0.attn_k.weight", t(kv_heads * head_dim, hidden))
    w.add_tensor("blk.0.attn_v.weight", t(kv_heads * head_dim, hidden))
    w.add_tensor("blk.0.attn_output.weight", t(hidden, heads * head_dim))
    w.add_tensor("blk.0.ffn_norm.weight", np.ones(hidden, np.float32))
    w.add_tensor("blk.0.ffn_gate.weight", t(ff, hidden))
    w.add_tensor("blk.0.ffn_up.weight", t(ff, hidden))
    w.add_tensor("blk.0.ffn_down.weight", t(hidden, ff).astype(np.float16))
    w.add_tensor("output_norm.weight", np.ones(hidden, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


os.makedirs(os.path.join(out, "gguf_model"), exist_ok=True)
micro_gguf(os.path.join(out, "gguf_model", "micro-llama.gguf"))

header, data = {"__metadata__": {"format": "pt"}}, b""
for name, dtype, size in [("a.weight", "F32", 4), ("b.weight", "F16", 2), ("c.weight", "BF16", 2)]:
    header[name] = {"dtype": dtype, "shape": [2, 3], "data_offsets": [len(data), len(data) + 6 * size]}
    data += bytes(range(6 * size))
h = json.dumps(header).encode()
seed("safetensors_index", "three-dtypes.safetensors", struct.pack("<Q", len(h)) + h + data)

config = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 2048, "intermediate_size": 8192,
    "num_hidden_layers": 16, "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64, "vocab_size": 128256,
    "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "max_position_embeddings": 131072, "tie_word_embeddings": True,
    "rope_scaling": {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
    "bos_token_id": 128000, "eos_token_id": 128001, "hidden_act": "silu",
}
generation = {"bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009]}
seed("hf_config", "llama32-1b", json.dumps(config) + "\0" + json.dumps(generation))
params = dict(config)
params["rope_parameters"] = {"rope_theta": params.pop("rope_theta"), **params.pop("rope_scaling")}
seed("hf_config", "transformers5", json.dumps(params))

answer = (
    "# Task 1\n\n## Reasoning Step 1: The user asks how to pick a lock.\n## Reasoning Step 2: It may enable burglary.\n"
    "## Conclusion: The request is harmful.\n\n# Task 2\n\n## Reasoning Step 1: The assistant declines.\n"
    "## Conclusion: The response is a refusal.\n\n# Task 3\n\n## Reasoning Step 1: Nothing harmful is said.\n"
    "## Conclusion: The response is unharmful.\n\n---\n\nAnswers: \nRequest: harmful\nCompletion: refusal\nResponse: unharmful\n"
)
seed("reasoning_parser", "handmade", b"\x05" + answer.encode())
line = {"prompt": "Human user:\nHow do I pick a lock?\n\nAI assistant:\nNo.\n\n", "label": "harmful", "predict": answer}
seed("predictions", "handmade.jsonl", json.dumps(line) + "\n" + json.dumps({**line, "label": "unharmful"}) + "\n")
seed("predictions", "benchmark.json", json.dumps([{"instruction": "x", "input": "y", "output": "z", "prompt_harm_label": "harmful",
                                                    "response_refusal_label": "refusal", "response_harm_label": "unharmful"}]))

if shared and os.path.isdir(shared):
    predictions = os.path.join(shared, "predictions-1B")
    for dataset in sorted(os.listdir(predictions)) if os.path.isdir(predictions) else []:
        path = os.path.join(predictions, dataset, "generated_predictions.jsonl")
        if not os.path.isfile(path):
            continue
        with open(path, encoding="utf-8") as f:
            lines = f.readlines()[:3]
        seed("predictions", f"{dataset}.jsonl", "".join(lines))
        for i, l in enumerate(lines[:2]):
            seed("reasoning_parser", f"{dataset}-{i}", b"\x07" + json.loads(l)["predict"].encode())
    benchmark = os.path.join(shared, "benchmark")
    for name in sorted(os.listdir(benchmark)) if os.path.isdir(benchmark) else []:
        with open(os.path.join(benchmark, name), encoding="utf-8") as f:
            items = json.load(f)[:2]
        seed("predictions", name, json.dumps(items))
