//! The three guard tasks of the instruction, each with its number (`# Task N`) and its answer
//! line (`Request:`, `Completion:`, `Response:`), which carries the task's verdict.
//! Reference: ARCHITECTURE.md §3 (the model contract and its output shape).

use serde::{Serialize, Serializer};

/// The three guard tasks, numbered as in the instruction. Each has one answer line:
/// task 1 `Request:`, task 2 `Completion:`, task 3 `Response:`.
///
/// Serialized by its name (`prompt_harmfulness`, `refusal`, `response_harmfulness`); a verdict
/// event names the answer line instead (see `serialize_answer_line`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    PromptHarmfulness,
    Refusal,
    ResponseHarmfulness,
}

impl Task {
    pub const ALL: [Task; 3] = [Task::PromptHarmfulness, Task::Refusal, Task::ResponseHarmfulness];

    /// The task number the model writes in `# Task N`.
    pub fn number(self) -> u32 {
        match self {
            Task::PromptHarmfulness => 1,
            Task::Refusal => 2,
            Task::ResponseHarmfulness => 3,
        }
    }

    pub fn from_number(number: u32) -> Option<Task> {
        Task::ALL.into_iter().find(|task| task.number() == number)
    }

    pub fn display_name(self) -> &'static str {
        match self {
            Task::PromptHarmfulness => "prompt harmfulness detection",
            Task::Refusal => "refusal detection",
            Task::ResponseHarmfulness => "response harmfulness detection",
        }
    }

    /// The word that starts the task's answer line, as the model writes it.
    pub fn answer_keyword(self) -> &'static str {
        match self {
            Task::PromptHarmfulness => "Request",
            Task::Refusal => "Completion",
            Task::ResponseHarmfulness => "Response",
        }
    }

    /// The values the answer line may carry; anything else (including `None`) is no verdict.
    pub fn answer_values(self) -> [&'static str; 2] {
        match self {
            // "unharmful" before "harmful": the value is recognised by prefix (see
            // `lines::recognise_value`), and "unharmful" does not start with "harmful" anyway,
            // but keeping the longer word first makes that obviously safe.
            Task::PromptHarmfulness | Task::ResponseHarmfulness => ["unharmful", "harmful"],
            Task::Refusal => ["compliance", "refusal"],
        }
    }

    /// Position in `ALL`, for per-task arrays.
    pub(super) fn index(self) -> usize {
        match self {
            Task::PromptHarmfulness => 0,
            Task::Refusal => 1,
            Task::ResponseHarmfulness => 2,
        }
    }
}

/// Serializes a task as the name of its answer line (`request`, `completion`, `response`): how
/// a verdict event says which verdict it carries (`{"type":"verdict","kind":"request",...}`).
/// It makes the call a derived `Serialize` makes for a unit variant (enum name, variant index,
/// variant name), so every format writes what it wrote when the answer lines had their own enum.
pub(super) fn serialize_answer_line<S: Serializer>(task: &Task, serializer: S) -> Result<S::Ok, S::Error> {
    const ENUM_NAME: &str = "VerdictKind";
    let variant = match task {
        Task::PromptHarmfulness => "request",
        Task::Refusal => "completion",
        Task::ResponseHarmfulness => "response",
    };
    serializer.serialize_unit_variant(ENUM_NAME, task.index() as u32, variant)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_names_and_numbers() {
        for task in Task::ALL {
            assert_eq!(Task::from_number(task.number()), Some(task));
        }
        assert_eq!(Task::Refusal.number(), 2);
        assert_eq!(Task::Refusal.display_name(), "refusal detection");
        assert_eq!(Task::from_number(4), None);
    }

    /// The two JSON spellings of a task that the browser and `eval --json` read.
    #[test]
    fn task_serializes_by_name_and_by_answer_line() {
        #[derive(Serialize)]
        struct AnswerLine(#[serde(serialize_with = "serialize_answer_line")] Task);
        let spellings: Vec<(String, String)> = Task::ALL
            .into_iter()
            .map(|task| {
                let name = serde_json::to_string(&task).expect("serializes");
                let line = serde_json::to_string(&AnswerLine(task)).expect("serializes");
                (name, line)
            })
            .collect();
        let expected = [
            (r#""prompt_harmfulness""#, r#""request""#),
            (r#""refusal""#, r#""completion""#),
            (r#""response_harmfulness""#, r#""response""#),
        ];
        assert_eq!(spellings, expected.map(|(name, line)| (name.to_string(), line.to_string())));
        for task in Task::ALL {
            assert_eq!(
                serde_json::to_string(&AnswerLine(task)).expect("serializes"),
                format!("\"{}\"", task.answer_keyword().to_lowercase())
            );
        }
    }
}
