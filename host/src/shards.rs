//! Tensor-parallel inference across kernel instances (issue 19): N
//! instances, each holding one shard of the model (see the WIT
//! `model.load-shard`), on N threads; the host adds up their partial sums
//! twice per layer and merges their slices of the logits. docs/parallel.md
//! has the design.
//!
//! Shard 0 runs on the calling thread; shards 1..N each on a thread of its
//! own with its own [`Runtime`] (a wasmtime store). One exchange is a
//! message to each worker and one back, carrying `n_tokens * n_embd` floats;
//! the sum runs in shard order 0..N-1, so the same N gives bit-identical
//! results on every run.

use std::sync::mpsc::{channel, Receiver, RecvError, Sender, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::runtime::{LoadOptions, Model, ModelInfo, Session, ShardInfo, ShardSpec, Step};
use crate::{HostError, Kernel, ModelStore, Runtime};

/// Tokens per evaluation step (the kernel's micro-batch).
pub const MAX_STEP_TOKENS: usize = 32;

enum Cmd {
    Begin(Arc<[u32]>, u32),
    Continue(Arc<[f32]>),
    Reset,
    Cpu,
}

enum Reply {
    Partial(Vec<f32>),
    Logits(Vec<f32>),
    Done,
    Cpu(f64),
}

/// CPU time of the calling thread in seconds (0 where unknown).
pub fn thread_cpu_seconds() -> f64 {
    #[cfg(unix)]
    {
        let mut t = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes into the struct we own.
        if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) } == 0 {
            return t.tv_sec as f64 + t.tv_nsec as f64 * 1e-9;
        }
    }
    0.0
}

struct Worker {
    tx: Sender<Cmd>,
    rx: Receiver<Result<Reply, HostError>>,
    thread: Option<JoinHandle<()>>,
}

/// A model split across `count` kernel instances.
pub struct Sharded {
    rt: Runtime,
    model: Model,
    session: Session,
    workers: Vec<Worker>,
    info: ModelInfo,
    shards: Vec<ShardInfo>,
    n_ctx: u32,
    n_past: u32,
}

impl std::fmt::Debug for Sharded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sharded")
            .field("shards", &self.shards.len())
            .field("n_ctx", &self.n_ctx)
            .field("n_past", &self.n_past)
            .finish_non_exhaustive()
    }
}

/// What a worker thread needs to load its shard.
struct WorkerSetup {
    kernel: Kernel,
    store: Arc<dyn ModelStore>,
    load: LoadOptions,
    spec: ShardSpec,
    n_ctx: u32,
}

