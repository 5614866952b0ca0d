//! A running kernel: one wasmtime store and instance, with a safe API.
//!
//! If a call traps, the instance is dropped ("poisoned") and the next call
//! builds a fresh one, reloading the models it needs. Sessions (their KV
//! caches) do not survive a trap.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::component::{ResourceAny, ResourceTable};
use wasmtime::Store;
use wasmtime_wasi::WasiCtx;

use crate::bindings::exports::wasm_chord::runtime::inference as wit;
use crate::error::{trap_reason, HostError};
use crate::interrupt::{self, Canceller, Interrupt, Interrupted, Ticker};
use crate::kernel::Kernel;
use crate::state::{HostState, MemoryTracker};
use crate::store::{ModelStore, SourceCounters, StoreStats};

pub use wit::{
    CachePolicy, CacheStats, ChatMessage, FileSummary, GenerateOptions, KvCacheType, LoadOptions,
    ModelInfo, Piece, PieceLogprobs, Residency, Sampling, ShardInfo, ShardSpec, Step,
    TensorTypeCount, TokenLogprob, TokenScore,
};

impl Default for Sampling {
    /// llama.cpp's defaults: temperature 0.8, top-k 40, top-p 0.95, min-p 0.05,
    /// no repetition penalty, seed 0.
    fn default() -> Self {
        Self {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            seed: 0,
        }
    }
}

impl Default for GenerateOptions {
    /// 128 tokens with the default [`Sampling`], stopping at end-of-sequence.
    fn default() -> Self {
        Self {
            max_tokens: 128,
            sampling: Sampling::default(),
            ignore_eos: false,
            stop: Vec::new(),
        }
    }
}

impl LoadOptions {
    /// Options to load `model` with every other setting left to the kernel.
    pub fn new(model: impl Into<String>) -> Self {
        Self {
            model: model.into(),
            residency: Residency::Auto,
            max_memory: 0,
            cache_layers: 0,
            cache_policy: CachePolicy::Pinned,
            kv_cache: KvCacheType::F16,
        }
    }
}

/// A model loaded in a [`Runtime`]. A plain handle: close it with
/// [`Runtime::close_model`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Model {
    runtime: u64,
    id: u64,
}

/// A conversation (KV cache) in a [`Runtime`]. A plain handle: close it with
/// [`Runtime::close_session`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Session {
    runtime: u64,
    id: u64,
}

/// What one [`Runtime::generate`] did.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct GenerationStats {
    /// Prompt tokens evaluated.
    pub prompt_tokens: u32,
    /// Tokens generated.
    pub generated_tokens: u32,
    /// "eos", "stop", "length", "context", or "cancelled" (the callback stopped it).
    pub stop_reason: String,
    /// Time of the kernel's `generate` call: evaluating the prompt.
    pub prompt_time: Duration,
    /// Time of the `next` calls: sampling and evaluating the generated tokens.
    pub generation_time: Duration,
}

impl GenerationStats {
    /// Prompt tokens per second.
    pub fn prompt_tokens_per_second(&self) -> f64 {
        rate(u64::from(self.prompt_tokens), self.prompt_time)
    }

    /// Generated tokens per second. Like llama.cpp, `n` generated tokens take
    /// `n - 1` evaluations (the first is sampled from the prompt's logits).
    pub fn generated_tokens_per_second(&self) -> f64 {
        rate(
            u64::from(self.generated_tokens.saturating_sub(1)),
            self.generation_time,
        )
    }
}

fn rate(n: u64, t: Duration) -> f64 {
    let s = t.as_secs_f64();
    if n == 0 || s <= 0.0 {
        0.0
    } else {
        n as f64 / s
    }
}

/// One store + instance of the kernel.
struct Live {
    store: Store<HostState>,
    kernel: crate::bindings::Kernel,
    epoch: u64,
}

struct ModelEntry {
    options: LoadOptions,
    /// The shard loaded (None: the whole model).
    shard: Option<ShardSpec>,
    info: ModelInfo,
    /// The guest resource and the instance epoch it belongs to.
    handle: Option<(u64, ResourceAny)>,
}

struct SessionEntry {
    model: u64,
    epoch: u64,
    handle: ResourceAny,
}

