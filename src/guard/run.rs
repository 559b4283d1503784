//! Benchmark runs: which items of a benchmark file a run covers (`--limit`, `--shard I/N`), the
//! generation prompt of each (`instruction + "\n" + input`, label `output`), and where an
//! interrupted run resumes. Reference: ARCHITECTURE.md §7 (benchmark runs). Written once and used
//! by both the native `predict` command and the headless-browser evaluator (via wasm), so the
//! two produce the same files; the lines themselves are written by `predictions::prediction_line`.

use serde::{Deserialize, Serialize};

use super::predictions::{BenchmarkItem, ScoreError, parse_predictions_jsonl};

/// One slice of a run split across machines: shard `index` of `count` (0-based), written `I/N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    pub const WHOLE: Shard = Shard { index: 0, count: 1 };

    pub fn new(index: usize, count: usize) -> Result<Shard, String> {
        if count == 0 || index >= count {
            return Err(format!("shard {index}/{count}: need 0 <= I < N (e.g. 0/2 and 1/2)"));
        }
        Ok(Shard { index, count })
    }

    /// Parses `I/N`.
    pub fn parse(text: &str) -> Result<Shard, String> {
        let (i, n) = text.split_once('/').ok_or_else(|| format!("shard `{text}`: expected I/N, e.g. 0/2"))?;
        let number = |s: &str| {
            s.trim().parse::<usize>().map_err(|_| format!("shard `{text}`: expected I/N with whole numbers, e.g. 0/2"))
        };
        Shard::new(number(i)?, number(n)?)
    }

    /// The items of a file with `total` items that this shard covers: the first `limit` items
    /// (all without a limit), cut into `count` contiguous slices as even as can be. Contiguous
    /// slices make the shards' files concatenate, in order, to the unsplit run's file.
    pub fn select(self, total: usize, limit: Option<usize>) -> std::ops::Range<usize> {
        let n = limit.map_or(total, |limit| limit.min(total));
        (self.index * n / self.count)..((self.index + 1) * n / self.count)
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// One benchmark item as a run sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedItem {
    /// 0-based position in the benchmark file.
    pub index: usize,
    /// The generation prompt: `instruction + "\n" + input` (BOS is added by the tokenizer).
    pub prompt: String,
    /// The `output` field as it is (null stays null).
    pub label: Option<String>,
}

/// The items `shard` and `limit` select from a benchmark file's items. `file` names it in errors.
pub fn plan_items(
    file: &str,
    items: &[BenchmarkItem],
    limit: Option<usize>,
    shard: Shard,
) -> Result<Vec<PlannedItem>, ScoreError> {
    shard
        .select(items.len(), limit)
        .map(|index| {
            let item = &items[index];
            let error = |message: String| ScoreError::File {
                file: file.to_string(),
                message: format!("item {}: {message}", index + 1),
            };
            let instruction = item.text_field("instruction").map_err(error)?;
            let input = item.text_field("input").map_err(error)?;
            let label = item.label_field("output").map_err(error)?.map(str::to_string);
            Ok(PlannedItem { index, prompt: format!("{instruction}\n{input}"), label })
        })
        .collect()
}

/// Where a run resumes in an existing predictions file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ResumePoint {
    /// Finished items in the file (its complete lines): the run goes on with the next one.
    pub done: usize,
    /// Bytes of the file to keep: everything up to the last complete line.
    pub keep_bytes: usize,
    /// Bytes of an unfinished last line (a write cut off by a kill) that the run drops.
    pub partial_bytes: usize,
}