fn worker_main(
    w: WorkerSetup,
    ready: Sender<Result<ShardInfo, HostError>>,
    rx: Receiver<Cmd>,
    tx: Sender<Result<Reply, HostError>>,
) {
    let WorkerSetup {
        kernel,
        store,
        load,
        spec,
        n_ctx,
    } = w;
    let setup = (|| {
        let mut rt = Runtime::with_store(&kernel, store)?;
        let model = rt.load_shard(&load, spec)?;
        let info = rt.shard_info(model)?;
        let session = rt.new_session(model, n_ctx)?;
        Ok::<_, HostError>((rt, session, info))
    })();
    let (mut rt, session) = match setup {
        Ok((rt, session, info)) => {
            let _ = ready.send(Ok(info));
            (rt, session)
        }
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    while let Ok(cmd) = recv_spinning(&rx) {
        let reply = match cmd {
            Cmd::Begin(tokens, from) => rt.begin_step(session, &tokens, from).map(Reply::Partial),
            Cmd::Continue(sum) => rt.continue_step(session, &sum).map(|s| match s {
                Step::Partial(p) => Reply::Partial(p),
                Step::Logits(l) => Reply::Logits(l),
            }),
            Cmd::Reset => rt.reset(session).map(|()| Reply::Done),
            Cmd::Cpu => Ok(Reply::Cpu(thread_cpu_seconds())),
        };
        if tx.send(reply).is_err() {
            break;
        }
    }
}

impl Sharded {
    /// Load `load.model` split into `shards` instances (fewer when the model
    /// does not split that way: see [`Sharded::count`]), each with a session
    /// of `n_ctx` positions (0: the kernel's default).
    pub fn new(
        kernel: &Kernel,
        store: Arc<dyn ModelStore>,
        load: &LoadOptions,
        shards: u32,
        n_ctx: u32,
    ) -> Result<Sharded, HostError> {
        if shards == 0 {
            return Err(HostError::InvalidInput(
                "--shards must be at least 1".into(),
            ));
        }
        let mut rt = Runtime::with_store(kernel, Arc::clone(&store))?;
        let spec = move |index| ShardSpec {
            index,
            count: shards,
        };
        let model = rt.load_shard(load, spec(0))?;
        let first = rt.shard_info(model)?;
        let info = rt.info(model)?.clone();
        let session = rt.new_session(model, n_ctx)?;
        let n_ctx = rt.n_ctx(session)?;
        let mut pending = Vec::new();
        let mut workers = Vec::new();
        for i in 1..first.count {
            let (ready_tx, ready_rx) = channel();
            let (cmd_tx, cmd_rx) = channel();
            let (reply_tx, reply_rx) = channel();
            let setup = WorkerSetup {
                kernel: kernel.clone(),
                store: Arc::clone(&store),
                load: load.clone(),
                spec: spec(i),
                n_ctx,
            };
            let thread = std::thread::Builder::new()
                .name(format!("wasm-chord-shard-{i}"))
                .spawn(move || worker_main(setup, ready_tx, cmd_rx, reply_tx))
                .map_err(|e| HostError::Kernel(format!("cannot start a shard thread: {e}")))?;
            pending.push(ready_rx);
            workers.push(Worker {
                tx: cmd_tx,
                rx: reply_rx,
                thread: Some(thread),
            });
        }
        let mut shards_info = vec![first];
        for r in pending {
            let si = r
                .recv()
                .map_err(|_| HostError::Kernel("a shard thread ended while loading".into()))??;
            shards_info.push(si);
        }
        Ok(Sharded {
            rt,
            model,
            session,
            workers,
            info,
            shards: shards_info,
            n_ctx,
            n_past: 0,
        })
    }

    /// Shards the model runs in (1: it did not split).
    pub fn count(&self) -> usize {
        self.shards.len()
    }

    /// What each shard holds.
    pub fn shards(&self) -> &[ShardInfo] {
        &self.shards
    }

    /// What the model is.
    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// Context size of the sessions.
    pub fn n_ctx(&self) -> u32 {
        self.n_ctx
    }

    /// Positions evaluated.
    pub fn n_past(&self) -> u32 {
        self.n_past
    }

    /// Shard 0's runtime and model (tokenizer, chat template, counters: every
    /// shard has the whole vocabulary).
    pub fn first(&mut self) -> (&mut Runtime, Model) {
        (&mut self.rt, self.model)
    }

    /// Forget the evaluated tokens in every shard.
    pub fn reset(&mut self) -> Result<(), HostError> {
        for w in &self.workers {
            w.tx.send(Cmd::Reset).map_err(|_| gone())?;
        }
        let mine = self.rt.reset(self.session);
        let theirs = self.collect();
        mine?;
        theirs?;
        self.n_past = 0;
        Ok(())
    }

    /// CPU seconds each shard's thread has used so far, in shard order
    /// (shard 0 is the calling thread).
    pub fn shard_cpu_seconds(&self) -> Result<Vec<f64>, HostError> {
        for w in &self.workers {
            w.tx.send(Cmd::Cpu).map_err(|_| gone())?;
        }
        let mut out = vec![thread_cpu_seconds()];
        for r in self.collect()? {
            match r {
                Reply::Cpu(c) => out.push(c),
                _ => return Err(out_of_step()),
            }
        }
        Ok(out)
    }

    /// One reply from every worker, in shard order (all of them even when
    /// one failed, so the next round starts in step).
    fn collect(&self) -> Result<Vec<Reply>, HostError> {
        let replies: Vec<Result<Reply, HostError>> = self
            .workers
            .iter()
            .map(|w| recv_spinning(&w.rx).unwrap_or_else(|_| Err(gone())))
            .collect();
        replies.into_iter().collect()
    }

    /// Evaluate `tokens` after those evaluated; `sink(i, logits)` with the
    /// whole vocabulary's logits for every index `i >= logits_from`.
    pub fn eval(
        &mut self,
        tokens: &[u32],
        logits_from: usize,
        sink: &mut dyn FnMut(usize, &[f32]),
    ) -> Result<(), HostError> {
        let n_vocab = self.info.n_vocab as usize;
        let mut row = Vec::with_capacity(n_vocab);
        for (b, chunk) in tokens.chunks(MAX_STEP_TOKENS).enumerate() {
            let base = b * MAX_STEP_TOKENS;
            let from = logits_from.saturating_sub(base).min(chunk.len());
            let shared: Arc<[u32]> = chunk.into();
            for w in &self.workers {
                w.tx.send(Cmd::Begin(Arc::clone(&shared), from as u32))
                    .map_err(|_| gone())?;
            }
            let mine = self.rt.begin_step(self.session, chunk, from as u32);
            let theirs = self.collect();
            let mut sum = mine?;
            add_partials(&mut sum, theirs?)?;
            let slices = loop {
                let reduced: Arc<[f32]> = sum.into();
                for w in &self.workers {
                    w.tx.send(Cmd::Continue(Arc::clone(&reduced)))
                        .map_err(|_| gone())?;
                }
                let mine = self.rt.continue_step(self.session, &reduced);
                let theirs = self.collect();
                match (mine?, theirs?) {
                    (Step::Partial(p), rest) => {
                        sum = p;
                        add_partials(&mut sum, rest)?;
                    }
                    (Step::Logits(l), rest) => {
                        let mut all = vec![l];
                        for r in rest {
                            match r {
                                Reply::Logits(l) => all.push(l),
                                _ => return Err(out_of_step()),
                            }
                        }
                        break all;
                    }
                }
            };
            self.n_past += chunk.len() as u32;
            for r in 0..chunk.len() - from {
                row.clear();
                for (si, sl) in self.shards.iter().zip(&slices) {
                    let w = si.vocab_len as usize;
                    let part = sl.get(r * w..(r + 1) * w).ok_or_else(out_of_step)?;
                    row.extend_from_slice(part);
                }
                if row.len() != n_vocab {
                    return Err(out_of_step());
                }
                sink(base + from + r, &row);
            }
        }
        Ok(())
    }
}

/// How long a shard thread spins for the next message before it parks.
/// A half-layer step of SmolLM2 takes ~100 µs per shard and a token needs
/// 60 exchanges, while parking a thread and waking it costs tens of
/// microseconds each time: spinning through the short waits of one token
/// keeps the exchange cheap, parking still frees the core between tokens.
const SPIN: std::time::Duration = std::time::Duration::from_micros(200);

/// `rx.recv()`, spinning for up to [`SPIN`] before blocking. Between rounds
/// of polling the thread yields its core: on a quiet machine that returns at
/// once, on a loaded one it lets the thread that will send the message (or
/// anyone else) run instead of burning the slice.
fn recv_spinning<T>(rx: &Receiver<T>) -> Result<T, RecvError> {
    let start = std::time::Instant::now();
    loop {
        for _ in 0..64 {
            match rx.try_recv() {
                Ok(v) => return Ok(v),
                Err(TryRecvError::Disconnected) => return Err(RecvError),
                Err(TryRecvError::Empty) => std::hint::spin_loop(),
            }
        }
        std::thread::yield_now();
        if start.elapsed() >= SPIN {
            return rx.recv();
        }
    }
}

/// `sum += p` for each worker's partial, in shard order.
fn add_partials(sum: &mut [f32], rest: Vec<Reply>) -> Result<(), HostError> {
    for r in rest {
        match r {
            Reply::Partial(p) if p.len() == sum.len() => {
                for (a, b) in sum.iter_mut().zip(&p) {
                    *a += b;
                }
            }
            _ => return Err(out_of_step()),
        }
    }
    Ok(())
}

fn gone() -> HostError {
    HostError::Kernel("a shard thread has ended".into())
}

fn out_of_step() -> HostError {
    HostError::Kernel("the shards are out of step (a kernel bug)".into())
}

impl Drop for Sharded {
    fn drop(&mut self) {
        for w in &mut self.workers {
            // Closing the command channel ends the worker's loop.
            let (tx, _) = channel();
            drop(std::mem::replace(&mut w.tx, tx));
            if let Some(t) = w.thread.take() {
                let _ = t.join();
            }
        }
    }
}
