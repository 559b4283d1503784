//! The paper's benchmark datasets: each one's folder name, benchmark file and where its ground
//! truth comes from, and which tasks each is scored on. Reference: ARCHITECTURE.md §7 (benchmark
//! runs and the paper's scoring rules) and GuardReasoner's `evaluate.py`.

use serde::Serialize;

use super::task::Task;

/// Where a dataset's ground truth comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GroundTruthSource {
    /// The predictions file's `label`, as it is.
    Label,
    /// The task's answer pattern searched in the `label` text (SafeRLHF, BeaverTails).
    LabelAnswerText,
    /// The benchmark file's `prompt_harm_label` / `response_harm_label` /
    /// `response_refusal_label` at the same index (WildGuardTest).
    BenchmarkFields,
}

/// One of the paper's benchmark datasets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DatasetSpec {
    /// The folder name in a predictions tree, spelled as the paper does (`XSTestReponseHarmful`).
    pub name: &'static str,
    /// The benchmark file name without `.json`.
    pub benchmark_file: &'static str,
    pub ground_truth: GroundTruthSource,
}

const fn dataset(name: &'static str, benchmark_file: &'static str, ground_truth: GroundTruthSource) -> DatasetSpec {
    DatasetSpec { name, benchmark_file, ground_truth }
}

/// All eleven datasets, in benchmark-file order.
pub const DATASETS: &[DatasetSpec] = &[
    dataset("SimpleSafetyTests", "0_0_SimpleSafetyTests", GroundTruthSource::Label),
    dataset("AegisSafetyTest", "0_1_AegisSafetyTest", GroundTruthSource::Label),
    dataset("OpenAIModeration", "0_2_OpenAIModeration", GroundTruthSource::Label),
    dataset("HarmBenchPrompt", "0_3_harmbench_prompt", GroundTruthSource::Label),
    dataset("WildGuardTest", "0_4_wild_guard_test", GroundTruthSource::BenchmarkFields),
    dataset("HarmBenchResponse", "0_5_harmbench_response", GroundTruthSource::Label),
    dataset("XSTestReponseHarmful", "0_6_xstest_response_harmful", GroundTruthSource::Label),
    dataset("XSTestResponseRefusal", "0_7_xstest_response_refusal", GroundTruthSource::Label),
    dataset("ToxicChat", "0_8_toxic_chat", GroundTruthSource::Label),
    dataset("SafeRLHF", "0_9_safe_rlhf", GroundTruthSource::LabelAnswerText),
    dataset("BeaverTails", "0_A_beaver_tails", GroundTruthSource::LabelAnswerText),
];

/// Each task's datasets in the column order of the paper's tables.
pub const TASK_DATASETS: [(Task, &[&str]); 3] = [
    (
        Task::PromptHarmfulness,
        &["ToxicChat", "HarmBenchPrompt", "OpenAIModeration", "AegisSafetyTest", "SimpleSafetyTests", "WildGuardTest"],
    ),
    (
        Task::ResponseHarmfulness,
        &["HarmBenchResponse", "SafeRLHF", "BeaverTails", "XSTestReponseHarmful", "WildGuardTest"],
    ),
    (Task::Refusal, &["XSTestResponseRefusal", "WildGuardTest"]),
];

pub fn dataset_spec(name: &str) -> Option<&'static DatasetSpec> {
    DATASETS.iter().find(|spec| spec.name == name)
}

/// The tasks a dataset is scored on, in the paper's table order (all three for WildGuardTest).
pub(super) fn tasks_of(dataset: &str) -> Vec<Task> {
    TASK_DATASETS.iter().filter(|(_, names)| names.contains(&dataset)).map(|(task, _)| *task).collect()
}

/// The benchmark field that holds WildGuardTest's ground truth for a task.
pub fn benchmark_label_field(task: Task) -> &'static str {
    match task {
        Task::PromptHarmfulness => "prompt_harm_label",
        Task::ResponseHarmfulness => "response_harm_label",
        Task::Refusal => "response_refusal_label",
    }
}