static NEXT_RUNTIME: AtomicU64 = AtomicU64::new(1);

/// A kernel instance with the models and sessions created in it.
pub struct Runtime {
    kernel: Kernel,
    models: Arc<dyn ModelStore>,
    uid: u64,
    live: Option<Live>,
    epochs: u64,
    next_id: u64,
    model_entries: HashMap<u64, ModelEntry>,
    sessions: HashMap<u64, SessionEntry>,
    opened: Vec<(String, Arc<SourceCounters>)>,
    peak_memory: u64,
    interrupt: Interrupt,
    call_timeout: Option<Duration>,
    /// Advances the epoch while a call timeout is set.
    ticker: Option<Ticker>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("instances", &self.epochs)
            .field("models", &self.model_entries.len())
            .field("sessions", &self.sessions.len())
            .finish_non_exhaustive()
    }
}

impl Runtime {
    /// A runtime of `kernel` serving models from `store`. Instantiates the kernel.
    pub fn new(kernel: &Kernel, store: impl ModelStore) -> Result<Self, HostError> {
        Self::with_store(kernel, Arc::new(store))
    }

    /// Like [`Runtime::new`] with a shared store.
    pub fn with_store(kernel: &Kernel, store: Arc<dyn ModelStore>) -> Result<Self, HostError> {
        let mut rt = Self {
            kernel: kernel.clone(),
            models: store,
            uid: NEXT_RUNTIME.fetch_add(1, Ordering::Relaxed),
            live: None,
            epochs: 0,
            next_id: 1,
            model_entries: HashMap::new(),
            sessions: HashMap::new(),
            opened: Vec::new(),
            peak_memory: 0,
            interrupt: Interrupt::default(),
            call_timeout: None,
            ticker: None,
        };
        rt.live()?;
        Ok(rt)
    }

    /// A handle that cancels this runtime's kernel call in progress from any
    /// thread: the call returns [`HostError::Cancelled`], the instance is
    /// dropped as after a trap (sessions are lost, models are reloaded on
    /// their next use) and the runtime serves the next call.
    pub fn canceller(&self) -> Canceller {
        self.interrupt.canceller(&self.kernel.engine)
    }

    /// Give every kernel call (each `load`, `score`, each generated token...)
    /// at most `timeout` (`None`: no limit, the default); one that runs longer
    /// returns [`HostError::DeadlineExceeded`] and is handled like a
    /// cancellation. Resolution: [`interrupt::TICK`].
    pub fn set_call_timeout(&mut self, timeout: Option<Duration>) {
        self.call_timeout = timeout;
        match (timeout, &self.ticker) {
            (Some(_), None) => self.ticker = Some(Ticker::start(&self.kernel.engine)),
            (None, Some(_)) => self.ticker = None,
            _ => {}
        }
    }

    /// Number of kernel instances created so far (more than one after a trap).
    pub fn instances_created(&self) -> u64 {
        self.epochs
    }

    /// The live instance, created if there is none (first use or after a trap).
    fn live(&mut self) -> Result<&mut Live, HostError> {
        if self.live.is_none() {
            let state = HostState {
                wasi: WasiCtx::builder().inherit_stderr().build(),
                table: ResourceTable::new(),
                memory: MemoryTracker::new(self.kernel.max_guest_memory),
                models: Arc::clone(&self.models),
                opened: Vec::new(),
                interrupt: self.interrupt.clone(),
            };
            let mut store = Store::new(&self.kernel.engine, state);
            store.limiter(|s| &mut s.memory);
            interrupt::arm(&mut store, |s| &s.interrupt);
            let kernel = self.kernel.pre.instantiate(&mut store).map_err(|e| {
                HostError::Kernel(format!(
                    "cannot instantiate the kernel: {}",
                    trap_reason(&e)
                ))
            })?;
            self.epochs += 1;
            self.live = Some(Live {
                store,
                kernel,
                epoch: self.epochs,
            });
        }
        self.live
            .as_mut()
            .ok_or_else(|| HostError::Kernel("no kernel instance".into()))
    }

