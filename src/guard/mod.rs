//! The GuardReasoner protocol: the prompt the model was trained on, a streaming parser of its
//! reasoning and verdicts, and the paper's scoring.

pub mod prompt;
