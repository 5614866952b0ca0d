//! The compiled kernel component: engine, component, linker, instance-pre,
//! and the on-disk cache of compiled components.

use std::hash::Hasher;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, HasData, Linker};
use wasmtime::{Config, Engine};

use crate::bindings::{KernelPre, LayerStoreHost};
use crate::error::{first_line, HostError};
use crate::state::HostState;

/// Default guest memory cap: 4 GiB (all a wasm32 guest can address).
pub const DEFAULT_MAX_GUEST_MEMORY: u64 = 4 << 30;

/// How to prepare a [`Kernel`].
#[derive(Debug, Clone, Default)]
pub struct KernelOptions {
    /// Directory of the compiled-component cache; `None`: [`default_cache_dir`].
    pub cache_dir: Option<PathBuf>,
    /// Cap on each guest linear memory in bytes; `None`: [`DEFAULT_MAX_GUEST_MEMORY`].
    pub max_guest_memory: Option<u64>,
    /// Never read or write the compiled-component cache.
    pub no_cache: bool,
    /// Compile without epoch interruption: about 1.25x faster, but a call in
    /// progress can then not be stopped ([`crate::Canceller`] and deadlines
    /// act only between calls). For one-shot commands that end the process
    /// on Ctrl-C, not for servers.
    pub uninterruptible: bool,
}

/// The kernel component a native command loads: `explicit` (its `--kernel`),
/// else `$WASM_CHORD_KERNEL`, else `wasm-chord-kernel-relaxed.wasm` (relaxed
/// SIMD, which [`new_engine_with`] enables; bit-identical results) or
/// `wasm-chord-kernel.wasm` next to the executable; the error says which were
/// tried.
pub(crate) fn locate_kernel(explicit: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(k) = explicit {
        return Ok(k.to_path_buf());
    }
    if let Some(k) = std::env::var_os("WASM_CHORD_KERNEL").filter(|k| !k.is_empty()) {
        return Ok(PathBuf::from(k));
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the executable: {e}"))?;
    let relaxed = exe.with_file_name("wasm-chord-kernel-relaxed.wasm");
    if relaxed.is_file() {
        return Ok(relaxed);
    }
    let k = exe.with_file_name("wasm-chord-kernel.wasm");
    if k.is_file() {
        Ok(k)
    } else {
        Err(format!(
            "cannot find the kernel component: no --kernel, no WASM_CHORD_KERNEL, and no '{}'; run `cargo xtask build` to build it",
            k.display()
        ))
    }
}

/// The cache directory: `$WASM_CHORD_CACHE`, else `~/.cache/wasm-chord`.
pub fn default_cache_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("WASM_CHORD_CACHE").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir));
    }
    let home = std::env::var_os("HOME").or_else(|| std::env::var_os("USERPROFILE"))?;
    Some(PathBuf::from(home).join(".cache").join("wasm-chord"))
}

/// Marker type plumbing [`LayerStoreHost`] through the generated `add_to_linker`.
struct LayerStoreData;

impl HasData for LayerStoreData {
    type Data<'a> = LayerStoreHost<'a>;
}

/// A compiled kernel component, ready to instantiate many times.
///
/// Cheap to clone (everything inside is reference-counted).
#[derive(Clone)]
pub struct Kernel {
    pub(crate) engine: Engine,
    pub(crate) pre: KernelPre<HostState>,
    pub(crate) max_guest_memory: u64,
    from_cache: bool,
    cache_path: Option<Arc<PathBuf>>,
}

impl std::fmt::Debug for Kernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kernel")
            .field("max_guest_memory", &self.max_guest_memory)
            .field("from_cache", &self.from_cache)
            .field("cache_path", &self.cache_path)
            .finish_non_exhaustive()
    }
}