    /// Run `f` on the live instance; a wasmtime error (a trap) poisons it.
    fn call<R>(
        &mut self,
        f: impl FnOnce(&wit::Guest, &mut Store<HostState>) -> wasmtime::Result<R>,
    ) -> Result<R, HostError> {
        let timeout = self.call_timeout;
        if self.interrupt.take_cancel() {
            // Cancelled between calls: nothing ran, the instance is intact.
            return Err(HostError::Cancelled);
        }
        let live = self.live()?;
        live.store.data_mut().interrupt.begin(timeout);
        let result = f(live.kernel.wasm_chord_runtime_inference(), &mut live.store);
        live.store.data_mut().interrupt.begin(None);
        self.sync_stats();
        match result {
            Ok(r) => Ok(r),
            Err(e) => {
                self.poison();
                Err(match e.downcast_ref::<Interrupted>() {
                    Some(Interrupted::Cancelled) => HostError::Cancelled,
                    Some(Interrupted::Deadline(t)) => HostError::DeadlineExceeded(*t),
                    None => HostError::Trap(trap_reason(&e)),
                })
            }
        }
    }

    /// Copy counters out of the live store (they must survive a trap).
    fn sync_stats(&mut self) {
        if let Some(live) = self.live.as_mut() {
            let data = live.store.data_mut();
            self.peak_memory = self.peak_memory.max(data.memory.peak);
            self.opened.append(&mut data.opened);
        }
    }

    /// Drop the instance: the next call creates a fresh one.
    fn poison(&mut self) {
        self.live = None;
        for e in self.model_entries.values_mut() {
            e.handle = None;
        }
    }

    fn epoch(&self) -> u64 {
        self.live.as_ref().map_or(0, |l| l.epoch)
    }

    /// Load a model through the store (`options.model` names it).
    pub fn load(&mut self, options: &LoadOptions) -> Result<Model, HostError> {
        self.load_with(options, None)
    }

    /// Load shard `shard.index` of a tensor-parallel split of the model into
    /// `shard.count` instances (see [`Runtime::shard_info`] for what it
    /// holds, and `crate::shards` for the host side of the split).
    pub fn load_shard(
        &mut self,
        options: &LoadOptions,
        shard: ShardSpec,
    ) -> Result<Model, HostError> {
        self.load_with(options, Some(shard))
    }

    fn load_with(
        &mut self,
        options: &LoadOptions,
        shard: Option<ShardSpec>,
    ) -> Result<Model, HostError> {
        let (handle, info) = self.load_in_instance(options, shard)?;
        let id = self.next_id;
        self.next_id += 1;
        let epoch = self.epoch();
        self.model_entries.insert(
            id,
            ModelEntry {
                options: options.clone(),
                shard,
                info,
                handle: Some((epoch, handle)),
            },
        );
        Ok(Model {
            runtime: self.uid,
            id,
        })
    }

    fn load_in_instance(
        &mut self,
        options: &LoadOptions,
        shard: Option<ShardSpec>,
    ) -> Result<(ResourceAny, ModelInfo), HostError> {
        let loaded = self.call(|api, store| match shard {
            Some(sh) => api.model().call_load_shard(&mut *store, options, sh),
            None => api.model().call_load(&mut *store, options),
        })?;
        let handle = loaded.map_err(HostError::from)?;
        let info = self.call(|api, store| api.model().call_info(&mut *store, handle))?;
        Ok((handle, info))
    }

    /// The guest handle of `model` in the live instance, reloading it after a trap.
    fn model_handle(&mut self, model: Model) -> Result<ResourceAny, HostError> {
        if model.runtime != self.uid {
            return Err(HostError::StaleModel);
        }
        self.live()?;
        let epoch = self.epoch();
        let entry = self
            .model_entries
            .get(&model.id)
            .ok_or(HostError::StaleModel)?;
        if let Some((e, h)) = entry.handle {
            if e == epoch {
                return Ok(h);
            }
        }
        let options = entry.options.clone();
        let shard = entry.shard;
        let (handle, info) = self.load_in_instance(&options, shard)?;
        let epoch = self.epoch();
        let entry = self
            .model_entries
            .get_mut(&model.id)
            .ok_or(HostError::StaleModel)?;
        entry.info = info;
        entry.handle = Some((epoch, handle));
        Ok(handle)
    }

