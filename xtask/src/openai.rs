//! The official `openai` Python package against `wasm-chord serve` (issue 18):
//! a venv under $WASM_CHORD_CACHE/py-openai with a pinned `openai`, and
//! `tests/openai/test_openai_client.py` run in it.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::{step, Ctx};

/// The `openai` release the suite is pinned to (PyPI).
const OPENAI_VERSION: &str = "3.57.0";

impl Ctx {
    /// The venv's python with `openai==OPENAI_VERSION`, created or repaired
    /// if needed. A failing install is an error (the suite never skips).
    fn openai_python(&self) -> Result<PathBuf> {
        let venv = self.cache.join("py-openai");
        let python = venv.join("bin").join("python");
        let has = |python: &Path| {
            Command::new(python)
                .args([
                    "-c",
                    &format!(
                        "import openai, sys; sys.exit(openai.__version__ != '{OPENAI_VERSION}')"
                    ),
                ])
                .output()
                .is_ok_and(|o| o.status.success())
        };
        if python.is_file() && has(&python) {
            return Ok(python);
        }
        if !python.is_file() {
            step(&format!("create the venv {}", venv.display()));
            self.exec(Command::new("python3").args(["-m", "venv"]).arg(&venv))
                .context("cannot create the venv for the openai client (python3 -m venv)")?;
        }
        step(&format!("pip install openai=={OPENAI_VERSION}"));
        self.exec(
            Command::new(&python)
                .args([
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                ])
                .arg(format!("openai=={OPENAI_VERSION}")),
        )
        .context("cannot install the openai Python package")?;
        if !has(&python) {
            bail!(
                "openai=={OPENAI_VERSION} is not importable in '{}' after installing it",
                venv.display()
            );
        }
        Ok(python)
    }

    /// The command that runs the suite against `bin` (`wasm-chord`).
    pub(crate) fn openai_test(&self, bin: &Path, kernel: &Path, model: &Path) -> Result<Command> {
        let python = self.openai_python()?;
        let mut c = Command::new(python);
        c.arg(
            self.root
                .join("tests")
                .join("openai")
                .join("test_openai_client.py"),
        )
        .env("WASM_CHORD_BIN", bin)
        .env("WASM_CHORD_KERNEL", kernel)
        .env("WASM_CHORD_SMOLLM2", model)
        .current_dir(&self.root);
        Ok(c)
    }
}