impl Kernel {
    /// Load the kernel component at `path`, compiling it or taking it from
    /// the compiled-component cache.
    pub fn from_file(path: impl AsRef<Path>, options: &KernelOptions) -> Result<Self, HostError> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| {
            HostError::Kernel(format!(
                "cannot read kernel component '{}': {}",
                path.display(),
                crate::store::io_reason(&e)
            ))
        })?;
        Self::from_bytes(&bytes, options)
    }

    /// Like [`Kernel::from_file`], from the bytes of the component.
    pub fn from_bytes(wasm: &[u8], options: &KernelOptions) -> Result<Self, HostError> {
        let engine = new_engine_with(!options.uninterruptible)?;
        let cache_dir = if options.no_cache {
            None
        } else {
            options.cache_dir.clone().or_else(default_cache_dir)
        };
        let (component, from_cache, cache_path) =
            load_or_compile(&engine, wasm, cache_dir.as_deref())?;
        let mut linker: Linker<HostState> = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)
            .map_err(|e| HostError::Kernel(format!("cannot link WASI: {e}")))?;
        crate::bindings::Kernel::add_to_linker::<HostState, LayerStoreData>(
            &mut linker,
            HostState::layer_store,
        )
        .map_err(|e| HostError::Kernel(format!("cannot link layer-store: {e}")))?;
        crate::bindings::link_load_layer(&mut linker, |s: &mut HostState| &mut s.table)
            .map_err(|e| HostError::Kernel(format!("cannot link layer-store: {e}")))?;
        let instance_pre = linker.instantiate_pre(&component).map_err(|e| {
            HostError::Kernel(format!(
                "the component does not fit this host: {}",
                first_line(&e)
            ))
        })?;
        let pre = KernelPre::new(instance_pre).map_err(|e| {
            HostError::Kernel(format!(
                "the component is not a wasm-chord kernel: {}",
                first_line(&e)
            ))
        })?;
        Ok(Self {
            engine,
            pre,
            max_guest_memory: options.max_guest_memory.unwrap_or(DEFAULT_MAX_GUEST_MEMORY),
            from_cache,
            cache_path: cache_path.map(Arc::new),
        })
    }

    /// True when the compiled code came from the on-disk cache (no compilation).
    pub fn from_cache(&self) -> bool {
        self.from_cache
    }

    /// Where the compiled component is cached, if caching is on.
    pub fn cache_path(&self) -> Option<&Path> {
        self.cache_path.as_deref().map(PathBuf::as_path)
    }

    /// Cap on each guest linear memory, in bytes.
    pub fn max_guest_memory(&self) -> u64 {
        self.max_guest_memory
    }

    /// The wasmtime engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }
}

/// The engine kernels and the launcher's app run in; its settings are part
/// of the cache key. With epoch interruption (what [`crate::interrupt`]'s
/// cancellation and deadlines need) only when `interruptible`. It is not
/// free: the compiled code checks the epoch at every loop iteration and
/// function entry, and the launcher's app measured 1.25x the CPU time with
/// it (SmolLM2 Q4_1 `bench -p 128 -n 64`, user time 4.13 vs 3.33 s).
/// `WASM_CHORD_PERFMAP=1` in the environment: a perf map of the compiled
/// code, for `perf report`.
pub(crate) fn new_engine_with(interruptible: bool) -> Result<Engine, HostError> {
    let mut config = Config::new();
    config.cranelift_opt_level(wasmtime::OptLevel::Speed);
    config.wasm_simd(true);
    config.wasm_relaxed_simd(true);
    config.epoch_interruption(interruptible);
    // For profiling with `perf` (docs/kernel-codegen.md): the compiled
    // functions' names in /tmp/perf-PID.map.
    if std::env::var_os("WASM_CHORD_PERFMAP").is_some_and(|v| v == "1") {
        config.profiler(wasmtime::ProfilingStrategy::PerfMap);
    }
    Engine::new(&config)
        .map_err(|e| HostError::Kernel(format!("cannot create the wasmtime engine: {e}")))
}

/// Feeds `Hash` output into a SHA-256.
struct ShaHasher(Sha256);

