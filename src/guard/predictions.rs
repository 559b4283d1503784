//! The two file formats of a benchmark run: benchmark files (a JSON array of items) and
//! predictions files (one JSON line per item, `<dir>/<Dataset>/` + `PREDICTIONS_FILE` as the
//! paper lays them out), parsed and written here. Reference: ARCHITECTURE.md §7 (benchmark runs).

use serde::Serialize;
use std::collections::BTreeMap;

use super::scores::Scores;

/// The predictions file inside `<dir>/<Dataset>/`, as the paper names it.
pub const PREDICTIONS_FILE: &str = "generated_predictions.jsonl";

/// Beside it, the verdicts' scores (`guard::scores`), one line per scored item:
/// `{"line":N,"request":0.97,"completion":null,"response":null}`, `line` naming the predictions
/// file's line. Kept apart so the predictions file stays the paper's, byte for byte.
pub const SCORES_FILE: &str = "scores.jsonl";

/// One line of a predictions file.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PredictionRecord {
    /// 1-based line number in its file.
    pub line: usize,
    /// Not used for scoring; kept to check prompts against benchmarks.
    pub prompt: Option<String>,
    /// None when the label is JSON null.
    pub label: Option<String>,
    pub predict: String,
    /// Why the item has no prediction (the evaluator gave up on it: timeouts, crashes, errors),
    /// or None for a prediction. A failed item keeps its place in the file (so lines stay in
    /// benchmark order and a rerun resumes after it) and is never scored.
    pub failed: Option<String>,
}

/// Why scoring could not proceed. File-level problems name the file and the 1-based line or item.
#[derive(Debug, thiserror::Error)]
pub enum ScoreError {
    #[error("{file}:{line}: {message}")]
    Record { file: String, line: usize, message: String },
    #[error("{file}: {message}")]
    File { file: String, message: String },
    /// The cause is in the message and not a `source()`, so a printed chain states it once.
    #[error("cannot read {file}: {cause}")]
    Io { file: String, cause: std::io::Error },
    #[error("{dataset} needs its benchmark file {file}.json for ground truth (give a benchmark directory)")]
    MissingBenchmark { dataset: String, file: String },
    #[error("{predictions_file}: {predictions} predictions but {benchmark_items} benchmark items")]
    LengthMismatch { predictions_file: String, predictions: usize, benchmark_items: usize },
}

fn json_type_name(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// Parses the text of a predictions file. `file` names it in errors. Blank lines are
/// skipped (they hold no record, as with pandas `read_json(lines=True)`).
pub fn parse_predictions_jsonl(file: &str, text: &str) -> Result<Vec<PredictionRecord>, ScoreError> {
    let mut records = Vec::new();
    for (index, raw_line) in text.split('\n').enumerate() {
        let line = index + 1;
        if raw_line.trim().is_empty() {
            continue;
        }
        let error = |message: String| ScoreError::Record { file: file.to_string(), line, message };
        let value: serde_json::Value =
            serde_json::from_str(raw_line).map_err(|e| error(format!("invalid JSON: {e}")))?;
        let serde_json::Value::Object(object) = value else {
            return Err(error(format!("expected a JSON object, found {}", json_type_name(&value))));
        };
        let string_field = |name: &str, null_allowed: bool| -> Result<Option<String>, ScoreError> {
            match object.get(name) {
                None => Err(error(format!("field `{name}` is missing"))),
                Some(serde_json::Value::String(text)) => Ok(Some(text.clone())),
                Some(serde_json::Value::Null) if null_allowed => Ok(None),
                Some(other) => Err(error(format!(
                    "field `{name}` must be a string{}, found {}",
                    if null_allowed { " or null" } else { "" },
                    json_type_name(other)
                ))),
            }
        };
        let label = string_field("label", true)?;
        let predict = string_field("predict", false)?.unwrap_or_default();
        let prompt = match object.get("prompt") {
            None => None,
            Some(_) => string_field("prompt", false)?,
        };
        let failed = match object.get(FAILED_FIELD) {
            None => None,
            Some(_) => string_field(FAILED_FIELD, true)?,
        };
        records.push(PredictionRecord { line, prompt, label, predict, failed });
    }
    Ok(records)
}

/// The field that marks a line as a failed item (`failed_line`); the paper's files never have it.
pub const FAILED_FIELD: &str = "failed";

#[derive(Serialize)]
struct Line<'a> {
    prompt: &'a str,
    label: Option<&'a str>,
    predict: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    failed: Option<&'a str>,
}

fn line_text(line: &Line) -> String {
    let mut text = serde_json::to_string(line).expect("strings always serialize");
    text.push('\n');
    text
}

/// One line of a predictions file, newline included, keys in the paper's order.
pub fn prediction_line(prompt: &str, label: Option<&str>, predict: &str) -> String {
    line_text(&Line { prompt, label, predict, failed: None })
}

