//! Hyperparameters of a model, read from GGUF metadata.
//!
//! One [`Config`] describes every supported architecture: the common llama
//! hyperparameters plus per-architecture options (RoPE style, sliding-window
//! layers, extra norms, activation, soft-capping), read from the keys
//! llama.cpp reads for that architecture (its `llama-model.cpp` /
//! `models/<arch>.cpp`). The forward pass is one function driven by them.

use crate::ggml_type::GgmlType;
use crate::gguf::{GgufFile, Value};
use crate::{Error, Result};

/// Architectures whose forward pass this kernel implements.
pub const SUPPORTED_ARCHS: &[&str] = &["llama", "mistral3", "gemma3", "qwen2", "qwen3", "phi3"];

/// Upper bounds that keep a hostile header from asking for absurd buffers.
const MAX_LAYERS: u64 = 1024;
const MAX_EMBD: u64 = 1 << 16;
const MAX_FF: u64 = 1 << 18;
const MAX_HEADS: u64 = 1024;
const MAX_HEAD_DIM: u64 = 1 << 12;

/// An architecture the forward pass knows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Arch {
    #[default]
    Llama,
    /// Mistral's newer files (Ministral 3, Mistral Small 3.x): llama plus
    /// YaRN keys and Llama-4-style attention temperature.
    Mistral3,
    Gemma3,
    Qwen2,
    Qwen3,
    Phi3,
}

impl Arch {
    fn from_name(name: &str) -> Option<Arch> {
        match name {
            "llama" => Some(Arch::Llama),
            "mistral3" => Some(Arch::Mistral3),
            "gemma3" => Some(Arch::Gemma3),
            "qwen2" => Some(Arch::Qwen2),
            "qwen3" => Some(Arch::Qwen3),
            "phi3" => Some(Arch::Phi3),
            _ => None,
        }
    }
}

/// ggml's `rope_yarn` parameters as llama.cpp's context sets them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Yarn {
    /// 1 with `rope.scaling.type = yarn`, else 0 (no ramp, no extra mscale).
    pub ext_factor: f32,
    /// Factor on cos/sin (cparams.yarn_attn_factor: for YaRN
    /// get_mscale(factor) / (1 + 0.1 ln factor), times `rope.scaling.attn_factor`).
    pub attn_factor: f32,
    pub beta_fast: f32,
    pub beta_slow: f32,
    /// `rope.scaling.original_context_length`, else the training context.
    pub n_ctx_orig: usize,
}

impl Default for Yarn {
    fn default() -> Yarn {
        Yarn::NONE
    }
}

impl Yarn {
    pub const NONE: Yarn = Yarn {
        ext_factor: 0.0,
        attn_factor: 1.0,
        beta_fast: 32.0,
        beta_slow: 1.0,
        n_ctx_orig: 0,
    };
}

/// Llama 4's attention temperature as llama.cpp applies it (its
/// `llm_graph_input_attn_temp`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttnTemp {
    pub scale: f32,
    /// Positions per step of the logarithm (`n_attn_temp_floor_scale`).
    pub floor: usize,
}

impl AttnTemp {
    /// The factor on q at position `pos`.
    pub fn at(&self, pos: usize) -> f32 {
        // llama.cpp: log(floor(pos / floor) + 1.0) * scale + 1.0, in double.
        (((pos / self.floor) as f64 + 1.0).ln() * self.scale as f64 + 1.0) as f32
    }
}

/// Which dimensions of a head RoPE rotates together (llama.cpp's rope type).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RopeStyle {
    /// Pairs (2i, 2i + 1): `LLAMA_ROPE_TYPE_NORM` (llama).
    #[default]
    Norm,
    /// Pairs (i, i + rope_dim / 2): `LLAMA_ROPE_TYPE_NEOX` (gemma, qwen, phi).
    Neox,
}

/// Activation of the gated feed-forward: `down(act(gate(x)) * up(x))`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FfnAct {
    /// SiLU (SwiGLU).
    #[default]
    Silu,
    /// GELU, tanh approximation (GeGLU), as ggml computes it.
    GeluTanh,
}

