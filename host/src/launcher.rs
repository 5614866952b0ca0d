//! The native `wasm-chord` launcher: runs the composed CLI
//! (`wasm-chord-app.wasm`: the `guest/cli` front composed with the kernel) as
//! a `wasi:cli` command and serves its one non-WASI import, `layer-store`,
//! with the memory-mapped [`crate::FileStore`] (64-bit offsets, split GGUF),
//! or the [`crate::HttpStore`] for `http://` and `https://` model names.
//!
//! Every subcommand, flag and message belongs to the guest; the launcher
//! only adds what needs the host:
//!
//! - `--app PATH` (else `$WASM_CHORD_APP`, else `wasm-chord-app-relaxed.wasm`
//!   (the kernel built with relaxed SIMD, which the engine enables) or
//!   `wasm-chord-app.wasm` next to the executable) and `--max-guest-memory BYTES` (default 4 GiB, the cap
//!   on each guest linear memory), taken out of the arguments wherever they
//!   appear before a `--`;
//! - the compiled-component cache (as for [`crate::Kernel`]);
//! - file access (see [`preopens`]): the current directory is preopened as
//!   `.`, and the directory of every argument that names a path outside it at
//!   the path as written, so relative and absolute paths work as with any
//!   command-line tool. Model names go to the layer store, which resolves
//!   them against the launcher's current directory: the same file;
//! - a progress bar on stderr (a terminal only) while the store serves a
//!   model's first pass of layers;
//! - a trap is one `error:` line and exit code 1; `wasi:cli/exit` codes pass through.

use std::ffi::OsString;
use std::path::{Component as PathPart, Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::component::{HasData, Linker, ResourceTable};
use wasmtime::Store;
use wasmtime_wasi::p2::bindings::sync::Command;
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::bindings::LayerStoreHost;
use crate::error::{first_line, trap_reason};
use crate::kernel::{default_cache_dir, load_or_compile_named, new_engine_with};
use crate::state::MemoryTracker;
use crate::store::{
    ByteRange, Bytes, ModelStore, PathOrUrlStore, Source, SourceCounters, StoreError,
};
use crate::DEFAULT_MAX_GUEST_MEMORY;

/// File name of the composed app, looked for next to the executable.
pub const APP_FILE: &str = "wasm-chord-app.wasm";
/// The app with the relaxed-SIMD kernel (bit-identical results), preferred
/// when it is next to the executable: the engine has relaxed SIMD on.
pub const APP_RELAXED_FILE: &str = "wasm-chord-app-relaxed.wasm";

/// Environment variables passed to the guest (besides every `WASM_CHORD_*`).
const PASSED_ENV: &[&str] = &[
    "NO_COLOR",
    "CLICOLOR",
    "CLICOLOR_FORCE",
    "TERM",
    "COLUMNS",
    "LINES",
];

/// Why the launcher could not run the app. `Display` is one line.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// A launcher flag is malformed (exit code 2, like a usage error).
    #[error("{0}")]
    Usage(String),
    /// The app component cannot be found, read, compiled or instantiated.
    #[error("{0}")]
    App(String),
    /// The app trapped.
    #[error("the wasm-chord component trapped: {0}")]
    Trap(String),
    /// Ctrl-C stopped the app (exit code 130, as a shell reports SIGINT).
    #[error("interrupted")]
    Interrupted,
}

impl LaunchError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            LaunchError::Usage(_) => 2,
            LaunchError::App(_) | LaunchError::Trap(_) => 1,
            LaunchError::Interrupted => 130,
        }
    }
}

/// The command line, split into the launcher's flags and the guest's arguments.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LauncherArgs {
    /// `--app PATH`.
    pub app: Option<PathBuf>,
    /// `--max-guest-memory BYTES`.
    pub max_guest_memory: Option<u64>,
    /// Everything else, in order (without the program name).
    pub guest: Vec<String>,
}

