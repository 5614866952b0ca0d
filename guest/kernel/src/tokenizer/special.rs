//! Special tokens: llama.cpp's fix-ups of token types by their text, the
//! end-of-generation set, and splitting them out of raw text in one pass.

use super::token_type::{CONTROL, NORMAL, UNKNOWN, USER_DEFINED};
use crate::{Error, Result};
use aho_corasick::{AhoCorasick, MatchKind};

/// End-of-turn texts, looked for when `tokenizer.ggml.eot_token_id` is absent.
const EOT_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "<｜end▁of▁sentence｜>",
    "<end_of_utterance>",
];

/// Fill-in-the-middle texts: control tokens; the pad/repo/separator ones also
/// end a generation.
const FIM_TEXTS: &[&str] = &[
    "<|fim_prefix|>",
    "<fim-prefix>",
    "<fim_prefix>",
    "<｜fim▁begin｜>",
    "<PRE>",
    "▁<PRE>",
    "<|code_prefix|>",
    "<|prefix|>",
    "<|fim_suffix|>",
    "<fim-suffix>",
    "<fim_suffix>",
    "<｜fim▁hole｜>",
    "<SUF>",
    "▁<SUF>",
    "<|code_suffix|>",
    "<|suffix|>",
    "<|fim_middle|>",
    "<fim-middle>",
    "<fim_middle>",
    "<｜fim▁end｜>",
    "<MID>",
    "▁<MID>",
    "<|code_middle|>",
    "<|middle|>",
];
const FIM_EOG_TEXTS: &[&str] = &[
    "<|fim_pad|>",
    "<fim-pad>",
    "<fim_pad>",
    "<PAD>",
    "[PAD]",
    "<|fim_repo|>",
    "<|repo_name|>",
    "<fim-repo>",
    "<REPO>",
    "<reponame>",
    "<|file_sep|>",
];

/// Texts that end a generation in common vocabularies (llama.cpp's list).
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<｜end▁of▁sentence｜>",
    "[e~[",
];

/// gpt-oss tokens that always render.
const RENDERED_TEXTS: &[&str] = &["<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"];

/// Apply llama.cpp's type fix-ups (control-looking tokens become CONTROL) and
/// return the sorted end-of-generation ids. `eot` is filled in from the text
/// when the metadata did not name it.
pub fn fix_types(
    tokens: &[String],
    types: &mut [i32],
    eos: Option<u32>,
    eot: &mut Option<u32>,
) -> Vec<u32> {
    // Every listed text starts with one of these.
    let candidates: Vec<u32> = (0..tokens.len() as u32)
        .filter(|&i| tokens[i as usize].starts_with(['<', '[', '_', '▁']))
        .collect();
    let find = |list: &[&str]| -> Vec<u32> {
        candidates
            .iter()
            .copied()
            .filter(|&i| list.contains(&tokens[i as usize].as_str()))
            .collect()
    };
    let mut control = |ids: &[u32]| {
        for &i in ids {
            types[i as usize] = CONTROL;
        }
    };
    if eot.is_none() {
        let found = find(EOT_TEXTS);
        control(&found);
        *eot = found.first().copied();
    }
    let eom = find(&["<|eom_id|>"]);
    control(&eom);
    control(&find(FIM_TEXTS));
    let fim_eog = find(FIM_EOG_TEXTS);
    control(&fim_eog);
    let texts = find(EOG_TEXTS);
    control(&texts);
    for i in find(RENDERED_TEXTS) {
        types[i as usize] = USER_DEFINED;
    }
    let mut eog: Vec<u32> = fim_eog
        .into_iter()
        .chain(texts)
        .chain(eos)
        .chain(*eot)
        .chain(eom.first().copied())
        .collect();
    eog.sort_unstable();
    eog.dedup();
    let has = |eog: &[u32], text: &str| eog.iter().find(|&&i| tokens[i as usize] == text).copied();
    // o200k_harmony and solar-open: "<|end|>" ends a message, not the generation.
    let harmony = has(&eog, "<|return|>").is_some() && has(&eog, "<|call|>").is_some();
    let solar = has(&eog, "<|calls|>").is_some() && has(&eog, "<|flush|>").is_some();
    if let Some(end) = has(&eog, "<|end|>").filter(|_| harmony || solar) {
        eog.retain(|&i| i != end);
        types[end as usize] = USER_DEFINED;
    }
    // Gemma 4 and PLaMo have a normal "</s>".
    let normal_s = has(&eog, "<|tool_response>").is_some() || has(&eog, "<|plamo:eos|>").is_some();
    if let Some(s) = has(&eog, "</s>").filter(|_| normal_s) {
        eog.retain(|&i| i != s);
        types[s as usize] = NORMAL;
    }
    eog
}

