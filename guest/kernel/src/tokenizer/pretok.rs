//! Pre-tokenization: the chain of splits chosen by `tokenizer.ggml.pre`.
//!
//! As in llama.cpp, each step of the chain splits every fragment left by the
//! previous one into its matches and the gaps between them (both kept). The
//! GPT-2, Llama 3 and Qwen2 expressions (the ones with `\s+(?!\S)`, which a
//! backtracking engine runs in quadratic time) are hand-written scanners, as
//! llama.cpp's `unicode_regex_split_custom_*`; the others run on
//! regex-automata's linear-time engine. Every step is linear in the text.

use super::unicode::{flags, LETTER, MARK, NUMBER, WHITESPACE};
use crate::{Error, Result};
use regex_automata::meta::Regex;

/// Marks a position inside the fragment (llama.cpp's non-zero `as_uint`).
const IN: u8 = 0x80;

/// deepseek-llm's letters (a literal list of letter ranges).
const DEEPSEEK_LETTERS: &str = r"\s?[A-Za-zµÀ-ÖØ-öø-ƺƼ-ƿǄ-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ-ΡΣ-ϵϷ-ҁҊ-ԯԱ-ՖႠ-ჅᎠ-Ᏽᏸ-ᏽᲐ-ᲺᲽ-Ჿᴀ-ᴫᵫ-ᵷᵹ-ᶚḀ-ἕἘ-Ἕἠ-ὅὈ-Ὅὐ-ὗὙὛὝὟ-ώᾀ-ᾴᾶ-ᾼιῂ-ῄῆ-ῌῐ-ΐῖ-Ίῠ-Ῥῲ-ῴῶ-ῼℂℇℊ-ℓℕℙ-ℝℤΩℨK-ℭℯ-ℴℹℼ-ℿⅅ-ⅉⅎↃↄⰀ-ⱻⱾ-ⳤⳫ-ⳮⳲⳳꙀ-ꙭꚀ-ꚛꜢ-ꝯꝱ-ꞇꞋ-ꞎꭰ-ꮿﬀ-ﬆﬓ-ﬗＡ-Ｚａ-ｚ𐐀-𐑏𐒰-𐓓𐓘-𐓻𐲀-𐲲𐳀-𐳲𑢠-𑣟𞤀-𞥃]+";
/// deepseek-llm's punctuation. llama.cpp matches these on text whose non-ASCII
/// whitespace became U+000B, so whitespace never matches a literal range: `--\s`.
const DEEPSEEK_PUNCT: &str = r"\s?[[!-/:-~！-／：-～‘-‟　-。]--\s]+";
/// deepseek's CJK ranges (whitespace excluded as above).
const DEEPSEEK_CJK: &str = r"[[一-龥ࠀ-一가-퟿]--\s]+";

/// One split of the chain.
enum Step {
    /// `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)`
    Gpt2,
    /// `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,max_digits}|
    /// ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+` (Llama 3: 3 digits, Qwen2: 1;
    /// Qwen3.5 counts marks `\p{M}` as letters).
    Llama3 { max_digits: usize, marks: bool },
    /// Any expression without look-around.
    Regex(Box<Regex>),
}

/// The split chain of a pre-tokenizer, and whether whole words found in the
/// vocabulary skip BPE (llama.cpp's `ignore_merges`).
pub struct PreTokenizer {
    chain: Vec<Step>,
    pub ignore_merges: bool,
    /// Whether decoding tidies spaces before punctuation (llama.cpp's `clean_spaces`).
    pub clean_spaces: bool,
}

/// Pre-tokenizer names this kernel knows.
pub const SUPPORTED: &[&str] = &[
    "default",
    "gpt2",
    "gpt-2",
    "phi-2",
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
    "llama-v3",
    "llama-bpe",
    "falcon3",
    "falcon-h1",
    "pixtral",
    "midm-2.0",
    "lfm2",
    "dbrx",
    "smaug-bpe",
    "qwen2",
    "stablelm2",
    "deepseek-r1-qwen",
    "qwen35",
    "falcon",
    "deepseek-llm",
    "deepseek-coder",
];

