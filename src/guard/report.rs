//! `report.html`: a benchmark run as a page a person reads offline. Per task, each dataset's F1
//! beside the paper's published figure for GuardReasoner-1B, the counts that explain it
//! (unparseable answers, failed items), tokens/s per dataset, and a bar chart per task drawn as
//! inline SVG. No script, no network: one self-contained file. Built from `summary.json`'s object
//! (or from a scorer's report alone, `eval --report`), so the native CLI and the browser's
//! evaluator write the same page. See ARCHITECTURE.md §7.

use super::datasets::TASK_DATASETS;
use super::task::Task;
use serde_json::Value;
use std::fmt::Write;

/// The paper's published F1 for GuardReasoner-1B (arXiv 2501.18492, its main tables), by task and
/// dataset, with each task's weighted average last (`WEIGHTED`).
pub const PAPER_F1_1B: [(Task, &[(&str, f64)]); 3] = [
    (
        Task::PromptHarmfulness,
        &[
            ("ToxicChat", 72.43),
            ("HarmBenchPrompt", 96.31),
            ("OpenAIModeration", 70.06),
            ("AegisSafetyTest", 89.34),
            ("SimpleSafetyTests", 98.99),
            ("WildGuardTest", 87.37),
            (WEIGHTED, 77.68),
        ],
    ),
    (
        Task::ResponseHarmfulness,
        &[
            ("HarmBenchResponse", 84.75),
            ("SafeRLHF", 68.39),
            ("BeaverTails", 85.84),
            ("XSTestReponseHarmful", 90.12),
            ("WildGuardTest", 74.81),
            (WEIGHTED, 79.06),
        ],
    ),
    (Task::Refusal, &[("XSTestResponseRefusal", 91.34), ("WildGuardTest", 87.71), (WEIGHTED, 88.51)]),
];

/// The page a benchmark run writes beside `summary.json`.
pub const REPORT_FILE: &str = "report.html";

/// The column of a task's weighted average.
pub const WEIGHTED: &str = "Weighted avg.";

/// The paper's F1 for a dataset (or `WEIGHTED`) on a task.
pub fn paper_f1(task: Task, dataset: &str) -> Option<f64> {
    PAPER_F1_1B.iter().find(|(t, _)| *t == task)?.1.iter().find(|(name, _)| *name == dataset).map(|(_, f1)| *f1)
}

/// Text made safe to place in HTML (element content and quoted attributes).
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn cell(value: Option<f64>) -> String {
    value.map_or("-".to_string(), |v| format!("{v:.2}"))
}

/// One row of a task's table: a dataset (or the weighted average) and what the run gave.
struct Row {
    name: String,
    /// Whether `ours` measures what `paper` does (a partial average does not).
    comparable: bool,
    ours: Option<f64>,
    paper: Option<f64>,
    unparseable: Option<u64>,
    counted: Option<u64>,
    failed: Option<u64>,
}

/// The rows of `task` from the scorer's report (`EvalReport` as JSON). `whole`: the run covered
/// every item of its datasets (no `--limit`, no shard of several), so its F1 measures what the
/// paper's does; a dataset with failed items does not either.
fn rows(scores: &Value, task: Task, whole: bool) -> Vec<Row> {
    let task_word = serde_json::to_value(task).unwrap_or_default();
    let datasets = scores["datasets"].as_array().cloned().unwrap_or_default();
    let names = TASK_DATASETS.iter().find(|(t, _)| *t == task).map_or(&[][..], |(_, names)| names);
    let mut rows: Vec<Row> = names
        .iter()
        .map(|name| {
            let dataset = datasets.iter().find(|d| d["name"] == *name);
            let score = dataset.and_then(|d| d["scores"].as_array()?.iter().find(|s| s["task"] == task_word).cloned());
            let failed = dataset.and_then(|d| d["failed_items"].as_u64());
            Row {
                name: name.to_string(),
                comparable: whole && failed.unwrap_or(0) == 0,
                ours: score.as_ref().and_then(|s| s["f1"].as_f64()),
                paper: paper_f1(task, name),
                unparseable: score.as_ref().and_then(|s| s["unparseable_predictions"].as_u64()),
                counted: score.as_ref().and_then(|s| s["counted_pairs"].as_u64()),
                failed,
            }
        })
        .collect();
    let summary = scores["tasks"].as_array().and_then(|tasks| tasks.iter().find(|t| t["task"] == task_word));
    let missing = summary.and_then(|s| s["missing"].as_array()).map_or(names.len(), Vec::len);
    let all_comparable = rows.iter().all(|r| r.comparable);
    rows.push(Row {
        // With datasets missing the average covers the others: not the paper's figure.
        name: if missing == 0 {
            WEIGHTED.to_string()
        } else {
            format!("{WEIGHTED} (partial: {} of {} datasets)", names.len() - missing.min(names.len()), names.len())
        },
        comparable: missing == 0 && all_comparable,
        ours: summary.and_then(|s| s["weighted_f1"].as_f64()),
        paper: paper_f1(task, WEIGHTED),
        unparseable: None,
        counted: None,
        failed: None,
    });
    rows
}