/// Transformer hyperparameters (llama2.c's `Config`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Config {
    /// `general.architecture`.
    pub arch: String,
    /// The same, as the forward pass sees it.
    pub kind: Arch,
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
    /// Width of one head of q, k and v (`attention.key_length`; n_embd / n_head by default).
    pub head_dim: usize,
    /// Vocabulary size.
    pub n_vocab: usize,
    /// Training context length.
    pub n_ctx_train: usize,
    /// RoPE frequency base (of the global layers when some use a sliding window).
    pub rope_base: f32,
    /// Rotated dimensions per head (<= head_dim).
    pub rope_dim: usize,
    /// Linear RoPE position scale (1 / rope.scaling.factor; 1.0 without scaling).
    pub rope_freq_scale: f32,
    /// How RoPE pairs dimensions.
    pub rope_style: RopeStyle,
    /// (rope_dim / 2,) RoPE frequency factors (`rope_freqs.weight`, Llama 3.x):
    /// pair i turns at theta_i / factor_i, as ggml_rope_ext's freq_factors.
    /// Empty: all 1. Filled by `Model::load` from the tensor, not from keys.
    pub rope_freq_factors: Vec<f32>,
    /// LongRoPE (Phi-3 128k; llama and mistral3 with `rope.scaling.type =
    /// longrope`): per-pair factors `rope_factors_long.weight` and
    /// `rope_factors_short.weight` instead of `rope_freqs`, chosen per
    /// session by [`Config::rope_factors`]. Filled by `Model::load`.
    pub longrope: bool,
    /// (rope_dim / 2,) or empty (all 1): the long factors.
    pub rope_factors_long: Vec<f32>,
    /// (rope_dim / 2,) or empty (all 1): the short factors.
    pub rope_factors_short: Vec<f32>,
    /// YaRN and RoPE magnitude scaling (ggml's rope_yarn).
    pub yarn: Yarn,
    /// Llama-4-style attention temperature (mistral3's
    /// `attention.temperature_scale`): q at position p is multiplied by
    /// `1 + scale * ln(floor(p / floor) + 1)`, floor being the original
    /// context length. None: no scaling.
    pub attn_temp: Option<AttnTemp>,
    /// RMSNorm epsilon.
    pub norm_eps: f32,
    /// Sliding window: a query at position p attends to keys at p - n_swa < t <= p
    /// (llama.cpp's `LLAMA_SWA_TYPE_STANDARD`) on the layers where `swa_layers[l]`.
    /// 0: no layer uses one.
    pub n_swa: usize,
    /// (n_layers,) which layers use the sliding window (all false when n_swa is 0).
    pub swa_layers: Vec<bool>,
    /// RoPE frequency base and linear scale of the sliding-window layers.
    pub rope_base_swa: f32,
    pub rope_freq_scale_swa: f32,
    /// Factor on the token embeddings (Gemma: sqrt(n_embd); 1.0 otherwise).
    pub embd_scale: f32,
    /// Factor on q·k before the softmax (1 / sqrt(head_dim) unless the architecture says otherwise).
    pub attn_scale: f32,
    /// Attention logits become `cap * tanh(logit / cap)` (Gemma 2); None: no capping.
    pub attn_softcap: Option<f32>,
    /// Output logits become `cap * tanh(logit / cap)`; None: no capping.
    pub final_softcap: Option<f32>,
    /// Per-head RMSNorm of q and k before RoPE (`attn_q_norm`, `attn_k_norm`).
    pub qk_norm: bool,
    /// RMSNorm of the attention and feed-forward outputs before each residual
    /// add (`post_attention_norm`, `post_ffw_norm`).
    pub post_norms: bool,
    /// Activation of the gated feed-forward.
    pub ffn_act: FfnAct,
    /// Q, K and V are one tensor `attn_qkv` (rows of q, then k, then v), as
    /// phi3 files have them.
    pub fused_qkv: bool,
    /// Gate and up are one tensor `ffn_up` (rows of gate, then up): phi3.
    pub fused_gate_up: bool,
    /// The vocabulary rows whose logits this instance computes: all of them,
    /// or a shard's slice (see `model::shard`).
    pub logit_rows: std::ops::Range<usize>,
    /// A shard's query and key/value heads within the whole model's (see
    /// `model::shard`); None: this instance has all of them.
    pub shard_heads: Option<ShardHeads>,
}

/// Where a shard's heads sit in the whole model: its query heads start at
/// `head0`, its key/value heads at `kv0`, and whole-model query head h reads
/// key/value head h / `group`. A shard's query heads need not be whole
/// groups: a key/value head may be computed on two shards.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShardHeads {
    pub head0: usize,
    pub kv0: usize,
    pub group: usize,
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