fn regex(expr: &str) -> Result<Step> {
    Regex::new(expr)
        .map(|r| Step::Regex(Box::new(r)))
        .map_err(|err| Error::Unsupported(format!("pre-tokenizer regex {expr:?}: {err}")))
}

impl PreTokenizer {
    /// The pre-tokenizer called `name` (None: llama.cpp's default).
    pub fn new(name: Option<&str>) -> Result<PreTokenizer> {
        let llama3 = Step::Llama3 {
            max_digits: 3,
            marks: false,
        };
        let (chain, ignore_merges) = match name.unwrap_or("default") {
            "default" => (
                vec![
                    regex(r"[\p{P}\$\+<=>\^~\|]+")?,
                    Step::Gpt2,
                    regex(r"\p{N}+")?,
                    regex("[0-9][0-9][0-9]")?,
                ],
                false,
            ),
            "gpt2" | "gpt-2" | "phi-2" | "mpt" | "olmo" | "jais" => (vec![Step::Gpt2], false),
            "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" => {
                (vec![regex(r"\p{N}")?, Step::Gpt2], false)
            }
            "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral"
            | "midm-2.0" | "lfm2" => (vec![llama3], true),
            "dbrx" | "smaug-bpe" => (vec![llama3], false),
            "qwen2" | "stablelm2" | "deepseek-r1-qwen" => (
                vec![Step::Llama3 {
                    max_digits: 1,
                    marks: false,
                }],
                false,
            ),
            "qwen35" => (
                vec![Step::Llama3 {
                    max_digits: 1,
                    marks: true,
                }],
                false,
            ),
            "falcon" => (
                vec![
                    regex(r"[\p{P}\$\+<=>\^~\|`]+")?,
                    Step::Gpt2,
                    regex("[0-9][0-9][0-9]")?,
                ],
                false,
            ),
            "deepseek-llm" => (
                vec![
                    regex(r"[\r\n]")?,
                    regex(DEEPSEEK_LETTERS)?,
                    regex(DEEPSEEK_PUNCT)?,
                    regex(r"\s+$")?,
                    regex(DEEPSEEK_CJK)?,
                    regex(r"\p{N}+")?,
                ],
                false,
            ),
            "deepseek-coder" => (
                vec![
                    regex(r"[\r\n]")?,
                    regex(r"\s?\p{L}+")?,
                    regex(r"\s?\p{P}+")?,
                    regex(DEEPSEEK_CJK)?,
                    regex(r"\p{N}")?,
                ],
                false,
            ),
            other => {
                return Err(Error::Unsupported(format!(
                    "pre-tokenizer '{other}' (supported: {})",
                    SUPPORTED.join(", ")
                )))
            }
        };
        let name = name.unwrap_or("default");
        let clean_spaces = !matches!(
            name,
            "smollm"
                | "command-r"
                | "qwen2"
                | "qwen35"
                | "deepseek-r1-qwen"
                | "deepseek-llm"
                | "deepseek-coder"
        );
        Ok(PreTokenizer {
            chain,
            ignore_merges,
            clean_spaces,
        })
    }

    /// Split `text` into words.
    pub fn split<'t>(&self, text: &'t str) -> Vec<&'t str> {
        let mut frags = vec![text];
        let mut scratch = Scratch::default();
        for step in &self.chain {
            let mut next = Vec::with_capacity(frags.len() * 2);
            for frag in frags {
                match step {
                    Step::Regex(re) => split_regex(re, frag, &mut next),
                    Step::Gpt2 => scratch.gpt2(frag, &mut next),
                    Step::Llama3 { max_digits, marks } => {
                        let letters = if *marks { LETTER | MARK } else { LETTER };
                        scratch.llama3(frag, *max_digits, letters, &mut next)
                    }
                }
            }
            frags = next;
        }
        frags
    }
}

