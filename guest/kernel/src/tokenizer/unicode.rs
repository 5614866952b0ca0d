//! The Unicode classes the pre-tokenizers ask about (llama.cpp's
//! `unicode_cpt_flags`): letters `\p{L}`, numbers `\p{N}`, whitespace `\s`.

use std::sync::OnceLock;

pub const LETTER: u8 = 1;
pub const NUMBER: u8 = 2;
pub const WHITESPACE: u8 = 4;
pub const MARK: u8 = 8;

/// Sorted, disjoint ranges of a Unicode class (from regex-syntax's tables).
fn ranges(class: &str) -> Vec<(char, char)> {
    use regex_syntax::hir::{Class, HirKind};
    match regex_syntax::parse(class).map(|h| h.into_kind()) {
        Ok(HirKind::Class(Class::Unicode(c))) => {
            c.ranges().iter().map(|r| (r.start(), r.end())).collect()
        }
        // A constant class always parses to a Unicode class.
        _ => Vec::new(),
    }
}

fn in_ranges(t: &[(char, char)], c: char) -> bool {
    // The last range starting at or before `c`.
    let i = t.partition_point(|&(lo, _)| lo <= c);
    i > 0 && c <= t[i - 1].1
}

fn is_letter(c: char) -> bool {
    static LETTERS: OnceLock<Vec<(char, char)>> = OnceLock::new();
    if c.is_ascii() {
        return c.is_ascii_alphabetic();
    }
    in_ranges(LETTERS.get_or_init(|| ranges(r"\p{L}")), c)
}

fn is_mark(c: char) -> bool {
    static MARKS: OnceLock<Vec<(char, char)>> = OnceLock::new();
    !c.is_ascii() && in_ranges(MARKS.get_or_init(|| ranges(r"\p{M}")), c)
}

/// The classes of `c` (0 for punctuation, symbols, marks, controls...).
pub fn flags(c: char) -> u8 {
    let mut f = 0;
    if c.is_whitespace() {
        f |= WHITESPACE;
    }
    // `char::is_numeric` is exactly the N categories (Nd, Nl, No).
    if c.is_numeric() {
        f |= NUMBER;
    }
    if is_letter(c) {
        f |= LETTER;
    }
    if is_mark(c) {
        f |= MARK;
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes() {
        assert_eq!(flags('a'), LETTER);
        assert_eq!(flags('É'), LETTER);
        assert_eq!(flags('中'), LETTER);
        assert_eq!(flags('7'), NUMBER);
        assert_eq!(flags('²'), NUMBER);
        assert_eq!(flags('Ⅻ'), NUMBER);
        assert_eq!(flags(' '), WHITESPACE);
        assert_eq!(flags('\u{3000}'), WHITESPACE);
        assert_eq!(flags('\u{85}'), WHITESPACE);
        assert_eq!(flags('!'), 0);
        assert_eq!(flags('🦙'), 0);
        assert_eq!(flags('\u{301}'), MARK);
    }
}