/// A piece of the input: raw text, or a special token found in it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Frag<'t> {
    Text(&'t str),
    Token(u32),
}

/// An automaton over special-token texts and what each pattern stands for.
struct Matcher {
    ac: AhoCorasick,
    /// Per pattern: (token id, strip whitespace left, strip whitespace right).
    tokens: Vec<(u32, bool, bool)>,
}

/// The special tokens matched in raw text before (BPE or SPM) tokenization:
/// all of CONTROL, USER_DEFINED and UNKNOWN with `parse_special`, only
/// USER_DEFINED without. Leftmost-longest matching in one pass.
pub struct Specials {
    all: Option<Matcher>,
    user: Option<Matcher>,
}

/// C `isspace`: the whitespace llama.cpp strips next to LSTRIP/RSTRIP tokens.
fn is_c_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\x0B' | '\x0C' | '\r')
}

impl Specials {
    /// `strip[i]`: (lstrip, rstrip) of token i.
    pub fn new(tokens: &[String], types: &[i32], strip: &[(bool, bool)]) -> Result<Specials> {
        let build = |user_only: bool| -> Result<Option<Matcher>> {
            let ids: Vec<u32> = (0..tokens.len() as u32)
                .filter(|&i| {
                    let t = types[i as usize];
                    !tokens[i as usize].is_empty()
                        && (t == USER_DEFINED || (!user_only && (t == CONTROL || t == UNKNOWN)))
                })
                .collect();
            if ids.is_empty() {
                return Ok(None);
            }
            let ac = AhoCorasick::builder()
                .match_kind(MatchKind::LeftmostLongest)
                .build(ids.iter().map(|&i| tokens[i as usize].as_str()))
                .map_err(|e| Error::InvalidModel(format!("special tokens: {e}")))?;
            let tokens = ids
                .iter()
                .map(|&i| {
                    let (l, r) = strip.get(i as usize).copied().unwrap_or_default();
                    (i, l, r)
                })
                .collect();
            Ok(Some(Matcher { ac, tokens }))
        };
        Ok(Specials {
            all: build(false)?,
            user: build(true)?,
        })
    }

    /// Split `text` into raw text and special tokens.
    pub fn split<'t>(&self, text: &'t str, parse_special: bool) -> Vec<Frag<'t>> {
        let matcher = if parse_special { &self.all } else { &self.user };
        let Some(m) = matcher else {
            return if text.is_empty() {
                Vec::new()
            } else {
                vec![Frag::Text(text)]
            };
        };
        let mut out = Vec::new();
        let mut at = 0;
        let mut rstrip = false;
        for hit in m.ac.find_iter(text) {
            let (id, lstrip, r) = m.tokens[hit.pattern().as_usize()];
            let mut gap = &text[at..hit.start()];
            if rstrip {
                gap = gap.trim_start_matches(is_c_space);
            }
            if lstrip {
                gap = gap.trim_end_matches(is_c_space);
            }
            if !gap.is_empty() {
                out.push(Frag::Text(gap));
            }
            out.push(Frag::Token(id));
            at = hit.end();
            rstrip = r;
        }
        let mut tail = &text[at..];
        if rstrip {
            tail = tail.trim_start_matches(is_c_space);
        }
        if !tail.is_empty() {
            out.push(Frag::Text(tail));
        }
        out
    }
}
