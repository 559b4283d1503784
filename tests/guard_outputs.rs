//! Tests over the shared GuardReasoner data: the ten benchmark files and the 2,195 real outputs
//! of GuardReasoner-1B (`predictions-1B`), through the public `guard` API. The data is never
//! copied into the repository: it is read from `$GUARDREASONER_SHARED` if set, else from
//! `<CARGO_MANIFEST_DIR>/../shared` (the layout of ARCHITECTURE.md §8).

use std::path::{Path, PathBuf};

mod common;

use guardreasoner::guard::lines::{LineClass, classify_line};
use guardreasoner::guard::{
    DATASETS, GuardEvent, GuardResult, INSTRUCTION, NO_RESPONSE, PREDICTIONS_FILE, ReasoningParser, Task, evaluate_dir,
    find_verdict, guard_prompt, parse_benchmark_json, parse_predictions_jsonl, prediction_tail,
};

// ---- where the data is ---------------------------------------------------------------------

/// Overrides the location of the shared folder (the one holding `guardreasoner/`).
const SHARED_DIR_ENV: &str = "GUARDREASONER_SHARED";

/// Lines in all six shipped predictions-1B files together (ARCHITECTURE.md §8).
const PREDICTIONS_1B_LINES: usize = 2195;

fn shared_dir() -> PathBuf {
    match std::env::var_os(SHARED_DIR_ENV) {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("shared"),
    }
}

fn benchmark_dir() -> PathBuf {
    shared_dir().join("guardreasoner").join("benchmark")
}

fn predictions_1b_dir() -> PathBuf {
    shared_dir().join("guardreasoner").join("predictions-1B")
}

/// Reads a data file, failing the test with a message that says where data is looked for.
fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| {
        panic!("cannot read {} ({e}); set {SHARED_DIR_ENV} to the folder holding guardreasoner/", path.display())
    })
}

/// One real model output with where it came from.
struct RealOutput {
    dataset: &'static str,
    /// 1-based line in the predictions file.
    line: usize,
    predict: String,
}

/// All 2,195 predictions-1B outputs, in dataset order.
fn real_outputs() -> Vec<RealOutput> {
    let dir = predictions_1b_dir();
    let mut outputs = Vec::new();
    for spec in DATASETS {
        let path = dir.join(spec.name).join(PREDICTIONS_FILE);
        if !path.is_file() {
            continue;
        }
        let records =
            parse_predictions_jsonl(&path.display().to_string(), &read(&path)).unwrap_or_else(|e| panic!("{e}"));
        for (index, record) in records.into_iter().enumerate() {
            outputs.push(RealOutput { dataset: spec.name, line: index + 1, predict: record.predict });
        }
    }
    assert_eq!(outputs.len(), PREDICTIONS_1B_LINES, "predictions-1B looks incomplete under {}", dir.display());
    outputs
}

// ---- the prompt: benchmark files and the predictions' prompts ------------------------------

const HUMAN_HEADER: &str = "Human user:\n";
const ASSISTANT_SEPARATOR: &str = "\n\nAI assistant:\n";
const INPUT_END: &str = "\n\n";

/// Splits a benchmark `input` back into (prompt, response); None when the split is ambiguous
/// (the separator occurs more than once) or the shape is different.
fn split_benchmark_input(input: &str) -> Option<(&str, Option<&str>)> {
    let body = input.strip_prefix(HUMAN_HEADER)?.strip_suffix(INPUT_END)?;
    if body.matches(ASSISTANT_SEPARATOR).count() != 1 {
        return None;
    }
    let (prompt, response) = body.split_once(ASSISTANT_SEPARATOR)?;
    Some((prompt, if response == NO_RESPONSE { None } else { Some(response) }))
}

/// Every benchmark item: the instruction is INSTRUCTION, and guard_prompt rebuilds
/// `instruction + "\n" + input` from the (prompt, response) recovered from `input`.
#[test]
fn guard_prompt_reproduces_every_benchmark_input() {
    let benchmark_dir = benchmark_dir();
    let mut checked_files = 0;
    for spec in DATASETS {
        let path = benchmark_dir.join(format!("{}.json", spec.benchmark_file));
        if !path.is_file() {
            continue; // WildGuardTest is not shipped
        }
        let text = read(&path);
        let items = parse_benchmark_json(&path.display().to_string(), &text).unwrap_or_else(|e| panic!("{e}"));
        for (index, item) in items.iter().enumerate() {
            let instruction = item.text_field("instruction").expect("instruction");
            let input = item.text_field("input").expect("input");
            assert_eq!(instruction, INSTRUCTION, "{} item {index}", spec.name);
            let (prompt, response) = split_benchmark_input(input)
                .unwrap_or_else(|| panic!("{} item {index}: unexpected input shape", spec.name));
            assert_eq!(guard_prompt(prompt, response), format!("{instruction}\n{input}"), "{} item {index}", spec.name);
        }
        checked_files += 1;
    }
    assert_eq!(checked_files, 10, "expected the ten shipped benchmark files");
}