/// A grouped bar chart: per row, our F1 and the paper's, on a 0-100 scale.
fn chart(task: Task, rows: &[Row]) -> String {
    const GROUP: f64 = 96.0;
    const BAR: f64 = 30.0;
    const HEIGHT: f64 = 180.0;
    const TOP: f64 = 16.0;
    const LEFT: f64 = 80.0;
    const BOTTOM: f64 = 90.0;
    let width = LEFT + GROUP * rows.len() as f64 + 8.0;
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg role="img" aria-label="F1 by dataset, {}: this run beside the paper" width="{width:.0}" height="{:.0}" viewBox="0 0 {width:.0} {:.0}" xmlns="http://www.w3.org/2000/svg">"#,
        escape(task.display_name()),
        TOP + HEIGHT + BOTTOM,
        TOP + HEIGHT + BOTTOM
    );
    for tick in [0, 25, 50, 75, 100] {
        let y = TOP + HEIGHT * (1.0 - f64::from(tick) / 100.0);
        let _ = write!(
            svg,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{width:.0}" y2="{y:.1}" stroke="#ddd"/><text x="{:.0}" y="{:.1}" font-size="10" text-anchor="end">{tick}</text>"##,
            LEFT - 4.0,
            y + 3.0
        );
    }
    for (i, row) in rows.iter().enumerate() {
        let x0 = LEFT + GROUP * i as f64 + (GROUP - 2.0 * BAR) / 2.0;
        for (j, (value, class, who)) in
            [(row.ours, "ours", "this run"), (row.paper, "paper", "paper")].into_iter().enumerate()
        {
            let Some(value) = value else { continue };
            let h = HEIGHT * value.clamp(0.0, 100.0) / 100.0;
            let x = x0 + BAR * j as f64;
            let _ = write!(
                svg,
                r#"<rect class="{class}" x="{x:.1}" y="{:.1}" width="{:.1}" height="{h:.1}"><title>{}, {who}: {value:.2}</title></rect>"#,
                TOP + HEIGHT - h,
                BAR - 2.0,
                escape(&row.name)
            );
        }
        let _ = write!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" font-size="10" text-anchor="end" transform="rotate(-30 {:.1} {:.1})">{}</text>"#,
            x0 + BAR,
            TOP + HEIGHT + 14.0,
            x0 + BAR,
            TOP + HEIGHT + 14.0,
            // The table says what a partial average covers; the axis keeps it short.
            escape(if row.comparable { &row.name } else { "Weighted avg.*" })
        );
    }
    svg.push_str("</svg>");
    svg
}

/// Where the predictions had scores: per dataset of `task`, its precision-recall curve (an inline
/// SVG, recall across, precision up) with the area under it and the best F1 a threshold reaches.
fn curves(scores: &Value, task: Task) -> String {
    const SIZE: f64 = 150.0;
    const PAD: f64 = 24.0;
    let task_word = serde_json::to_value(task).unwrap_or_default();
    let datasets = scores["datasets"].as_array().cloned().unwrap_or_default();
    let mut html = String::new();
    for dataset in &datasets {
        let Some(score) = dataset["scores"].as_array().and_then(|s| s.iter().find(|s| s["task"] == task_word)) else {
            continue;
        };
        let ranking = &score["ranking"];
        let Some(curve) = ranking["curve"].as_array() else { continue };
        let name = escape(dataset["name"].as_str().unwrap_or("?"));
        let number = |key: &str| ranking[key].as_f64().unwrap_or(f64::NAN);
        let caption = format!(
            "{name}: AUPRC {:.2}, best F1 {:.2} at threshold {:.3} ({} items)",
            number("auprc"),
            number("best_f1"),
            number("best_threshold"),
            ranking["scored_items"].as_u64().unwrap_or(0)
        );
        let points: Vec<String> = curve
            .iter()
            .filter_map(|p| Some((p[0].as_f64()?, p[1].as_f64()?)))
            .map(|(r, p)| format!("{:.1},{:.1}", PAD + SIZE * r, PAD + SIZE * (1.0 - p)))
            .collect();
        let _ = write!(
            html,
            r##"<figure class="pr"><svg role="img" aria-label="precision-recall curve, {caption}" width="{w:.0}" height="{w:.0}" viewBox="0 0 {w:.0} {w:.0}" xmlns="http://www.w3.org/2000/svg"><rect x="{PAD}" y="{PAD}" width="{SIZE}" height="{SIZE}" fill="none" stroke="#ddd"/><polyline points="{}" fill="none" stroke="#2f6fdb" stroke-width="2"/><text x="{PAD}" y="{:.0}" font-size="10">recall</text><text x="4" y="{:.0}" font-size="10">precision</text></svg><figcaption>{caption}</figcaption></figure>"##,
            points.join(" "),
            PAD + SIZE + 14.0,
            PAD - 8.0,
            w = SIZE + 2.0 * PAD,
        );
    }
    if html.is_empty() {
        return html;
    }
    format!(
        "<h3>Scores: precision and recall over every threshold</h3>\n<p>The model's probability of the positive verdict, read at the token that wrote it (<code>scores.jsonl</code>); the F1 above is the paper's, from the text.</p>\n<div class=\"curves\">{html}</div>\n"
    )
}