/// A positive, finite float, or an error naming `key`.
fn positive(key: &str, v: f32) -> Result<f32> {
    if v.is_finite() && v > 0.0 {
        Ok(v)
    } else {
        Err(Error::InvalidModel(format!(
            "{key} = {v} must be a positive number"
        )))
    }
}

impl Config {
    /// Which of this instance's key/value heads its query head `h` reads.
    pub fn kv_head(&self, h: usize) -> usize {
        match self.shard_heads {
            None => h / (self.n_head / self.n_head_kv),
            Some(s) => (s.head0 + h) / s.group - s.kv0,
        }
    }

    /// Key/value width per token (n_head_kv * head_dim).
    pub fn kv_dim(&self) -> usize {
        self.n_head_kv * self.head_dim
    }

    /// Query width per token (n_head * head_dim).
    pub fn q_dim(&self) -> usize {
        self.n_head * self.head_dim
    }

    /// The sliding window of layer `l`, if it has one.
    pub fn window(&self, l: usize) -> Option<usize> {
        (self.n_swa > 0 && self.swa_layers[l]).then_some(self.n_swa)
    }

    /// The RoPE frequency factors of a session of `n_ctx` positions
    /// (llama.cpp's `get_rope_factors`): `rope_freqs` where the file has it;
    /// with LongRoPE the long factors when the context exceeds the original
    /// context length (`rope.scaling.original_context_length`, else the
    /// training context), the short ones otherwise. Empty: all 1.
    pub fn rope_factors(&self, n_ctx: usize) -> &[f32] {
        if !self.longrope {
            &self.rope_freq_factors
        } else if n_ctx > self.yarn.n_ctx_orig {
            &self.rope_factors_long
        } else {
            &self.rope_factors_short
        }
    }

    /// RoPE (frequency base, linear scale) of layer `l`.
    pub fn rope_of(&self, l: usize) -> (f32, f32) {
        if self.window(l).is_some() {
            (self.rope_base_swa, self.rope_freq_scale_swa)
        } else {
            (self.rope_base, self.rope_freq_scale)
        }
    }