/// Every line of every predictions-1B file: `prompt` equals the benchmark item at the same
/// index rebuilt as `instruction + "\n" + input`, and equals guard_prompt of its parts.
#[test]
fn prediction_prompts_match_benchmark_items() {
    let benchmark_dir = benchmark_dir();
    let predictions_dir = predictions_1b_dir();
    let mut checked_lines = 0;
    for spec in DATASETS {
        let predictions_path = predictions_dir.join(spec.name).join(PREDICTIONS_FILE);
        if !predictions_path.is_file() {
            continue;
        }
        let benchmark_path = benchmark_dir.join(format!("{}.json", spec.benchmark_file));
        let items = parse_benchmark_json("benchmark", &read(&benchmark_path)).unwrap_or_else(|e| panic!("{e}"));
        let records =
            parse_predictions_jsonl("predictions", &read(&predictions_path)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(records.len(), items.len(), "{}", spec.name);
        for (index, (record, item)) in records.iter().zip(&items).enumerate() {
            let instruction = item.text_field("instruction").expect("instruction");
            let input = item.text_field("input").expect("input");
            let prompt = record.prompt.as_deref().expect("prompt field");
            assert!(
                prompt == format!("{instruction}\n{input}"),
                "{} line {}: prompt differs from the benchmark item",
                spec.name,
                index + 1
            );
            let (human, assistant) = split_benchmark_input(input).expect("input shape");
            assert_eq!(prompt, guard_prompt(human, assistant), "{} line {}", spec.name, index + 1);
            checked_lines += 1;
        }
    }
    assert_eq!(checked_lines, PREDICTIONS_1B_LINES);
}

// ---- the scorer: the paper's figures -------------------------------------------------------

/// The paper's figures for GuardReasoner-1B on the six shipped datasets (two decimals).
const EXPECTED_1B_F1: [(&str, Task, &str); 6] = [
    ("HarmBenchPrompt", Task::PromptHarmfulness, "96.31"),
    ("AegisSafetyTest", Task::PromptHarmfulness, "89.34"),
    ("SimpleSafetyTests", Task::PromptHarmfulness, "98.99"),
    ("HarmBenchResponse", Task::ResponseHarmfulness, "84.69"),
    ("XSTestReponseHarmful", Task::ResponseHarmfulness, "90.68"),
    ("XSTestResponseRefusal", Task::Refusal, "91.05"),
];

#[test]
fn predictions_1b_reproduce_the_paper() {
    let report = evaluate_dir(&predictions_1b_dir(), None).unwrap_or_else(|e| panic!("{e}"));
    println!("{}", report.to_tables());
    for (dataset, task, expected) in EXPECTED_1B_F1 {
        let f1 = report.f1(dataset, task).unwrap_or_else(|| panic!("{dataset} not scored"));
        assert_eq!(format!("{f1:.2}"), expected, "{dataset}");
    }
    assert_eq!(report.missing, ["OpenAIModeration", "WildGuardTest", "ToxicChat", "SafeRLHF", "BeaverTails"]);
    let prompt = &report.tasks[0];
    assert_eq!(prompt.task, Task::PromptHarmfulness);
    assert_eq!(prompt.present, ["HarmBenchPrompt", "AegisSafetyTest", "SimpleSafetyTests"]);
    assert_eq!(prompt.missing, ["ToxicChat", "OpenAIModeration", "WildGuardTest"]);
    // Weighted by lines: HarmBenchPrompt 239, AegisSafetyTest 359, SimpleSafetyTests 100.
    let aegis = report.dataset("AegisSafetyTest").expect("present");
    assert_eq!(aegis.items, 359);
    assert_eq!(aegis.scores[0].unparseable_predictions, 2);
    assert_eq!(aegis.scores[0].counted_pairs, 357, "two unharmful items counted twice, harmful ones dropped");
    let tables = report.to_tables();
    assert!(tables.contains("missing: ToxicChat, OpenAIModeration, WildGuardTest"));
}

// ---- the parser: every real output, in any chunking; the shapes of their lines -------------

/// Tiny seeded generator for chunk sizes (SplitMix64), so runs are repeatable without `rand`.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }
}

