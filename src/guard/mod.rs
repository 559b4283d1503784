//! The GuardReasoner protocol: the prompt the model was trained on, its three tasks, a streaming
//! parser of its reasoning and verdicts, the paper's datasets and file formats, its benchmark
//! scorer, and benchmark runs' item selection. Reference: ARCHITECTURE.md §3 (model contract and
//! output shape) and §7 (benchmark runs and scoring).

pub mod datasets;
pub mod lines;
pub mod parser;
pub mod predictions;
pub mod prompt;
pub mod ranking;
pub mod record;
pub mod report;
pub mod run;
pub mod score;
pub mod scores;
pub mod task;

pub use datasets::{DATASETS, DatasetSpec, GroundTruthSource, TASK_DATASETS, benchmark_label_field, dataset_spec};
pub use parser::{GuardEvent, GuardResult, ReasoningParser, TaskReasoning};
pub use predictions::{
    BenchmarkItem, FAILED_FIELD, PREDICTIONS_FILE, PredictionRecord, SCORES_FILE, ScoreError, failed_line, kept_scores,
    parse_benchmark_json, parse_predictions_jsonl, parse_scores_jsonl, prediction_line, scores_line,
};
pub use prompt::{ANSWER_HEADER, INSTRUCTION, NO_RESPONSE, checked_guard_prompt, guard_prompt, shared_prefix};
pub use ranking::Ranking;
pub use record::{DatasetTotals, EngineInfo, MANIFEST_FILE, RunManifest, RunSummary, SUMMARY_FILE};
pub use report::{PAPER_F1_1B, REPORT_FILE, paper_f1, report_html};
pub use run::{PlannedItem, ResumePoint, Shard, plan_items, resume_point};
#[cfg(not(target_arch = "wasm32"))]
pub use score::evaluate_dir;
pub use score::{
    DatasetPredictions, DatasetReport, EvalReport, GroundTruth, PREDICTION_TAIL_CHARS, TaskScore, TaskSummary,
    evaluate, find_verdict, positive_label, prediction_tail, score_items,
};
pub use scores::{ScoredReader, Scores, Thresholds, VerdictWords};
pub use task::Task;
