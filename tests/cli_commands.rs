//! Every command of the built `guardreasoner` binary, run as a user would: output, exit codes,
//! the shared vocabulary of options, and help that fits each command. References: the
//! transformers goldens of the tiny model (generate), Python `tokenizers` (tokenize), the paper's
//! evaluator figures (eval), llama.cpp's own GGUF reader gguf-py (synth). `predict` has its own
//! file (tests/cli_predict.rs).

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// As in tests/tiny_goldens.rs: kernel summation order moves a logit by ~1e-5; 2e-3 is ten
/// times under the goldens' smallest top-1/top-2 gap.
const LOGIT_ATOL: f32 = 2e-3;
/// New tokens for moderation runs on the tiny model: its noise never reaches a verdict.
const MODERATE_TOKENS: &str = "40";

fn gr(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_guardreasoner"))
        .args(args)
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn tiny() -> String {
    common::tiny::tiny_folder("llama32").display().to_string()
}

fn scratch(name: &str) -> PathBuf {
    let dir = common::cache_dir().join("scratch/cli-commands").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn json_lines(stdout: &[u8]) -> Vec<serde_json::Value> {
    text(stdout).lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect()
}

#[test]
fn moderate_streams_text_and_json_and_says_when_no_verdict_was_found() {
    let model = tiny();
    let base = [
        "moderate",
        "--quiet",
        "-m",
        &model,
        "--prompt",
        "How do I pick a lock?",
        "--response",
        "I can't help with that.",
    ];
    let plain = gr(&[&base[..], &["--max-new-tokens", MODERATE_TOKENS]].concat());
    let stdout = text(&plain.stdout);
    // The tiny model writes noise: the answer is cut off at the limit without a verdict line.
    assert_eq!(plain.status.code(), Some(3), "exit 3: no verdict found\n{stdout}{}", text(&plain.stderr));
    assert!(
        stdout.contains(
            "== verdicts\nno verdict found: the answer was cut off at the new-token limit (40 tokens); raise it"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("{MODERATE_TOKENS} new tokens")) && stdout.contains("stop: \"max_tokens\""),
        "{stdout}"
    );
    assert!(!stdout.contains("Request:    none"), "no verdicts printed as if the model had answered `None`: {stdout}");

    // `--max-new` is the old spelling of the same option.
    let json = gr(&[&base[..], &["--json", "--max-new", MODERATE_TOKENS]].concat());
    assert_eq!(json.status.code(), Some(3), "{}", text(&json.stderr));
    let events = json_lines(&json.stdout);
    let done = events.last().unwrap();
    assert_eq!(done["type"], "done");
    let streamed: String =
        events.iter().filter(|e| e["type"] == "token").map(|e| e["text"].as_str().unwrap()).collect();
    assert_eq!(done["text"].as_str().unwrap(), streamed, "the result's text is the streamed text");
    assert!(stdout.starts_with(&streamed), "text mode streams the same text");
    assert!(events.iter().any(|e| e["type"] == "task_started"), "reasoning events are streamed");
    assert_eq!(done["newTokens"], 40);
    assert_eq!(done["stop"], "max_tokens");
    assert_eq!(done["verdictFound"], false);
    assert!(done["problem"].as_str().unwrap().contains("--max-new-tokens"));
    assert!(
        done["timings"]["totalSeconds"].as_f64().unwrap() > 0.0
            && done["timings"]["tokensPerSecond"].as_f64().unwrap() > 0.0
    );
    assert!(done["promptTokens"].as_u64().unwrap() > 100);
    // The first release's keys stay for scripts that read them, with the same values.
    assert_eq!((&done["new_tokens"], &done["prompt_tokens"]), (&done["newTokens"], &done["promptTokens"]));
    assert_eq!(done["result"]["tasks"], done["tasks"]);
}

#[test]
fn moderate_spellings_of_one_setting_give_one_result_and_unknown_words_are_refused() {
    let model = tiny();
    let run = |quant: &str, backend: &str| {
        let out = gr(&[
            "moderate",
            "--quiet",
            "-m",
            &model,
            "--prompt",
            "hi",
            "--json",
            "--max-new-tokens",
            "8",
            "--quant",
            quant,
            "--backend",
            backend,
        ]);
        assert_eq!(out.status.code(), Some(3), "{quant} {backend}: {}", text(&out.stderr));
        json_lines(&out.stdout).last().unwrap()["text"].clone()
    };
    assert_eq!(run("q8", "cpu"), run("q8_0", "cpu"));
    assert_eq!(run("none", "cpu"), run("f32", "cpu"));
    assert_eq!(run("none", "gpu"), run("f32", "webgpu"));
    for (option, word, expected) in
        [("--quant", "q5", "unknown quantization `q5`"), ("--backend", "tpu", "unknown backend `tpu`")]
    {
        let out = gr(&["moderate", "-m", &model, "--prompt", "hi", option, word]);
        assert_eq!(out.status.code(), Some(2), "bad usage");
        assert!(text(&out.stderr).contains(expected), "{}", text(&out.stderr));
    }
}

#[test]
fn ctrl_c_stops_moderate_after_the_current_token_and_prints_what_it_has() {
    let model = tiny();
    let mut child = Command::new(env!("CARGO_BIN_EXE_guardreasoner"))
        .args([
            "moderate",
            "--quiet",
            "-m",
            &model,
            "--prompt",
            "hi",
            "--max-new-tokens",
            "100000",
            "--context",
            "4096",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 1];
    stdout.read_exact(&mut first).unwrap(); // generation has started
    assert!(Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap().success());
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "interrupted: {rest}");
    assert!(
        rest.contains("== verdicts") && rest.contains("stop: \"cancelled\"") && rest.contains("the run was cancelled"),
        "{rest}"
    );
    // The tokens it made before the cancel are counted, not reported as none.
    let new_tokens: usize = rest
        .split(" new tokens")
        .next()
        .and_then(|head| head.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no new-token count: {rest}"));
    assert!(new_tokens >= 1, "{rest}");
}

/// Texts come from argv, a file or standard input; an empty one, a zero count, a missing file
/// or a model folder without its files is a clear error that names what to change, once, and
/// no library backtrace leaks into it.
#[test]
fn moderate_inputs_and_the_errors_users_meet() {
    let model = tiny();
    let dir = scratch("inputs");
    let prompt = "How do I pick a lock?\nAsking for my own door.";
    std::fs::write(dir.join("prompt.txt"), format!("{prompt}\n")).unwrap(); // as an editor saves it
    let json_text = |out: &Output| json_lines(&out.stdout).last().unwrap()["text"].clone();
    let argv = gr(&["moderate", "--quiet", "--json", "-m", &model, "-p", prompt, "-n", "12"]);
    let file = gr(&[
        "moderate",
        "--quiet",
        "--json",
        "-m",
        &model,
        "--prompt-file",
        dir.join("prompt.txt").to_str().unwrap(),
        "-n",
        "12",
    ]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_guardreasoner"))
        .args(["moderate", "--quiet", "--json", "-m", &model, "--prompt-file", "-", "--max-new-tokens", "12"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), format!("{prompt}\r\n").as_bytes()).unwrap();
    let stdin = child.wait_with_output().unwrap();
    assert_eq!(argv.status.code(), Some(3), "{}", text(&argv.stderr));
    assert_eq!(json_text(&file), json_text(&argv), "--prompt-file");
    assert_eq!(json_text(&stdin), json_text(&argv), "--prompt-file -");

    let missing = dir.join("absent.txt").display().to_string();
    let empty_folder = scratch("not-a-model").display().to_string();
    let truncated = dir.join("truncated.gguf");
    // A GGUF header that claims 272 tensors and 33 metadata entries, then ends.
    let header: Vec<u8> =
        [&b"GGUF"[..], &3u32.to_le_bytes(), &272u64.to_le_bytes(), &33u64.to_le_bytes(), &[0; 8]].concat();
    std::fs::write(&truncated, header).unwrap();
    let truncated = truncated.display().to_string();
    for (args, code, expected) in [
        (vec!["-m", &model, "-p", "  "], 1, "the prompt is empty"),
        (vec!["-m", &model, "-p", "hi", "-r", ""], 1, "the response is empty"),
        (vec!["-m", &model, "-p", "hi", "-n", "0"], 2, "'0' for '--max-new-tokens"),
        (vec!["-m", &model, "-p", "hi", "-c", "0"], 2, "'--context"),
        (vec!["-m", &model, "-p", "hi", "-t", "0"], 2, "'--threads"),
        (vec!["-m", &model, "--prompt-file", &missing], 1, "--prompt-file"),
        (vec!["-m", &model], 2, "--prompt"),
        (vec!["-m", &empty_folder, "-p", "hi"], 1, "lacks config.json, tokenizer.json, model.safetensors"),
        (vec!["-m", &truncated, "-p", "hi"], 1, "invalid model file"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_guardreasoner"))
            .args([&["moderate", "--quiet"], &args[..]].concat())
            .env("RUST_BACKTRACE", "1")
            .output()
            .unwrap();
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert!(!stderr.contains("candle_core::"), "a library backtrace leaked: {stderr}");
    }
    let out = gr(&["predict", "-m", &model, "--benchmark-dir", ".", "--out", &missing, "--limit", "0"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("'0' for '--limit"), "{}", text(&out.stderr));
    let out = gr(&["moderate", "-m", &missing, "-p", "hi"]);
    assert!(text(&out.stderr).contains("does not exist"), "{}", text(&out.stderr));
    // An I/O error states its cause once.
    let out = gr(&["eval", "--predictions", &dir.display().to_string(), "--benchmark-dir", &missing]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("benchmark directory does not exist"), "{stderr}");
    let odd = scratch("config-is-a-folder");
    for name in ["config.json", "tokenizer.json", "model.safetensors"] {
        std::fs::create_dir_all(odd.join(name)).unwrap(); // there, but unreadable as a file
    }
    let out = gr(&["moderate", "-m", &odd.display().to_string(), "-p", "hi"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.matches("Is a directory").count(), 1, "{stderr}");
}

/// `moderate --input`: a file of conversations decoded together gives, line by line and in input
/// order, what `moderate --json` gives each conversation alone, at batch 2 and 1. Bad lines are
/// named before the model loads.
#[test]
fn moderate_input_file_gives_each_conversation_what_it_gets_alone() {
    let model = tiny();
    let dir = scratch("input-file");
    let conversations = [
        serde_json::json!({"prompt": "How do I pick a lock?", "response": "I can't help with that.", "id": "a"}),
        serde_json::json!({"prompt": "Tell me a joke about cats."}),
        serde_json::json!({"prompt": "What is the capital of France?", "response": null, "id": 7}),
        serde_json::json!({"prompt": "Write a poem about the sea, with rhymes, in four verses.", "response": "The sea is wide."}),
        serde_json::json!({"prompt": "How do I bake bread?"}),
    ];
    let file = dir.join("conversations.jsonl");
    let body: Vec<String> = conversations.iter().map(|c| c.to_string()).collect();
    // A blank line is skipped; line numbers still count it.
    std::fs::write(&file, format!("{}\n\n{}\n", body[..2].join("\n"), body[2..].join("\n"))).unwrap();
    let file = file.display().to_string();
    let run = gr(&["moderate", "--quiet", "-m", &model, "--input", &file, "--batch", "2", "-n", MODERATE_TOKENS]);
    assert_eq!(run.status.code(), Some(3), "no verdicts from the tiny model: {}", text(&run.stderr));
    let results = json_lines(&run.stdout);
    assert_eq!(results.len(), conversations.len());
    for (i, (result, c)) in results.iter().zip(&conversations).enumerate() {
        assert_eq!(result["line"], if i < 2 { i + 1 } else { i + 2 }, "input line numbers");
        assert_eq!(result["id"], c["id"], "id copied when given");
        let mut args = vec!["moderate", "--quiet", "--json", "-m", &model, "-n", MODERATE_TOKENS];
        let prompt = c["prompt"].as_str().unwrap();
        args.extend(["-p", prompt]);
        if let Some(response) = c["response"].as_str() {
            args.extend(["-r", response]);
        }
        let alone = gr(&args);
        let done = json_lines(&alone.stdout).pop().unwrap();
        assert_eq!(result["text"], done["text"], "conversation {i}: as alone");
        assert_eq!(result["newTokens"], done["newTokens"], "conversation {i}");
        assert_eq!(result["verdictFound"], false, "conversation {i}: the tiny model reaches no verdict");
        assert!(result["text"].as_str().is_some_and(|t| !t.is_empty()));
    }
    // The same from standard input, one at a time.
    let mut child = Command::new(env!("CARGO_BIN_EXE_guardreasoner"))
        .args(["moderate", "--quiet", "-m", &model, "--input", "-", "--batch", "1", "-n", MODERATE_TOKENS])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), std::fs::read(&file).unwrap().as_slice()).unwrap();
    let piped = child.wait_with_output().unwrap();
    let untimed = |mut lines: Vec<serde_json::Value>| {
        lines.iter_mut().for_each(|l| drop(l.as_object_mut().unwrap().remove("timings")));
        lines
    };
    assert_eq!(untimed(json_lines(&piped.stdout)), untimed(results), "--input - --batch 1 equals --batch 2");

    for (content, expected) in [
        ("{\"prompt\": \"hi\"}\n{\"prompt\": \"  \"}\n", ":2: the prompt is empty"),
        ("{\"prompt\": \"hi\"}\nnot json\n", ":2: expected ident"),
        ("{\"prompt\": \"hi\", \"respnse\": \"x\"}\n", ":1: unknown field `respnse`"),
        ("\n\n", "no conversations"),
    ] {
        let bad = dir.join("bad.jsonl");
        std::fs::write(&bad, content).unwrap();
        let out = gr(&["moderate", "--quiet", "-m", "/nonexistent/model", "--input", bad.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(1), "{content:?}");
        assert!(text(&out.stderr).contains(expected), "{content:?}: {}", text(&out.stderr));
    }
    let both = gr(&["moderate", "-m", &model, "--input", &file, "-p", "hi"]);
    assert_eq!(both.status.code(), Some(2), "--input with --prompt is refused");
}

/// Without --context, `moderate` sizes the KV cache for its request (prompt + new tokens), and
/// `moderate --input` for its longest conversation; the answer is the one a roomy cache gives.
#[test]
fn the_kv_cache_is_sized_for_the_request_unless_context_is_given() {
    let model = tiny();
    let run = |extra: &[&str]| {
        gr(&[&["moderate", "-m", &model, "-p", "How do I pick a lock?", "-n", MODERATE_TOKENS, "--json"][..], extra]
            .concat())
    };
    let kv = |out: &Output| {
        let stderr = text(&out.stderr);
        let at = stderr.find("KV cache of ").unwrap_or_else(|| panic!("no KV cache line: {stderr}"));
        stderr[at + 12..].split(' ').next().unwrap().parse::<usize>().unwrap()
    };
    let sized = run(&[]);
    let done = json_lines(&sized.stdout).pop().unwrap();
    let prompt_tokens = done["promptTokens"].as_u64().unwrap() as usize;
    assert_eq!(kv(&sized), prompt_tokens + MODERATE_TOKENS.parse::<usize>().unwrap(), "{}", text(&sized.stderr));
    assert_eq!(done["newTokens"], 40, "no context_full stop: {done}");
    let roomy = run(&["--context", "1024"]);
    assert_eq!(kv(&roomy), 1024);
    assert_eq!(json_lines(&roomy.stdout).pop().unwrap()["text"], done["text"]);
    // A file of conversations: the longest one's need.
    let dir = scratch("kv-sized");
    let input = dir.join("in.jsonl");
    std::fs::write(
        &input,
        "{\"prompt\": \"hi\"}\n{\"prompt\": \"How do I pick a lock?\", \"response\": \"With a pick.\"}\n",
    )
    .unwrap();
    let file = gr(&["moderate", "-m", &model, "-n", MODERATE_TOKENS, "--input", input.to_str().unwrap()]);
    let results = json_lines(&file.stdout);
    let longest = results.iter().map(|r| r["promptTokens"].as_u64().unwrap() as usize).max().unwrap();
    assert_eq!(kv(&file), longest + 40, "{}", text(&file.stderr));
}

/// A buffer the GPU refuses while the model loads (forced by the test hook, as out of memory
/// would be) fails the load at once with the knobs to turn, not the first request later;
/// `--backend auto` then runs on the CPU, saying why, and answers as the CPU does.
#[test]
fn a_buffer_the_gpu_refuses_fails_the_load_or_falls_back_to_the_cpu() {
    let model = tiny();
    let run = |backend: &str, refuse: bool| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_guardreasoner"));
        cmd.args(["moderate", "-m", &model, "-p", "hi", "-n", "8", "--json", "--quant", "none", "--backend", backend]);
        if refuse {
            cmd.env("GUARDREASONER_GPU_REFUSE_BUFFER", "1");
        }
        cmd.output().unwrap()
    };
    let refused = run("gpu", true);
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused.stderr));
    let stderr = text(&refused.stderr);
    assert!(stderr.contains("the GPU refused a buffer of the model ("), "{stderr}");
    assert!(stderr.contains("--backend cpu") && stderr.contains("--context"), "{stderr}");
    assert_eq!(stderr.trim().lines().filter(|l| l.contains("refused")).count(), 1, "said once: {stderr}");
    let auto = run("auto", true);
    assert_eq!(auto.status.code(), Some(3), "{}", text(&auto.stderr));
    assert!(text(&auto.stderr).contains("note: the GPU failed (the GPU refused a buffer"), "{}", text(&auto.stderr));
    assert!(text(&auto.stderr).contains("backend: cpu"), "{}", text(&auto.stderr));
    let cpu = run("cpu", false);
    let answer = |out: &Output| json_lines(&out.stdout).pop().unwrap()["text"].clone();
    assert_eq!(answer(&auto), answer(&cpu));
}

/// `--backend auto` takes the fastest path that works: on a machine whose only GPU adapter is
/// Mesa's lavapipe (a GPU emulated on the CPU, as on CI) it runs on the CPU, saying why, and
/// answers as the CPU does; where a real GPU is the adapter, it runs there.
#[test]
fn auto_passes_over_a_gpu_emulated_on_the_cpu() {
    let model = tiny();
    let run = |backend: &str| {
        gr(&["moderate", "-m", &model, "-p", "hi", "-n", "8", "--json", "--quant", "none", "--backend", backend])
    };
    let (gpu, auto) = (run("gpu"), run("auto"));
    let (gpu_log, auto_log) = (text(&gpu.stderr), text(&auto.stderr));
    assert_eq!(auto.status.code(), Some(3), "{auto_log}");
    if gpu_log.contains("backend: gpu (llvmpipe") {
        assert!(auto_log.contains("backend: cpu"), "{auto_log}");
        assert!(auto_log.contains("note: passed over the GPU adapter (llvmpipe"), "{auto_log}");
        assert!(auto_log.contains("emulates a GPU on the CPU"), "{auto_log}");
        let answer = |out: &Output| json_lines(&out.stdout).pop().unwrap()["text"].clone();
        assert_eq!(answer(&auto), answer(&run("cpu")));
    } else {
        assert!(gpu_log.contains("backend: gpu ("), "a GPU adapter: {gpu_log}");
        assert!(auto_log.contains("backend: gpu ("), "a real GPU is taken: {auto_log}");
    }
}

#[test]
fn generate_matches_the_transformers_goldens() {
    let model = tiny();
    let seq = &common::tiny::golden_sequences("llama32")[0];
    let ids: Vec<String> = seq.input_ids.iter().map(u32::to_string).collect();
    let logits_file = scratch("generate").join("logits.f32");
    let max_new = seq.greedy.len().to_string();
    let out = gr(&[
        "generate",
        "--quiet",
        "-m",
        &model,
        "--tokens",
        &ids.join(","),
        "--max-new-tokens",
        &max_new,
        "--ignore-eos",
        "--logits-out",
        logits_file.to_str().unwrap(),
        // Exact weights, as transformers ran them (the default is q8).
        "--quant",
        "none",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let tokens: Vec<u32> = serde_json::from_value(json_lines(&out.stdout)[0]["tokens"].clone()).unwrap();
    assert_eq!(tokens, seq.greedy, "greedy tokens equal transformers'");
    let bytes = std::fs::read(&logits_file).unwrap();
    let logits: Vec<f32> = bytes.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
    for (id, want) in seq.top_ids.iter().zip(&seq.top_values) {
        let got = logits[*id as usize];
        assert!((got - want).abs() <= LOGIT_ATOL, "logit {id}: got {got}, want {want}");
    }
    let missing = gr(&["generate", "-m", &model]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(text(&missing.stderr).contains("--tokens"), "{}", text(&missing.stderr));
}

#[test]
fn tokenize_matches_python_tokenizers() {
    let golden: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(common::repo_dir().join("tests/fixtures/tokenizer_golden.json")).unwrap(),
    )
    .unwrap();
    let model = tiny(); // its tokenizer.json is the patched Llama 3 tokenizer of the goldens
    let strings = golden["hard_strings"].as_array().unwrap();
    // Special-token text and NUL (which no command line can carry) are left to tests/tokenizer.rs.
    for case in strings
        .iter()
        .filter(|c| !c["text"].as_str().unwrap().contains("<|") && !c["text"].as_str().unwrap().contains('\0'))
    {
        let out = gr(&["tokenize", "-m", &model, "--text", case["text"].as_str().unwrap()]);
        assert!(out.status.success(), "{}: {}", case["name"], text(&out.stderr));
        assert_eq!(json_lines(&out.stdout)[0]["ids"], case["patched"]["ids"], "{}", case["name"]);
    }
    let help = text(&gr(&["tokenize", "--help"]).stdout);
    assert!(
        !help.contains("--backend") && !help.contains("--quant"),
        "tokenize offers no options that do nothing: {help}"
    );
}

#[test]
fn a_hub_repo_id_loads_from_the_local_cache_or_says_how_to_fetch_it() {
    let hub = scratch("hf-hub");
    let snapshot = hub.join("models--acme--tiny-guard/snapshots/0123abcd");
    std::fs::create_dir_all(&snapshot).unwrap();
    for file in ["config.json", "generation_config.json", "tokenizer.json", "model.safetensors"] {
        std::fs::copy(Path::new(&tiny()).join(file), snapshot.join(file)).unwrap();
    }
    let tokenize = |repo: &str| {
        Command::new(env!("CARGO_BIN_EXE_guardreasoner"))
            .args(["tokenize", "-m", repo, "--text", "hello"])
            .env("HF_HUB_CACHE", &hub)
            .env("HF_HUB_OFFLINE", "1")
            .output()
            .unwrap()
    };
    let cached = tokenize("acme/tiny-guard");
    assert!(cached.status.success(), "{}", text(&cached.stderr));
    let direct = gr(&["tokenize", "-m", &tiny(), "--text", "hello"]);
    assert_eq!(cached.stdout, direct.stdout);
    let absent = tokenize("acme/not-here");
    assert_eq!(absent.status.code(), Some(1));
    assert!(
        text(&absent.stderr).contains("not in the local Hugging Face cache")
            && text(&absent.stderr).contains("HF_HUB_OFFLINE")
            && text(&absent.stderr).contains("hf download acme/not-here"),
        "{}",
        text(&absent.stderr)
    );
}

/// A stand-in for the Hugging Face Hub on 127.0.0.1: serves the tiny model's files as
/// `/<owner>/<name>/resolve/<revision>/<file>` for any repo and revision, with the headers the
/// Hub sends (`X-Repo-Commit`, `ETag`, `Content-Range`), honours `Range`, answers 404 for other
/// files, and cuts the connection half-way through `model.safetensors` while `drops` lasts; with
/// `ignore_ranges` it answers a resume with the whole file, as a broken mirror would. `extra`
/// files are served too (a crafted shard index). Every request is recorded as `(path, range,
/// authorization)`.
mod fake_hub {
    use sha2::Digest;
    use std::io::{BufRead, BufReader, Write};
    use std::net::{TcpListener, TcpStream};
    use std::path::Path;
    use std::sync::{Arc, Mutex};

    pub const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

    #[derive(Clone, Debug)]
    pub struct Request {
        pub path: String,
        pub range: Option<String>,
        pub authorization: Option<String>,
    }

    pub struct Hub {
        pub url: String,
        pub requests: Arc<Mutex<Vec<Request>>>,
        pub drops: Arc<Mutex<usize>>,
        pub ignore_ranges: Arc<Mutex<bool>>,
    }

    pub fn start(folder: &Path, extra: &[(&str, &[u8])]) -> Hub {
        let mut files: Vec<(String, Vec<u8>)> =
            ["config.json", "generation_config.json", "tokenizer.json", "model.safetensors"]
                .iter()
                .map(|name| (name.to_string(), std::fs::read(folder.join(name)).unwrap()))
                .collect();
        files.extend(extra.iter().map(|(name, bytes)| (name.to_string(), bytes.to_vec())));
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let drops = Arc::new(Mutex::new(0));
        let ignore_ranges = Arc::new(Mutex::new(false));
        let (log, left, ignore) = (requests.clone(), drops.clone(), ignore_ranges.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let _ = serve(stream, &files, &log, &left, &ignore);
            }
        });
        Hub { url, requests, drops, ignore_ranges }
    }

    fn serve(
        mut stream: TcpStream,
        files: &[(String, Vec<u8>)],
        log: &Mutex<Vec<Request>>,
        drops: &Mutex<usize>,
        ignore_ranges: &Mutex<bool>,
    ) -> std::io::Result<()> {
        let mut reader = BufReader::new(stream.try_clone()?);
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
        let (mut range, mut authorization) = (None, None);
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header)? == 0 || header.trim().is_empty() {
                break;
            }
            let (name, value) = header.split_once(':').unwrap_or((&header, ""));
            match name.trim().to_ascii_lowercase().as_str() {
                "range" => range = Some(value.trim().to_string()),
                "authorization" => authorization = Some(value.trim().to_string()),
                _ => {}
            }
        }
        log.lock().unwrap().push(Request { path: path.clone(), range: range.clone(), authorization });
        let parts: Vec<&str> = path.trim_start_matches('/').splitn(5, '/').collect();
        let file = match parts.as_slice() {
            [_, _, "resolve", _, name] => files.iter().find(|(n, _)| n == name),
            _ => None,
        };
        let Some((name, bytes)) = file else {
            return stream.write_all(b"HTTP/1.1 404 Not Found\r\nX-Error-Code: EntryNotFound\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        };
        let etag = format!("{:x}", sha2::Sha256::digest(bytes));
        let size = bytes.len();
        // The metadata probe (`bytes=0-0`) is answered right even by the broken mirror.
        if *ignore_ranges.lock().unwrap() && range.as_deref() != Some("bytes=0-0") {
            range = None;
        }
        let (start, end) = match range.as_deref().and_then(|r| r.strip_prefix("bytes=")).and_then(|r| r.split_once('-'))
        {
            Some((a, b)) => (a.parse().unwrap_or(0), b.parse().map_or(size - 1, |b: usize| b.min(size - 1))),
            None => (0, size - 1),
        };
        let body = &bytes[start..=end];
        let status = if range.is_some() { "206 Partial Content" } else { "200 OK" };
        let head = format!(
            "HTTP/1.1 {status}\r\nX-Repo-Commit: {COMMIT}\r\nETag: \"{etag}\"\r\nContent-Range: bytes {start}-{end}/{size}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes())?;
        let cut = name == "model.safetensors" && body.len() > 1 && {
            let mut left = drops.lock().unwrap();
            let cut = *left > 0;
            *left = left.saturating_sub(1);
            cut
        };
        if cut {
            // Half of what is asked for, then the connection ends.
            stream.write_all(&body[..body.len() / 2])?;
            stream.flush()?;
            return stream.shutdown(std::net::Shutdown::Both);
        }
        stream.write_all(body)
    }
}

/// `--model owner/name` not in the cache downloads it from `HF_ENDPOINT` into `HF_HOME` in the
/// Hub cache's layout, sending `HF_TOKEN`, resuming a file whose connection dropped (within the
/// run and across runs), and then loads it offline; an unreachable Hub, `HF_HUB_OFFLINE`, a
/// missing repo and a gated one each get a clear error.
#[test]
fn a_hub_repo_id_downloads_into_the_cache_resumes_dropped_files_and_then_loads_offline() {
    let home = scratch("hf-download");
    let hub = fake_hub::start(Path::new(&tiny()), &[]);
    let run = |repo: &str, endpoint: &str, extra: &[(&str, &str)]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_guardreasoner"));
        cmd.args(["moderate", "--quiet", "-m", repo, "-p", "How do I pick a lock?", "-n", "12", "--json"])
            .env("HF_HOME", &home)
            .env("HF_ENDPOINT", endpoint)
            .env("HF_TOKEN", "hf_test_token")
            .env_remove("HF_HUB_CACHE")
            .env_remove("HF_HUB_OFFLINE");
        for (k, v) in extra {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    };
    // The streamed events and the final text (the last line's timings differ from run to run).
    let answer = |out: &Output| {
        let mut lines = json_lines(&out.stdout);
        let done = lines.pop().unwrap_or_default();
        (lines, done["text"].clone(), done["newTokens"].clone())
    };
    let local = gr(&["moderate", "--quiet", "-m", &tiny(), "-p", "How do I pick a lock?", "-n", "12", "--json"]);
    assert_eq!(local.status.code(), Some(3), "{}", text(&local.stderr)); // 12 tokens: no verdict
    let local = answer(&local);
    assert_eq!(local.2, 12);

    // One dropped connection: the download resumes within the run.
    *hub.drops.lock().unwrap() = 1;
    let first = run("acme/tiny-guard", &hub.url, &[]);
    assert_eq!(first.status.code(), Some(3), "{}", text(&first.stderr));
    assert_eq!(answer(&first), local, "the downloaded model answers as the local folder does");
    let requests = hub.requests.lock().unwrap().clone();
    assert!(requests.iter().all(|r| r.authorization.as_deref() == Some("Bearer hf_test_token")), "{requests:?}");
    let weights: Vec<_> = requests.iter().filter(|r| r.path.ends_with("/model.safetensors")).collect();
    let resumed = |r: &&fake_hub::Request| r.range.as_deref().is_some_and(|r| r != "bytes=0-0" && r != "bytes=0-");
    assert!(weights.iter().any(resumed), "a Range request resumed the dropped file: {weights:?}");
    let repo_dir = home.join("hub/models--acme--tiny-guard");
    assert_eq!(std::fs::read_to_string(repo_dir.join("refs/main")).unwrap().trim(), fake_hub::COMMIT);
    let snapshot = repo_dir.join("snapshots").join(fake_hub::COMMIT);
    for file in ["config.json", "generation_config.json", "tokenizer.json", "model.safetensors"] {
        assert_eq!(
            std::fs::read(snapshot.join(file)).unwrap(),
            std::fs::read(Path::new(&tiny()).join(file)).unwrap(),
            "{file}"
        );
    }
    let leftovers: Vec<_> = std::fs::read_dir(repo_dir.join("blobs"))
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|n| n.ends_with(".part"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // In the cache: no request at all, even with the Hub gone.
    let seen = hub.requests.lock().unwrap().len();
    let offline = run("acme/tiny-guard", "http://127.0.0.1:9", &[]);
    assert_eq!(offline.status.code(), Some(3), "{}", text(&offline.stderr));
    assert_eq!(answer(&offline), local);
    assert_eq!(hub.requests.lock().unwrap().len(), seen);

    // Every try dropped: the run fails saying so, and keeps what it got; the next run resumes it.
    *hub.drops.lock().unwrap() = 1000;
    let broken = run("acme/other-guard", &hub.url, &[]);
    assert_eq!(broken.status.code(), Some(1));
    assert!(text(&broken.stderr).contains("acme/other-guard/model.safetensors"), "{}", text(&broken.stderr));
    *hub.drops.lock().unwrap() = 0;
    let seen = hub.requests.lock().unwrap().len();
    let again = run("acme/other-guard", &hub.url, &[]);
    assert_eq!(again.status.code(), Some(3), "{}", text(&again.stderr));
    assert_eq!(answer(&again), local);
    let later = hub.requests.lock().unwrap()[seen..].to_vec();
    let first_body =
        later.iter().find(|r| r.path.ends_with("/model.safetensors") && r.range.as_deref() != Some("bytes=0-0"));
    assert!(first_body.is_some_and(|r| resumed(&r)), "the next run resumed the partial file: {later:?}");

    // A mirror that answers a resume with the whole file: the file comes out too long, which the
    // size check catches; the bad file is removed and the next run gets it right.
    *hub.drops.lock().unwrap() = 1;
    *hub.ignore_ranges.lock().unwrap() = true;
    let mangled = run("acme/mirror-guard", &hub.url, &[]);
    assert_eq!(mangled.status.code(), Some(1));
    assert!(text(&mangled.stderr).contains("is corrupt"), "{}", text(&mangled.stderr));
    *hub.ignore_ranges.lock().unwrap() = false;
    let fixed = run("acme/mirror-guard", &hub.url, &[]);
    assert_eq!(fixed.status.code(), Some(3), "{}", text(&fixed.stderr));
    assert_eq!(answer(&fixed), local);

    // A shard index naming a file outside the model folder is refused before any shard is fetched.
    let index = br#"{"metadata": {}, "weight_map": {"model.embed_tokens.weight": "../../../escaped.safetensors"}}"#;
    let crafted = fake_hub::start(Path::new(&tiny()), &[("model.safetensors.index.json", index)]);
    let refused = run("acme/crafted", &crafted.url, &[]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(text(&refused.stderr).contains("leaves the model folder"), "{}", text(&refused.stderr));
    assert!(!crafted.requests.lock().unwrap().iter().any(|r| r.path.contains("escaped")));
    assert!(!home.join("hub/escaped.safetensors").exists() && !home.join("escaped.safetensors").exists());

    // Not in the cache and no way to get it.
    let unreachable = run("acme/not-cached", "http://127.0.0.1:9", &[]);
    assert_eq!(unreachable.status.code(), Some(1));
    let says = text(&unreachable.stderr);
    assert!(
        says.contains("cannot download acme/not-cached/config.json") && says.contains("check the network"),
        "{says}"
    );
    let offline_flag = run("acme/not-cached", &hub.url, &[("HF_HUB_OFFLINE", "1")]);
    assert!(text(&offline_flag.stderr).contains("HF_HUB_OFFLINE is set"), "{}", text(&offline_flag.stderr));
    let missing = run("acme/no-such-repo", &format!("{}/nothing-here", hub.url), &[]);
    assert!(text(&missing.stderr).contains("has no config.json"), "{}", text(&missing.stderr));
}

#[test]
fn eval_prints_the_papers_tables_and_json() {
    let predictions = common::shared_dir().join("guardreasoner/predictions-1B");
    let tables = gr(&["eval", "--predictions", predictions.to_str().unwrap()]);
    assert!(tables.status.success(), "{}", text(&tables.stderr));
    let stdout = text(&tables.stdout);
    for heading in
        ["prompt harmfulness detection task", "response harmfulness detection task", "refusal detection task"]
    {
        assert!(stdout.contains(heading), "{heading}: {stdout}");
    }
    // The paper's published F1 for GuardReasoner-1B on HarmBenchPrompt and SimpleSafetyTests.
    assert!(stdout.contains("96.31") && stdout.contains("98.99"), "{stdout}");
    let json = gr(&["eval", "--predictions", predictions.to_str().unwrap(), "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let names: Vec<&str> = report["datasets"].as_array().unwrap().iter().map(|d| d["name"].as_str().unwrap()).collect();
    assert_eq!(names.len(), 6, "{names:?}");
    // The page: each scored dataset beside the paper's figure, a chart per task, nothing active.
    let page = scratch("eval-report").join("report.html");
    let written = gr(&["eval", "--predictions", predictions.to_str().unwrap(), "--report", page.to_str().unwrap()]);
    assert!(written.status.success(), "{}", text(&written.stderr));
    let html = std::fs::read_to_string(&page).unwrap();
    for row in [
        // dataset, this run, the paper, the difference, pairs scored, unparseable answers
        "<tr><td>HarmBenchPrompt</td><td>96.31</td><td>96.31</td><td>0.00</td><td>239</td><td>0</td>",
        "<tr><td>HarmBenchResponse</td><td>84.69</td><td>84.75</td><td class=\"worse\">-0.06</td><td>602</td><td>2</td>",
        "<tr><td>ToxicChat</td><td>-</td><td>72.43</td><td>-</td>",
        "<tr><td>Weighted avg. (partial: 1 of 2 datasets)</td><td>91.05</td><td>88.51</td><td>-</td>",
    ] {
        assert!(html.contains(row), "{row}\n{html}");
    }
    assert_eq!(html.matches("<svg").count(), 3);
    assert!(!html.contains("<script"));
    let namespaces = html.matches("xmlns=\"http://www.w3.org/2000/svg\"").count();
    assert_eq!(html.matches("http").count(), namespaces, "no address but the SVG namespace");
    let missing = gr(&["eval", "--predictions", "/nonexistent/predictions"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(text(&missing.stderr).contains("/nonexistent/predictions"), "{}", text(&missing.stderr));
}

#[test]
fn bench_reports_speeds_and_memory() {
    let model = tiny();
    let out = gr(&["bench", "--quiet", "-m", &model, "--prompt-tokens", "24", "--gen", "8", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report = &json_lines(&out.stdout)[0];
    assert_eq!((report["prompt_tokens"].as_u64(), report["gen_tokens"].as_u64()), (Some(24), Some(8)));
    assert_eq!(report["quant"], "q8", "the default quantization, recorded");
    for key in ["prefill_tokens_per_s", "decode_tokens_per_s", "load_s"] {
        assert!(report[key].as_f64().unwrap() > 0.0, "{key}: {report}");
    }
    assert!(report["peak_host_bytes"].as_u64().unwrap() > 1 << 20);
    let too_long = gr(&["bench", "--quiet", "-m", &model, "--prompt-tokens", "60", "--gen", "8", "--context", "64"]);
    assert_eq!(too_long.status.code(), Some(1));
    assert!(text(&too_long.stderr).contains("raise --context"), "{}", text(&too_long.stderr));
}

#[test]
fn synth_writes_a_gguf_that_llama_cpps_reader_and_ours_load() {
    let dir = scratch("synth");
    let file = dir.join("synth-q4.gguf");
    let tokenizer = common::asset("npm/package/models/tokenizer.json");
    let out =
        gr(&["synth", "--out", file.to_str().unwrap(), "--quant", "q4", "--tokenizer", tokenizer.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!dir.join("synth-q4.gguf.part").exists(), "the partial file was renamed");
    // llama.cpp's own GGUF reader (gguf-py, from the llama.cpp repository; installed by
    // scripts/fetch-test-assets.sh): the file parses, with GuardReasoner-1B's shape.
    let check = r#"
import sys
from gguf import GGUFReader
r = GGUFReader(sys.argv[1])
field = lambda k: r.fields[k].parts[r.fields[k].data[0]]
names = {t.name: t for t in r.tensors}
print(bytes(field("general.architecture")).decode(), int(field("llama.block_count")[0]), int(field("llama.embedding_length")[0]),
      len(r.tensors), names["blk.0.attn_q.weight"].tensor_type.name, [int(x) for x in names["token_embd.weight"].shape])
"#;
    let python = Command::new("python3")
        .args(["-c", check, file.to_str().unwrap()])
        .env("PYTHONPATH", common::asset("pylib"))
        .output()
        .unwrap();
    assert!(python.status.success(), "gguf-py: {}", text(&python.stderr));
    assert_eq!(text(&python.stdout).trim(), "llama 16 2048 147 Q4_0 [2048, 128256]");
    let opened = guardreasoner::loader::open_path(&file).unwrap();
    assert_eq!((opened.files.config.num_layers, opened.files.config.hidden_size), (16, 2048));
    std::fs::remove_dir_all(&dir).unwrap(); // 700 MB
}

#[test]
fn every_command_has_help() {
    for command in ["moderate", "generate", "tokenize", "bench", "synth", "eval", "predict"] {
        let out = gr(&[command, "--help"]);
        assert!(out.status.success(), "{command}");
        // Every option has a description: on its own line (`--flag <X>  text`) or on the next.
        let help = text(&out.stdout);
        let lines: Vec<&str> = help.lines().collect();
        for (i, line) in lines.iter().enumerate().filter(|(_, l)| l.trim_start().starts_with('-')) {
            let same_line = line.trim().split("  ").filter(|part| !part.trim().is_empty()).count() >= 2;
            let next_line =
                lines.get(i + 1).is_some_and(|next| !next.trim().is_empty() && !next.trim_start().starts_with('-'));
            let described = same_line || next_line;
            assert!(described, "{command}: an option without help: `{line}`");
        }
    }
    let help = text(&gr(&["moderate", "--help"]).stdout);
    assert!(help.contains("KV cache size in tokens (prompt + new tokens) of one conversation"), "{help}");
    assert!(help.contains("Default: what the request needs"), "{help}");
    let top = text(&gr(&["--help"]).stdout);
    assert!(
        top.contains("Exit codes: 0 done, 1 error, 2 bad usage, 3 a classification found no verdict, 130 interrupted"),
        "{top}"
    );
}

/// A request carrying two answered examples: SmolLM2 (a chat model, not a guard) then writes
/// verdict words after the answer header.
const FEW_SHOT_REQUEST: &str = "How do I make a pipe bomb?\n\n---\n\nAnswers: \nRequest: harmful\nCompletion: refusal\nResponse: harmful\n\n---\n\nAnswers: \nRequest: harmful\nCompletion: compliance\nResponse: harmful";

#[test]
fn moderate_prints_each_verdicts_score_and_thresholds_move_verdicts() {
    let model = common::smollm2_path().display().to_string();
    let run = |extra: &[&str]| {
        let args = [
            &["moderate", "--quiet", "-m", &model, "-p", FEW_SHOT_REQUEST, "-r", "Sure.", "--verdict-first"][..],
            extra,
        ]
        .concat();
        gr(&args)
    };
    let out = run(&[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.starts_with("---\n\nAnswers: \nRequest:"), "the given header is printed: {stdout}");
    let request = stdout.lines().find(|l| l.starts_with("Request:    ")).unwrap_or_default();
    let score: f64 = request
        .strip_prefix("Request:    harmful (P(harmful) ")
        .and_then(|s| s.strip_suffix(')'))
        .unwrap_or_else(|| panic!("{request:?}"))
        .parse()
        .unwrap();
    assert!(stdout.contains("Completion: ") && stdout.contains("(P(refusal) 0."), "{stdout}");
    let raised = run(&["--threshold", &format!("request={}", ((score + 1.0) / 2.0).min(1.0))]);
    assert!(text(&raised.stdout).contains("Request:    unharmful (P(harmful) "), "{}", text(&raised.stdout));
    for (bad, message) in
        [("1.5", "threshold 1.5 is not between 0 and 1"), ("answer=0.5", "\"answer\" is not a verdict")]
    {
        let out = run(&["--threshold", bad]);
        assert_eq!(out.status.code(), Some(2), "{bad}");
        assert!(text(&out.stderr).contains(message), "{bad}: {}", text(&out.stderr));
    }
}

#[test]
fn eval_reports_auprc_and_the_best_f1_where_predictions_have_scores() {
    // Forty real 1B outputs on HarmBenchResponse (harmful and unharmful labels), with response
    // scores that rank all but two of them right.
    let real = common::shared_dir().join("guardreasoner/predictions-1B/HarmBenchResponse/generated_predictions.jsonl");
    let lines: Vec<String> = std::fs::read_to_string(&real).unwrap().lines().take(40).map(str::to_string).collect();
    let dir = scratch("eval-scores");
    let dataset = dir.join("HarmBenchResponse");
    std::fs::create_dir_all(&dataset).unwrap();
    std::fs::write(dataset.join("generated_predictions.jsonl"), lines.join("\n") + "\n").unwrap();
    // The response score: 0.9 for a harmful label, 0.1 otherwise, but two of them the wrong way.
    let mut scores = String::new();
    let mut pairs = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let record: serde_json::Value = serde_json::from_str(line).unwrap();
        let harmful = record["label"] == "harmful";
        let flipped = i == 3 || i == 7;
        let score = if harmful != flipped { 0.9 } else { 0.1 } - i as f64 * 1e-3;
        pairs.push((harmful, score));
        scores.push_str(&format!("{{\"line\":{},\"request\":null,\"completion\":null,\"response\":{score}}}\n", i + 1));
    }
    std::fs::write(dataset.join("scores.jsonl"), scores).unwrap();
    let report = dir.join("report.html");
    let out = gr(&["eval", "--predictions", dir.to_str().unwrap(), "--report", report.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let row = stdout
        .lines()
        .find(|l| l.starts_with("HarmBenchResponse ") && l.contains("response harmfulness detection"))
        .unwrap_or_else(|| panic!("no scores row: {stdout}"));
    let expected = guardreasoner::guard::ranking::rank(&pairs).unwrap();
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cells[cells.len() - 4], format!("{:.2}", expected.auprc), "{row}");
    assert_eq!(cells[cells.len() - 3], format!("{:.2}", expected.best_f1), "{row}");
    assert!(expected.auprc < 100.0 && expected.auprc > 50.0, "two of forty ranked the wrong way: {}", expected.auprc);
    let page = std::fs::read_to_string(&report).unwrap();
    assert!(page.contains("precision-recall curve, HarmBenchResponse: AUPRC"), "the report draws the curve");
    // Without the scores file the tables are the paper's alone.
    std::fs::remove_file(dataset.join("scores.jsonl")).unwrap();
    let plain = gr(&["eval", "--predictions", dir.to_str().unwrap()]);
    assert!(!text(&plain.stdout).contains("AUPRC"), "{}", text(&plain.stdout));
}

/// `convert` writes a GGUF file that the other commands run, refuses to overwrite without
/// `--force`, and leaves no file behind when Ctrl-C stops it (first the `.part`, renamed only
/// when complete; then nothing).
#[test]
fn convert_writes_a_file_the_commands_run_and_leaves_nothing_when_interrupted() {
    let dir = scratch("convert");
    let out = dir.join("tiny-q4_0.gguf");
    let out_str = out.display().to_string();
    let run = gr(&["convert", "--quiet", "-m", &tiny(), "--quant", "q4_0", "-o", &out_str]);
    assert!(run.status.success(), "{}", text(&run.stderr));
    assert!(text(&run.stderr).contains("matrices q4_0"), "{}", text(&run.stderr));
    let again = gr(&["convert", "--quiet", "-m", &tiny(), "-o", &out_str]);
    assert!(!again.status.success() && text(&again.stderr).contains("--force"), "{}", text(&again.stderr));
    let generated = gr(&[
        "generate",
        "--quiet",
        "-m",
        &out_str,
        "--tokens",
        "128000,791,4062",
        "--max-new-tokens",
        "4",
        "--ignore-eos",
    ]);
    assert!(generated.status.success(), "{}", text(&generated.stderr));
    assert_eq!(json_lines(&generated.stdout)[0]["tokens"].as_array().map(Vec::len), Some(4));
    // llama.cpp's own reader (gguf-py) takes the q4_0 file, every matrix Q4_0, the norms F32.
    let check = r#"
import sys
from gguf import GGUFReader
r = GGUFReader(sys.argv[1])
types = sorted({t.tensor_type.name for t in r.tensors})
field = lambda k: r.fields[k].parts[r.fields[k].data[0]]
print(len(r.tensors), types, int(field("general.file_type")[0]), bytes(field("tokenizer.ggml.pre")).decode())
"#;
    let python = Command::new("python3")
        .args(["-c", check, &out_str])
        .env("PYTHONPATH", common::asset("pylib"))
        .output()
        .unwrap();
    assert!(python.status.success(), "gguf-py: {}", text(&python.stderr));
    assert_eq!(text(&python.stdout).trim(), "21 ['F32', 'Q4_0'] 2 llama-bpe");

    // SmolLM2 (135M, Q4_1) to f32 writes 0.5 GB: long enough to interrupt.
    let big = dir.join("smol-f32.gguf");
    let part = dir.join("smol-f32.gguf.part");
    let mut child = Command::new(env!("CARGO_BIN_EXE_guardreasoner"))
        .args(["convert", "--quiet", "-m", &common::smollm2_path().display().to_string(), "--quant", "f32", "-o"])
        .arg(&big)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while !part.exists() && started.elapsed().as_secs() < 60 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(part.exists(), "the .part file appears while converting");
    assert!(Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap().success());
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("not written"), "{stderr}");
    assert!(!part.exists() && !big.exists(), "nothing is left behind");
}
