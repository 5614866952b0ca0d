//! A loaded model: hyperparameters, vocabulary, and weights behind the layer cache.

mod attention;
pub mod config;
pub mod forward;
pub mod residency;
pub mod session;
pub mod shard;
pub mod split;
pub mod summary;
mod vocab_only;
pub mod weights;

pub use config::Config;
pub use forward::KvType;
pub use residency::{CacheStats, Policy};
pub use session::{
    GenerateOptions, Generation, Piece, PieceLogprobs, Session, Step, StopReason, TokenLogprob,
    TokenScore,
};

use crate::store::ByteSource;
use crate::tokenizer::{ChatMessage, Tokenizer};
use crate::{Error, Result};
use residency::LayerCache;
use std::cell::RefCell;
use std::collections::BTreeMap;

/// A host whose store is not 64-bit (the browser fallback) serves at most this.
pub const MAX_32BIT_MODEL: u64 = 3584 << 20;
/// Auto residency keeps a model resident below this many bytes of weights.
pub const RESIDENT_LIMIT: u64 = 3 << 30;
/// Default guest memory budget of a streamed model.
pub const DEFAULT_STREAM_BUDGET: u64 = 1 << 30;
/// Least part of a budget kept for scratch buffers, the vocabulary and the
/// allocator (at least an eighth of the budget is).
const SCRATCH_RESERVE: u64 = 16 << 20;

/// Requested residency mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Residency {
    Auto,
    Resident,
    Stream,
}

/// Options of [`Model::load`].
#[derive(Clone, Debug)]
pub struct LoadOptions {
    pub residency: Residency,
    /// Weight budget in bytes (0: default).
    pub max_memory: u64,
    /// Blocks kept by a streamed cache (0: as many as the budget allows).
    pub cache_layers: u32,
    pub policy: Policy,
    /// Load one shard of a tensor-parallel split (None: the whole model).
    pub shard: Option<shard::ShardSpec>,
    /// What the sessions' KV caches store (f16 by default, as llama.cpp).
    pub kv_type: KvType,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            residency: Residency::Auto,
            max_memory: 0,
            cache_layers: 0,
            policy: Policy::Pinned,
            shard: None,
            kv_type: KvType::F16,
        }
    }
}

/// What a model is (mirrors the WIT `model-info`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ModelInfo {
    pub architecture: String,
    pub name: String,
    pub n_params: u64,
    pub n_layers: u32,
    pub n_embd: u32,
    pub n_head: u32,
    pub n_head_kv: u32,
    pub n_ff: u32,
    pub n_ctx_train: u32,
    pub n_vocab: u32,
    pub file_size: u64,
    pub n_tensors: u64,
    pub weight_bytes: u64,
    pub tensor_types: Vec<(String, u32)>,
    pub bos_token: Option<u32>,
    pub eos_token: Option<u32>,
    pub add_bos: bool,
    pub chat_template: Option<String>,
    pub streamed: bool,
}

/// A loaded model.
pub struct Model {
    pub cfg: Config,
    pub tokenizer: Tokenizer,
    pub info: ModelInfo,
    cache: RefCell<LayerCache>,
    src: Box<dyn ByteSource>,
    /// Bytes of the guest budget left for a session's KV cache when the
    /// load had a budget (given, or the streaming default); `None`: no budget.
    kv_budget: Option<u64>,
    /// The guest memory budget of `LoadOptions::max_memory` (0: none).
    max_memory: u64,
    /// Most bytes of weights the layer cache holds at once.
    weights_cap: u64,
    /// What this instance holds of the model (all of it unless loaded as a shard).
    pub shard: shard::ShardSlice,
    /// What its sessions' KV caches store.
    kv_type: KvType,
}

