//! `wasm-chord info`: describe a model.

use anyhow::Result;
use clap::Args;

use super::{check_model, human_bytes, human_params, start, KernelArgs, LoadArgs};

#[derive(Debug, Args)]
pub struct InfoArgs {
    #[command(flatten)]
    load: LoadArgs,
    /// Print the model info as one JSON object.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    kernel: KernelArgs,
}

pub fn info(a: InfoArgs) -> Result<()> {
    check_model(&a.load.model)?;
    let (rt, model, _) = start(&a.kernel, &a.load)?;
    let i = rt.info(model)?;
    if a.json {
        println!("{}", serde_json::to_string(i)?);
        return Ok(());
    }
    let token = |t: Option<u32>| t.map_or_else(|| "none".to_string(), |t| t.to_string());
    let types = i
        .tensor_types
        .iter()
        .map(|(t, n)| format!("{t}: {n}"))
        .collect::<Vec<_>>()
        .join(", ");
    println!("architecture: {}", i.architecture);
    println!(
        "name:         {}",
        if i.name.is_empty() { "-" } else { &i.name }
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