    /// Read and validate the hyperparameters of `g`.
    pub fn from_gguf(g: &GgufFile, n_vocab: usize) -> Result<Config> {
        let arch = check_arch(g)?.to_string();
        let kind = Arch::from_name(&arch)
            .ok_or_else(|| Error::Unsupported(format!("architecture '{arch}'")))?;
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
        let opt = |k: &str, max: u64| -> Result<Option<usize>> {
            let name = key(k);
            match g.get_u64(&name)? {
                None => Ok(None),
                Some(v) if v >= 1 && v <= max => Ok(Some(v as usize)),
                Some(v) => Err(Error::InvalidModel(format!(
                    "{name} = {v} is out of range (1..={max})"
                ))),
            }
        };
        if g.get_u64(&key("expert_count"))?.unwrap_or(0) > 1 {
            return Err(Error::Unsupported(format!(
                "{arch}: mixture-of-experts models are not supported"
            )));
        }
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
        // Head width: attention.key_length, else n_embd / n_head (llama.cpp's default).
        let key_length = opt("attention.key_length", MAX_HEAD_DIM)?;
        let value_length = opt("attention.value_length", MAX_HEAD_DIM)?;
        if n_head % n_head_kv != 0 || (key_length.is_none() && n_embd % n_head != 0) {
            return Err(Error::InvalidModel(format!(
                "inconsistent heads: n_embd {n_embd}, n_head {n_head}, n_head_kv {n_head_kv}"
            )));
        }
        let head_dim = key_length.unwrap_or(n_embd / n_head);
        let v_dim = value_length.unwrap_or(n_embd / n_head);
        if v_dim != head_dim {
            return Err(Error::Unsupported(format!(
                "attention.value_length {v_dim} differs from attention.key_length {head_dim}"
            )));
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
        // llama.cpp: the type defaults to linear; the factor is
        // `rope.scaling.factor`, else the older `rope.scale_linear`; none
        // (or 0) is 1.
        let scaling_factor = || -> Result<f32> {
            let f = match g.get_f32(&key("rope.scaling.factor"))? {
                Some(f) => Some(f),
                None => g.get_f32(&key("rope.scale_linear"))?,
            };
            Ok(match f {
                Some(f) if f.is_finite() && f > 0.0 => 1.0 / f,
                _ => 1.0,
            })
        };
        let scaling = g.get_str(&key("rope.scaling.type"))?.unwrap_or("linear");
        let (rope_freq_scale, is_yarn) = match scaling {
            "none" => (1.0, false),
            "linear" | "longrope" => (scaling_factor()?, false),
            "yarn" => (scaling_factor()?, true),
            t => return Err(Error::Unsupported(format!("rope scaling '{t}'"))),
        };
        // Long/short factors: phi3 always loads them, llama and mistral3
        // with the longrope type (then not rope_freqs).
        let longrope = kind == Arch::Phi3
            || (scaling == "longrope" && matches!(kind, Arch::Llama | Arch::Mistral3));
        let n_ctx_orig = match g.get_u64(&key("rope.scaling.original_context_length"))? {
            Some(c) if c >= 1 => c.min(1 << 24) as usize,
            _ => n_ctx_train,
        };
        let rope_attn = g.get_f32(&key("rope.scaling.attn_factor"))?.unwrap_or(1.0);
        if !(rope_attn.is_finite() && rope_attn > 0.0) {
            return Err(Error::InvalidModel(format!(
                "invalid rope.scaling.attn_factor {rope_attn}"
            )));
        }
        // llama.cpp's llama_context: ext_factor 1 for YaRN; its mscale
        // get_mscale(factor) = 1 + 0.1 ln factor, cancelled by the same
        // factor that ggml's rope_yarn multiplies in again.
        // mistral3 also reads the YaRN betas and the log multiplier
        // (HF's mscale_all_dim): the factor becomes
        // get_mscale(factor, 1) / get_mscale(factor, log_mul).
        let mut yarn = Yarn {
            n_ctx_orig,
            ..Yarn::NONE
        };
        let mut log_mul = 0.0;
        if kind == Arch::Mistral3 {
            let finite = |k: &str| -> Result<Option<f32>> {
                match g.get_f32(&key(k))? {
                    Some(v) if !v.is_finite() => Err(Error::InvalidModel(format!(
                        "{} = {v} must be finite",
                        key(k)
                    ))),
                    v => Ok(v),
                }
            };
            if let Some(b) = finite("rope.scaling.yarn_beta_fast")? {
                yarn.beta_fast = b;
            }
            if let Some(b) = finite("rope.scaling.yarn_beta_slow")? {
                yarn.beta_slow = b;
            }
            log_mul = finite("rope.scaling.yarn_log_multiplier")?.unwrap_or(0.0);
        }
        if is_yarn {
            let factor = 1.0 / rope_freq_scale;
            let mscale = |s: f32, m: f32| {
                if s <= 1.0 {
                    1.0
                } else {
                    0.1 * m * s.ln() + 1.0
                }
            };
            yarn.ext_factor = 1.0;
            yarn.attn_factor = if log_mul != 0.0 {
                mscale(factor, 1.0) / mscale(factor, log_mul)
            } else {
                mscale(factor, 1.0)
            } * (1.0 / (1.0 + 0.1 * factor.ln()));
        }
        yarn.attn_factor *= rope_attn;

        let mut c = Config {
            arch,
            kind,
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
            rope_style: RopeStyle::Norm,
            rope_freq_factors: Vec::new(),
            longrope,
            rope_factors_long: Vec::new(),
            rope_factors_short: Vec::new(),
            yarn,
            attn_temp: None,
            norm_eps,
            n_swa: 0,
            swa_layers: vec![false; n_layers],
            rope_base_swa: rope_base,
            rope_freq_scale_swa: rope_freq_scale,
            embd_scale: 1.0,
            attn_scale: 1.0 / (head_dim as f32).sqrt(),
            attn_softcap: None,
            final_softcap: None,
            qk_norm: false,
            post_norms: false,
            ffn_act: FfnAct::Silu,
            // llama.cpp's create_tensor_qkv takes a fused attn_qkv first, for
            // every architecture that loads Q/K/V through it.
            fused_qkv: g.tensor("blk.0.attn_qkv.weight").is_some(),
            fused_gate_up: false,
            logit_rows: 0..n_vocab,
            shard_heads: None,
        };
        match kind {
            Arch::Llama => {}
            Arch::Mistral3 => c.mistral3(g)?,
            Arch::Gemma3 => c.gemma3(g)?,
            Arch::Qwen2 | Arch::Qwen3 => c.qwen(kind)?,
            Arch::Phi3 => c.phi3()?,
        }
        Ok(c)
    }

    /// Mistral 3 (llama.cpp's `models/mistral3.cpp`): the llama block (NORM
    /// RoPE over the whole head, rope_freqs or LongRoPE factors where the
    /// file has them), YaRN with the file's betas and log multiplier (read
    /// above), and the Llama-4 attention temperature where
    /// `attention.temperature_scale` is set, stepping every original
    /// context length. Like `llama` (Mistral 7B files), it reads no
    /// `attention.sliding_window`: llama.cpp enforces no window for either,
    /// so neither does this.
    fn mistral3(&mut self, g: &GgufFile) -> Result<()> {
        let key = |k: &str| format!("{}.{k}", self.arch);
        if self.rope_dim != self.head_dim {
            return Err(Error::InvalidModel(format!(
                "{}: rope.dimension_count {} differs from the head width {}",
                self.arch, self.rope_dim, self.head_dim
            )));
        }
        match g.get_f32(&key("attention.temperature_scale"))? {
            None => {}
            Some(0.0) => {}
            Some(t) if t.is_finite() => {
                self.attn_temp = Some(AttnTemp {
                    scale: t,
                    floor: self.yarn.n_ctx_orig,
                });
            }
            Some(t) => {
                return Err(Error::InvalidModel(format!(
                    "{} = {t} must be finite",
                    key("attention.temperature_scale")
                )))
            }
        }
        Ok(())
    }

    /// Qwen2 and Qwen3 (llama.cpp's `models/qwen2.cpp`, `qwen3.cpp`): the
    /// llama block with NEOX RoPE over the whole head; Q/K/V biases where the
    /// file has them (qwen2's always do); Qwen3 adds per-head q/k RMSNorm.
    /// Neither reads `attention.sliding_window` (Qwen2's `use_sliding_window`
    /// is off in its released models), so neither does this.
    fn qwen(&mut self, kind: Arch) -> Result<()> {
        self.rope_style = RopeStyle::Neox;
        self.qk_norm = kind == Arch::Qwen3;
        if self.rope_dim != self.head_dim {
            return Err(Error::InvalidModel(format!(
                "{}: rope.dimension_count {} differs from the head width {}",
                self.arch, self.rope_dim, self.head_dim
            )));
        }
        Ok(())
    }

    /// Phi-3 (llama.cpp's `models/phi3.cpp`): NEOX RoPE, fused gate-up
    /// `ffn_up` (SwiGLU over its two halves), and a fused `attn_qkv` unless the
    /// file has separate Q/K/V. llama.cpp reads `attention.sliding_window` and
    /// then disables it ("Phi SWA is currently disabled"), so it is ignored
    /// here too. The 128k models' LongRoPE: `rope_factors_long`/`_short`
    /// (see [`Config::rope_factors`]) and `rope.scaling.attn_factor` on
    /// cos/sin (read above, as for every architecture).
    fn phi3(&mut self) -> Result<()> {
        self.rope_style = RopeStyle::Neox;
        self.fused_gate_up = true;
        if self.q_dim() != self.n_embd {
            return Err(Error::InvalidModel(format!(
                "phi3: n_head * head_dim = {} differs from n_embd {}",
                self.q_dim(),
                self.n_embd
            )));
        }
        Ok(())
    }

    /// Gemma 3 (llama.cpp's `models/gemma3.cpp`): embeddings times sqrt(n_embd),
    /// per-head q/k norms, NEOX RoPE, post-attention and post-FFN norms, GeGLU;
    /// five sliding-window layers (RoPE base `rope.freq_base_swa`, 10000 by
    /// default, unscaled) to one global layer unless `sliding_window_pattern`
    /// says otherwise. llama.cpp does not read `attn_logit_softcapping` for
    /// Gemma 3 (only for Gemma 2), so neither does this.
    fn gemma3(&mut self, g: &GgufFile) -> Result<()> {
        let key = |k: &str| format!("{}.{k}", self.arch);
        self.rope_style = RopeStyle::Neox;
        self.qk_norm = true;
        self.post_norms = true;
        self.ffn_act = FfnAct::GeluTanh;
        self.embd_scale = (self.n_embd as f32).sqrt();
        // Gemma 3 27B (62 layers) scales by the query_pre_attn_scalar of its
        // config, n_embd / n_head; the others by the head width.
        let scale_dim = if self.n_layers == 62 {
            self.n_embd / self.n_head
        } else {
            self.head_dim
        };
        self.attn_scale = 1.0 / (scale_dim as f32).sqrt();
        if let Some(cap) = g.get_f32(&key("final_logit_softcapping"))? {
            if cap != 0.0 {
                self.final_softcap = Some(positive(&key("final_logit_softcapping"), cap)?);
            }
        }
        let n_swa = g.get_u64(&key("attention.sliding_window"))?.unwrap_or(0);
        if n_swa == 0 {
            return Ok(());
        }
        self.n_swa = usize::try_from(n_swa).unwrap_or(usize::MAX).min(1 << 24);
        self.swa_layers = swa_pattern(
            g,
            &key("attention.sliding_window_pattern"),
            self.n_layers,
            6,
        )?;
        self.rope_base_swa = match g.get_f32(&key("rope.freq_base_swa"))? {
            Some(b) => positive(&key("rope.freq_base_swa"), b)?,
            None => 10000.0,
        };
        self.rope_freq_scale_swa = 1.0;
        Ok(())
    }
}

/// Which layers use the sliding window (llama.cpp's `load_swa_pattern`):
/// `key` is a per-layer array of bools, or a period n (default `default_n`)
/// where layer l slides unless `l % n == n - 1`; n = 0 makes every layer slide.
fn swa_pattern(g: &GgufFile, key: &str, n_layers: usize, default_n: u64) -> Result<Vec<bool>> {
    if let Some(Value::Array(a)) = g.get(key) {
        if a.len() != n_layers {
            return Err(Error::InvalidModel(format!(
                "{key} has {} entries for {n_layers} layers",
                a.len()
            )));
        }
        return a
            .iter()
            .map(|v| {
                v.as_bool()
                    .ok_or_else(|| Error::InvalidModel(format!("{key}: expected booleans")))
            })
            .collect();
    }
    let n = g.get_u64(key)?.unwrap_or(default_n);
    Ok((0..n_layers as u64)
        .map(|l| n == 0 || l % n < n - 1)
        .collect())
}

/// Read the RoPE factor tensors into `c`: `rope_freqs.weight` (Llama 3.x
/// files), or with LongRoPE `rope_factors_long.weight` and
/// `rope_factors_short.weight` (llama.cpp creates these instead of
/// rope_freqs then). Each optional; when present passed to every layer's
/// rope (`get_rope_factors`).
pub fn read_rope_factors(
    g: &GgufFile,
    src: &dyn crate::store::ByteSource,
    c: &mut Config,
) -> Result<()> {
    if c.longrope {
        c.rope_factors_long = rope_factor_tensor(g, src, c, "rope_factors_long.weight")?;
        c.rope_factors_short = rope_factor_tensor(g, src, c, "rope_factors_short.weight")?;
    } else {
        c.rope_freq_factors = rope_factor_tensor(g, src, c, "rope_freqs.weight")?;
    }
    Ok(())
}

/// The factors of tensor `name`, read from `src`: F32, (rope_dim / 2,),
/// each finite and > 0. Empty when the file has none.
fn rope_factor_tensor(
    g: &GgufFile,
    src: &dyn crate::store::ByteSource,
    c: &Config,
    name: &str,
) -> Result<Vec<f32>> {
    let Some(t) = g.tensor(name) else {
        return Ok(Vec::new());
    };
    let n = c.rope_dim / 2;
    if t.dims.as_slice() != [n as u64] || t.ty != GgmlType::F32 {
        return Err(Error::InvalidModel(format!(
            "tensor {name} is {} {:?}, expected F32 [{n}]",
            t.ty, t.dims
        )));
    }
    let bytes = src.read(t.offset, 4 * n as u64)?;
    if bytes.len() != 4 * n {
        return Err(Error::InvalidModel(format!("tensor {name}: short read")));
    }
    let f: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    if let Some(bad) = f.iter().find(|x| !(x.is_finite() && **x > 0.0)) {
        return Err(Error::InvalidModel(format!("tensor {name} holds {bad}")));
    }
    Ok(f)
}