    fn session_handle(&mut self, session: Session) -> Result<ResourceAny, HostError> {
        if session.runtime != self.uid {
            return Err(HostError::StaleSession(
                "it belongs to another runtime".into(),
            ));
        }
        self.live()?;
        let epoch = self.epoch();
        let entry = self
            .sessions
            .get(&session.id)
            .ok_or_else(|| HostError::StaleSession("it was closed".into()))?;
        if entry.epoch != epoch {
            return Err(HostError::StaleSession(
                "its KV cache was lost when the kernel trapped; create a new session".into(),
            ));
        }
        Ok(entry.handle)
    }

    /// Read only the header of the model `name` names (metadata and tensor
    /// table, no weights): works for a file that [`Runtime::load`] rejects as
    /// unsupported, and says which tensor types are the problem.
    pub fn inspect(&mut self, name: &str) -> Result<FileSummary, HostError> {
        self.call(|api, store| api.call_inspect(&mut *store, name))?
            .map_err(HostError::from)
    }

    /// What `model` is (recorded when it was loaded).
    pub fn info(&self, model: Model) -> Result<&ModelInfo, HostError> {
        if model.runtime != self.uid {
            return Err(HostError::StaleModel);
        }
        self.model_entries
            .get(&model.id)
            .map(|e| &e.info)
            .ok_or(HostError::StaleModel)
    }

    /// Text to token ids (`add_special`: BOS/EOS as the metadata says;
    /// `parse_special`: recognise special tokens written in the text).
    pub fn tokenize(
        &mut self,
        model: Model,
        text: &str,
        add_special: bool,
        parse_special: bool,
    ) -> Result<Vec<u32>, HostError> {
        let h = self.model_handle(model)?;
        self.call(|api, store| {
            api.model()
                .call_tokenize(&mut *store, h, text, add_special, parse_special)
        })?
        .map_err(HostError::from)
    }

    /// Token ids to text (invalid UTF-8 replaced).
    pub fn detokenize(&mut self, model: Model, tokens: &[u32]) -> Result<String, HostError> {
        let h = self.model_handle(model)?;
        self.call(|api, store| api.model().call_detokenize(&mut *store, h, tokens))?
            .map_err(HostError::from)
    }