/// Random chunks are 1 to this many characters: about one to a few tokens.
const MAX_RANDOM_CHUNK_CHARS: u64 = 12;
const RANDOM_CHUNK_SEEDS: [u64; 3] = [1, 0xC0FFEE, 2025];

fn parse_whole(text: &str) -> (Vec<GuardEvent>, GuardResult) {
    parse_chunks(std::iter::once(text))
}

fn parse_chunks<'a>(chunks: impl IntoIterator<Item = &'a str>) -> (Vec<GuardEvent>, GuardResult) {
    let mut parser = ReasoningParser::new();
    let mut events = Vec::new();
    for chunk in chunks {
        events.extend(parser.push(chunk));
    }
    events.extend(parser.finish());
    (events, parser.result().clone())
}

fn char_chunks(text: &str) -> Vec<&str> {
    text.char_indices().map(|(i, c)| &text[i..i + c.len_utf8()]).collect()
}

fn random_chunks(text: &str, seed: u64) -> Vec<&str> {
    let mut rng = SplitMix64(seed);
    let boundaries: Vec<usize> = text.char_indices().map(|(i, _)| i).chain([text.len()]).collect();
    let mut chunks = Vec::new();
    let mut start = 0;
    while start + 1 < boundaries.len() {
        let end = (start + 1 + rng.below(MAX_RANDOM_CHUNK_CHARS) as usize).min(boundaries.len() - 1);
        chunks.push(&text[boundaries[start]..boundaries[end]]);
        start = end;
    }
    chunks
}

/// Merges consecutive text pieces of one step, so event lists from different chunkings
/// can be compared.
fn normalized(events: &[GuardEvent]) -> Vec<GuardEvent> {
    let mut merged: Vec<GuardEvent> = Vec::new();
    for event in events {
        if let (
            GuardEvent::StepText { task, step, text },
            Some(GuardEvent::StepText { task: last_task, step: last_step, text: last_text }),
        ) = (event, merged.last_mut())
            && task == last_task
            && step == last_step
        {
            last_text.push_str(text);
            continue;
        }
        merged.push(event.clone());
    }
    merged
}

/// An independent fold of events into (task, steps, conclusion) and verdicts, written
/// without `GuardResult::apply`, to check that events alone carry the structure.
/// (task, steps, conclusion) per task section, and the request/completion/response verdicts.
type Structure = (Vec<(Task, Vec<String>, Option<String>)>, [Option<String>; 3]);

fn fold_events(events: &[GuardEvent]) -> Structure {
    let mut tasks: Vec<(Task, Vec<String>, Option<String>)> = Vec::new();
    let mut verdicts: [Option<String>; 3] = Default::default();
    for event in events {
        match event {
            GuardEvent::TaskStarted { task } => tasks.push((*task, Vec::new(), None)),
            GuardEvent::StepStarted { task, .. } => {
                let last = tasks.last_mut().expect("step before any task");
                assert_eq!(last.0, *task, "step announced for another task");
                last.1.push(String::new());
            }
            GuardEvent::StepText { task, text, .. } => {
                let last = tasks.last_mut().expect("text before any task");
                assert_eq!(last.0, *task);
                last.1.last_mut().expect("text before any step").push_str(text);
            }
            GuardEvent::Conclusion { task, text } => {
                let last = tasks.last_mut().expect("conclusion before any task");
                assert_eq!(last.0, *task, "conclusion announced for another task");
                last.2 = Some(text.clone());
            }
            // Request, completion, response: the answer lines of tasks 1, 2 and 3.
            GuardEvent::Verdict { kind, value } => verdicts[kind.number() as usize - 1] = value.clone(),
            GuardEvent::StepFinished { .. } | GuardEvent::Done => {}
        }
    }
    (tasks, verdicts)
}

fn structure_of(result: &GuardResult) -> Structure {
    (
        result.tasks.iter().map(|t| (t.task, t.steps.clone(), t.conclusion.clone())).collect(),
        [result.request.clone(), result.completion.clone(), result.response.clone()],
    )
}