impl LauncherArgs {
    /// Split `args` (without the program name). The launcher's flags are
    /// recognised anywhere before a `--` (`--app P`, `--app=P`, likewise
    /// `--max-guest-memory`); the rest goes to the guest unchanged.
    pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Self, LaunchError> {
        let mut out = LauncherArgs::default();
        let mut it = args.into_iter();
        let mut literal = false;
        while let Some(arg) = it.next() {
            let arg = arg.into_string().map_err(|a| {
                LaunchError::Usage(format!(
                    "argument '{}' is not valid UTF-8",
                    a.to_string_lossy()
                ))
            })?;
            if literal {
                out.guest.push(arg);
                continue;
            }
            if arg == "--" {
                literal = true;
                out.guest.push(arg);
                continue;
            }
            let (flag, inline) = match arg.split_once('=') {
                Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
                _ => (arg.clone(), None),
            };
            if flag != "--app" && flag != "--max-guest-memory" {
                out.guest.push(arg);
                continue;
            }
            let value = match inline {
                Some(v) => v,
                None => it
                    .next()
                    .map(|v| v.to_string_lossy().into_owned())
                    .ok_or_else(|| LaunchError::Usage(format!("{flag} needs a value")))?,
            };
            if flag == "--app" {
                out.app = Some(PathBuf::from(value));
            } else {
                let bytes = value.parse::<u64>().map_err(|_| {
                    LaunchError::Usage(format!(
                        "--max-guest-memory must be a number of bytes (got '{value}')"
                    ))
                })?;
                if bytes == 0 {
                    return Err(LaunchError::Usage(
                        "--max-guest-memory must be at least 1 byte (got 0)".into(),
                    ));
                }
                out.max_guest_memory = Some(bytes);
            }
        }
        Ok(out)
    }

    /// The first guest argument that is not a flag: the subcommand, if any.
    pub fn subcommand(&self) -> Option<&str> {
        self.guest
            .iter()
            .take_while(|a| *a != "--")
            .find(|a| !a.starts_with('-'))
            .map(String::as_str)
    }
}

/// Where the app component is: `--app`, `$WASM_CHORD_APP`, next to the executable.
pub fn app_path(args: &LauncherArgs) -> Result<PathBuf, LaunchError> {
    if let Some(p) = &args.app {
        return Ok(p.clone());
    }
    if let Some(p) = std::env::var_os("WASM_CHORD_APP").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()
        .map_err(|e| LaunchError::App(format!("cannot locate this executable: {e}")))?;
    let relaxed = exe.with_file_name(APP_RELAXED_FILE);
    if relaxed.is_file() {
        return Ok(relaxed);
    }
    let beside = exe.with_file_name(APP_FILE);
    if beside.is_file() {
        return Ok(beside);
    }
    Err(LaunchError::App(format!(
        "cannot find the wasm-chord app component: no --app, no WASM_CHORD_APP, and no '{}'; run `cargo xtask build` to build it",
        beside.display()
    )))
}

/// A directory the guest sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preopen {
    /// The directory on the host (relative to the launcher's current directory).
    pub host: PathBuf,
    /// Its name in the guest: `.`, or the directory as the argument wrote it.
    pub guest: String,
    /// Whether the guest may create and write files in it.
    pub writable: bool,
}

/// The directories to preopen for `args`.
///
/// - The current directory as `.`, writable: relative paths without `..`
///   (`model.gguf`, `data/text.txt`) resolve in it, and output files go there.
/// - For every argument, or value of a `-f=value`/`--flag=value`, that is an absolute
///   path or a relative one through `..`: its directory (the argument itself
///   if it is a directory), under the name the argument uses for it, so the
///   guest's path resolves to the same file. It is read-only when the
///   argument exists, writable when it does not (an output file the guest
///   may create there). Arguments whose directory does not exist are text.
pub fn preopens(args: &[String], cwd: &Path) -> Vec<Preopen> {
    let mut out = vec![Preopen {
        host: cwd.to_path_buf(),
        guest: ".".into(),
        writable: true,
    }];
    for arg in args {
        let value = match arg.split_once('=') {
            Some((flag, v)) if flag.starts_with('-') => v,
            _ => arg.as_str(),
        };
        if value.is_empty() || value.contains('\0') {
            continue;
        }
        let path = Path::new(value);
        let outside = path.is_absolute() || path.components().any(|c| c == PathPart::ParentDir);
        if !outside {
            continue;
        }
        let host = |p: &Path| {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                cwd.join(p)
            }
        };
        let on_host = host(path);
        let (dir, writable) = if on_host.is_dir() {
            (path, false)
        } else {
            match path.parent() {
                Some(d) if !d.as_os_str().is_empty() && host(d).is_dir() => {
                    (d, on_host.symlink_metadata().is_err())
                }
                _ => continue,
            }
        };
        let Some(name) = dir.to_str() else { continue };
        match out.iter_mut().find(|p| p.guest == name) {
            Some(p) => p.writable |= writable,
            None => out.push(Preopen {
                host: host(dir),
                guest: name.to_string(),
                writable,
            }),
        }
    }
    out
}

