//! The kernel as a WebAssembly component: WIT glue only.
//!
//! `layer-store` (imported) becomes a [`ByteSource`]; the kernel's model,
//! session and generation become the `inference` resources.

use std::cell::RefCell;
use std::rc::Rc;

use k::store::{ByteRange, ByteSource, StoreError, StoreStats};
use wasm_chord_kernel as k;

wit_bindgen::generate!({ world: "kernel", path: "../../wit" });

use exports::wasm_chord::runtime::inference as wit;
use wasm_chord::runtime::layer_store as ls;

struct Component;

export!(Component);

impl wit::Guest for Component {
    type Model = ModelRes;
    type Session = SessionRes;
    type Generation = GenerationRes;

    fn inspect(model: String) -> Result<wit::FileSummary, wit::Error> {
        let src = ls::open(&model).map_err(|e| err(k::Error::Store(store_err(e))))?;
        let source = WitSource {
            src,
            memory64: ls::is_enabled(),
        };
        let s = k::model::summary::summarize(&source).map_err(err)?;
        Ok(wit::FileSummary {
            architecture: s.architecture,
            name: s.name,
            file_size: s.file_size,
            n_tensors: s.n_tensors,
            n_params: s.n_params,
            tensor_bytes: s.tensor_bytes,
            tensor_types: s
                .tensor_types
                .iter()
                .map(|&(t, count)| wit::TensorTypeCount {
                    name: t.name(),
                    count,
                    supported: t.is_supported(),
                })
                .collect(),
        })
    }
}

// ---- layer-store → ByteSource ------------------------------------------------

struct WitSource {
    src: ls::Source,
    memory64: bool,
}

fn store_err(e: ls::StoreError) -> StoreError {
    match e {
        ls::StoreError::NotFound(s) => StoreError::NotFound(s),
        ls::StoreError::OutOfRange(s) => StoreError::OutOfRange(s),
        ls::StoreError::Io(s) => StoreError::Io(s),
        ls::StoreError::TooLarge(n) => StoreError::TooLarge(n),
    }
}

fn wit_store_err(e: StoreError) -> ls::StoreError {
    match e {
        StoreError::NotFound(s) => ls::StoreError::NotFound(s),
        StoreError::OutOfRange(s) => ls::StoreError::OutOfRange(s),
        StoreError::Io(s) => ls::StoreError::Io(s),
        StoreError::TooLarge(n) => ls::StoreError::TooLarge(n),
    }
}

fn wit_ranges(ranges: &[ByteRange]) -> Vec<ls::ByteRange> {
    ranges
        .iter()
        .map(|r| ls::ByteRange {
            offset: r.offset,
            len: r.len,
        })
        .collect()
}

impl ByteSource for WitSource {
    fn size(&self) -> u64 {
        self.src.size()
    }
    fn read(&self, offset: u64, len: u64) -> Result<Vec<u8>, StoreError> {
        self.src.read(offset, len).map_err(store_err)
    }
    fn load_layer(&self, layer: u32, ranges: &[ByteRange]) -> Result<Vec<u8>, StoreError> {
        self.src
            .load_layer(layer, &wit_ranges(ranges))
            .map_err(store_err)
    }
    fn prefetch(&self, layer: u32, ranges: &[ByteRange]) {
        self.src.prefetch(layer, &wit_ranges(ranges))
    }
    fn stats(&self) -> StoreStats {
        let s = self.src.stats();
        StoreStats {
            total_bytes: s.total_bytes,
            bytes_served: s.bytes_served,
            reads: s.reads,
            layer_loads: s.layer_loads,
            read_nanos: s.read_nanos,
            max_offset_served: s.max_offset_served,
            memory64: s.memory64,
        }
    }
    fn is_memory64(&self) -> bool {
        self.memory64
    }
}

// ---- errors ------------------------------------------------------------------

fn err(e: k::Error) -> wit::Error {
    match e {
        k::Error::InvalidModel(s) => wit::Error::InvalidModel(s),
        k::Error::Unsupported(s) => wit::Error::Unsupported(s),
        k::Error::Store(s) => wit::Error::Store(wit_store_err(s)),
        k::Error::ContextFull(s) => wit::Error::ContextFull(s),
        k::Error::InvalidInput(s) => wit::Error::InvalidInput(s),
        k::Error::OutOfMemory(s) => wit::Error::OutOfMemory(s),
    }
}

fn guest_memory() -> u64 {
    #[cfg(target_arch = "wasm32")]
    {
        core::arch::wasm32::memory_size(0) as u64 * 65536
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        0
    }
}

// ---- model -------------------------------------------------------------------

struct ModelRes {
    model: Rc<k::model::Model>,
}