/// The corpus test: every real output gives the same events (after merging text pieces) and
/// the same result whether fed whole, one character at a time or in random chunks; the
/// events alone rebuild the result; and wherever the paper's scorer finds a verdict in the
/// last 300 characters, the parser found the same one.
#[test]
fn real_outputs_parse_identically_in_any_chunking_and_agree_with_scorer() {
    let outputs = real_outputs();
    let mut scorer_matches = 0;
    let mut answers_seen = 0;
    for output in &outputs {
        let place = format!("{} line {}", output.dataset, output.line);
        let (whole_events, whole_result) = parse_whole(&output.predict);
        let whole_events = normalized(&whole_events);
        assert_eq!(fold_events(&whole_events), structure_of(&whole_result), "{place}: events vs result");
        let mut chunkings = vec![("chars", char_chunks(&output.predict))];
        for seed in RANDOM_CHUNK_SEEDS {
            chunkings.push(("random", random_chunks(&output.predict, seed)));
        }
        for (how, chunks) in chunkings {
            assert_eq!(chunks.concat(), output.predict);
            let (events, result) = parse_chunks(chunks);
            assert_eq!(normalized(&events), whole_events, "{place}: events differ ({how})");
            assert_eq!(result, whole_result, "{place}: result differs ({how})");
        }
        for task in Task::ALL {
            if let Some(found) = find_verdict(task, prediction_tail(&output.predict)) {
                scorer_matches += 1;
                assert_eq!(
                    whole_result.verdict(task),
                    Some(found.to_lowercase().as_str()),
                    "{place}: parser disagrees with the scorer on {task:?}"
                );
            }
        }
        answers_seen += usize::from(whole_result.answers_seen);
    }
    // Figures from the survey of predictions-1B: 5,510 scorer matches over the three
    // patterns, and all but 5 outputs reach an Answers heading.
    assert_eq!(scorer_matches, 5510);
    assert_eq!(answers_seen, outputs.len() - 5);
}

/// Survey of the corpus, kept as a test so the claims in the docs stay true: prints the
/// distinct shapes of classified lines, and checks that only code comments in copied
/// responses and runaway task numbers are `#` lines read as text.
#[test]
fn survey_line_shapes_of_real_outputs() {
    let outputs = real_outputs();
    let mut shapes: std::collections::BTreeMap<String, usize> = Default::default();
    let mut hash_text_lines = Vec::new();
    for output in &outputs {
        for line in output.predict.lines() {
            let class = classify_line(line);
            let shape = match &class {
                LineClass::Blank | LineClass::Text if !line.trim_start().starts_with('#') => {
                    continue;
                }
                LineClass::Text => {
                    hash_text_lines.push(line.to_string());
                    "text starting with #".to_string()
                }
                other => format!("{other:?}").split(['{', '(']).next().unwrap_or_default().trim().to_string(),
            };
            // The heading up to its colon, digits as N: one entry per shape, not per text.
            let head = line.split_inclusive(':').next().unwrap_or(line);
            let heading: String = head.chars().take(32).map(|c| if c.is_ascii_digit() { 'N' } else { c }).collect();
            *shapes.entry(format!("{shape:<14} {heading:?}")).or_default() += 1;
        }
    }
    for (shape, count) in &shapes {
        println!("{count:>6} {shape}");
    }
    let runaway_tasks = hash_text_lines.iter().filter(|l| l.starts_with("# Task ")).count();
    let others: Vec<&String> = hash_text_lines.iter().filter(|l| !l.starts_with("# Task ")).collect();
    assert!(runaway_tasks > 0);
    assert!(
        others
            .iter()
            .all(|l| !l.to_lowercase().contains("reasoning step") && !l.to_lowercase().contains("conclusion for")),
        "unexpected text lines: {others:?}"
    );
}