/// Matches and the gaps between them.
fn split_regex<'t>(re: &Regex, frag: &'t str, out: &mut Vec<&'t str>) {
    let mut at = 0;
    for m in re.find_iter(frag) {
        if m.is_empty() {
            continue;
        }
        if m.start() > at {
            out.push(&frag[at..m.start()]);
        }
        out.push(&frag[m.range()]);
        at = m.end();
    }
    if at < frag.len() {
        out.push(&frag[at..]);
    }
}

/// A fragment as characters, their classes and byte offsets (reused buffers).
#[derive(Default)]
struct Scratch {
    chars: Vec<char>,
    flags: Vec<u8>,
    offs: Vec<usize>,
}

impl Scratch {
    fn load(&mut self, frag: &str) {
        self.chars.clear();
        self.flags.clear();
        self.offs.clear();
        for (i, c) in frag.char_indices() {
            self.chars.push(c);
            self.flags.push(flags(c) | IN);
            self.offs.push(i);
        }
        self.offs.push(frag.len());
    }

    fn cpt(&self, i: usize) -> Option<char> {
        self.chars.get(i).copied()
    }

    /// The classes at `i`; 0 past the end.
    fn fl(&self, i: usize) -> u8 {
        self.flags.get(i).copied().unwrap_or(0)
    }

    /// `[^\s{letters}\p{N}]` at `i` (and inside the fragment).
    fn other(&self, i: usize, letters: u8) -> bool {
        let f = self.fl(i);
        f != 0 && f & (WHITESPACE | letters | NUMBER) == 0
    }

    /// Length of the contraction `'s|'t|'re|'ve|'m|'ll|'d` at `pos` (0: none).
    fn contraction(&self, pos: usize, fold: bool) -> usize {
        let at = |i| {
            let c = self.cpt(i).unwrap_or('\0');
            if fold {
                c.to_ascii_lowercase()
            } else {
                c
            }
        };
        if self.cpt(pos) != Some('\'') || pos + 1 >= self.chars.len() {
            return 0;
        }
        match at(pos + 1) {
            's' | 't' | 'm' | 'd' => 2,
            c1 if pos + 2 < self.chars.len() => match (c1, at(pos + 2)) {
                ('r', 'e') | ('v', 'e') | ('l', 'l') => 3,
                _ => 0,
            },
            _ => 0,
        }
    }

    /// Number of whitespace characters from `pos` on.
    fn whitespace_run(&self, pos: usize) -> usize {
        self.flags[pos..]
            .iter()
            .take_while(|&&f| f & WHITESPACE != 0)
            .count()
    }

