//! A pool of kernel instances: each a [`Runtime`] (its own wasmtime store)
//! on its own thread, fed from one bounded queue.

use std::ops::ControlFlow;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::http::StatusCode;
use tokio::sync::mpsc::UnboundedSender;

use super::api::ApiError;
use crate::{
    ChatMessage, GenerateOptions, HostError, Kernel, LoadOptions, Model, ModelStore,
    PathOrUrlStore, PieceLogprobs, Runtime, Session,
};

/// What a request gives the model.
#[derive(Debug, Clone)]
pub enum Prompt {
    /// Rendered with the model's chat template (with the generation prompt).
    Messages(Vec<ChatMessage>),
    /// Tokenized with BOS/EOS as the metadata says and special tokens parsed, like `run -p`.
    Text(String),
    Tokens(Vec<u32>),
}

#[derive(Debug)]
pub enum Work {
    Generate {
        prompt: Prompt,
        /// `max_tokens` `u32::MAX`: up to the end of the context.
        options: GenerateOptions,
        /// Log-probabilities with this many most likely tokens per position.
        logprobs: Option<u32>,
    },
    Tokenize {
        content: String,
        add_special: bool,
        parse_special: bool,
        with_pieces: bool,
    },
    Detokenize {
        tokens: Vec<u32>,
    },
}

/// What an instance sends back, in order.
#[derive(Debug)]
pub enum Event {
    /// The prompt is accepted and generation starts.
    Started,
    Piece {
        text: String,
        /// With `logprobs`: those of the token (none for a last piece at end-of-sequence).
        logprobs: Option<PieceLogprobs>,
    },
    Done {
        prompt_tokens: u32,
        completion_tokens: u32,
        /// OpenAI's `finish_reason`: "stop" or "length".
        finish_reason: &'static str,
    },
    Tokens(Vec<u32>, Option<Vec<String>>),
    Text(String),
    Error(ApiError),
}

pub struct Job {
    pub work: Work,
    pub deadline: Instant,
    pub reply: UnboundedSender<Event>,
}

/// Counters the pool keeps (read by `/health` and `/metrics`).
#[derive(Debug, Default)]
pub struct Counters {
    pub queued: AtomicUsize,
    pub busy: AtomicUsize,
    pub rejected: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub completion_tokens: AtomicU64,
    pub traps: AtomicU64,
    /// Guest linear memory of each instance, in bytes.
    pub guest_memory: Vec<AtomicU64>,
}

pub struct Pool {
    tx: SyncSender<Job>,
    pub counters: Arc<Counters>,
    pub n_ctx: u32,
    pub parallel: usize,
}

/// What every instance needs to start.
struct Setup {
    kernel: Kernel,
    store: Arc<dyn ModelStore>,
    load: LoadOptions,
    ctx_size: u32,
}

impl Pool {
    /// Start `parallel` instances, each loading `model`; returns once all are
    /// ready, or the first error.
    pub fn start(
        kernel: Kernel,
        load: LoadOptions,
        parallel: usize,
        queue: usize,
        ctx_size: u32,
    ) -> Result<Self, HostError> {
        let (tx, rx) = mpsc::sync_channel::<Job>(queue);
        let rx = Arc::new(Mutex::new(rx));
        let counters = Arc::new(Counters {
            guest_memory: (0..parallel).map(|_| AtomicU64::new(0)).collect(),
            ..Counters::default()
        });
        let setup = Arc::new(Setup {
            kernel,
            store: Arc::new(PathOrUrlStore::from_env().map_err(HostError::Store)?),
            load,
            ctx_size,
        });
        let (ready_tx, ready_rx) = mpsc::channel::<Result<u32, HostError>>();
        for i in 0..parallel {
            let setup = Arc::clone(&setup);
            let rx = Arc::clone(&rx);
            let counters = Arc::clone(&counters);
            let ready = ready_tx.clone();
            std::thread::Builder::new()
                .name(format!("instance-{i}"))
                .spawn(move || match Instance::new(&setup, i) {
                    Ok(mut inst) => {
                        counters.guest_memory[i]
                            .store(inst.rt.guest_memory_bytes(), Ordering::Relaxed);
                        let _ = ready.send(Ok(inst.n_ctx));
                        inst.serve(&setup, &rx, &counters);
                    }
                    Err(e) => {
                        let _ = ready.send(Err(e));
                    }
                })
                .map_err(|e| HostError::Kernel(format!("cannot start a thread: {e}")))?;
        }
        drop(ready_tx);
        let mut n_ctx = 0;
        for _ in 0..parallel {
            match ready_rx.recv() {
                Ok(Ok(n)) => n_ctx = n,
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(HostError::Kernel("an instance thread died".into())),
            }
        }
        Ok(Self {
            tx,
            counters,
            n_ctx,
            parallel,
        })
    }

