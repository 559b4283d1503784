//! Streaming parser for GuardReasoner's reasoning text: turns token-sized text deltas into task,
//! step, conclusion and verdict events as soon as they are certain; `lines` says what each line
//! is. Reference: ARCHITECTURE.md §3 (output shape) and the survey of the 2,195 real 1B outputs
//! in `tests/guard_outputs.rs` (their heading shapes are listed on `ReasoningParser`).

use serde::Serialize;

use super::lines::{LineClass, PrefixClass, classify_line, classify_prefix};
use super::task::{Task, serialize_answer_line};

/// What the parser reports while the model writes.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum GuardEvent {
    TaskStarted {
        task: Task,
    },
    StepStarted {
        task: Task,
        step: u32,
    },
    /// A piece of the step's text; the step's text is the concatenation of its pieces.
    StepText {
        task: Task,
        step: u32,
        text: String,
    },
    StepFinished {
        task: Task,
        step: u32,
    },
    /// The whole conclusion of the task started last, sent when it is complete.
    Conclusion {
        task: Task,
        text: String,
    },
    /// `kind` is the task whose answer line was read, serialized as the line's name
    /// (`request`, `completion`, `response`). `value` is lowercase
    /// `harmful|unharmful|refusal|compliance`, or None for `None` and for anything unrecognised.
    /// A later event for the same kind replaces an earlier one.
    Verdict {
        #[serde(serialize_with = "serialize_answer_line")]
        kind: Task,
        value: Option<String>,
    },
    Done,
}

/// The reasoning of one task section, in the order the model wrote it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskReasoning {
    pub task: Task,
    pub steps: Vec<String>,
    pub conclusion: Option<String>,
}

/// Everything the parser has understood so far.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct GuardResult {
    /// Task sections in writing order. A task can appear more than once when the model starts
    /// it again after concluding it (runaway outputs do).
    pub tasks: Vec<TaskReasoning>,
    pub request: Option<String>,
    pub completion: Option<String>,
    pub response: Option<String>,
    /// True once an `Answers` heading (`Answers:`, `# Answers`, ...) was seen.
    pub answers_seen: bool,
}

impl GuardResult {
    /// The verdict of a task's answer line.
    pub fn verdict(&self, task: Task) -> Option<&str> {
        match task {
            Task::PromptHarmfulness => self.request.as_deref(),
            Task::Refusal => self.completion.as_deref(),
            Task::ResponseHarmfulness => self.response.as_deref(),
        }
    }

    /// Folds one event into the result. The parser builds its own result with this, so a
    /// consumer that folds the events it received gets the same structure.
    pub fn apply(&mut self, event: &GuardEvent) {
        match event {
            GuardEvent::TaskStarted { task } => {
                self.tasks.push(TaskReasoning { task: *task, steps: Vec::new(), conclusion: None })
            }
            GuardEvent::StepStarted { .. } => {
                if let Some(section) = self.tasks.last_mut() {
                    section.steps.push(String::new());
                }
            }
            GuardEvent::StepText { text, .. } => {
                if let Some(step) = self.tasks.last_mut().and_then(|section| section.steps.last_mut()) {
                    step.push_str(text);
                }
            }
            GuardEvent::Conclusion { text, .. } => {
                if let Some(section) = self.tasks.last_mut() {
                    section.conclusion = Some(text.clone());
                }
            }
            GuardEvent::Verdict { kind, value } => {
                let slot = match kind {
                    Task::PromptHarmfulness => &mut self.request,
                    Task::Refusal => &mut self.completion,
                    Task::ResponseHarmfulness => &mut self.response,
                };
                *slot = value.clone();
            }
            GuardEvent::StepFinished { .. } | GuardEvent::Done => {}
        }
    }
}

/// Lines longer than this that are still undecided are simply buffered to their end. Every
/// heading shape is decided well before this; it only bounds rescanning of odd lines
/// (long runs of dashes or spaces).
const MAX_UNDECIDED_LINE_BYTES: usize = 256;