impl Model {
    /// Parse the GGUF behind `src`, plan residency, load what stays resident.
    pub fn load(src: Box<dyn ByteSource>, opts: &LoadOptions) -> Result<Model> {
        let file_size = src.size();
        if !src.is_memory64() && file_size > MAX_32BIT_MODEL {
            return Err(Error::Unsupported(format!(
                "the model is {:.2} GiB; this host keeps models in 32-bit storage and serves at most {:.1} GiB \
                 (use the native host, which streams larger models)",
                file_size as f64 / (1u64 << 30) as f64,
                MAX_32BIT_MODEL as f64 / (1u64 << 30) as f64
            )));
        }
        let g = split::parse_all(src.as_ref())?;
        if g.tensors.is_empty() {
            return Model::vocab_only(&g, src);
        }
        config::check_arch(&g)?;
        let tokenizer = crate::tokenizer::from_gguf(&g)?;
        let mut cfg = Config::from_gguf(&g, tokenizer.n_vocab())?;
        config::read_rope_factors(&g, src.as_ref(), &mut cfg)?;
        let spec = opts
            .shard
            .unwrap_or(shard::ShardSpec { index: 0, count: 1 });
        let slice = shard::slice_for(&g, &cfg, spec)?;
        let plans = weights::plan_layers(&g, &cfg, &slice)?;
        let weight_bytes: u64 = plans.iter().map(|p| p.bytes).sum();
        let head_bytes = plans.last().map(|p| p.bytes).unwrap_or(0);
        let max_block = plans[..cfg.n_layers]
            .iter()
            .map(|p| p.bytes)
            .max()
            .unwrap_or(0)
            .max(1);
        // A block streamed chunk by chunk (the pinned policy) holds only what
        // cannot be streamed (its vectors, a shard's column slices) while in
        // flight; a block loaded whole holds all of it.
        let chunked = opts.policy == Policy::Pinned;
        let in_flight = if chunked {
            plans[..cfg.n_layers]
                .iter()
                .map(|p| p.chunked_bytes())
                .max()
                .unwrap_or(0)
        } else {
            max_block
        };

        // Residency plan: resident when the weights fit, else a bounded cache.
        // Weights get three quarters of the guest budget; the rest is for the
        // KV cache, scratch buffers and the vocabulary.
        let weights_budget = |total: u64| total / 4 * 3;
        let stream = match opts.residency {
            Residency::Resident => {
                if opts.max_memory > 0 && weight_bytes > weights_budget(opts.max_memory) {
                    return Err(Error::OutOfMemory(format!(
                        "resident mode needs {weight_bytes} bytes of weights, over the {} bytes a guest budget of {} bytes allows",
                        weights_budget(opts.max_memory),
                        opts.max_memory
                    )));
                }
                false
            }
            Residency::Stream => true,
            Residency::Auto => {
                let limit = if opts.max_memory > 0 {
                    weights_budget(opts.max_memory).min(RESIDENT_LIMIT)
                } else {
                    RESIDENT_LIMIT
                };
                weight_bytes > limit
            }
        };
        let capacity = if !stream {
            cfg.n_layers
        } else if opts.cache_layers > 0 {
            opts.cache_layers as usize
        } else {
            let total = if opts.max_memory > 0 {
                opts.max_memory
            } else {
                DEFAULT_STREAM_BUDGET
            };
            let budget = weights_budget(total);
            let n = cfg.n_layers as u64;
            if chunked {
                // Pinned blocks next to the head and two streamed blocks'
                // unstreamed parts (the one in use and the next).
                let fixed = head_bytes.saturating_add(2 * in_flight);
                if fixed > budget {
                    return Err(Error::OutOfMemory(format!(
                        "a guest budget of {total} bytes cannot hold the head ({head_bytes} bytes) and two streamed layers ({in_flight} bytes each)"
                    )));
                }
                let k = (budget - fixed) / max_block;
                if k >= n {
                    cfg.n_layers
                } else {
                    // The cache's capacity counts the streaming slot.
                    (k + 1).min(n.saturating_sub(1)).max(1) as usize
                }
            } else {
                // One block is in flight while another is being evicted.
                let k = budget.saturating_sub(head_bytes) / max_block;
                if k < 2 {
                    return Err(Error::OutOfMemory(format!(
                        "a guest budget of {total} bytes cannot hold the head ({head_bytes} bytes) and two layers of {max_block} bytes"
                    )));
                }
                (k - 1).min(n) as usize
            }
        };
        // What is left of a known budget for the KV cache: the weights held
        // (every layer, or the head and the cached layers plus one in
        // flight) and a reserve for scratch buffers and the vocabulary come first.
        let budget = match (opts.max_memory, stream) {
            (0, false) => None,
            (0, true) => Some(DEFAULT_STREAM_BUDGET),
            (b, _) => Some(b),
        };
        let weights_cap = if !stream {
            weight_bytes
        } else if chunked {
            head_bytes
                .saturating_add(
                    (capacity as u64)
                        .saturating_sub(1)
                        .saturating_mul(max_block),
                )
                .saturating_add(2 * in_flight)
        } else {
            head_bytes.saturating_add((capacity as u64 + 1).saturating_mul(max_block))
        };
        let kv_budget = budget.map(|b| {
            b.saturating_sub(weights_cap)
                .saturating_sub((b / 8).max(SCRATCH_RESERVE))
        });
        let mut cache = LayerCache::new(plans, capacity, opts.policy);
        cache.warm(src.as_ref())?;

        let mut types: BTreeMap<String, u32> = BTreeMap::new();
        for t in &g.tensors {
            *types.entry(t.ty.name()).or_default() += 1;
        }
        let info = ModelInfo {
            architecture: cfg.arch.clone(),
            name: g.get_str("general.name")?.unwrap_or("").to_string(),
            n_params: g.tensors.iter().map(|t| t.n_elements()).sum(),
            n_layers: cfg.n_layers as u32,
            n_embd: cfg.n_embd as u32,
            n_head: cfg.n_head as u32,
            n_head_kv: cfg.n_head_kv as u32,
            n_ff: cfg.n_ff as u32,
            n_ctx_train: cfg.n_ctx_train as u32,
            n_vocab: cfg.n_vocab as u32,
            file_size,
            n_tensors: g.tensors.len() as u64,
            weight_bytes,
            tensor_types: types.into_iter().collect(),
            bos_token: tokenizer.bos(),
            eos_token: tokenizer.eos(),
            add_bos: tokenizer.add_bos(),
            chat_template: g.get_str("tokenizer.chat_template")?.map(str::to_string),
            streamed: !cache.is_resident(),
        };
        // A shard computes with its own heads, feed-forward rows and
        // vocabulary rows; `info` describes the whole model.
        let mut cfg = slice.local_config(&cfg);
        cfg.logit_rows = slice.vocab.clone();
        Ok(Model {
            cfg,
            tokenizer,
            info,
            cache: RefCell::new(cache),
            src,
            kv_budget,
            max_memory: opts.max_memory,
            weights_cap,
            shard: slice,
            kv_type: opts.kv_type,
        })
    }