    /// Queue `job`; a full queue is a 503 (with `Retry-After`).
    pub fn submit(&self, job: Job) -> Result<(), ApiError> {
        self.counters.queued.fetch_add(1, Ordering::SeqCst);
        match self.tx.try_send(job) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.counters.queued.fetch_sub(1, Ordering::SeqCst);
                self.counters.rejected.fetch_add(1, Ordering::Relaxed);
                Err(match e {
                    TrySendError::Full(_) => ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE.as_u16(),
                        "server_error",
                        "the server is busy: every instance is working and the queue is full; retry later",
                    )
                    .with_code("queue_full"),
                    TrySendError::Disconnected(_) => ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE.as_u16(),
                        "server_error",
                        "no kernel instance is running",
                    ),
                })
            }
        }
    }
}

/// One kernel instance with its model and one session (reset per request).
struct Instance {
    index: usize,
    rt: Runtime,
    model: Model,
    session: Session,
    n_ctx: u32,
    n_vocab: u32,
}

impl Instance {
    fn new(setup: &Setup, index: usize) -> Result<Self, HostError> {
        let mut rt = Runtime::with_store(&setup.kernel, Arc::clone(&setup.store))?;
        let model = rt.load(&setup.load)?;
        let session = rt.new_session(model, setup.ctx_size)?;
        let n_ctx = rt.n_ctx(session)?;
        let n_vocab = rt.info(model)?.n_vocab;
        Ok(Self {
            index,
            rt,
            model,
            session,
            n_ctx,
            n_vocab,
        })
    }

    fn serve(&mut self, setup: &Setup, rx: &Mutex<Receiver<Job>>, counters: &Counters) {
        loop {
            let job = {
                let Ok(rx) = rx.lock() else { return };
                match rx.recv() {
                    Ok(job) => job,
                    Err(_) => return,
                }
            };
            counters.queued.fetch_sub(1, Ordering::SeqCst);
            if job.reply.is_closed() {
                continue;
            }
            if Instant::now() >= job.deadline {
                let _ = job.reply.send(Event::Error(deadline_error()));
                continue;
            }
            counters.busy.fetch_add(1, Ordering::SeqCst);
            let result = self.run(setup, &job, counters);
            counters.busy.fetch_sub(1, Ordering::SeqCst);
            counters.guest_memory[self.index]
                .store(self.rt.guest_memory_bytes(), Ordering::Relaxed);
            if let Err(e) = result {
                let _ = job.reply.send(Event::Error(e));
            }
        }
    }

    /// Token ids must be in the vocabulary.
    fn check_tokens(&self, param: &'static str, tokens: &[u32]) -> Result<(), ApiError> {
        match tokens.iter().find(|&&t| t >= self.n_vocab) {
            Some(t) => Err(ApiError::bad_param(
                param,
                format!(
                    "token {t} is not in the vocabulary ({} tokens)",
                    self.n_vocab
                ),
            )),
            None => Ok(()),
        }
    }

    fn run(&mut self, setup: &Setup, job: &Job, counters: &Counters) -> Result<(), ApiError> {
        let r = match &job.work {
            Work::Generate {
                prompt,
                options,
                logprobs,
            } => self.generate(setup, job, prompt, options, *logprobs, counters),
            Work::Tokenize {
                content,
                add_special,
                parse_special,
                with_pieces,
            } => {
                let tokens = self
                    .rt
                    .tokenize(self.model, content, *add_special, *parse_special)
                    .map_err(|e| kernel_error(e, counters))?;
                let pieces = if *with_pieces {
                    let mut v = Vec::with_capacity(tokens.len());
                    for t in &tokens {
                        v.push(
                            self.rt
                                .detokenize(self.model, std::slice::from_ref(t))
                                .map_err(|e| kernel_error(e, counters))?,
                        );
                    }
                    Some(v)
                } else {
                    None
                };
                let _ = job.reply.send(Event::Tokens(tokens, pieces));
                Ok(())
            }
            Work::Detokenize { tokens } => {
                self.check_tokens("tokens", tokens)?;
                let text = self
                    .rt
                    .detokenize(self.model, tokens)
                    .map_err(|e| kernel_error(e, counters))?;
                let _ = job.reply.send(Event::Text(text));
                Ok(())
            }
        };
        r
    }

