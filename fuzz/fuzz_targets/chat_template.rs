//! Chat-template rendering (minijinja, as `apply-chat-template` runs it).
//!
//! Input: the template, then NUL-separated role/content pairs; the first
//! byte's low bit is `add_generation_prompt`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wasm_chord_kernel::tokenizer::{apply_chat_template, ChatMessage};

/// Messages at most (the rest of the input is ignored).
const MAX_MESSAGES: usize = 16;

fuzz_target!(|data: &[u8]| {
    let Some((&opts, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    let mut parts = text.split('\0');
    let template = parts.next().unwrap_or("");
    let rest: Vec<&str> = parts.collect();
    let messages: Vec<ChatMessage> = rest
        .chunks(2)
        .take(MAX_MESSAGES)
        .map(|p| ChatMessage {
            role: p[0].to_string(),
            content: p.get(1).unwrap_or(&"").to_string(),
        })
        .collect();
    let _ = apply_chat_template(template, &messages, opts & 1 != 0, "<s>", "</s>");
});
