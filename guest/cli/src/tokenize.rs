//! `wasm-chord tokenize`: token ids of a text.

use anyhow::Result;
use clap::Args;

use crate::args::{kernel_error, LoadArgs};

#[derive(Debug, Args)]
pub struct TokenizeArgs {
    #[command(flatten)]
    load: LoadArgs,
    /// Treat special-token text (like "<|im_start|>") as plain text.
    #[arg(long)]
    no_special: bool,
    /// The text to tokenize.
    text: String,
}

pub fn tokenize(a: TokenizeArgs) -> Result<()> {
    let (model, _) = a.load.load()?;
    let ids = model
        .tokenize(&a.text, true, !a.no_special)
        .map_err(kernel_error)?;
    println!("{}", serde_json::to_string(&ids)?);
    Ok(())
}
