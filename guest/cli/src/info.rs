//! `wasm-chord info`: describe a model.

use anyhow::Result;
use clap::Args;

use crate::args::{check_model, human_bytes, human_params, kernel_error, printable, LoadArgs};
use crate::wasm_chord::runtime::inference::{
    inspect, Error as KernelError, FileSummary, Model, TensorTypeCount,
};

#[derive(Debug, Args)]
pub struct InfoArgs {
    #[command(flatten)]
    load: LoadArgs,
    /// Print the model info as one JSON object.
    #[arg(long)]
    json: bool,
}

pub fn info(a: InfoArgs) -> Result<()> {
    check_model(&a.load.model)?;
    let options = a.load.options()?;
    // The header alone names every tensor type, even where loading fails.
    let summary = inspect(&options.model).map_err(kernel_error)?;
    let model = match Model::load(&options) {
        Ok(m) => m,
        Err(e @ KernelError::Unsupported(_)) if !a.json => {
            print_summary(&summary);
            return Err(kernel_error(e));
        }
        Err(e) => return Err(kernel_error(e)),
    };
    let i = model.info();
    if a.json {
        println!("{}", serde_json::to_string(&i)?);
        return Ok(());
    }
    let token = |t: Option<u32>| t.map_or_else(|| "none".to_string(), |t| t.to_string());
    let types = types_line(&summary.tensor_types);
    println!("architecture: {}", printable(&i.architecture));
    println!(
        "name:         {}",
        if i.name.is_empty() {
            "-".into()
        } else {
            printable(&i.name)
        }
    );
    println!(
        "params:       {} ({})",
        human_params(i.n_params),
        i.n_params
    );
    println!("layers:       {}", i.n_layers);
    println!("embd:         {}", i.n_embd);
    println!("heads:        {}", i.n_head);
    println!("kv heads:     {}", i.n_head_kv);
    println!("ff:           {}", i.n_ff);
    println!("ctx train:    {}", i.n_ctx_train);
    println!("vocab:        {}", i.n_vocab);
    println!(
        "file size:    {} ({} bytes)",
        human_bytes(i.file_size),
        i.file_size
    );
    if i.n_tensors == 0 {
        println!("weights:      none (vocabulary-only file: tokenize and detokenize only)");
    } else {
        println!(
            "weights:      {} ({} bytes)",
            human_bytes(i.weight_bytes),
            i.weight_bytes
        );
    }
    println!("tensors:      {}", i.n_tensors);
    println!("tensor types: {types}");
    println!("bos:          {}", token(i.bos_token));
    println!("eos:          {}", token(i.eos_token));
    println!("add bos:      {}", i.add_bos);
    println!(
        "chat template: {}",
        i.chat_template.as_ref().map_or_else(
            || "none".to_string(),
            |t| format!("yes ({} chars)", t.len())
        )
    );
    println!("streamed:     {}", i.streamed);
    Ok(())
}

/// What the header says, for a model the kernel cannot load.
fn print_summary(s: &FileSummary) {
    println!(
        "architecture: {}",
        if s.architecture.is_empty() {
            "-".into()
        } else {
            printable(&s.architecture)
        }
    );
    println!(
        "name:         {}",
        if s.name.is_empty() {
            "-".into()
        } else {
            printable(&s.name)
        }
    );
    println!(
        "params:       {} ({})",
        human_params(s.n_params),
        s.n_params
    );
    println!(
        "file size:    {} ({} bytes)",
        human_bytes(s.file_size),
        s.file_size
    );
    println!(
        "tensor data:  {} ({} bytes)",
        human_bytes(s.tensor_bytes),
        s.tensor_bytes
    );
    println!("tensors:      {}", s.n_tensors);
    println!("tensor types: {}", types_line(&s.tensor_types));
}

/// "F32 x 61, Q4_K x 120 (unsupported: IQ2_XXS x 7)".
fn types_line(types: &[TensorTypeCount]) -> String {
    let list = |supported: bool| {
        types
            .iter()
            .filter(|t| t.supported == supported)
            .map(|t| format!("{} x {}", t.name, t.count))
            .collect::<Vec<_>>()
            .join(", ")
    };
    match (list(true), list(false)) {
        (ok, bad) if bad.is_empty() => ok,
        (ok, bad) if ok.is_empty() => format!("unsupported: {bad}"),
        (ok, bad) => format!("{ok} (unsupported: {bad})"),
    }
}