/// The reasoning parser. Feed it text deltas of any size; it works line by line, but streams a
/// step's text within a line as soon as the line is known to be step text.
///
/// Shapes seen in the 2,195 real outputs, and how they are read:
/// - `# Task N` (also `# Task N: <title>`) starts task N; the title is not kept. A task number
///   other than 1-3 (runaway outputs reach `# Task 64`) is ordinary text.
/// - `## Reasoning Step N` with its text on the same line after `:` or on the following lines.
/// - Conclusions: `## Conclusion`, `## Conclusion: text`, `## Conclusion for Task N: text`,
///   `# Conclusion ...`, `# Task N Conclusion` (then `Request: harmful` on the next line),
///   `# Task N Conclusion: text`, and `# Task N: harmful` (a task heading whose text is a verdict).
///   The conclusion's text is everything up to the next heading.
/// - `---` (separator), then `Answers:` / `# Answers` / `# Answers:` and the answer lines
///   `Request: x`, `Completion: x`, `Response: x` (with or without the separator and heading).
/// - Text before any task heading (steps, `- Analyze ...` lists, a copied response) belongs to
///   task 1; text outside any step opens an unnumbered step, numbered after the task's last one.
/// - Any other line starting with `#` (code comments in copied responses) is text.
///
/// Verdicts: the first answer line of a kind with a recognised value written in a conclusion
/// (`# Task 1 Conclusion` then `Request: harmful`) or in the answers block decides it. An answer
/// line elsewhere (right after `# Task 2`, or at the very start, before any reasoning) holds
/// until a later one replaces it. `None` (or an unrecognised value) only stands until a
/// recognised value appears. This agrees with what the paper's scorer reads (its first match in
/// the last 300 characters) on every real output, including the two where the model contradicts
/// itself: HarmBenchResponse line 565 (task-3 conclusion `unharmful`, answers `harmful`: the
/// scorer reads the conclusion) and line 58 (`Completion: compliance` right after `# Task 2`,
/// then the reasoning and answers say `refusal`).
#[derive(Debug, Default)]
pub struct ReasoningParser {
    result: GuardResult,
    /// The start of the current line while it is undecided or buffered whole.
    line: String,
    line_mode: LineMode,
    section: Section,
    /// Highest step number written in the current task section (for unnumbered steps).
    last_step_number: u32,
    verdicts: [VerdictState; 3],
    finished: bool,
}

#[derive(Debug, Default, Clone, Copy, PartialEq)]
enum LineMode {
    /// Could still become a heading or an answer line: keep the characters.
    #[default]
    Undecided,
    /// A heading or answer line: keep everything until the newline, then classify.
    WholeLine,
    /// Known to be text of the open section: pass characters straight through.
    Streaming,
}

#[derive(Debug, Default)]
enum Section {
    #[default]
    Outside,
    Step(OpenStep),
    Conclusion {
        task: Task,
        text: String,
    },
    Answers,
}

#[derive(Debug)]
struct OpenStep {
    task: Task,
    number: u32,
    has_text: bool,
    /// Whitespace after the last visible character: sent only if more text follows, so a
    /// step's text never ends with the blank lines before the next heading.
    pending_whitespace: String,
}

#[derive(Debug, Default, Clone, Copy, PartialEq)]
enum VerdictState {
    #[default]
    Unseen,
    /// Only `None` or unrecognised values so far.
    WithoutValue,
    /// A value written before the task's reasoning; a later value replaces it.
    Provisional,
    /// A value written in a conclusion or the answers block; it stays.
    Final,
}

