//! Tokenizer throughput on adversarial inputs: 1 MiB of one letter, and
//! 1 MiB of mixed scripts (Latin, Cyrillic, Arabic, CJK, emoji, digits,
//! punctuation, whitespace runs).
//!
//! ```text
//! cargo run -p wasm-chord-kernel --release --example tokenize_bench -- \
//!     [--write-inputs DIR] VOCAB.gguf...
//! ```
//!
//! `--write-inputs` also writes the two texts (`letter.txt`, `mixed.txt`) so
//! that llama.cpp's `llama-tokenize -f FILE` can be timed on the same bytes;
//! `--dump DIR` writes our ids as `llama-tokenize --ids` prints them
//! (`DIR/VOCAB-letter.txt`, ...: BOS as the model says, special tokens parsed,
//! as that tool does by default).

use std::time::Instant;
use wasm_chord_kernel::store::MemSource;
use wasm_chord_kernel::tokenizer::Tokenizer;

const SIZE: usize = 1 << 20;

/// CPU time of this thread in ns (Linux `schedstat`), which a loaded machine
/// does not inflate as it does wall time.
fn cpu_ns() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace().next()?.parse().ok()
}

/// Deterministic mixed-script text of at least `SIZE` bytes (cut at a char boundary).
fn mixed() -> String {
    const PIECES: &[&str] = &[
        "The quick brown fox ",
        "it's we'll they've ",
        "naïve café résumé ",
        "Привет, мир! ",
        "مرحبا بالعالم ",
        "中文字符测试，",
        "日本語のテキスト。",
        "한국어 문장 ",
        "🦙🚀👍🏽👨‍👩‍👧 ",
        "1234567890 ",
        "3.14159, 2,718 ",
        "    \t  ",
        "\n\n\n",
        "   \n  \n",
        "!!!???...;;; ",
        "<|im_end|> ",
        "x=y+z*(w-1); ",
        "\u{3000}\u{00a0}\u{2003} ",
    ];
    let mut s = String::with_capacity(SIZE + 64);
    let mut state: u32 = 12345;
    while s.len() < SIZE {
        state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        s.push_str(PIECES[(state >> 16) as usize % PIECES.len()]);
    }
    let mut end = SIZE;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    s
}

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let letter = "a".repeat(SIZE);
    let mixed = mixed();
    if let Some(i) = args.iter().position(|a| a == "--write-inputs") {
        let dir = std::path::PathBuf::from(args.get(i + 1).expect("--write-inputs DIR"));
        std::fs::create_dir_all(&dir).expect("create dir");
        std::fs::write(dir.join("letter.txt"), &letter).expect("write");
        std::fs::write(dir.join("mixed.txt"), &mixed).expect("write");
        args.drain(i..i + 2);
    }
    let mut dump = None;
    if let Some(i) = args.iter().position(|a| a == "--dump") {
        dump = Some(std::path::PathBuf::from(
            args.get(i + 1).expect("--dump DIR"),
        ));
        args.drain(i..i + 2);
    }
    for path in &args {
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let t0 = Instant::now();
        let tok = Tokenizer::from_source(&MemSource::new(bytes)).expect("tokenizer");
        let load = t0.elapsed();
        print!("{path}: load {:.0} ms", load.as_secs_f64() * 1e3);
        for (name, text) in [("1 MiB one letter", &letter), ("1 MiB mixed", &mixed)] {
            let (t0, c0) = (Instant::now(), cpu_ns());
            let ids = tok.encode(text, false, false);
            let (dt, c1) = (t0.elapsed(), cpu_ns());
            let cpu = match (c0, c1) {
                (Some(a), Some(b)) => format!(", cpu {:.0} ms", (b - a) as f64 / 1e6),
                _ => String::new(),
            };
            if let Some(dir) = &dump {
                let stem = std::path::Path::new(path).file_stem().expect("file name");
                let kind = if name.contains("letter") {
                    "letter"
                } else {
                    "mixed"
                };
                let file = dir.join(format!("{}-{kind}.txt", stem.to_string_lossy()));
                let ids = tok.encode(text, true, true);
                let list: Vec<String> = ids.iter().map(u32::to_string).collect();
                std::fs::write(file, format!("[{}]\n", list.join(", "))).expect("write ids");
            }
            print!(
                "; {name}: {:.0} ms{cpu} ({} tokens)",
                dt.as_secs_f64() * 1e3,
                ids.len()
            );
        }
        println!();
    }
}