/// Checks an existing predictions file against the items this run selects and says where to go
/// on. Every complete line must be a prediction record for the planned item at its position (so
/// a file from another dataset, shard or benchmark is refused, never mixed); a last line without
/// its newline is an unfinished write and is dropped. Refuses a file with more lines than the
/// plan. Nothing here changes the file.
pub fn resume_point(file: &str, existing: &[u8], planned: &[PlannedItem]) -> Result<ResumePoint, ScoreError> {
    // Work on bytes: the offsets are the file's, whatever a cut-off write left at the end.
    let keep_bytes = existing.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let complete = std::str::from_utf8(&existing[..keep_bytes]).map_err(|e| ScoreError::File {
        file: file.to_string(),
        message: format!("not UTF-8 text (byte {}); use another --out", e.valid_up_to()),
    })?;
    let records = parse_predictions_jsonl(file, complete)?;
    if records.len() > planned.len() {
        return Err(ScoreError::File {
            file: file.to_string(),
            message: format!(
                "holds {} predictions but this run selects {} items; raise --limit, or use another --out",
                records.len(),
                planned.len()
            ),
        });
    }
    for (record, item) in records.iter().zip(planned) {
        let line = record.line;
        if record.prompt.as_deref() != Some(item.prompt.as_str()) {
            return Err(ScoreError::Record {
                file: file.to_string(),
                line,
                message: format!(
                    "its prompt is not that of benchmark item {} of this run (another dataset, shard or benchmark file?); use another --out",
                    item.index + 1
                ),
            });
        }
        if record.label != item.label {
            return Err(ScoreError::Record {
                file: file.to_string(),
                line,
                message: format!("its label differs from benchmark item {}", item.index + 1),
            });
        }
    }
    // Blank lines hold no record (as the scorer reads them), so count records, not lines.
    Ok(ResumePoint { done: records.len(), keep_bytes, partial_bytes: existing.len() - keep_bytes })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guard::{parse_benchmark_json, prediction_line};

    fn items(n: usize) -> Vec<BenchmarkItem> {
        let list: Vec<serde_json::Value> = (0..n)
            .map(|i| serde_json::json!({"instruction": "Classify.", "input": format!("Human user:\nq{i} \"é\"\n\nAI assistant:\nNone\n\n"), "output": if i % 2 == 0 { "harmful" } else { "unharmful" }}))
            .collect();
        parse_benchmark_json("bench.json", &serde_json::to_string(&list).unwrap()).unwrap()
    }

    #[test]
    fn shards_cover_every_item_once_and_in_order() {
        for total in [0, 1, 2, 3, 7, 100] {
            for limit in [None, Some(0), Some(1), Some(3), Some(1000)] {
                for count in 1..=5 {
                    let covered: Vec<usize> =
                        (0..count).flat_map(|index| Shard::new(index, count).unwrap().select(total, limit)).collect();
                    let expected: Vec<usize> = (0..limit.map_or(total, |l| l.min(total))).collect();
                    assert_eq!(covered, expected, "total {total} limit {limit:?} count {count}");
                }
            }
        }
    }

    #[test]
    fn shard_parsing() {
        assert_eq!(Shard::parse("1/2").unwrap(), Shard { index: 1, count: 2 });
        assert_eq!(Shard::parse(" 0 / 1 ").unwrap(), Shard::WHOLE);
        for bad in ["2/2", "0/0", "1", "a/2", "-1/2", "1/2/3"] {
            assert!(Shard::parse(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn prompts_labels_and_lines() {
        let planned = plan_items("bench.json", &items(5), Some(3), Shard::new(1, 2).unwrap()).unwrap();
        assert_eq!(planned.iter().map(|p| p.index).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(planned[0].prompt, "Classify.\nHuman user:\nq1 \"é\"\n\nAI assistant:\nNone\n\n");
        assert_eq!(planned[0].label.as_deref(), Some("unharmful"));
        let line = prediction_line(&planned[0].prompt, planned[0].label.as_deref(), "# Task 1\n");
        assert!(
            line.starts_with("{\"prompt\":\"Classify.\\nHuman user:\\nq1 \\\"é\\\"")
                && line.ends_with("\"label\":\"unharmful\",\"predict\":\"# Task 1\\n\"}\n"),
            "{line}"
        );
        let records = parse_predictions_jsonl("p.jsonl", &line).unwrap();
        assert_eq!(records[0].prompt.as_deref(), Some(planned[0].prompt.as_str()));
        assert_eq!(prediction_line("p", None, "x"), "{\"prompt\":\"p\",\"label\":null,\"predict\":\"x\"}\n");
    }

    #[test]
    fn a_malformed_item_is_named() {
        let bad = parse_benchmark_json(
            "b.json",
            r#"[{"instruction":"i","input":"x","output":"harmful"},{"instruction":"i","output":"harmful"}]"#,
        )
        .unwrap();
        let err = plan_items("b.json", &bad, None, Shard::WHOLE).unwrap_err().to_string();
        assert!(err.contains("b.json") && err.contains("item 2") && err.contains("`input`"), "{err}");
    }

    #[test]
    fn resume_points() {
        let planned = plan_items("bench.json", &items(4), None, Shard::WHOLE).unwrap();
        let line = |i: usize| prediction_line(&planned[i].prompt, planned[i].label.as_deref(), &format!("answer {i}"));
        let two = format!("{}{}", line(0), line(1));
        assert_eq!(resume_point("f", b"", &planned).unwrap(), ResumePoint { done: 0, keep_bytes: 0, partial_bytes: 0 });
        assert_eq!(
            resume_point("f", two.as_bytes(), &planned).unwrap(),
            ResumePoint { done: 2, keep_bytes: two.len(), partial_bytes: 0 }
        );
        // A write cut off mid-line (here inside the two bytes of "é") is dropped, the finished
        // lines kept, with offsets in bytes.
        let mut cut = format!("{two}{}", &line(2)).into_bytes();
        let e_acute = two.len() + line(2).find('é').unwrap();
        cut.truncate(e_acute + 1);
        assert_eq!(
            resume_point("f", &cut, &planned).unwrap(),
            ResumePoint { done: 2, keep_bytes: two.len(), partial_bytes: e_acute + 1 - two.len() }
        );
        // Lines of another item, a broken complete line, or more lines than planned are refused.
        let swapped = format!("{}{}", line(1), line(0));
        let err = resume_point("f", swapped.as_bytes(), &planned).unwrap_err().to_string();
        assert!(err.contains("f:1") && err.contains("item 1"), "{err}");
        let broken = format!("{}{{\"prompt\": \n", line(0));
        assert!(resume_point("f", broken.as_bytes(), &planned).unwrap_err().to_string().contains("f:2"));
        let err = resume_point("f", two.as_bytes(), &planned[..1]).unwrap_err().to_string();
        assert!(err.contains("holds 2 predictions but this run selects 1"), "{err}");
    }
}