fn load_model(
    options: wit::LoadOptions,
    shard: Option<k::model::shard::ShardSpec>,
) -> Result<wit::Model, wit::Error> {
    let src = ls::open(&options.model).map_err(|e| err(k::Error::Store(store_err(e))))?;
    let source = WitSource {
        src,
        memory64: ls::is_enabled(),
    };
    let opts = k::model::LoadOptions {
        residency: match options.residency {
            wit::Residency::Auto => k::model::Residency::Auto,
            wit::Residency::Resident => k::model::Residency::Resident,
            wit::Residency::Streaming => k::model::Residency::Stream,
        },
        max_memory: options.max_memory,
        cache_layers: options.cache_layers,
        policy: match options.cache_policy {
            wit::CachePolicy::Pinned => k::model::Policy::Pinned,
            wit::CachePolicy::Lru => k::model::Policy::Lru,
        },
        shard,
        kv_type: match options.kv_cache {
            wit::KvCacheType::F16 => k::model::KvType::F16,
            wit::KvCacheType::F32 => k::model::KvType::F32,
        },
    };
    let model = k::model::Model::load(Box::new(source), &opts).map_err(err)?;
    Ok(wit::Model::new(ModelRes {
        model: Rc::new(model),
    }))
}

impl wit::GuestModel for ModelRes {
    fn load(options: wit::LoadOptions) -> Result<wit::Model, wit::Error> {
        load_model(options, None)
    }

    fn load_shard(
        options: wit::LoadOptions,
        shard: wit::ShardSpec,
    ) -> Result<wit::Model, wit::Error> {
        load_model(
            options,
            Some(k::model::shard::ShardSpec {
                index: shard.index,
                count: shard.count,
            }),
        )
    }

    fn shard_info(&self) -> wit::ShardInfo {
        let s = &self.model.shard;
        let c = &self.model.cfg;
        wit::ShardInfo {
            index: s.index as u32,
            count: s.count as u32,
            vocab_start: c.logit_rows.start as u32,
            vocab_len: c.logit_rows.len() as u32,
            n_head: c.n_head as u32,
            n_head_kv: c.n_head_kv as u32,
            n_ff: c.n_ff as u32,
        }
    }

    fn info(&self) -> wit::ModelInfo {
        let i = &self.model.info;
        wit::ModelInfo {
            architecture: i.architecture.clone(),
            name: i.name.clone(),
            n_params: i.n_params,
            n_layers: i.n_layers,
            n_embd: i.n_embd,
            n_head: i.n_head,
            n_head_kv: i.n_head_kv,
            n_ff: i.n_ff,
            n_ctx_train: i.n_ctx_train,
            n_vocab: i.n_vocab,
            file_size: i.file_size,
            n_tensors: i.n_tensors,
            weight_bytes: i.weight_bytes,
            tensor_types: i.tensor_types.clone(),
            bos_token: i.bos_token,
            eos_token: i.eos_token,
            add_bos: i.add_bos,
            chat_template: i.chat_template.clone(),
            streamed: i.streamed,
        }
    }

    fn tokenize(
        &self,
        text: String,
        add_special: bool,
        parse_special: bool,
    ) -> Result<Vec<u32>, wit::Error> {
        self.model
            .tokenizer
            .try_encode(&text, add_special, parse_special)
            .map_err(err)
    }

    fn detokenize(&self, tokens: Vec<u32>) -> Result<String, wit::Error> {
        let n = self.model.cfg.n_vocab as u32;
        if let Some(bad) = tokens.iter().find(|&&t| t >= n) {
            return Err(wit::Error::InvalidInput(format!(
                "token id {bad} is outside the vocabulary ({n})"
            )));
        }
        Ok(self.model.tokenizer.decode(&tokens))
    }

    fn apply_chat_template(
        &self,
        messages: Vec<wit::ChatMessage>,
        add_generation_prompt: bool,
    ) -> Result<String, wit::Error> {
        let msgs: Vec<k::tokenizer::ChatMessage> = messages
            .into_iter()
            .map(|m| k::tokenizer::ChatMessage {
                role: m.role,
                content: m.content,
            })
            .collect();
        self.model
            .apply_chat_template(&msgs, add_generation_prompt)
            .map_err(err)
    }

    fn cache_stats(&self) -> wit::CacheStats {
        let (s, resident, bytes) = self.model.cache_stats();
        wit::CacheStats {
            hits: s.hits,
            misses: s.misses,
            evictions: s.evictions,
            bytes_loaded: s.bytes_loaded,
            load_nanos: s.load_nanos,
            resident_layers: resident as u32,
            total_layers: self.model.cfg.n_layers as u32 + 1,
            resident_bytes: bytes,
            guest_memory: guest_memory(),
        }
    }

    fn store_stats(&self) -> ls::StoreStats {
        let s = self.model.source().stats();
        ls::StoreStats {
            total_bytes: s.total_bytes,
            bytes_served: s.bytes_served,
            reads: s.reads,
            layer_loads: s.layer_loads,
            read_nanos: s.read_nanos,
            max_offset_served: s.max_offset_served,
            memory64: s.memory64,
        }
    }

    fn new_session(&self, n_ctx: u32) -> Result<wit::Session, wit::Error> {
        let session = k::model::Session::new(&self.model, n_ctx).map_err(err)?;
        Ok(wit::Session::new(SessionRes {
            model: Rc::clone(&self.model),
            session: Rc::new(RefCell::new(session)),
        }))
    }
}