/// The line of an item the evaluator gave up on: the paper's keys with an empty `predict`, and
/// `failed` saying why. Our scorer leaves it out and counts it; the paper's Python scorer would
/// count the empty prediction as unreadable.
pub fn failed_line(prompt: &str, label: Option<&str>, reason: &str) -> String {
    line_text(&Line { prompt, label, predict: "", failed: Some(reason) })
}

/// One line of a scores file, newline included.
pub fn scores_line(line: usize, scores: &Scores) -> String {
    #[derive(Serialize)]
    struct Line<'a> {
        line: usize,
        #[serde(flatten)]
        scores: &'a Scores,
    }
    let mut text = serde_json::to_string(&Line { line, scores }).expect("numbers always serialize");
    text.push('\n');
    text
}

/// Parses a scores file: each predictions line's scores, by line number. `file` names it in
/// errors; blank lines are skipped.
pub fn parse_scores_jsonl(file: &str, text: &str) -> Result<BTreeMap<usize, Scores>, ScoreError> {
    #[derive(serde::Deserialize)]
    struct Line {
        line: usize,
        #[serde(flatten)]
        scores: Scores,
    }
    let mut scores = BTreeMap::new();
    for (index, raw) in text.split('\n').enumerate() {
        if raw.trim().is_empty() {
            continue;
        }
        let parsed: Line = serde_json::from_str(raw).map_err(|e| ScoreError::Record {
            file: file.to_string(),
            line: index + 1,
            message: format!("not a scores line ({e})"),
        })?;
        scores.insert(parsed.line, parsed.scores);
    }
    Ok(scores)
}

/// A scores file's text cut to the lines of the first `done` predictions (a resumed run: a line
/// past them is an item whose prediction was never written).
pub fn kept_scores(file: &str, text: &str, done: usize) -> Result<String, ScoreError> {
    Ok(parse_scores_jsonl(file, text)?
        .iter()
        .filter(|(line, _)| **line <= done)
        .map(|(line, scores)| scores_line(*line, scores))
        .collect())
}

/// One item of a benchmark file: its JSON object, fields read on demand (files differ: WildGuardTest
/// carries label fields the others lack).
#[derive(Debug, Clone, PartialEq)]
pub struct BenchmarkItem {
    pub fields: serde_json::Map<String, serde_json::Value>,
}

impl BenchmarkItem {
    pub fn text_field(&self, name: &str) -> Result<&str, String> {
        match self.fields.get(name) {
            Some(serde_json::Value::String(text)) => Ok(text),
            Some(other) => Err(format!("field `{name}` must be a string, found {}", json_type_name(other))),
            None => Err(format!("field `{name}` is missing")),
        }
    }

    /// A label field: a string, or None for JSON null.
    pub fn label_field(&self, name: &str) -> Result<Option<&str>, String> {
        match self.fields.get(name) {
            Some(serde_json::Value::Null) => Ok(None),
            Some(_) => self.text_field(name).map(Some),
            None => Err(format!("field `{name}` is missing")),
        }
    }
}

/// Parses a benchmark `.json` text (an array of objects). `file` names it in errors.
pub fn parse_benchmark_json(file: &str, text: &str) -> Result<Vec<BenchmarkItem>, ScoreError> {
    let error = |message: String| ScoreError::File { file: file.to_string(), message };
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| error(format!("invalid JSON: {e}")))?;
    let serde_json::Value::Array(items) = value else {
        return Err(error(format!("expected a JSON array, found {}", json_type_name(&value))));
    };
    items
        .into_iter()
        .enumerate()
        .map(|(index, item)| match item {
            serde_json::Value::Object(fields) => Ok(BenchmarkItem { fields }),
            other => Err(error(format!("item {} is {}, not an object", index + 1, json_type_name(&other)))),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_lines_keep_their_place_and_say_why() {
        let text = prediction_line("p1", Some("harmful"), "x") + &failed_line("p2", None, "timed out after 5 s");
        assert_eq!(
            text.lines().nth(1),
            Some(r#"{"prompt":"p2","label":null,"predict":"","failed":"timed out after 5 s"}"#)
        );
        let records = parse_predictions_jsonl("p.jsonl", &text).unwrap();
        assert_eq!(records[0].failed, None);
        assert_eq!(records[1].failed.as_deref(), Some("timed out after 5 s"));
        assert_eq!(records[1].prompt.as_deref(), Some("p2"));
        let bad = parse_predictions_jsonl("p.jsonl", r#"{"label":null,"predict":"","failed":3}"#).unwrap_err();
        assert!(bad.to_string().contains("field `failed` must be a string"), "{bad}");
    }

    #[test]
    fn benchmark_file_errors_are_reported() {
        assert!(matches!(parse_benchmark_json("b.json", "{}"), Err(ScoreError::File { .. })));
        let error = parse_benchmark_json("b.json", "[{}, 3]").expect_err("item 2 is not an object");
        assert_eq!(error.to_string(), "b.json: item 2 is a number, not an object");
    }
}