/// Data of the store the app runs in.
struct AppState {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: MemoryTracker,
    models: Arc<dyn ModelStore>,
    opened: Vec<(String, Arc<SourceCounters>)>,
}

impl WasiView for AppState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl AppState {
    fn layer_store(&mut self) -> LayerStoreHost<'_> {
        LayerStoreHost {
            store: &*self.models,
            table: &mut self.table,
            opened: &mut self.opened,
        }
    }
}

/// Marker type plumbing [`LayerStoreHost`] through the generated `add_to_linker`.
struct LayerStoreData;

impl HasData for LayerStoreData {
    type Data<'a> = LayerStoreHost<'a>;
}

/// Run the app with `args` (the launcher's flags already split off); returns
/// the exit code. Stdin, stdout and stderr are the process's.
pub fn run(args: &LauncherArgs) -> Result<i32, LaunchError> {
    let path = app_path(args)?;
    let wasm = std::fs::read(&path).map_err(|e| {
        LaunchError::App(format!(
            "cannot read the app component '{}': {}",
            path.display(),
            crate::store::io_reason(&e)
        ))
    })?;
    // One app, one call, one process: Ctrl-C ends the process (below), so
    // the engine needs no epoch interruption and its per-loop checks.
    let engine = new_engine_with(false).map_err(|e| LaunchError::App(e.to_string()))?;
    let (component, _, _) = load_or_compile_named(
        &engine,
        &wasm,
        default_cache_dir().as_deref(),
        "app component",
    )
    .map_err(|e| LaunchError::App(e.to_string()))?;
    let mut linker: Linker<AppState> = Linker::new(&engine);
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker)
        .map_err(|e| LaunchError::App(format!("cannot link WASI: {}", first_line(&e))))?;
    crate::bindings::wasm_chord::runtime::layer_store::add_to_linker::<AppState, LayerStoreData>(
        &mut linker,
        AppState::layer_store,
    )
    .map_err(|e| LaunchError::App(format!("cannot link layer-store: {}", first_line(&e))))?;
    crate::bindings::link_load_layer(&mut linker, |s: &mut AppState| &mut s.table)
        .map_err(|e| LaunchError::App(format!("cannot link layer-store: {}", first_line(&e))))?;

    let cwd = std::env::current_dir()
        .map_err(|e| LaunchError::App(format!("cannot read the current directory: {e}")))?;
    let mut wasi = WasiCtxBuilder::new();
    wasi.inherit_stdio()
        .allow_blocking_current_thread(true)
        .arg("wasm-chord")
        .args(&args.guest);
    for (k, v) in std::env::vars_os() {
        let (Some(k), Some(v)) = (k.to_str(), v.to_str()) else {
            continue;
        };
        if k.starts_with("WASM_CHORD_") || PASSED_ENV.contains(&k) {
            wasi.env(k, v);
        }
    }
    // A cap given on the command line is the guest's memory budget too (the
    // CLI plans the layer cache with it unless --max-memory says otherwise);
    // without one the kernel keeps its own default, as under any launcher.
    if let Some(max) = args.max_guest_memory {
        wasi.env("WASM_CHORD_MAX_GUEST_MEMORY", max.to_string());
    }
    let max = args.max_guest_memory.unwrap_or(DEFAULT_MAX_GUEST_MEMORY);
    for p in preopens(&args.guest, &cwd) {
        let perms = if p.writable {
            FsPerms::ReadWrite
        } else {
            FsPerms::ReadOnly
        };
        wasi.preopened_dir(&p.host, &p.guest, perms).map_err(|e| {
            LaunchError::App(format!(
                "cannot open directory '{}': {}",
                p.host.display(),
                first_line(&e)
            ))
        })?;
    }

    let progress = Progress::new();
    let stores = PathOrUrlStore::from_env()
        .map_err(|e| LaunchError::App(crate::error::store_message(&e)))?;
    let models: Arc<dyn ModelStore> = match &progress {
        Some(p) => Arc::new(ProgressStore {
            inner: stores,
            progress: Arc::clone(p),
        }),
        None => Arc::new(stores),
    };
    let state = AppState {
        wasi: wasi.build(),
        table: ResourceTable::new(),
        limits: MemoryTracker::new(max),
        models,
        opened: Vec::new(),
    };
    let mut store = Store::new(&engine, state);
    store.limiter(|s| &mut s.limits);
    // Ctrl-C ends the process with `error: interrupted` (exit 130).
    let _ctrl_c = ctrl_c::Watch::start();
    let ticker = progress.as_ref().map(|p| p.start());
    let result = Command::instantiate(&mut store, &component, &linker)
        .map_err(|e| {
            LaunchError::App(format!(
                "the app component does not fit this host: {}",
                first_line(&e)
            ))
        })
        .map(|cmd| cmd.wasi_cli_run().call_run(&mut store));
    if let (Some(p), Some(t)) = (&progress, ticker) {
        p.stop(t);
    }
    match result? {
        Ok(Ok(())) => Ok(0),
        Ok(Err(())) => Ok(1),
        Err(e) => {
            if let Some(exit) = e.downcast_ref::<I32Exit>() {
                return Ok(exit.0);
            }
            let mut reason = trap_reason(&e);
            if store.data().limits.refused {
                reason.push_str(&format!(
                    " (guest memory reached the cap of {max} bytes; raise --max-guest-memory)"
                ));
            }
            Err(LaunchError::Trap(reason))
        }
    }
}