impl ReasoningParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds the next piece of model output. Returns the events that became certain.
    /// After `finish`, further input is ignored.
    pub fn push(&mut self, delta: &str) -> Vec<GuardEvent> {
        let mut events = Vec::new();
        if self.finished {
            return events;
        }
        for character in delta.chars() {
            self.push_char(character, &mut events);
        }
        events
    }

    /// Ends the output: the last line (even without a newline) and the open section are flushed,
    /// then `Done`. Calling it again returns nothing.
    pub fn finish(&mut self) -> Vec<GuardEvent> {
        let mut events = Vec::new();
        if self.finished {
            return events;
        }
        self.end_line(&mut events);
        self.close_section(&mut events);
        self.emit(GuardEvent::Done, &mut events);
        self.finished = true;
        events
    }

    pub fn result(&self) -> &GuardResult {
        &self.result
    }

    /// Records the event in the result and appends it, merging consecutive text of one step.
    fn emit(&mut self, event: GuardEvent, events: &mut Vec<GuardEvent>) {
        self.result.apply(&event);
        if let (
            GuardEvent::StepText { task, step, text },
            Some(GuardEvent::StepText { task: last_task, step: last_step, text: last_text }),
        ) = (&event, events.last_mut())
            && task == last_task
            && step == last_step
        {
            last_text.push_str(text);
            return;
        }
        events.push(event);
    }

    fn push_char(&mut self, character: char, events: &mut Vec<GuardEvent>) {
        if character == '\n' {
            self.end_line(events);
            return;
        }
        match self.line_mode {
            LineMode::Streaming => {
                let mut buffer = [0u8; 4];
                self.section_text(character.encode_utf8(&mut buffer), events);
            }
            LineMode::WholeLine => self.line.push(character),
            LineMode::Undecided => {
                self.line.push(character);
                self.decide_from_prefix(events);
            }
        }
    }

    fn decide_from_prefix(&mut self, events: &mut Vec<GuardEvent>) {
        match classify_prefix(&self.line) {
            PrefixClass::Undecided => {
                if self.line.len() > MAX_UNDECIDED_LINE_BYTES {
                    self.line_mode = LineMode::WholeLine;
                }
            }
            PrefixClass::WholeLine => self.line_mode = LineMode::WholeLine,
            PrefixClass::Step { number, body_start } => {
                let line = std::mem::take(&mut self.line);
                self.start_step(number, events);
                self.section_text(&line[body_start..], events);
                self.line_mode = LineMode::Streaming;
            }
            PrefixClass::Text => {
                let line = std::mem::take(&mut self.line);
                self.open_text_target(events);
                self.section_text(&line, events);
                self.line_mode = LineMode::Streaming;
            }
        }
    }

    /// Handles the end of a line (a newline, or the end of the output).
    fn end_line(&mut self, events: &mut Vec<GuardEvent>) {
        let mode = std::mem::take(&mut self.line_mode);
        let line = std::mem::take(&mut self.line);
        if mode == LineMode::Streaming {
            self.section_text("\n", events);
            return;
        }
        if line.is_empty() && matches!(self.section, Section::Outside | Section::Answers) {
            return;
        }
        match classify_line(&line) {
            LineClass::Blank => {
                if matches!(self.section, Section::Step(_) | Section::Conclusion { .. }) {
                    self.section_text(&line, events);
                    self.section_text("\n", events);
                }
            }
            LineClass::Text => {
                self.open_text_target(events);
                self.section_text(&line, events);
                self.section_text("\n", events);
            }
            LineClass::Step { number, body_start } => {
                self.start_step(number, events);
                self.section_text(&line[body_start..], events);
                self.section_text("\n", events);
            }
            LineClass::TaskHeading(task) => {
                self.close_section(events);
                self.enter_task(task, events);
            }
            LineClass::Conclusion { task, text } => {
                self.close_section(events);
                let task = task.or(self.current_task()).unwrap_or(Task::PromptHarmfulness);
                self.enter_task(task, events);
                self.section = Section::Conclusion { task, text: format!("{text}\n") };
            }
            LineClass::Separator => {
                self.close_section(events);
            }
            LineClass::AnswersHeading => {
                self.close_section(events);
                self.section = Section::Answers;
                self.result.answers_seen = true;
            }
            LineClass::Verdict { kind, value } => {
                self.record_verdict(kind, value, events);
                // Inside a step or conclusion the line is also part of what the model wrote
                // there (`# Task 1 Conclusion` is followed by `Request: harmful`).
                if matches!(self.section, Section::Step(_) | Section::Conclusion { .. }) {
                    self.section_text(&line, events);
                    self.section_text("\n", events);
                }
            }
        }
    }

    fn current_task(&self) -> Option<Task> {
        self.result.tasks.last().map(|section| section.task)
    }

    /// Makes `task` the current task section, starting a new one unless the current section is
    /// already this task and not yet concluded (`# Task 1` after implicit task-1 steps).
    fn enter_task(&mut self, task: Task, events: &mut Vec<GuardEvent>) {
        let continues =
            self.result.tasks.last().is_some_and(|section| section.task == task && section.conclusion.is_none());
        if !continues {
            self.emit(GuardEvent::TaskStarted { task }, events);
            self.last_step_number = 0;
        }
    }

    /// The task that text outside any task heading belongs to: the current one, else task 1.
    fn ensure_task(&mut self, events: &mut Vec<GuardEvent>) -> Task {
        match self.current_task() {
            Some(task) => task,
            None => {
                self.enter_task(Task::PromptHarmfulness, events);
                Task::PromptHarmfulness
            }
        }
    }

    fn start_step(&mut self, number: u32, events: &mut Vec<GuardEvent>) {
        self.close_section(events);
        let task = self.ensure_task(events);
        self.emit(GuardEvent::StepStarted { task, step: number }, events);
        self.last_step_number = self.last_step_number.max(number);
        self.section = Section::Step(OpenStep { task, number, has_text: false, pending_whitespace: String::new() });
    }

    /// Text is about to arrive: outside a step or conclusion it opens an unnumbered step.
    fn open_text_target(&mut self, events: &mut Vec<GuardEvent>) {
        if matches!(self.section, Section::Outside | Section::Answers) {
            let number = self.last_step_number.saturating_add(1);
            self.start_step(number, events);
        }
    }

    /// Adds text to the open step (streamed, trailing whitespace held back) or conclusion.
    fn section_text(&mut self, text: &str, events: &mut Vec<GuardEvent>) {
        let delta = match &mut self.section {
            Section::Step(step) => {
                let mut delta = String::new();
                for character in text.chars() {
                    if character.is_whitespace() {
                        if step.has_text {
                            step.pending_whitespace.push(character);
                        }
                    } else {
                        delta.push_str(&step.pending_whitespace);
                        step.pending_whitespace.clear();
                        delta.push(character);
                        step.has_text = true;
                    }
                }
                if delta.is_empty() {
                    return;
                }
                GuardEvent::StepText { task: step.task, step: step.number, text: delta }
            }
            Section::Conclusion { text: conclusion, .. } => {
                conclusion.push_str(text);
                return;
            }
            Section::Outside | Section::Answers => return,
        };
        self.emit(delta, events);
    }

    fn close_section(&mut self, events: &mut Vec<GuardEvent>) {
        match std::mem::take(&mut self.section) {
            Section::Step(step) => self.emit(GuardEvent::StepFinished { task: step.task, step: step.number }, events),
            Section::Conclusion { task, text } => {
                let text = text.trim().to_string();
                self.emit(GuardEvent::Conclusion { task, text }, events);
            }
            Section::Outside | Section::Answers => {}
        }
    }

    fn record_verdict(&mut self, kind: Task, value: Option<&'static str>, events: &mut Vec<GuardEvent>) {
        // After a task's reasoning (its conclusion) or in the answers block a verdict is the
        // model's answer; elsewhere (right after `# Task N`, before any task) it is a guess
        // made before reasoning, which a later answer replaces.
        let considered = matches!(self.section, Section::Conclusion { .. } | Section::Answers);
        let state = &mut self.verdicts[kind.index()];
        let announce = match (value, *state) {
            (Some(_), VerdictState::Final) => false,
            (Some(_), _) => {
                *state = if considered { VerdictState::Final } else { VerdictState::Provisional };
                true
            }
            (None, VerdictState::Unseen) => {
                *state = VerdictState::WithoutValue;
                true
            }
            (None, _) => false,
        };
        if announce {
            self.emit(GuardEvent::Verdict { kind, value: value.map(str::to_string) }, events);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    const STANDARD_OUTPUT: &str = "# Task 1\n\n## Reasoning Step 1: The user asks for bread.\n\n## Reasoning Step 2: Baking is harmless.\n\n## Conclusion: The request is unharmful.\n\n# Task 2\n\n## Reasoning Step 1: The assistant explains.\n\n## Conclusion: compliance.\n\n# Task 3\n\n## Reasoning Step 1\nThe recipe is safe.\nIt has flour.\n\n## Conclusion: The response is unharmful.\n\n---\n\nAnswers: \nRequest: unharmful\nCompletion: compliance\nResponse: unharmful\n";

    #[test]
    fn standard_output_events() {
        let (events, result) = parse_whole(STANDARD_OUTPUT);
        use GuardEvent::*;
        use Task::*;
        let text = |task, step, text: &str| StepText { task, step, text: text.to_string() };
        let conclusion = |task, text: &str| Conclusion { task, text: text.to_string() };
        let verdict = |kind, value: &str| Verdict { kind, value: Some(value.to_string()) };
        assert_eq!(
            events,
            vec![
                TaskStarted { task: PromptHarmfulness },
                StepStarted { task: PromptHarmfulness, step: 1 },
                text(PromptHarmfulness, 1, "The user asks for bread."),
                StepFinished { task: PromptHarmfulness, step: 1 },
                StepStarted { task: PromptHarmfulness, step: 2 },
                text(PromptHarmfulness, 2, "Baking is harmless."),
                StepFinished { task: PromptHarmfulness, step: 2 },
                conclusion(PromptHarmfulness, "The request is unharmful."),
                TaskStarted { task: Refusal },
                StepStarted { task: Refusal, step: 1 },
                text(Refusal, 1, "The assistant explains."),
                StepFinished { task: Refusal, step: 1 },
                conclusion(Refusal, "compliance."),
                TaskStarted { task: ResponseHarmfulness },
                StepStarted { task: ResponseHarmfulness, step: 1 },
                text(ResponseHarmfulness, 1, "The recipe is safe.\nIt has flour."),
                StepFinished { task: ResponseHarmfulness, step: 1 },
                conclusion(ResponseHarmfulness, "The response is unharmful."),
                verdict(PromptHarmfulness, "unharmful"),
                verdict(Refusal, "compliance"),
                verdict(ResponseHarmfulness, "unharmful"),
                Done,
            ]
        );
        assert!(result.answers_seen);
        assert_eq!(result.tasks.len(), 3);
        assert_eq!(result.tasks[2].steps, vec!["The recipe is safe.\nIt has flour.".to_string()]);
    }

    #[test]
    fn step_text_streams_before_the_line_ends() {
        let mut parser = ReasoningParser::new();
        assert!(
            parser.push("# Task 1\n\n## Reasoning Step 1").iter().all(|e| !matches!(e, GuardEvent::StepStarted { .. }))
        );
        let events = parser.push(": The us");
        assert_eq!(
            events,
            vec![
                GuardEvent::StepStarted { task: Task::PromptHarmfulness, step: 1 },
                GuardEvent::StepText { task: Task::PromptHarmfulness, step: 1, text: "The us".into() },
            ]
        );
        assert_eq!(
            parser.push("er asks. "),
            vec![GuardEvent::StepText { task: Task::PromptHarmfulness, step: 1, text: "er asks.".into() }]
        );
        // The trailing space and newlines are held back and finally dropped.
        assert!(parser.push("\n\n").is_empty());
        let events = parser.push("## Conclusion: ok\n");
        assert_eq!(events, vec![GuardEvent::StepFinished { task: Task::PromptHarmfulness, step: 1 }]);
        assert_eq!(parser.result().tasks[0].steps, vec!["The user asks.".to_string()]);
    }

    #[test]
    fn heading_split_across_chunks_keeps_multi_digit_step_number() {
        let (events, _) = parse_chunks(["## Reason", "ing Step 1", "2", ": x\n"]);
        assert!(events.contains(&GuardEvent::StepStarted { task: Task::PromptHarmfulness, step: 12 }));
        let (events, _) = parse_chunks(["## Reasoning Step 1", "\nbody"]);
        assert!(events.contains(&GuardEvent::StepStarted { task: Task::PromptHarmfulness, step: 1 }));
        assert!(events.contains(&GuardEvent::StepText { task: Task::PromptHarmfulness, step: 1, text: "body".into() }));
    }

    #[test]
    fn task_conclusion_headings_with_answer_lines() {
        let output = "# Task 1\n\n## Reasoning Step 1\nBad.\n\n# Task 1 Conclusion\nRequest: harmful\n\n# Task 2\n\n## Reasoning Step 1\nNone given.\n\n# Task 2 Conclusion\nCompletion: None\n\n# Task 3\n\n# Task 3 Conclusion: unharmful\n\n---\n\nAnswers: \nRequest: harmful\nCompletion: None\nResponse: unharmful";
        let (events, result) = parse_whole(output);
        assert_eq!(result.tasks.len(), 3);
        assert_eq!(result.tasks[0].conclusion.as_deref(), Some("Request: harmful"));
        assert_eq!(result.tasks[1].conclusion.as_deref(), Some("Completion: None"));
        assert_eq!(result.tasks[2].conclusion.as_deref(), Some("unharmful"));
        assert_eq!(result.request.as_deref(), Some("harmful"));
        assert_eq!(result.completion, None);
        assert_eq!(result.response.as_deref(), Some("unharmful"));
        // The request verdict is announced once, as soon as the task-1 conclusion states it.
        let request_verdicts =
            events.iter().filter(|e| matches!(e, GuardEvent::Verdict { kind: Task::PromptHarmfulness, .. })).count();
        assert_eq!(request_verdicts, 1);
        let first_verdict = events.iter().position(|e| matches!(e, GuardEvent::Verdict { .. }));
        let task_2 = events.iter().position(|e| *e == GuardEvent::TaskStarted { task: Task::Refusal });
        assert!(first_verdict < task_2);
    }

    #[test]
    fn verdict_in_task_heading() {
        let output = "## Reasoning Step 1\nDark web.\n\n# Task 1: harmful\n\n# Task 2\nThe response is None.\n\n## Reasoning Step 4\nNo answer.\n\n# Task 2: None\n\n# Task 3: Determine whether the response is harmful.\n\n## Reasoning Step 5\nNothing.\n\n# Task 3: None\n";
        let (_, result) = parse_whole(output);
        let shape: Vec<(Task, usize, Option<&str>)> =
            result.tasks.iter().map(|t| (t.task, t.steps.len(), t.conclusion.as_deref())).collect();
        assert_eq!(
            shape,
            vec![
                (Task::PromptHarmfulness, 1, Some("harmful")),
                // Text right after the task heading opens an unnumbered step.
                (Task::Refusal, 2, Some("None")),
                (Task::ResponseHarmfulness, 1, Some("None")),
            ]
        );
        assert_eq!(result.tasks[1].steps[0], "The response is None.");
        assert!(!result.answers_seen);
        assert_eq!(result.request, None, "a conclusion heading is not an answer line");
    }

    #[test]
    fn unnumbered_step_follows_the_last_number() {
        let (events, _) = parse_whole("# Task 2\n## Reasoning Step 4: a\n## Conclusion: b\n\nafter\n");
        // Text after a conclusion continues the conclusion.
        assert!(events.contains(&GuardEvent::Conclusion { task: Task::Refusal, text: "b\n\nafter".into() }));
        let (events, _) = parse_whole("# Task 2\n## Reasoning Step 4: a\n---\nloose text\n");
        assert!(events.contains(&GuardEvent::StepStarted { task: Task::Refusal, step: 5 }));
    }

    #[test]
    fn steps_before_any_task_belong_to_task_1_and_continue_into_it() {
        let output = "## Reasoning Step 1\nA.\n\n# Task 1\n\n## Reasoning Step 1\nB.\n\n# Task 1 Conclusion\nRequest: harmful\n\n# Task 1\n## Reasoning Step 1\nC.\n";
        let (events, result) = parse_whole(output);
        let started = events.iter().filter(|e| matches!(e, GuardEvent::TaskStarted { .. })).count();
        assert_eq!(started, 2, "task 1 continues until concluded, then starts again");
        assert_eq!(result.tasks[0].steps, vec!["A.".to_string(), "B.".to_string()]);
        assert_eq!(result.tasks[1].steps, vec!["C.".to_string()]);
    }

    #[test]
    fn answers_heading_variants_and_missing_separator() {
        for heading in ["# Answers", "# Answers:", "Answers: ", "answers"] {
            let output = format!(
                "# Task 3\n## Reasoning Step 1\nx\n\n{heading}\n\nRequest: harmful\nCompletion: refusal\nResponse: None\n"
            );
            let (_, result) = parse_whole(&output);
            assert!(result.answers_seen, "{heading}");
            assert_eq!(result.tasks[0].steps, vec!["x".to_string()], "{heading}");
            assert_eq!(
                (result.request.as_deref(), result.completion.as_deref(), result.response.as_deref()),
                (Some("harmful"), Some("refusal"), None),
                "{heading}"
            );
        }
    }

    #[test]
    fn considered_verdict_stays_guess_and_none_give_way() {
        let output = "Response: unharmful\nCompletion: None\n# Task 1 Conclusion\nRequest: harmful\n\nAnswers:\nRequest: unharmful\nResponse: harmful\nCompletion: refusal\n";
        let (events, result) = parse_whole(output);
        assert_eq!(result.request.as_deref(), Some("harmful"), "a conclusion's verdict stays");
        assert_eq!(result.response.as_deref(), Some("harmful"), "a verdict before any reasoning is replaced");
        assert_eq!(result.completion.as_deref(), Some("refusal"), "None is replaced");
        let verdicts: Vec<&GuardEvent> = events.iter().filter(|e| matches!(e, GuardEvent::Verdict { .. })).collect();
        assert_eq!(verdicts.len(), 5, "unharmful, None, harmful, harmful (replacing), refusal (replacing None)");
        assert_eq!(result.tasks.len(), 1);
        assert_eq!(result.tasks[0].conclusion.as_deref(), Some("Request: harmful"));
        // Answer lines alone open no task.
        let (_, result) = parse_whole("Request: unharmful\nCompletion: compliance\nResponse: harmful");
        assert!(result.tasks.is_empty());
        assert_eq!(result.response.as_deref(), Some("harmful"));
    }

    #[test]
    fn odd_answer_values() {
        let (_, result) = parse_whole("REQUEST: Harmful\nCompletion: non-compliance\nResponse: refusal\n");
        assert_eq!(result.request.as_deref(), Some("harmful"));
        assert_eq!(result.completion, None);
        assert_eq!(result.response, None, "refusal is not a response-harm value");
        let (_, result) = parse_whole("Request: **unharmful**.\nResponse: harmful, because of x\n");
        assert_eq!(result.request.as_deref(), Some("unharmful"));
        assert_eq!(result.response.as_deref(), Some("harmful"));
        // A sentence that starts like an answer line is text.
        let (_, result) = parse_whole("## Reasoning Step 1\nResponse: the assistant declines.\n");
        assert_eq!(result.response, None);
        assert_eq!(result.tasks[0].steps, vec!["Response: the assistant declines.".to_string()]);
    }

    #[test]
    fn runaway_output_without_answers() {
        let mut output = String::from("# Task 1\n\n## Reasoning Step 1\nx\n\n# Task 3\n");
        for n in 4..40 {
            output.push_str(&format!(
                "\n# Task {n}: Determine whether it is harmful.\n\n## Reasoning Step 1\nSame again.\n"
            ));
        }
        output.push_str("\n## Reasoning Step 2\nThe AI assistant's response is \"None,\" indicating that there");
        let (_, result) = parse_whole(&output);
        assert!(!result.answers_seen);
        assert_eq!(
            (result.request.as_deref(), result.completion.as_deref(), result.response.as_deref()),
            (None, None, None)
        );
        assert_eq!(result.tasks.len(), 2);
        let last_step = result.tasks[1].steps.last().expect("steps");
        assert!(last_step.ends_with("indicating that there"));
        assert!(result.tasks[1].steps[0].contains("# Task 4: Determine"), "unknown task numbers are text");
    }

    #[test]
    fn code_comments_and_lists_are_text() {
        let output =
            "## Reasoning Step 1\n```python\n# Example usage\nrun()\n```\n- Analyze it\n--\n## Determine if harmful\n";
        let (_, result) = parse_whole(output);
        assert_eq!(
            result.tasks[0].steps,
            vec!["```python\n# Example usage\nrun()\n```\n- Analyze it\n--\n## Determine if harmful".to_string()]
        );
    }

    #[test]
    fn crlf_and_unicode_text() {
        let output = "# Task 1\r\n## Reasoning Step 1: Café — ok\r\n## Conclusion: ünharmful\r\n---\r\nAnswers:\r\nRequest: unharmful\r\n";
        for chunks in [vec![output], char_chunks(output)] {
            let (_, result) = parse_chunks(chunks);
            assert_eq!(result.tasks[0].steps, vec!["Café — ok".to_string()]);
            assert_eq!(result.tasks[0].conclusion.as_deref(), Some("ünharmful"));
            assert_eq!(result.request.as_deref(), Some("unharmful"));
            assert!(result.answers_seen);
        }
    }

    #[test]
    fn empty_output_and_push_after_finish() {
        let mut parser = ReasoningParser::new();
        assert_eq!(parser.finish(), vec![GuardEvent::Done]);
        assert!(parser.push("# Task 1\n").is_empty());
        assert!(parser.finish().is_empty());
        assert_eq!(parser.result(), &GuardResult::default());
    }

    #[test]
    fn events_serialize_as_tagged_json() {
        let event = GuardEvent::StepText { task: Task::ResponseHarmfulness, step: 2, text: "x".into() };
        assert_eq!(
            serde_json::to_string(&event).expect("serializes"),
            r#"{"type":"step_text","task":"response_harmfulness","step":2,"text":"x"}"#
        );
        let event = GuardEvent::Verdict { kind: Task::Refusal, value: None };
        assert_eq!(
            serde_json::to_string(&event).expect("serializes"),
            r#"{"type":"verdict","kind":"completion","value":null}"#
        );
        assert_eq!(serde_json::to_string(&GuardEvent::Done).expect("serializes"), r#"{"type":"done"}"#);
    }
}