    /// Render `messages` with the model's chat template.
    pub fn apply_chat_template(
        &mut self,
        model: Model,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, HostError> {
        let h = self.model_handle(model)?;
        self.call(|api, store| {
            api.model()
                .call_apply_chat_template(&mut *store, h, messages, add_generation_prompt)
        })?
        .map_err(HostError::from)
    }

    /// Layer cache counters of `model`.
    pub fn cache_stats(&mut self, model: Model) -> Result<CacheStats, HostError> {
        let h = self.model_handle(model)?;
        self.call(|api, store| api.model().call_cache_stats(&mut *store, h))
    }

    /// Counters of the source most recently opened for `model` (they
    /// accumulate over reloads of the same name only per source).
    pub fn store_stats(&mut self, model: Model) -> Option<StoreStats> {
        self.sync_stats();
        let name = &self.info_entry(model)?.options.model;
        self.opened
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, c)| c.snapshot())
    }

    fn info_entry(&self, model: Model) -> Option<&ModelEntry> {
        (model.runtime == self.uid)
            .then(|| self.model_entries.get(&model.id))
            .flatten()
    }

    /// Current guest linear memory in bytes (0 when no instance is live).
    pub fn guest_memory_bytes(&self) -> u64 {
        self.live
            .as_ref()
            .map_or(0, |l| l.store.data().memory.current)
    }

    /// Largest guest linear memory seen in any instance of this runtime.
    pub fn peak_guest_memory_bytes(&self) -> u64 {
        let live = self.live.as_ref().map_or(0, |l| l.store.data().memory.peak);
        self.peak_memory.max(live)
    }

    /// A new empty session on `model` (`n_ctx` 0: the kernel's default).
    pub fn new_session(&mut self, model: Model, n_ctx: u32) -> Result<Session, HostError> {
        let h = self.model_handle(model)?;
        let handle = self
            .call(|api, store| api.model().call_new_session(&mut *store, h, n_ctx))?
            .map_err(HostError::from)?;
        let id = self.next_id;
        self.next_id += 1;
        let epoch = self.epoch();
        self.sessions.insert(
            id,
            SessionEntry {
                model: model.id,
                epoch,
                handle,
            },
        );
        Ok(Session {
            runtime: self.uid,
            id,
        })
    }

    /// Context size of `session`.
    pub fn n_ctx(&mut self, session: Session) -> Result<u32, HostError> {
        let h = self.session_handle(session)?;
        self.call(|api, store| api.session().call_n_ctx(&mut *store, h))
    }

    /// Positions used in the KV cache of `session`.
    pub fn n_past(&mut self, session: Session) -> Result<u32, HostError> {
        let h = self.session_handle(session)?;
        self.call(|api, store| api.session().call_n_past(&mut *store, h))
    }

    /// Empty the KV cache of `session`.
    pub fn reset(&mut self, session: Session) -> Result<(), HostError> {
        let h = self.session_handle(session)?;
        self.call(|api, store| api.session().call_reset(&mut *store, h))
    }

    /// The tokens `session` holds: those in its KV cache, then the last
    /// sampled token of its last generation (evaluated by the next one).
    pub fn tokens(&mut self, session: Session) -> Result<Vec<u32>, HostError> {
        let h = self.session_handle(session)?;
        self.call(|api, store| api.session().call_tokens(&mut *store, h))
    }

    /// Keep only the first `len` of [`Runtime::tokens`] of `session`.
    pub fn truncate(&mut self, session: Session, len: u32) -> Result<(), HostError> {
        let h = self.session_handle(session)?;
        self.call(|api, store| api.session().call_truncate(&mut *store, h, len))?
            .map_err(HostError::from)
    }

    /// Feed `prompt` after what `session` holds and generate, calling
    /// `on_piece` for each piece as it comes; `ControlFlow::Break` stops early.
    pub fn generate(
        &mut self,
        session: Session,
        prompt: &[u32],
        options: &GenerateOptions,
        mut on_piece: impl FnMut(&Piece) -> ControlFlow<()>,
    ) -> Result<GenerationStats, HostError> {
        self.generate_inner(session, prompt, options, None, &mut |p, _| on_piece(p))
    }

    /// Like [`Runtime::generate`], giving each piece the log-probability of
    /// its token and the `top_k` most likely tokens at its position (the
    /// log-softmax of the raw logits; `None` for a last piece at
    /// end-of-sequence, which only flushes held text).
    pub fn generate_with_logprobs(
        &mut self,
        session: Session,
        prompt: &[u32],
        options: &GenerateOptions,
        top_k: u32,
        mut on_piece: impl FnMut(&Piece, Option<&PieceLogprobs>) -> ControlFlow<()>,
    ) -> Result<GenerationStats, HostError> {
        self.generate_inner(session, prompt, options, Some(top_k), &mut on_piece)
    }

    fn generate_inner(
        &mut self,
        session: Session,
        prompt: &[u32],
        options: &GenerateOptions,
        logprobs: Option<u32>,
        on_piece: &mut dyn FnMut(&Piece, Option<&PieceLogprobs>) -> ControlFlow<()>,
    ) -> Result<GenerationStats, HostError> {
        let h = self.session_handle(session)?;
        let started = Instant::now();
        let generation = self
            .call(|api, store| api.session().call_generate(&mut *store, h, prompt, options))?
            .map_err(HostError::from)?;
        let prompt_done = Instant::now();
        let mut generated = 0u32;
        let mut cancelled = false;
        let outcome = loop {
            let next = self.call(|api, store| match logprobs {
                None => Ok(api
                    .generation()
                    .call_next(&mut *store, generation)?
                    .map(|p| p.map(|p| (p, None)))),
                Some(k) => api
                    .generation()
                    .call_next_with_logprobs(&mut *store, generation, k),
            });
            match next {
                // Cancelled between two tokens: the instance is intact, drop
                // the generation below, then report the cancellation.
                Err(HostError::Cancelled) if self.live.is_some() => {
                    break Err(HostError::Cancelled)
                }
                Err(e) => return Err(e),
                Ok(Err(e)) => break Err(HostError::from(e)),
                Ok(Ok(None)) => break Ok(()),
                Ok(Ok(Some((piece, lp)))) => {
                    generated += 1;
                    if on_piece(&piece, lp.as_ref()).is_break() {
                        cancelled = true;
                        break Ok(());
                    }
                }
            }
        };
        let ended = Instant::now();
        let (prompt_tokens, reason) = self.call(|api, store| {
            let g = api.generation();
            let p = g.call_prompt_tokens(&mut *store, generation)?;
            let r = g.call_stop_reason(&mut *store, generation)?;
            generation.resource_drop(&mut *store)?;
            Ok((p, r))
        })?;
        outcome?;
        Ok(GenerationStats {
            prompt_tokens,
            generated_tokens: generated,
            stop_reason: if cancelled {
                "cancelled".into()
            } else {
                reason.unwrap_or_else(|| "unknown".into())
            },
            prompt_time: prompt_done.duration_since(started),
            generation_time: ended.duration_since(prompt_done),
        })
    }

    /// Teacher-forced: reset `session`, evaluate `tokens` and score every
    /// position from `first` on, with the `top_k` best alternatives.
    pub fn score(
        &mut self,
        session: Session,
        tokens: &[u32],
        first: u32,
        top_k: u32,
    ) -> Result<Vec<TokenScore>, HostError> {
        let h = self.session_handle(session)?;
        self.call(|api, store| {
            api.session()
                .call_score(&mut *store, h, tokens, first, top_k)
        })?
        .map_err(HostError::from)
    }

    /// Like [`Runtime::score`], returning full log-probability rows (n-vocab each).
    pub fn score_full(
        &mut self,
        session: Session,
        tokens: &[u32],
        first: u32,
    ) -> Result<Vec<f32>, HostError> {
        let h = self.session_handle(session)?;
        self.call(|api, store| api.session().call_score_full(&mut *store, h, tokens, first))?
            .map_err(HostError::from)
    }

    /// What `model` holds of a tensor-parallel split.
    pub fn shard_info(&mut self, model: Model) -> Result<ShardInfo, HostError> {
        let h = self.model_handle(model)?;
        self.call(|api, store| api.model().call_shard_info(&mut *store, h))
    }

    /// Start a tensor-parallel evaluation of `tokens` (1 to 32) in
    /// `session`: returns the first partial sum (n * n_embd).
    pub fn begin_step(
        &mut self,
        session: Session,
        tokens: &[u32],
        logits_from: u32,
    ) -> Result<Vec<f32>, HostError> {
        let h = self.session_handle(session)?;
        self.call(|api, store| {
            api.session()
                .call_begin_step(&mut *store, h, tokens, logits_from)
        })?
        .map_err(HostError::from)
    }

    /// Continue it with the sum over shards of the last partial.
    pub fn continue_step(&mut self, session: Session, reduced: &[f32]) -> Result<Step, HostError> {
        let h = self.session_handle(session)?;
        self.call(|api, store| api.session().call_continue_step(&mut *store, h, reduced))?
            .map_err(HostError::from)
    }

    /// Free `session` in the kernel. Closing a session lost to a trap is a no-op.
    pub fn close_session(&mut self, session: Session) -> Result<(), HostError> {
        if session.runtime != self.uid {
            return Err(HostError::StaleSession(
                "it belongs to another runtime".into(),
            ));
        }
        let Some(entry) = self.sessions.remove(&session.id) else {
            return Ok(());
        };
        if entry.epoch == self.epoch() && self.live.is_some() {
            self.call(|_, store| entry.handle.resource_drop(&mut *store))?;
        }
        Ok(())
    }

    /// Free `model` (and its sessions) in the kernel.
    pub fn close_model(&mut self, model: Model) -> Result<(), HostError> {
        if model.runtime != self.uid {
            return Err(HostError::StaleModel);
        }
        let sessions: Vec<u64> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.model == model.id)
            .map(|(id, _)| *id)
            .collect();
        for id in sessions {
            self.close_session(Session {
                runtime: self.uid,
                id,
            })?;
        }
        let Some(entry) = self.model_entries.remove(&model.id) else {
            return Ok(());
        };
        if let Some((epoch, handle)) = entry.handle {
            if epoch == self.epoch() && self.live.is_some() {
                self.call(|_, store| handle.resource_drop(&mut *store))?;
            }
        }
        Ok(())
    }
}