/// Scores are read at the token that wrote each verdict. Replays every real output token by token
/// with the Llama 3 tokenizer, each token's watched logits high for its own id alone, so a score
/// is above one half exactly when it was read at a token of the positive word: every verdict the
/// parser reads must get a score from a token of the word it read, whatever the spelling and the
/// line it stands on (answers, conclusions, `# Task 1: harmful`).
#[test]
fn every_real_verdict_is_scored_at_the_token_of_its_word() {
    use guardreasoner::backend::Chosen;
    use guardreasoner::generate::Detokenizer;
    use guardreasoner::guard::{ScoredReader, VerdictWords};
    use guardreasoner::tokenizer::TextTokenizer;
    /// The logit of the chosen token among the watched ones; the others are 0.
    const CHOSEN_LOGIT: f32 = 8.0;
    let tok = TextTokenizer::from_json(&common::llama3_tokenizer_json(), None).unwrap();
    let words = VerdictWords::new(&tok, tok.vocab_size()).unwrap();
    assert!(words.ids().len() >= 8, "verdict words' first tokens: {:?}", words.ids());
    let (mut verdicts, mut unscored) = (0usize, Vec::new());
    for output in real_outputs() {
        let ids = tok.encode_text(&output.predict).unwrap();
        let mut detok = Detokenizer::new();
        let mut reader = ScoredReader::new();
        for &id in &ids {
            let watched = words.ids().iter().map(|&w| if w == id { CHOSEN_LOGIT } else { 0.0 }).collect();
            let delta = detok.push(&tok, id).unwrap();
            reader.push(&words, Some(&Chosen { id, watched }), &delta);
        }
        let tail = detok.finish(&tok).unwrap();
        reader.push(&words, None, &tail);
        reader.finish();
        let scores = reader.scores();
        for task in Task::ALL {
            let Some(verdict) = reader.result().verdict(task) else { continue };
            verdicts += 1;
            let positive = verdict == "harmful" || verdict == "refusal";
            match scores.get(task) {
                Some(score) if (score > 0.5) == positive => {}
                other => unscored
                    .push(format!("{} line {} {task:?}: {verdict} scored {other:?}", output.dataset, output.line)),
            }
        }
    }
    assert!(verdicts > 4000, "{verdicts} verdicts read");
    assert!(
        unscored.is_empty(),
        "{} of {verdicts} verdicts not scored at their word: {:#?}",
        unscored.len(),
        &unscored[..unscored.len().min(10)]
    );
}

/// The token counts the time-to-verdict benchmark runs (`guardreasoner::session::TOKENS_TO_VERDICT`,
/// `FIRST_ANSWER_TOKENS` and `ANSWER_TOKENS`), measured here on the real outputs with the Llama 3
/// tokenizer: the median number of tokens the model writes before the parser reads its first
/// verdict, and after the answer header's `Request:` (the answer lines verdict-first mode
/// writes) the median number until the request's verdict is read and until the end.
#[test]
fn the_time_to_verdict_benchmark_runs_the_real_outputs_median_token_counts() {
    use guardreasoner::generate::Detokenizer;
    use guardreasoner::guard::{ANSWER_HEADER, GuardEvent, ScoredReader, VerdictWords};
    use guardreasoner::session::{ANSWER_TOKENS, FIRST_ANSWER_TOKENS, TOKENS_TO_VERDICT};
    use guardreasoner::tokenizer::TextTokenizer;
    let tok = TextTokenizer::from_json(&common::llama3_tokenizer_json(), None).unwrap();
    let none = VerdictWords::default();
    // Tokens until the parser, given `given` first, reads a verdict (all of them if none).
    let to_first_verdict = |given: &str, ids: &[u32]| {
        let mut detok = Detokenizer::new();
        let mut reader = ScoredReader::new();
        reader.push(&none, None, given);
        let first = ids.iter().position(|&id| {
            let delta = detok.push(&tok, id).unwrap();
            reader.push(&none, None, &delta).iter().any(|e| matches!(e, GuardEvent::Verdict { .. }))
        });
        first.map_or(ids.len(), |i| i + 1)
    };
    let (mut to_verdict, mut first_answers, mut answers) = (Vec::new(), Vec::new(), Vec::new());
    for output in real_outputs() {
        to_verdict.push(to_first_verdict("", &tok.encode_text(&output.predict).unwrap()));
        if let Some(at) = output.predict.rfind(ANSWER_HEADER) {
            let ids = tok.encode_text(&output.predict[at + ANSWER_HEADER.len()..]).unwrap();
            first_answers.push(to_first_verdict(ANSWER_HEADER, &ids));
            answers.push(ids.len());
        }
    }
    let median = |v: &mut Vec<usize>| {
        v.sort();
        v[v.len() / 2]
    };
    let medians = (median(&mut to_verdict), median(&mut first_answers), median(&mut answers));
    assert_eq!(medians, (TOKENS_TO_VERDICT, FIRST_ANSWER_TOKENS, ANSWER_TOKENS), "medians over the real outputs");
}
