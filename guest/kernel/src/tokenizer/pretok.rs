//! Pre-tokenization: the regex chain chosen by `tokenizer.ggml.pre`.
//!
//! As in llama.cpp, each regex of the chain splits every fragment left by the
//! previous one into its matches and the gaps between them (both kept).

use crate::{Error, Result};
use fancy_regex::Regex;

const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
const LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The regex chain of a pre-tokenizer, and whether whole words found in the
/// vocabulary skip BPE (llama.cpp's `ignore_merges`).
pub struct PreTokenizer {
    chain: Vec<Regex>,
    pub ignore_merges: bool,
}

/// Pre-tokenizer names this kernel knows.
pub const SUPPORTED: &[&str] = &[
    "default",
    "gpt2",
    "mpt",
    "olmo",
    "jais",
    "smollm",
    "starcoder",
    "refact",
    "command-r",
    "codeshell",
    "exaone",
    "llama3",
    "llama-bpe",
    "dbrx",
    "smaug-bpe",
    "qwen2",
    "stablelm2",
    "deepseek-r1-qwen",
];

impl PreTokenizer {
    /// The pre-tokenizer called `name` (None: llama.cpp's default).
    pub fn new(name: Option<&str>) -> Result<PreTokenizer> {
        let (exprs, ignore_merges): (&[&str], bool) = match name.unwrap_or("default") {
            "default" => (
                &[r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", "[0-9][0-9][0-9]"],
                false,
            ),
            "gpt2" | "mpt" | "olmo" | "jais" => (&[GPT2], false),
            "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" => {
                (&[r"\p{N}", GPT2], false)
            }
            "llama3" | "llama-bpe" | "dbrx" | "smaug-bpe" => (&[LLAMA3], true),
            "qwen2" | "stablelm2" | "deepseek-r1-qwen" => (&[QWEN2], false),
            other => {
                return Err(Error::Unsupported(format!(
                    "pre-tokenizer '{other}' (supported: {})",
                    SUPPORTED.join(", ")
                )))
            }
        };
        let chain = exprs
            .iter()
            .map(|e| {
                Regex::new(e)
                    .map_err(|err| Error::Unsupported(format!("pre-tokenizer regex: {err}")))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(PreTokenizer {
            chain,
            ignore_merges,
        })
    }

    /// Split `text` into words.
    pub fn split<'t>(&self, text: &'t str) -> Vec<&'t str> {
        let mut frags = vec![text];
        for re in &self.chain {
            let mut next = Vec::with_capacity(frags.len() * 2);
            for frag in frags {
                let mut at = 0;
                let mut pos = 0;
                while pos <= frag.len() {
                    let m = match re.find_from_pos(frag, pos) {
                        Ok(Some(m)) => m,
                        // No match, or the backtracking limit hit: keep the rest whole.
                        _ => break,
                    };
                    if m.start() == m.end() {
                        // Empty match: step one character forward.
                        pos = m.end() + frag[m.end()..].chars().next().map_or(1, char::len_utf8);
                        continue;
                    }
                    if m.start() > at {
                        next.push(&frag[at..m.start()]);
                    }
                    next.push(m.as_str());
                    at = m.end();
                    pos = m.end();
                }
                if at < frag.len() {
                    next.push(&frag[at..]);
                }
            }
            frags = next;
        }
        frags
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpt2_and_smollm_splits() {
        let p = PreTokenizer::new(Some("gpt2")).unwrap();
        assert_eq!(
            p.split("Hello world's  end 123"),
            ["Hello", " world", "'s", " ", " end", " 123"]
        );
        let p = PreTokenizer::new(Some("smollm")).unwrap();
        assert_eq!(
            p.split("in 2024, ok"),
            ["in", " ", "2", "0", "2", "4", ",", " ok"]
        );
        let p = PreTokenizer::new(Some("llama3")).unwrap();
        assert_eq!(
            p.split("x 12345\n\nY"),
            ["x", " ", "123", "45", "\n\n", "Y"]
        );
        assert!(matches!(
            PreTokenizer::new(Some("klingon")),
            Err(Error::Unsupported(_))
        ));
    }
}