impl Hasher for ShaHasher {
    fn finish(&self) -> u64 {
        0
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

/// Cache key of `wasm` compiled by `engine`: sha256 of the component bytes,
/// the wasmtime version, the host triple and the engine's compatibility hash.
pub fn cache_key(engine: &Engine, wasm: &[u8]) -> String {
    use std::hash::Hash;
    let mut h = ShaHasher(Sha256::new());
    h.0.update(Sha256::digest(wasm));
    h.0.update(b"wasmtime-48.0.8\0");
    h.0.update(std::env::consts::ARCH.as_bytes());
    h.0.update(b"-");
    h.0.update(std::env::consts::OS.as_bytes());
    engine.precompile_compatibility_hash().hash(&mut h);
    let digest = h.0.finalize();
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Compile `wasm`, or load it from `<cache_dir>/compiled/<key>.cwasm`.
///
/// Returns the component, whether it came from the cache, and the cache file.
/// A cache that cannot be read or written only costs a compilation.
pub fn load_or_compile(
    engine: &Engine,
    wasm: &[u8],
    cache_dir: Option<&Path>,
) -> Result<(Component, bool, Option<PathBuf>), HostError> {
    load_or_compile_named(engine, wasm, cache_dir, "kernel component")
}

/// [`load_or_compile`], naming the component `what` in error messages.
pub(crate) fn load_or_compile_named(
    engine: &Engine,
    wasm: &[u8],
    cache_dir: Option<&Path>,
    what: &str,
) -> Result<(Component, bool, Option<PathBuf>), HostError> {
    let Some(dir) = cache_dir else {
        return Ok((compile(engine, wasm, what)?, false, None));
    };
    let dir = dir.join("compiled");
    let file = dir.join(format!("{}.cwasm", cache_key(engine, wasm)));
    // Compiled code runs natively: it is used only from a file we own that
    // nobody else can write (see `cache::read_trusted`), else recompiled.
    if let Some(bytes) = cache::read_trusted(&dir, &file) {
        // SAFETY: the file passed the ownership and permission checks above
        // (only this user could have written it, through `cache::store`, with
        // `Engine::precompile_component` of this same wasmtime version and
        // configuration, both part of its name); wasmtime also checks the
        // version and settings recorded inside it.
        if let Ok(c) = unsafe { Component::deserialize(engine, &bytes) } {
            return Ok((c, true, Some(file)));
        }
    }
    let compiled = engine
        .precompile_component(wasm)
        .map_err(|e| HostError::Kernel(format!("cannot compile the {what}: {}", first_line(&e))))?;
    // Best effort: a cache that cannot be written only costs a compilation.
    let stored = cache::store(&dir, &file, &compiled);
    // SAFETY: `compiled` was produced just now by `precompile_component` on this engine.
    let component = unsafe { Component::deserialize(engine, &compiled) }.map_err(|e| {
        HostError::Kernel(format!(
            "cannot load the compiled {what}: {}",
            first_line(&e)
        ))
    })?;
    Ok((component, false, stored.then_some(file)))
}

/// Reading and writing cache files without trusting anyone else's.
mod cache {
    use std::path::Path;

    /// The bytes of `file` in `dir`, if both are ours and writable by us
    /// alone: `dir` a real directory (not a symlink), `file` opened without
    /// following symlinks and checked on the opened descriptor (a regular
    /// file). `None` when in doubt.
    #[cfg(unix)]
    pub(super) fn read_trusted(dir: &Path, file: &Path) -> Option<Vec<u8>> {
        use std::io::Read;
        use std::os::unix::fs::OpenOptionsExt;
        if !private_dir(dir) {
            return None;
        }
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(file)
            .ok()?;
        let meta = f.metadata().ok()?;
        if !meta.file_type().is_file() || !private(&meta) {
            return None;
        }
        let mut bytes = Vec::with_capacity(meta.len().try_into().ok()?);
        f.read_to_end(&mut bytes).ok()?;
        Some(bytes)
    }

    #[cfg(not(unix))]
    pub(super) fn read_trusted(_dir: &Path, _file: &Path) -> Option<Vec<u8>> {
        // No ownership checks here: always compile.
        None
    }

    /// Write `bytes` to `file` atomically: a new temporary file in `dir`
    /// (created exclusively, mode 0600, never through a symlink), renamed over
    /// `file`. Creates `dir` (mode 0700) if needed; writes nothing into a
    /// directory that is not ours alone. Returns whether it was stored.
    #[cfg(unix)]
    pub(super) fn store(dir: &Path, file: &Path, bytes: &[u8]) -> bool {
        use std::io::Write;
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        let _ = std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir);
        if !private_dir(dir) {
            return false;
        }
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let tmp = dir.join(format!(
            ".{}.{}.{}.tmp",
            std::process::id(),
            nanos,
            COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
            .and_then(|mut f| f.write_all(bytes).and_then(|()| f.sync_all()));
        // `rename` replaces `file` itself, never what a symlink there points to.
        let ok = written.is_ok() && std::fs::rename(&tmp, file).is_ok();
        if !ok {
            let _ = std::fs::remove_file(&tmp);
        }
        ok
    }

    #[cfg(not(unix))]
    pub(super) fn store(_dir: &Path, _file: &Path, _bytes: &[u8]) -> bool {
        false
    }

    /// Owned by this user and not writable by group or others.
    #[cfg(unix)]
    fn private(meta: &std::fs::Metadata) -> bool {
        use std::os::unix::fs::MetadataExt;
        // SAFETY: geteuid has no preconditions and cannot fail.
        let me = unsafe { libc::geteuid() };
        meta.uid() == me && meta.mode() & 0o022 == 0
    }

    /// `dir` is a directory (not a symlink to one) that [`private`] holds for.
    #[cfg(unix)]
    fn private_dir(dir: &Path) -> bool {
        std::fs::symlink_metadata(dir).is_ok_and(|m| m.file_type().is_dir() && private(&m))
    }
}

fn compile(engine: &Engine, wasm: &[u8], what: &str) -> Result<Component, HostError> {
    Component::from_binary(engine, wasm)
        .map_err(|e| HostError::Kernel(format!("cannot compile the {what}: {}", first_line(&e))))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The smallest valid component: just the header.
    const EMPTY_COMPONENT: &[u8] = b"\0asm\x0d\x00\x01\x00";

    #[test]
    fn compiled_cache_is_reused() {
        let dir =
            std::env::temp_dir().join(format!("wasm-chord-cache-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let engine = new_engine_with(true).expect("engine");
        let (_, cached, file) =
            load_or_compile(&engine, EMPTY_COMPONENT, Some(&dir)).expect("compile");
        assert!(!cached);
        let file = file.expect("cache file written");
        assert!(file.starts_with(dir.join("compiled")));
        assert_eq!(file.extension().and_then(|e| e.to_str()), Some("cwasm"));
        let (_, cached, _) = load_or_compile(&engine, EMPTY_COMPONENT, Some(&dir)).expect("load");
        assert!(cached, "second start must come from the cache");
        // A corrupt cache file is replaced, not fatal.
        std::fs::write(&file, b"garbage").expect("corrupt");
        let (_, cached, _) =
            load_or_compile(&engine, EMPTY_COMPONENT, Some(&dir)).expect("recompile");
        assert!(!cached);
        let (_, cached, _) = load_or_compile(&engine, EMPTY_COMPONENT, Some(&dir)).expect("load");
        assert!(cached);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A cache file that is a symlink, writable by others, or in a directory
    /// writable by others is not trusted: the component is recompiled, still
    /// works, and a private regular file replaces the cache entry.
    #[cfg(unix)]
    #[test]
    fn untrusted_cache_files_are_recompiled() {
        use std::os::unix::fs::PermissionsExt;
        let dir =
            std::env::temp_dir().join(format!("wasm-chord-cache-test3-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let engine = new_engine_with(true).expect("engine");
        let load = || load_or_compile(&engine, EMPTY_COMPONENT, Some(&dir)).expect("load");
        let (_, cached, file) = load();
        assert!(!cached);
        let file = file.expect("cache file written");
        let mode = |p: &Path| std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&file), 0o600);
        assert!(load().1, "a private cache file is used");

        // A symlink to a valid compiled file (someone else's, say).
        let elsewhere = dir.join("elsewhere.cwasm");
        std::fs::rename(&file, &elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &file).unwrap();
        assert!(!load().1, "a symlinked cache file must not be used");
        let meta = std::fs::symlink_metadata(&file).unwrap();
        assert!(
            meta.file_type().is_file(),
            "the symlink is replaced by a file"
        );
        assert_eq!(
            std::fs::read(&elsewhere).unwrap(),
            std::fs::read(&file).unwrap()
        );
        assert!(load().1);

        // A world-writable (or group-writable) file.
        for m in [0o666, 0o620] {
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(m)).unwrap();
            assert!(!load().1, "a cache file of mode {m:o} must not be used");
            assert_eq!(mode(&file), 0o600);
            assert!(load().1);
        }

        // A world-writable directory: compiled, but nothing read or written there.
        let compiled = dir.join("compiled");
        std::fs::set_permissions(&compiled, std::fs::Permissions::from_mode(0o777)).unwrap();
        let (c, cached, stored) = load();
        assert!(!cached && stored.is_none());
        assert!(c.component_type().exports(&engine).next().is_none());
        std::fs::set_permissions(&compiled, std::fs::Permissions::from_mode(0o700)).unwrap();
        assert!(load().1);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn not_a_kernel() {
        let dir =
            std::env::temp_dir().join(format!("wasm-chord-cache-test2-{}", std::process::id()));
        let opts = KernelOptions {
            cache_dir: Some(dir.clone()),
            ..KernelOptions::default()
        };
        let err =
            Kernel::from_bytes(EMPTY_COMPONENT, &opts).expect_err("empty component is no kernel");
        assert!(err.to_string().contains("not a wasm-chord kernel"), "{err}");
        let err = Kernel::from_bytes(b"not wasm", &opts).expect_err("garbage");
        assert!(
            err.to_string()
                .starts_with("cannot compile the kernel component"),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn keys_differ_by_content() {
        let engine = new_engine_with(true).expect("engine");
        let a = cache_key(&engine, b"a");
        assert_eq!(a.len(), 64);
        assert_ne!(a, cache_key(&engine, b"b"));
        assert_eq!(a, cache_key(&engine, b"a"));
    }
}
