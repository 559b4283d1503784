//! The GuardReasoner protocol: the prompt the model was trained on, a streaming parser of its
//! reasoning and verdicts, the paper's benchmark scorer, and benchmark runs' item selection and
//! files (DESIGN.md sections 3 and 5).

pub mod parser;
pub mod prompt;
pub mod run;
pub mod score;
#[cfg(test)]
mod test_data;

pub use parser::{GuardEvent, GuardResult, ReasoningParser, Task, TaskReasoning, VerdictKind};
pub use prompt::{INSTRUCTION, NO_RESPONSE, guard_prompt};
pub use run::{PlannedItem, ResumePoint, Shard, plan_items, prediction_line, resume_point};
#[cfg(not(target_arch = "wasm32"))]
pub use score::evaluate_dir;
pub use score::{
    BenchmarkItem, DATASETS, DatasetPredictions, DatasetReport, DatasetSpec, EvalReport,
    GroundTruth, GroundTruthSource, PredictionRecord, ScoreError, TaskScore, TaskSummary, evaluate,
    find_verdict, parse_benchmark_json, parse_predictions_jsonl, prediction_tail, score_items,
};
