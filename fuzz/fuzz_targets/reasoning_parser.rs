//! Model output streamed into the reasoning parser in arbitrary pieces (the first byte picks
//! the piece size), then the verdict search the scorer runs on the whole text.
#![no_main]

use guardreasoner::guard::{ReasoningParser, Task, find_verdict, prediction_tail};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&piece, rest)) = data.split_first() else { return };
    let text = String::from_utf8_lossy(rest);
    let mut parser = ReasoningParser::new();
    let piece = usize::from(piece % 16) + 1;
    let chars: Vec<char> = text.chars().collect();
    for chunk in chars.chunks(piece) {
        let _ = parser.push(&chunk.iter().collect::<String>());
    }
    let _ = parser.finish();
    for task in [Task::PromptHarmfulness, Task::ResponseHarmfulness, Task::Refusal] {
        let _ = find_verdict(task, &text);
    }
    let _ = prediction_tail(&text);
});
