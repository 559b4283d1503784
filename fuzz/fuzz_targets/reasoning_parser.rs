//! Model output streamed into the reasoning parser in arbitrary pieces (the first byte picks
//! the piece size), then the verdict search the scorer runs on the whole text.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| guardreasoner::fuzz::reasoning_parser(data));