// ---- session -----------------------------------------------------------------

struct SessionRes {
    model: Rc<k::model::Model>,
    session: Rc<RefCell<k::model::Session>>,
}

fn sampling(s: &wit::Sampling) -> k::sample::SamplerConfig {
    k::sample::SamplerConfig {
        temperature: s.temperature,
        top_k: s.top_k,
        top_p: s.top_p,
        min_p: s.min_p,
        repeat_penalty: s.repeat_penalty,
        repeat_last_n: s.repeat_last_n,
        seed: s.seed,
    }
}

impl wit::GuestSession for SessionRes {
    fn n_ctx(&self) -> u32 {
        self.session.borrow().n_ctx() as u32
    }

    fn n_past(&self) -> u32 {
        self.session.borrow().n_past() as u32
    }

    fn reset(&self) {
        self.session.borrow_mut().reset()
    }

    fn tokens(&self) -> Vec<u32> {
        self.session.borrow().tokens()
    }

    fn truncate(&self, len: u32) -> Result<(), wit::Error> {
        self.session
            .borrow_mut()
            .truncate(len as usize)
            .map_err(err)
    }

    fn generate(
        &self,
        prompt: Vec<u32>,
        options: wit::GenerateOptions,
    ) -> Result<wit::Generation, wit::Error> {
        let opts = k::model::GenerateOptions {
            max_tokens: options.max_tokens,
            sampling: sampling(&options.sampling),
            ignore_eos: options.ignore_eos,
            stop: options.stop,
        };
        let gen =
            k::model::Generation::start(&self.model, &mut self.session.borrow_mut(), &prompt, opts)
                .map_err(err)?;
        Ok(wit::Generation::new(GenerationRes {
            model: Rc::clone(&self.model),
            session: Rc::clone(&self.session),
            gen: RefCell::new(gen),
        }))
    }

    fn score(
        &self,
        tokens: Vec<u32>,
        first: u32,
        top_k: u32,
    ) -> Result<Vec<wit::TokenScore>, wit::Error> {
        let scores = self
            .session
            .borrow_mut()
            .score(&self.model, &tokens, first as usize, top_k as usize)
            .map_err(err)?;
        Ok(scores
            .into_iter()
            .map(|s| wit::TokenScore {
                pos: s.pos,
                token: s.token,
                logprob: s.logprob,
                top: s.top,
            })
            .collect())
    }

    fn begin_step(&self, tokens: Vec<u32>, logits_from: u32) -> Result<Vec<f32>, wit::Error> {
        self.session
            .borrow_mut()
            .begin_step(&self.model, &tokens, logits_from as usize)
            .map(<[f32]>::to_vec)
            .map_err(err)
    }

    fn continue_step(&self, reduced: Vec<f32>) -> Result<wit::Step, wit::Error> {
        let mut s = self.session.borrow_mut();
        Ok(match s.continue_step(&self.model, &reduced).map_err(err)? {
            k::model::Step::Partial(p) => wit::Step::Partial(p.to_vec()),
            k::model::Step::Logits(l) => wit::Step::Logits(l),
        })
    }

    fn score_full(&self, tokens: Vec<u32>, first: u32) -> Result<Vec<f32>, wit::Error> {
        self.session
            .borrow_mut()
            .score_full(&self.model, &tokens, first as usize)
            .map_err(err)
    }
}

// ---- generation --------------------------------------------------------------

struct GenerationRes {
    model: Rc<k::model::Model>,
    session: Rc<RefCell<k::model::Session>>,
    gen: RefCell<k::model::Generation>,
}

impl wit::GuestGeneration for GenerationRes {
    fn next(&self) -> Result<Option<wit::Piece>, wit::Error> {
        let piece = self
            .gen
            .borrow_mut()
            .next(&self.model, &mut self.session.borrow_mut())
            .map_err(err)?;
        Ok(piece.map(|p| wit::Piece {
            token: p.token,
            text: p.text,
        }))
    }

    fn next_with_logprobs(
        &self,
        top_k: u32,
    ) -> Result<Option<(wit::Piece, Option<wit::PieceLogprobs>)>, wit::Error> {
        let step = self
            .gen
            .borrow_mut()
            .next_with_logprobs(&self.model, &mut self.session.borrow_mut(), top_k as usize)
            .map_err(err)?;
        let entry = |e: k::model::TokenLogprob| wit::TokenLogprob {
            token: e.token,
            bytes: e.bytes,
            logprob: e.logprob,
        };
        Ok(step.map(|(p, lp)| {
            (
                wit::Piece {
                    token: p.token,
                    text: p.text,
                },
                lp.map(|lp| wit::PieceLogprobs {
                    chosen: entry(lp.chosen),
                    top: lp.top.into_iter().map(entry).collect(),
                }),
            )
        }))
    }

    fn prompt_tokens(&self) -> u32 {
        self.gen.borrow().prompt_tokens()
    }

    fn stop_reason(&self) -> Option<String> {
        self.gen
            .borrow()
            .stop_reason()
            .map(|r| r.as_str().to_string())
    }
}