    /// What the sessions' KV caches store ([`LoadOptions::kv_type`]).
    pub fn kv_type(&self) -> KvType {
        self.kv_type
    }

    /// Bytes of the load's memory budget left for a KV cache (`None`: the
    /// load had no budget).
    pub fn kv_budget(&self) -> Option<u64> {
        self.kv_budget
    }

    /// Check that a KV cache of `kv_bytes` fits the guest memory budget
    /// next to the weights (when a budget was given at load).
    pub(crate) fn check_kv_budget(&self, kv_bytes: u64) -> Result<()> {
        if self.max_memory > 0 && kv_bytes.saturating_add(self.weights_cap) > self.max_memory {
            return Err(Error::OutOfMemory(format!(
                "a KV cache of {kv_bytes} bytes and {} bytes of weights exceed the guest budget of {} bytes (use a smaller context)",
                self.weights_cap, self.max_memory
            )));
        }
        Ok(())
    }

    /// False for a vocabulary-only file (tokenizer, no weights).
    pub fn has_weights(&self) -> bool {
        self.info.n_tensors > 0
    }

    /// Layer cache counters, and what is resident.
    pub fn cache_stats(&self) -> (CacheStats, usize, u64) {
        let c = self.cache.borrow();
        (c.stats(), c.resident_layers(), c.resident_bytes())
    }

    /// The byte source.
    pub fn source(&self) -> &dyn ByteSource {
        self.src.as_ref()
    }

    /// Render `messages` with the model's chat template.
    pub fn apply_chat_template(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String> {
        let tpl = self.info.chat_template.as_deref().ok_or_else(|| {
            Error::InvalidInput("the model has no tokenizer.chat_template".into())
        })?;
        let text = |id: Option<u32>| {
            id.and_then(|i| self.tokenizer.token_text(i))
                .unwrap_or("")
                .to_string()
        };
        crate::tokenizer::apply_chat_template(
            tpl,
            messages,
            add_generation_prompt,
            &text(self.tokenizer.bos()),
            &text(self.tokenizer.eos()),
        )
    }

    /// Run the forward pass (used by [`Session`]).
    pub(crate) fn forward(
        &self,
        kv: &mut forward::KvCache,
        state: &mut forward::State,
        tokens: &[u32],
        pos0: usize,
        logits_from: usize,
        sink: &mut dyn FnMut(usize, &[f32]),
    ) -> Result<()> {
        let mut cache = self.cache.borrow_mut();
        forward::forward(
            &self.cfg,
            &mut cache,
            self.src.as_ref(),
            kv,
            state,
            tokens,
            pos0,
            logits_from,
            sink,
        )
    }
}

impl Model {
    /// Start a sharded pass (used by [`Session::begin_step`]).
    pub(crate) fn begin_pass(
        &self,
        kv: &mut forward::KvCache,
        state: &mut forward::State,
        tokens: &[u32],
        pos0: usize,
        logits_from: usize,
    ) -> Result<forward::Pass> {
        let mut cache = self.cache.borrow_mut();
        forward::Pass::begin(
            &self.cfg,
            &mut cache,
            self.src.as_ref(),
            kv,
            state,
            tokens,
            pos0,
            logits_from,
        )
    }

    /// Resume a sharded pass (used by [`Session::continue_step`]).
    pub(crate) fn resume_pass(
        &self,
        pass: &mut forward::Pass,
        kv: &mut forward::KvCache,
        state: &mut forward::State,
        reduced: &[f32],
        sink: &mut dyn FnMut(usize, &[f32]),
    ) -> Result<bool> {
        let mut cache = self.cache.borrow_mut();
        pass.resume(
            &self.cfg,
            &mut cache,
            self.src.as_ref(),
            kv,
            state,
            reduced,
            sink,
        )
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_arch;
#[cfg(test)]
mod tests_neox;
#[cfg(test)]
mod tests_shard;
