//! `cargo xtask large`: a synthetic llama model of about 4.5 GiB (seeded
//! random weights, SmolLM2's tokenizer), generated on demand into the cache,
//! run end to end through the wasm32 kernel with a 1 GiB guest budget while
//! the host's anonymous resident memory is sampled.

use anyhow::{bail, Context, Result};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;
use wasm_chord_kernel::ggml_type::GgmlType;
use wasm_chord_kernel::gguf::GgufFile;
use wasm_chord_kernel::store::MemSource;
use wasm_chord_kernel::synth::{self, SynthArch, SynthSpec, SynthVocab};

/// 98 blocks of 2048 wide (GQA 16/4 heads, FFN 5632) in Q8_0: about 4.5 GiB.
pub fn spec() -> SynthSpec {
    SynthSpec {
        n_layers: 98,
        n_embd: 2048,
        n_ff: 5632,
        n_head: 16,
        n_head_kv: 4,
        weight_type: GgmlType::Q8_0,
        separate_output: false,
        seed: 20261123,
        arch: SynthArch::Llama,
    }
}

/// Write the model to `dest` unless it is already there.
pub fn generate(dest: &Path, tokenizer_from: &Path) -> Result<()> {
    if dest.is_file() {
        return Ok(());
    }
    let bytes = std::fs::read(tokenizer_from)
        .with_context(|| format!("read {}", tokenizer_from.display()))?;
    let g = GgufFile::parse(&MemSource::new(bytes)).map_err(|e| anyhow::anyhow!("{e}"))?;
    let vocab = SynthVocab::from_gguf(&g).map_err(|e| anyhow::anyhow!("{e}"))?;
    let tmp = dest.with_extension("tmp");
    let file = std::fs::File::create(&tmp).with_context(|| format!("create {}", tmp.display()))?;
    let mut w = BufWriter::with_capacity(8 << 20, file);
    eprintln!(
        "    writing {} (about 4.5 GiB, seeded random weights)",
        dest.display()
    );
    synth::write(&spec(), &vocab, &mut w).context("write synthetic model")?;
    w.flush()?;
    drop(w);
    std::fs::rename(&tmp, dest)?;
    Ok(())
}

/// Anonymous resident memory of `pid` in bytes (excludes the page cache).
fn rss_anon(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("RssAnon:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Run the model through `bin` and report peak host anonymous memory.
pub fn run(bin: &Path, model: &Path, extra: &[String]) -> Result<()> {
    let size = std::fs::metadata(model)?.len();
    eprintln!(
        "    model: {} ({:.2} GiB)",
        model.display(),
        size as f64 / (1u64 << 30) as f64
    );
    let mut cmd = Command::new(bin);
    cmd.arg("run")
        .arg("-m")
        .arg(model)
        .args([
            "-p",
            "Hello",
            "-n",
            "3",
            "--temp",
            "0",
            "--ignore-eos",
            "--n-ctx",
            "64",
            "--stats",
        ])
        .args(["--max-guest-memory", "1073741824"])
        .args(extra)
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit());
    let mut child = cmd
        .spawn()
        .with_context(|| format!("spawn {}", bin.display()))?;
    let mut peak = 0u64;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if let Some(r) = rss_anon(child.id()) {
            peak = peak.max(r);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    eprintln!(
        "    host peak anonymous resident memory: {:.2} GiB (page cache excluded)",
        peak as f64 / (1u64 << 30) as f64
    );
    if !status.success() {
        bail!("the large-model run failed ({status})");
    }
    Ok(())
}

/// Where the model goes.
pub fn path(models: &Path) -> PathBuf {
    models.join("synthetic-llama-98x2048-q8_0.gguf")
}

/// The padded SmolLM2 (`xtask/make_padded_gguf.py`: SmolLM2 Q8_0 embedded in
/// layers 7x as wide, ~5.7 GB, the same function) in `models`.
pub fn padded_path(models: &Path) -> PathBuf {
    models.join("padded-smollm2-x7-q8_0.gguf")
}

/// Bytes of memory available (`MemAvailable`), if the system says.
fn mem_available() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = s.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

impl crate::Ctx {
    /// `cargo xtask large --padded`: make the padded model unless it is
    /// there, then run the ignored test that holds it resident in 2 shards
    /// against llama.cpp's golden outputs, and its speed with `bench`.
    pub fn large_padded(&self, bin: &Path, models: &Path, q8_0: &Path) -> Result<()> {
        let dest = padded_path(models);
        if !dest.is_file() {
            crate::step("make the padded model (xtask/make_padded_gguf.py)");
            let has = Command::new("python3")
                .args(["-c", "import gguf, numpy"])
                .status()
                .is_ok_and(|s| s.success());
            if !has {
                bail!("make_padded_gguf.py needs Python's gguf and numpy: pip install gguf==0.19.0 numpy");
            }
            let tmp = dest.with_extension("tmp");
            self.exec(
                Command::new("python3")
                    .arg(self.root.join("xtask").join("make_padded_gguf.py"))
                    .arg(q8_0)
                    .arg(&tmp),
            )?;
            std::fs::rename(&tmp, &dest)?;
        }
        const NEEDED: u64 = 12 << 30;
        if let Some(avail) = mem_available().filter(|&a| a < NEEDED) {
            bail!(
                "two resident shards of the padded model hold ~6 GB (and the page cache its 5.7 GB): {:.1} GiB available, 12 wanted",
                avail as f64 / (1u64 << 30) as f64
            );
        }
        crate::step("2 resident shards against llama.cpp's golden outputs");
        let mut test = self.cargo([
            "test",
            "--release",
            "-p",
            "wasm-chord-tests",
            "--test",
            "shards",
            "--",
            "--ignored",
            "--nocapture",
            "padded_model",
        ]);
        test.env("WASM_CHORD_KERNEL", self.kernel_wasm())
            .env("WASM_CHORD_BIN", bin)
            .env("WASM_CHORD_PADDED", &dest);
        self.exec(&mut test)?;
        crate::step("speed: bench --shards 2 --resident");
        self.exec(
            Command::new(bin)
                .arg("bench")
                .arg("-m")
                .arg(&dest)
                .args([
                    "--shards",
                    "2",
                    "--resident",
                    "-p",
                    "16",
                    "-n",
                    "16",
                    "-r",
                    "3",
                ])
                .env("WASM_CHORD_KERNEL", self.kernel_wasm()),
        )
    }
}