/// Ctrl-C (SIGINT) ends the running app: the guest's output so far is
/// flushed, `error: interrupted` printed, and the process exits with 130, as
/// a shell reports SIGINT. The app is one call in one process, so nothing
/// else is left to stop or clean up.
mod ctrl_c {
    use super::LaunchError;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    static SIGNALLED: AtomicBool = AtomicBool::new(false);

    #[cfg(unix)]
    extern "C" fn on_sigint(_: libc::c_int) {
        // Only async-signal-safe work here: a flag, or a hard exit when the
        // first Ctrl-C was not enough (the watcher is stuck).
        if SIGNALLED.swap(true, Ordering::SeqCst) {
            // SAFETY: _exit is async-signal-safe.
            unsafe { libc::_exit(130) };
        }
    }

    /// Watches for Ctrl-C while alive.
    pub(super) struct Watch {
        stop: Arc<AtomicBool>,
    }

    impl Watch {
        pub(super) fn start() -> Watch {
            let stop = Arc::new(AtomicBool::new(false));
            #[cfg(unix)]
            {
                // SAFETY: installs a handler that only touches an atomic or exits.
                unsafe {
                    libc::signal(
                        libc::SIGINT,
                        on_sigint as extern "C" fn(libc::c_int) as libc::sighandler_t,
                    )
                };
                let flag = Arc::clone(&stop);
                let _ = std::thread::Builder::new()
                    .name("wasm-chord-ctrl-c".into())
                    .spawn(move || {
                        while !flag.load(Ordering::Relaxed) {
                            if SIGNALLED.load(Ordering::SeqCst) {
                                use std::io::Write;
                                let _ = std::io::stdout().flush();
                                let e = LaunchError::Interrupted;
                                eprintln!("error: {e}");
                                std::process::exit(e.exit_code());
                            }
                            std::thread::sleep(Duration::from_millis(20));
                        }
                    });
            }
            Watch { stop }
        }
    }

