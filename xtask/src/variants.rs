//! `cargo xtask fetch variants`: SmolLM2-135M-Instruct requantized by
//! llama.cpp's `llama-quantize` into every tensor type of the acceptance list,
//! into $WASM_CHORD_CACHE/variants/smollm2-TYPE.gguf, each checked against the
//! sha256 below. The tests (tests/tests/coverage.rs) hold the kernel to
//! llama.cpp's outputs on each file (tests/fixtures/variants/).

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::{sha256_file, step, Ctx, SMOLLM2};

/// (llama-quantize type, sha256 of `smollm2-TYPE.gguf`), made from
/// SmolLM2-135M-Instruct.Q4_1.gguf by `llama-quantize --allow-requantize SRC
/// DST TYPE 2` of llama.cpp 11434. Builds with GGML_NATIVE=OFF and =ON (on an
/// AVX-512 machine) write the same bytes.
pub const VARIANTS: &[(&str, &str)] = &[
    (
        "F16",
        "a269e3181fcbb25046f99f64ba8d3c159165b211c2ff4ffca7ba1bb219d2ccd0",
    ),
    (
        "BF16",
        "994c74505f109ce900a91772a38324b6635a16c1499111f1df4fb031233033d7",
    ),
    (
        "Q4_0",
        "aa4256f3b46eb4add75ece1c0eeac1c6e4f1ec0c93e6fbe64fe1770f4ad09ae8",
    ),
    (
        "Q4_1",
        "941f309b54caaad6747569ba43712bcde44a2be3bae16c3282ff499c37c54af5",
    ),
    (
        "Q5_0",
        "2f90a7511cf340144dda963a9fd73f708601517f0f8038d31c9069654526be44",
    ),
    (
        "Q5_1",
        "d0fe3cbb20771ac9dab0f4dd5aaa259785158177f6503d4dca32f4495dcffaea",
    ),
    (
        "Q8_0",
        "7b46609d11703c058397e5cfe4cc6e4b2508cb1eb4c80ddc472a5d421fbdb508",
    ),
    (
        "Q2_K",
        "1733ab14bc423774519aa464e0d74e190617e877c9d0aa07a698b500d1788895",
    ),
    (
        "Q3_K_M",
        "01045a8fee6c962e4f7b0f80dccf937503738f61f987c305378fd3f527eac9d4",
    ),
    (
        "Q4_K_M",
        "dc0f3a02e821146247a0af6895adf9872124f368682cb110cb9ed09ff2a9f9f1",
    ),
    (
        "Q5_K_M",
        "8170c7ef444692b3b2fe63459c326def0358807ef9be6e3cb020efb86a71015e",
    ),
    (
        "Q6_K",
        "a969ae2086dd4945a7c61594bf72b2bcc3b7df8571c92aed8f213918673a7f80",
    ),
    (
        "IQ4_NL",
        "b4d1842a26d8952bd7b609eb2062f7352aeb609c1ac5017542be18f83bc1776e",
    ),
    (
        "IQ4_XS",
        "5a4caecc8f966f75ff79b8f1522f76aedd2381d0722df17254e212f01526c7ba",
    ),
];

impl Ctx {
    /// The variants folder.
    pub fn variants_dir(&self) -> PathBuf {
        self.cache.join("variants")
    }

    /// Make every variant that is missing or wrong, and check them all.
    pub fn fetch_variants(&self) -> Result<PathBuf> {
        let src = self.fetch(&SMOLLM2)?;
        let dir = self.variants_dir();
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create '{}'", dir.display()))?;
        step("requantized SmolLM2 variants (llama-quantize)");
        let mut quantize: Option<PathBuf> = None;
        let started = Instant::now();
        let mut made = 0;
        for &(ty, want) in VARIANTS {
            let dest = dir.join(format!("smollm2-{ty}.gguf"));
            if dest.is_file() && sha256_file(&dest)? == want {
                continue;
            }
            let quantize = match &quantize {
                Some(q) => q.clone(),
                None => quantize.insert(self.llama_quantize()?).clone(),
            };
            let tmp = dir.join(format!(".smollm2-{ty}.gguf.{}", std::process::id()));
            let out = Command::new(&quantize)
                .arg("--allow-requantize")
                .arg(&src)
                .arg(&tmp)
                .args([ty, "2"])
                .output()
                .with_context(|| format!("cannot start '{}'", quantize.display()))?;
            if !out.status.success() {
                let _ = std::fs::remove_file(&tmp);
                let err = String::from_utf8_lossy(&out.stderr);
                let tail: Vec<&str> = err.lines().rev().take(10).collect();
                bail!(
                    "llama-quantize {ty} failed ({}):\n{}",
                    out.status,
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            let got = sha256_file(&tmp)?;
            if got != want {
                bail!(
                    "{} has sha256 {got}, expected {want}: llama-quantize wrote a different file (left at '{}')",
                    dest.display(),
                    tmp.display()
                );
            }
            std::fs::rename(&tmp, &dest)
                .with_context(|| format!("cannot move '{}'", dest.display()))?;
            println!("    made {}", dest.display());
            made += 1;
        }
        println!(
            "    {} variants in {} ({made} made, {:.0} s)",
            VARIANTS.len(),
            dir.display(),
            started.elapsed().as_secs_f64()
        );
        Ok(dir)
    }
}
