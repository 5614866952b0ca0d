//! Hyperparameters of a model, read from GGUF metadata.

use crate::gguf::GgufFile;
use crate::{Error, Result};

/// Architectures whose forward pass this kernel implements.
pub const SUPPORTED_ARCHS: &[&str] = &["llama"];

/// Upper bounds that keep a hostile header from asking for absurd buffers.
const MAX_LAYERS: u64 = 1024;
const MAX_EMBD: u64 = 1 << 16;
const MAX_FF: u64 = 1 << 18;
const MAX_HEADS: u64 = 1024;

/// Transformer hyperparameters (llama2.c's `Config`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Config {
    /// `general.architecture`.
    pub arch: String,
    /// Transformer blocks.
    pub n_layers: usize,
    /// Residual stream width.
    pub n_embd: usize,
    /// Feed-forward hidden width.
    pub n_ff: usize,
    /// Query heads.
    pub n_head: usize,
    /// Key/value heads (n_head for plain multi-head attention).
    pub n_head_kv: usize,
    /// Width of one head (n_embd / n_head).
    pub head_dim: usize,
    /// Vocabulary size.
    pub n_vocab: usize,
    /// Training context length.
    pub n_ctx_train: usize,
    /// RoPE frequency base.
    pub rope_base: f32,
    /// Rotated dimensions per head (<= head_dim).
    pub rope_dim: usize,
    /// Linear RoPE position scale (1 / rope.scaling.factor; 1.0 without scaling).
    pub rope_freq_scale: f32,
    /// RMSNorm epsilon.
    pub norm_eps: f32,
}

/// The architecture named by `g`, if the kernel supports it.
pub fn check_arch(g: &GgufFile) -> Result<&str> {
    let arch = g
        .get_str("general.architecture")?
        .ok_or_else(|| Error::InvalidModel("missing general.architecture".into()))?;
    if !SUPPORTED_ARCHS.contains(&arch) {
        return Err(Error::Unsupported(format!(
            "architecture '{arch}' is not supported (supported: {})",
            SUPPORTED_ARCHS.join(", ")
        )));
    }
    Ok(arch)
}

impl Config {
    /// Key/value width per token (n_head_kv * head_dim).
    pub fn kv_dim(&self) -> usize {
        self.n_head_kv * self.head_dim
    }

    /// Query width per token (n_head * head_dim).
    pub fn q_dim(&self) -> usize {
        self.n_head * self.head_dim
    }

    /// Read and validate the hyperparameters of `g`.
    pub fn from_gguf(g: &GgufFile, n_vocab: usize) -> Result<Config> {
        let arch = check_arch(g)?.to_string();
        let key = |k: &str| format!("{arch}.{k}");
        let req = |k: &str, max: u64| -> Result<usize> {
            let name = key(k);
            let v = g
                .get_u64(&name)?
                .ok_or_else(|| Error::InvalidModel(format!("missing {name}")))?;
            if v == 0 || v > max {
                return Err(Error::InvalidModel(format!(
                    "{name} = {v} is out of range (1..={max})"
                )));
            }
            Ok(v as usize)
        };
        let n_layers = req("block_count", MAX_LAYERS)?;
        let n_embd = req("embedding_length", MAX_EMBD)?;
        let n_ff = req("feed_forward_length", MAX_FF)?;
        let n_head = req("attention.head_count", MAX_HEADS)?;
        let n_head_kv = match g.get_u64(&key("attention.head_count_kv"))? {
            None => n_head,
            Some(v) if v >= 1 && v <= n_head as u64 => v as usize,
            Some(v) => {
                return Err(Error::InvalidModel(format!(
                    "{} = {v} is out of range (1..={n_head})",
                    key("attention.head_count_kv")
                )))
            }
        };
        if n_embd % n_head != 0 || n_head % n_head_kv != 0 {
            return Err(Error::InvalidModel(format!(
                "inconsistent heads: n_embd {n_embd}, n_head {n_head}, n_head_kv {n_head_kv}"
            )));
        }
        let head_dim = n_embd / n_head;
        if let Some(kl) = g.get_u64(&key("attention.key_length"))? {
            if kl as usize != head_dim {
                return Err(Error::Unsupported(format!(
                    "attention.key_length {kl} differs from n_embd / n_head = {head_dim}"
                )));
            }
        }
        let rope_dim = match g.get_u64(&key("rope.dimension_count"))? {
            None => head_dim,
            Some(d) if d >= 2 && d as usize <= head_dim && d % 2 == 0 => d as usize,
            Some(d) => {
                return Err(Error::InvalidModel(format!(
                    "rope.dimension_count {d} is invalid for head width {head_dim}"
                )))
            }
        };
        let n_ctx_train = match g.get_u64(&key("context_length"))? {
            Some(c) if c >= 1 => c.min(1 << 24) as usize,
            _ => 2048,
        };
        let rope_base = g.get_f32(&key("rope.freq_base"))?.unwrap_or(10000.0);
        let norm_eps = g
            .get_f32(&key("attention.layer_norm_rms_epsilon"))?
            .unwrap_or(1e-5);
        let valid =
            rope_base.is_finite() && rope_base > 0.0 && norm_eps.is_finite() && norm_eps >= 0.0;
        if !valid {
            return Err(Error::InvalidModel(format!(
                "invalid rope.freq_base {rope_base} or rms epsilon {norm_eps}"
            )));
        }
        let rope_freq_scale = match g.get_str(&key("rope.scaling.type"))? {
            None | Some("none") => 1.0,
            Some("linear") => match g.get_f32(&key("rope.scaling.factor"))? {
                Some(f) if f.is_finite() && f > 0.0 => 1.0 / f,
                _ => 1.0,
            },
            Some(t) => return Err(Error::Unsupported(format!("rope scaling '{t}'"))),
        };
        Ok(Config {
            arch,
            n_layers,
            n_embd,
            n_ff,
            n_head,
            n_head_kv,
            head_dim,
            n_vocab,
            n_ctx_train,
            rope_base,
            rope_dim,
            rope_freq_scale,
            norm_eps,
        })
    }
}