    impl Drop for Watch {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::Relaxed);
        }
    }
}

/// What the store has served, for the load progress bar.
struct Progress {
    started: Instant,
    /// Bytes of the model files opened.
    total: AtomicU64,
    served: AtomicU64,
    layer_loads: AtomicU64,
    /// Milliseconds after `started` of the last request.
    last_ms: AtomicU64,
    stop: AtomicBool,
}

/// Show a bar only for loads that take longer than this.
const SHOW_AFTER: Duration = Duration::from_millis(500);
/// A load is over when the store has been idle this long after a layer load.
const IDLE: Duration = Duration::from_millis(300);

impl Progress {
    /// A progress tracker when stderr is a terminal.
    fn new() -> Option<Arc<Self>> {
        use std::io::IsTerminal;
        std::io::stderr().is_terminal().then(|| {
            Arc::new(Progress {
                started: Instant::now(),
                total: AtomicU64::new(0),
                served: AtomicU64::new(0),
                layer_loads: AtomicU64::new(0),
                last_ms: AtomicU64::new(0),
                stop: AtomicBool::new(false),
            })
        })
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn served(&self, bytes: u64, layer: bool) {
        self.served.fetch_add(bytes, Ordering::Relaxed);
        if layer {
            self.layer_loads.fetch_add(1, Ordering::Relaxed);
        }
        self.last_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    /// Draw the bar from a thread until the first pass is served or idle.
    fn start(self: &Arc<Self>) -> std::thread::JoinHandle<()> {
        let p = Arc::clone(self);
        std::thread::spawn(move || {
            let mut bar: Option<indicatif::ProgressBar> = None;
            let mut first_ms = None;
            while !p.stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
                let (total, served) = (
                    p.total.load(Ordering::Relaxed),
                    p.served.load(Ordering::Relaxed),
                );
                if served == 0 || total == 0 {
                    continue;
                }
                let now = p.now_ms();
                let first = *first_ms.get_or_insert(now);
                let idle = now.saturating_sub(p.last_ms.load(Ordering::Relaxed));
                let loads = p.layer_loads.load(Ordering::Relaxed);
                if served >= total || (loads > 0 && idle >= IDLE.as_millis() as u64) {
                    break;
                }
                if now.saturating_sub(first) < SHOW_AFTER.as_millis() as u64 {
                    continue;
                }
                let b = bar.get_or_insert_with(|| {
                    let b = indicatif::ProgressBar::with_draw_target(
                        Some(total),
                        indicatif::ProgressDrawTarget::stderr(),
                    );
                    if let Ok(style) = indicatif::ProgressStyle::with_template(
                        "loading {msg} [{bar:30}] {binary_bytes}/{binary_total_bytes}",
                    ) {
                        b.set_style(style.progress_chars("=> "));
                    }
                    b
                });
                b.set_length(total);
                b.set_position(served);
                b.set_message(format!("{loads} layers"));
            }
            if let Some(b) = bar {
                b.finish_and_clear();
            }
        })
    }

    fn stop(&self, ticker: std::thread::JoinHandle<()>) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = ticker.join();
    }
}

/// A [`PathOrUrlStore`] that reports what it serves to the progress bar.
struct ProgressStore {
    inner: PathOrUrlStore,
    progress: Arc<Progress>,
}

impl ModelStore for ProgressStore {
    fn open(&self, name: &str) -> Result<Box<dyn Source>, StoreError> {
        let inner = self.inner.open(name)?;
        // A split model's size is an address span: count its shards' bytes.
        let bytes = match crate::split::shard_paths(Path::new(name)) {
            Some(paths) if !crate::store::is_url(name) => paths
                .iter()
                .filter_map(|p| std::fs::metadata(p).ok())
                .map(|m| m.len())
                .sum(),
            _ => inner.size(),
        };
        self.progress.total.fetch_add(bytes, Ordering::Relaxed);
        Ok(Box::new(ProgressSource {
            inner,
            progress: Arc::clone(&self.progress),
        }))
    }

    fn is_enabled(&self) -> bool {
        self.inner.is_enabled()
    }
}