    /// llama.cpp's `unicode_regex_split_custom_gpt2`.
    fn gpt2<'t>(&mut self, frag: &'t str, out: &mut Vec<&'t str>) {
        self.load(frag);
        let n = self.chars.len();
        let mut words = Words::new(frag, &self.offs, out);
        let mut pos = 0;
        while pos < n {
            let c = self.chars[pos];
            let k = self.contraction(pos, false);
            if k > 0 {
                pos += k;
                words.add(pos);
                continue;
            }
            let space = usize::from(c == ' ');
            let f2 = if c == ' ' {
                self.fl(pos + 1)
            } else {
                self.fl(pos)
            };
            // ` ?\p{L}+`, ` ?\p{N}+`
            if let Some(class) = [LETTER, NUMBER].into_iter().find(|&cl| f2 & cl != 0) {
                pos += space;
                while self.fl(pos) & class != 0 {
                    pos += 1;
                }
                words.add(pos);
                continue;
            }
            // ` ?[^\s\p{L}\p{N}]+`
            if f2 != 0 && f2 & (WHITESPACE | LETTER | NUMBER) == 0 {
                pos += space;
                while self.other(pos, LETTER) {
                    pos += 1;
                }
                words.add(pos);
                continue;
            }
            let ws = self.whitespace_run(pos);
            if ws > 1 && pos + ws < n {
                // `\s+(?!\S)`: the run but its last space, which goes with the next word.
                pos += ws - 1;
            } else if ws > 0 {
                pos += ws;
            } else {
                pos += 1;
            }
            words.add(pos);
        }
    }

    /// llama.cpp's `unicode_regex_split_custom_llama3` (`max_digits` 3),
    /// `_qwen2` (`max_digits` 1) and `_qwen35` (1, `letters` with marks).
    fn llama3<'t>(
        &mut self,
        frag: &'t str,
        max_digits: usize,
        letters: u8,
        out: &mut Vec<&'t str>,
    ) {
        self.load(frag);
        let n = self.chars.len();
        let mut words = Words::new(frag, &self.offs, out);
        let mut pos = 0;
        while pos < n {
            let c = self.chars[pos];
            let f = self.flags[pos];
            let k = self.contraction(pos, true);
            if k > 0 {
                pos += k;
                words.add(pos);
                continue;
            }
            // `[^\r\n\p{L}\p{N}]?\p{L}+`
            if !(c == '\r' || c == '\n' || f & NUMBER != 0)
                && (f & letters != 0 || self.fl(pos + 1) & letters != 0)
            {
                pos += 1;
                while self.fl(pos) & letters != 0 {
                    pos += 1;
                }
                words.add(pos);
                continue;
            }
            // `\p{N}{1,max_digits}`
            if f & NUMBER != 0 {
                let mut ini = pos;
                while self.fl(pos) & NUMBER != 0 {
                    pos += 1;
                    if pos - ini >= max_digits {
                        words.add(pos);
                        ini = pos;
                    }
                }
                words.add(pos);
                continue;
            }
            // ` ?[^\s\p{L}\p{N}]+[\r\n]*`
            let f2 = if c == ' ' { self.fl(pos + 1) } else { f };
            if f2 & (WHITESPACE | letters | NUMBER) == 0 {
                pos += usize::from(c == ' ');
                while self.other(pos, letters) {
                    pos += 1;
                }
                while matches!(self.cpt(pos), Some('\r' | '\n')) {
                    pos += 1;
                }
                words.add(pos);
                continue;
            }
            let ws = self.whitespace_run(pos);
            let last_newline = self.chars[pos..pos + ws]
                .iter()
                .rposition(|&c| c == '\r' || c == '\n');
            if let Some(nl) = last_newline {
                // `\s*[\r\n]+`
                pos += nl + 1;
            } else if ws > 1 && pos + ws < n {
                // `\s+(?!\S)`
                pos += ws - 1;
            } else if ws > 0 {
                // `\s+`
                pos += ws;
            } else {
                pos += 1;
            }
            words.add(pos);
        }
    }
}

/// Emits the words of one fragment, given their end positions in characters.
struct Words<'a, 't> {
    frag: &'t str,
    offs: &'a [usize],
    out: &'a mut Vec<&'t str>,
    prev: usize,
}

impl<'a, 't> Words<'a, 't> {
    fn new(frag: &'t str, offs: &'a [usize], out: &'a mut Vec<&'t str>) -> Self {
        Words {
            frag,
            offs,
            out,
            prev: 0,
        }
    }

    fn add(&mut self, end: usize) {
        if end > self.prev {
            self.out
                .push(&self.frag[self.offs[self.prev]..self.offs[end]]);
        }
        self.prev = end;
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
        assert_eq!(p.split("a  \n"), ["a", "  \n"]);
        assert_eq!(p.split("x!? 'S"), ["x", "!?", " '", "S"]);
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
        assert_eq!(
            p.split("I'LL  go.\r\n "),
            ["I", "'LL", " ", " go", ".\r\n", " "]
        );
        let p = PreTokenizer::new(Some("qwen2")).unwrap();
        assert_eq!(p.split("ab 12"), ["ab", " ", "1", "2"]);
        assert!(matches!(
            PreTokenizer::new(Some("klingon")),
            Err(Error::Unsupported(_))
        ));
    }

    #[test]
    fn regex_steps_keep_gaps() {
        let p = PreTokenizer::new(Some("falcon")).unwrap();
        assert_eq!(p.split("a,b 1234"), ["a", ",", "b", " ", "123", "4"]);
        let p = PreTokenizer::new(Some("deepseek-llm")).unwrap();
        assert_eq!(p.split("中文\u{3000}x\n"), ["中文", "\u{3000}x", "\n"]);
    }
}