    fn generate(
        &mut self,
        setup: &Setup,
        job: &Job,
        prompt: &Prompt,
        options: &GenerateOptions,
        logprobs: Option<u32>,
        counters: &Counters,
    ) -> Result<(), ApiError> {
        let ke = |e| kernel_error(e, counters);
        let tokens = match prompt {
            Prompt::Messages(m) => {
                let text = self
                    .rt
                    .apply_chat_template(self.model, m, true)
                    .map_err(ke)?;
                self.rt
                    .tokenize(self.model, &text, true, true)
                    .map_err(ke)?
            }
            Prompt::Text(t) => self.rt.tokenize(self.model, t, true, true).map_err(ke)?,
            Prompt::Tokens(t) => {
                self.check_tokens("prompt", t)?;
                t.clone()
            }
        };
        if tokens.is_empty() {
            return Err(ApiError::bad_param("prompt", "the prompt is empty"));
        }
        let n = u32::try_from(tokens.len()).unwrap_or(u32::MAX);
        if n >= self.n_ctx {
            return Err(ApiError::bad_request(format!(
                "the prompt is {n} tokens; the context holds {} (at least one must be left to generate; start the server with a larger --ctx-size)",
                self.n_ctx
            ))
            .with_code("context_length_exceeded"));
        }
        // A fresh KV cache; after a trap the session is gone: make a new one.
        if self.rt.reset(self.session).is_err() {
            self.session = self
                .rt
                .new_session(self.model, setup.ctx_size)
                .map_err(ke)?;
        }
        let mut options = options.clone();
        options.max_tokens = options.max_tokens.min(self.n_ctx - n);
        let _ = job.reply.send(Event::Started);
        let mut gone = false;
        let mut late = false;
        let mut on_piece = |piece: &crate::Piece, lp: Option<&PieceLogprobs>| {
            if Instant::now() >= job.deadline {
                late = true;
                return ControlFlow::Break(());
            }
            if job
                .reply
                .send(Event::Piece {
                    text: piece.text.clone(),
                    logprobs: lp.cloned(),
                })
                .is_err()
            {
                gone = true;
                return ControlFlow::Break(());
            }
            ControlFlow::Continue(())
        };
        let stats = match logprobs {
            None => self
                .rt
                .generate(self.session, &tokens, &options, |p| on_piece(p, None)),
            Some(k) => self
                .rt
                .generate_with_logprobs(self.session, &tokens, &options, k, on_piece),
        }
        .map_err(ke)?;
        counters
            .prompt_tokens
            .fetch_add(u64::from(stats.prompt_tokens), Ordering::Relaxed);
        counters
            .completion_tokens
            .fetch_add(u64::from(stats.generated_tokens), Ordering::Relaxed);
        if late {
            return Err(deadline_error());
        }
        if gone {
            return Ok(());
        }
        let finish_reason = match stats.stop_reason.as_str() {
            "length" | "context" => "length",
            _ => "stop",
        };
        let _ = job.reply.send(Event::Done {
            prompt_tokens: stats.prompt_tokens,
            completion_tokens: stats.generated_tokens,
            finish_reason,
        });
        Ok(())
    }
}

pub fn deadline_error() -> ApiError {
    ApiError::new(
        StatusCode::GATEWAY_TIMEOUT.as_u16(),
        "timeout_error",
        "the request passed its deadline (--timeout) before it was done",
    )
    .with_code("timeout")
}

/// A kernel error as an API error: bad input is a 400; a trap (the
/// instance is replaced on the next call) or a failing store is a 500.
fn kernel_error(e: HostError, counters: &Counters) -> ApiError {
    match e {
        HostError::InvalidInput(m) => ApiError::bad_request(m),
        HostError::ContextFull(m) => {
            ApiError::bad_request(format!("context full: {m}")).with_code("context_length_exceeded")
        }
        HostError::Trap(m) => {
            counters.traps.fetch_add(1, Ordering::Relaxed);
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR.as_u16(),
                "server_error",
                format!("the kernel trapped ({m}); its instance is replaced"),
            )
        }
        other => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR.as_u16(),
            "server_error",
            other.to_string(),
        ),
    }
}