struct ProgressSource {
    inner: Box<dyn Source>,
    progress: Arc<Progress>,
}

impl Source for ProgressSource {
    fn size(&self) -> u64 {
        self.inner.size()
    }

    fn read_at(&self, offset: u64, len: u64) -> Result<Vec<u8>, StoreError> {
        let out = self.inner.read_at(offset, len)?;
        self.progress.served(out.len() as u64, false);
        Ok(out)
    }

    fn load_layer(&self, ranges: &[ByteRange]) -> Result<Bytes, StoreError> {
        let out = self.inner.load_layer(ranges)?;
        self.progress.served(out.len() as u64, true);
        Ok(out)
    }

    fn prefetch(&self, ranges: &[ByteRange]) {
        self.inner.prefetch(ranges);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<LauncherArgs, LaunchError> {
        LauncherArgs::parse(args.iter().map(OsString::from))
    }

    #[test]
    fn launcher_flags_are_taken_out() {
        let a = parse(&[
            "run",
            "-m",
            "m.gguf",
            "--app",
            "a.wasm",
            "-p",
            "hi",
            "--max-guest-memory=1024",
        ])
        .expect("parse");
        assert_eq!(a.app, Some(PathBuf::from("a.wasm")));
        assert_eq!(a.max_guest_memory, Some(1024));
        assert_eq!(a.guest, ["run", "-m", "m.gguf", "-p", "hi"]);
        assert_eq!(a.subcommand(), Some("run"));
        // After `--` everything is the guest's.
        let a = parse(&["tokenize", "-m", "m", "--", "--app", "x"]).expect("parse");
        assert_eq!(a.app, None);
        assert_eq!(a.guest, ["tokenize", "-m", "m", "--", "--app", "x"]);
        assert_eq!(parse(&["--help"]).expect("parse").subcommand(), None);
    }

    #[test]
    fn bad_launcher_flags() {
        for (args, needle) in [
            (&["run", "--app"][..], "--app needs a value"),
            (
                &["--max-guest-memory", "lots"],
                "number of bytes (got 'lots')",
            ),
            (&["--max-guest-memory=0"], "at least 1 byte"),
            (&["--max-guest-memory=-5"], "(got '-5')"),
        ] {
            let e = parse(args).expect_err("must fail");
            assert_eq!(e.exit_code(), 2);
            assert!(e.to_string().contains(needle), "{e}");
        }
    }

    #[test]
    fn preopen_rules() {
        let root = std::env::temp_dir().join(format!("wasm-chord-preopen-{}", std::process::id()));
        let cwd = root.join("work");
        let models = root.join("models");
        std::fs::create_dir_all(&cwd).expect("dir");
        std::fs::create_dir_all(&models).expect("dir");
        std::fs::write(models.join("m.gguf"), b"x").expect("file");
        let abs_model = models.join("m.gguf").to_str().expect("utf8").to_string();
        let abs_out = models.join("new.kld").to_str().expect("utf8").to_string();
        let args: Vec<String> = [
            "perplexity",
            "-m",
            &abs_model,
            "--kl-divergence-base",
            &abs_out,
            "-f=../models/m.gguf",
            "local.txt",
            "sub/dir/file.txt",
            "-p",
            "/no/such/dir/here",
            "../work",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let p = preopens(&args, &cwd);
        let models_name = models.to_str().expect("utf8");
        assert_eq!(p[0].guest, ".");
        assert_eq!(p[0].host, cwd);
        assert!(p[0].writable);
        let find = |name: &str| p.iter().find(|x| x.guest == name);
        let m = find(models_name).expect("absolute model directory");
        assert_eq!(m.host, models);
        assert!(m.writable, "an output file goes there");
        let rel = find("../models").expect("relative directory through ..");
        assert_eq!(rel.host, cwd.join("../models"));
        assert!(!rel.writable);
        let dir = find("../work").expect("a directory argument is preopened itself");
        assert!(!dir.writable);
        assert_eq!(p.len(), 4, "{p:?}");
        let _ = std::fs::remove_dir_all(&root);
    }
}
