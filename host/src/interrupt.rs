//! Stopping a running kernel call from outside, with wasmtime's epoch
//! interruption: the engine's epoch is advanced (by [`Canceller::cancel`], or
//! every [`TICK`] by a [`Ticker`] while a deadline is set), and each store's
//! callback then checks whether its call is cancelled or past its deadline.
//! An interrupted call ends with a trap carrying [`Interrupted`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::{Engine, Store, UpdateDeadline};

/// How often a [`Ticker`] advances the epoch: the resolution of deadlines.
pub const TICK: Duration = Duration::from_millis(10);

/// Why a call was interrupted (the error inside the trap).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Interrupted {
    /// [`Canceller::cancel`] was called.
    #[error("cancelled")]
    Cancelled,
    /// The call ran past its deadline.
    #[error("the call exceeded its deadline of {0:?}")]
    Deadline(Duration),
}

/// Cancels the kernel call running in a runtime (or launcher), from any thread.
#[derive(Clone)]
pub struct Canceller {
    engine: Engine,
    flag: Arc<AtomicBool>,
}

impl std::fmt::Debug for Canceller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Canceller")
            .field("pending", &self.flag.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Canceller {
    /// Stop the call in progress (at the guest's next loop iteration or
    /// function entry), or, if none is running, the next call (before it
    /// enters the guest).
    pub fn cancel(&self) {
        self.flag.store(true, Ordering::SeqCst);
        self.engine.increment_epoch();
    }
}

/// The interrupt state of one store.
#[derive(Debug, Clone, Default)]
pub(crate) struct Interrupt {
    cancel: Arc<AtomicBool>,
    /// When the current call must end, and the timeout it came from.
    deadline: Option<(Instant, Duration)>,
}

impl Interrupt {
    pub(crate) fn canceller(&self, engine: &Engine) -> Canceller {
        Canceller {
            engine: engine.clone(),
            flag: Arc::clone(&self.cancel),
        }
    }

    /// Consume a pending cancellation.
    pub(crate) fn take_cancel(&self) -> bool {
        self.cancel.swap(false, Ordering::SeqCst)
    }

    /// A call starts (with `timeout`) or ends (`None`).
    pub(crate) fn begin(&mut self, timeout: Option<Duration>) {
        self.deadline = timeout.map(|t| (Instant::now() + t, t));
    }

    fn check(&self) -> Result<(), Interrupted> {
        if self.take_cancel() {
            return Err(Interrupted::Cancelled);
        }
        match self.deadline {
            Some((at, t)) if Instant::now() >= at => Err(Interrupted::Deadline(t)),
            _ => Ok(()),
        }
    }
}

/// Make `store` consult `interrupt(data)` at every epoch change.
pub(crate) fn arm<T: 'static>(store: &mut Store<T>, interrupt: fn(&T) -> &Interrupt) {
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(move |ctx| match interrupt(ctx.data()).check() {
        Ok(()) => Ok(UpdateDeadline::Continue(1)),
        Err(why) => Err(why.into()),
    });
}

/// Advances an engine's epoch every [`TICK`] until dropped.
pub(crate) struct Ticker {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Ticker {
    pub(crate) fn start(engine: &Engine) -> Ticker {
        let stop = Arc::new(AtomicBool::new(false));
        let (engine, flag) = (engine.clone(), Arc::clone(&stop));
        let thread = std::thread::Builder::new()
            .name("wasm-chord-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(TICK);
                    engine.increment_epoch();
                }
            })
            .ok();
        Ticker { stop, thread }
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