/// The page for a run: `summary` is `summary.json`'s object (the CLI's `predict`, the browser's
/// evaluator), or `{"scores": <EvalReport>}` alone (`eval --report`).
pub fn report_html(summary: &Value) -> String {
    let scores = &summary["scores"];
    let mut html = String::new();
    html.push_str(concat!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">",
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">",
        "<title>GuardReasoner benchmark report</title><style>",
        "body{font:14px/1.45 system-ui,sans-serif;margin:2rem auto;max-width:72rem;padding:0 1rem;color:#222}",
        "table{border-collapse:collapse;margin:.5rem 0 1rem}th,td{border-bottom:1px solid #ddd;padding:.25rem .6rem;text-align:right}",
        "th:first-child,td:first-child{text-align:left}td.worse{color:#a40000}td.better{color:#006b1b}",
        "rect.ours{fill:#2f6fdb}rect.paper{fill:#9aa3ad}.key span{display:inline-block;width:.8em;height:.8em;margin:0 .3em 0 1em}",
        "dl{display:grid;grid-template-columns:max-content auto;gap:.15rem 1rem}dt{color:#555}dd{margin:0}",
        ".curves{display:flex;flex-wrap:wrap;gap:1rem}figure.pr{margin:0;max-width:14rem}figcaption{font-size:12px}",
        "</style></head><body>\n<h1>GuardReasoner benchmark report</h1>\n"
    ));
    // What ran, when the summary says.
    let facts: Vec<(&str, String)> = [
        ("model", summary["model"].as_str().map(str::to_string)),
        ("engine", summary["engine"].as_str().map(str::to_string)),
        ("backend", summary["backend"].as_str().map(str::to_string)),
        ("quantization", summary["quant"].as_str().map(str::to_string)),
        ("batch", summary["batch"].as_u64().map(|b| b.to_string())),
        ("max new tokens", summary["max_new_tokens"].as_u64().map(|n| n.to_string())),
        ("mode", summary["mode"].as_str().map(str::to_string)),
        ("shard", summary["shard"].as_str().map(str::to_string)),
        ("limit per dataset", summary["limit"].as_u64().map(|n| n.to_string())),
        ("items run now", summary["new_items"].as_u64().map(|n| n.to_string())),
        ("tokens generated", summary["tokens_generated"].as_u64().map(|n| n.to_string())),
        ("tokens/s (prefill included)", summary["tokens_per_s"].as_f64().map(|v| format!("{v:.1}"))),
        ("decode tokens/s", summary["decode_tokens_per_s"].as_f64().map(|v| format!("{v:.1}"))),
        ("wall time", summary["wall_s"].as_f64().map(|v| format!("{v:.1} s"))),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.map(|v| (k, v)))
    .collect();
    if !facts.is_empty() {
        html.push_str("<dl>");
        for (k, v) in facts {
            let _ = write!(html, "<dt>{}</dt><dd>{}</dd>", escape(k), escape(&v));
        }
        html.push_str("</dl>\n");
    }
    html.push_str(
        "<p>F1 of the positive class (harmful; refusal for the refusal task), in percent, beside the paper's \
         published figure for GuardReasoner-1B (arXiv 2501.18492). A dataset this run did not score shows -; \
         its weighted average then covers the others only and is not the paper's figure.</p>\n\
         <p class=\"key\"><span style=\"background:#2f6fdb\"></span>this run<span style=\"background:#9aa3ad\"></span>paper</p>\n",
    );
    let limit = summary["limit"].as_u64();
    let shard = summary["shard"].as_str().filter(|s| *s != "0/1");
    let part = match (limit, shard) {
        (Some(n), Some(s)) => Some(format!("the first {n} items of each dataset, shard {s}")),
        (Some(n), None) => Some(format!("the first {n} items of each dataset (--limit)")),
        (None, Some(s)) => Some(format!("shard {s} of each dataset")),
        (None, None) => None,
    };
    if let Some(part) = &part {
        let _ = writeln!(
            html,
            "<p><strong>This run covers part of the benchmarks ({}):</strong> its F1s are not the paper's measure, so no difference is shown.</p>",
            escape(part)
        );
    }
    let whole = part.is_none();
    for (task, _) in PAPER_F1_1B {
        let rows = rows(scores, task, whole);
        let _ = write!(html, "<h2>{} task</h2>\n{}\n", escape(task.display_name()), chart(task, &rows));
        html.push_str(
            "<table><thead><tr><th>dataset</th><th>this run</th><th>paper</th><th>difference</th>\
             <th>pairs scored</th><th>unparseable answers</th><th>failed items</th></tr></thead><tbody>\n",
        );
        for row in &rows {
            let diff = row.ours.zip(row.paper).filter(|_| row.comparable).map(|(a, b)| a - b);
            let class = match diff {
                Some(d) if d < -0.005 => " class=\"worse\"",
                Some(d) if d > 0.005 => " class=\"better\"",
                _ => "",
            };
            let count = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
            let _ = writeln!(
                html,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td{class}>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(&row.name),
                cell(row.ours),
                cell(row.paper),
                diff.map_or("-".to_string(), |d| if d.abs() < 0.005 { "0.00".to_string() } else { format!("{d:+.2}") }),
                count(row.counted),
                count(row.unparseable),
                count(row.failed)
            );
        }
        html.push_str("</tbody></table>\n");
        html.push_str(&curves(scores, task));
    }
    // Speed per dataset, when the run's totals are there.
    if let Some(datasets) = summary["datasets"].as_array().filter(|d| !d.is_empty()) {
        html.push_str(
            "<h2>Speed</h2>\n<table><thead><tr><th>dataset</th><th>items run now</th><th>tokens generated</th>\
             <th>seconds</th><th>tokens/s</th></tr></thead><tbody>\n",
        );
        for d in datasets {
            let tokens = d["tokens_generated"].as_f64().unwrap_or(0.0);
            let seconds = d["generation_s"].as_f64().unwrap_or(0.0);
            let rate = if seconds > 0.0 { format!("{:.1}", tokens / seconds) } else { "-".to_string() };
            let _ = writeln!(
                html,
                "<tr><td>{}</td><td>{}</td><td>{tokens:.0}</td><td>{seconds:.1}</td><td>{rate}</td></tr>",
                escape(d["name"].as_str().unwrap_or("?")),
                d["new_items"].as_u64().unwrap_or(0)
            );
        }
        html.push_str("</tbody></table>\n");
    }
    html.push_str("</body></html>\n");
    html
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_paper_figure_names_a_dataset_of_its_task() {
        for (task, figures) in PAPER_F1_1B {
            let names = TASK_DATASETS.iter().find(|(t, _)| *t == task).unwrap().1;
            for (name, f1) in figures.iter() {
                assert!(*name == WEIGHTED || names.contains(name), "{name}");
                assert!((0.0..=100.0).contains(f1));
            }
            assert_eq!(figures.len(), names.len() + 1, "{task:?}: every dataset and the average");
        }
    }

    #[test]
    fn a_part_of_the_benchmarks_is_not_compared_with_the_paper() {
        let scores = serde_json::json!({
            "datasets": [{"name": "SimpleSafetyTests", "items": 10, "failed_items": 0,
                "scores": [{"task": "prompt_harmfulness", "f1": 90.0, "counted_pairs": 10, "unparseable_predictions": 0}]}],
            "tasks": [{"task": "prompt_harmfulness", "weighted_f1": 90.0, "missing": []}]
        });
        let whole = report_html(&serde_json::json!({"scores": scores, "shard": "0/1"}));
        assert!(
            whole.contains("<td>SimpleSafetyTests</td><td>90.00</td><td>98.99</td><td class=\"worse\">-8.99</td>"),
            "{whole}"
        );
        for summary in
            [serde_json::json!({"scores": scores, "limit": 10}), serde_json::json!({"scores": scores, "shard": "1/2"})]
        {
            let part = report_html(&summary);
            assert!(part.contains("<td>SimpleSafetyTests</td><td>90.00</td><td>98.99</td><td>-</td>"), "{part}");
            assert!(part.contains("covers part of the benchmarks"));
        }
    }

    #[test]
    fn text_from_the_run_is_escaped() {
        let summary =
            serde_json::json!({"model": "<img src=x onerror=alert(1)>", "scores": {"datasets": [], "tasks": []}});
        let html = report_html(&summary);
        assert!(html.contains("&lt;img src=x onerror=alert(1)&gt;"));
        assert!(!html.contains("<img"));
    }
}
