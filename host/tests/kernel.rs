//! End-to-end tests against the real kernel component. They run when
//! `WASM_CHORD_KERNEL` and `WASM_CHORD_SMOLLM2` are set (`cargo xtask test`
//! sets them) and are skipped otherwise.

use std::ops::ControlFlow;
use std::path::PathBuf;

use wasm_chord::{
    FileStore, GenerateOptions, HostError, Kernel, KernelOptions, LoadOptions, MemStore, Runtime,
    Sampling,
};

fn env_path(name: &str) -> Option<PathBuf> {
    let p = PathBuf::from(std::env::var_os(name)?);
    p.is_file().then_some(p)
}

fn setup() -> (PathBuf, String) {
    let (Some(kernel), Some(model)) = (
        env_path("WASM_CHORD_KERNEL"),
        env_path("WASM_CHORD_SMOLLM2"),
    ) else {
        panic!("set WASM_CHORD_KERNEL and WASM_CHORD_SMOLLM2 to existing files (cargo xtask test does)");
    };
    (kernel, model.to_str().expect("utf8 model path").to_string())
}

fn cache_dir(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("wasm-chord-e2e-{tag}-{}", std::process::id()))
}

#[test]
fn generate_greedy_and_cache_reuse() {
    let (kernel_path, model) = setup();
    let dir = cache_dir("gen");
    let options = KernelOptions {
        cache_dir: Some(dir.clone()),
        ..KernelOptions::default()
    };
    let kernel = Kernel::from_file(&kernel_path, &options).expect("kernel");
    assert!(!kernel.from_cache());
    let again = Kernel::from_file(&kernel_path, &options).expect("kernel again");
    assert!(again.from_cache(), "the second start must not recompile");

    let mut rt = Runtime::new(&again, FileStore::new()).expect("runtime");
    let m = rt.load(&LoadOptions::new(&model)).expect("load");
    let info = rt.info(m).expect("info").clone();
    assert_eq!(info.architecture, "llama");
    assert!(info.n_layers > 0 && info.n_vocab > 0);
    let prompt = rt
        .tokenize(m, "The capital of France is", true, true)
        .expect("tokenize");
    assert!(!prompt.is_empty());
    let text = rt.detokenize(m, &prompt).expect("detokenize");
    assert!(text.contains("The capital of France is"), "{text:?}");

    let s = rt.new_session(m, 256).expect("session");
    let opts = GenerateOptions {
        max_tokens: 8,
        sampling: Sampling {
            temperature: 0.0,
            ..Sampling::default()
        },
        ignore_eos: true,
        stop: vec![],
    };
    let mut pieces = Vec::new();
    let stats = rt
        .generate(s, &prompt, &opts, |p| {
            pieces.push(p.clone());
            ControlFlow::Continue(())
        })
        .expect("generate");
    assert_eq!(stats.generated_tokens, 8);
    assert_eq!(pieces.len(), 8);
    assert_eq!(stats.stop_reason, "length");
    assert_eq!(stats.prompt_tokens as usize, prompt.len());
    assert!(rt.peak_guest_memory_bytes() > 0);
    let st = rt.store_stats(m).expect("store stats");
    assert_eq!(st.total_bytes, info.file_size);
    assert!(st.memory64 && st.bytes_served > 0);

    // The session holds the prompt and the reply; rewound to all but the
    // last prompt token, it gives the same reply again from that token.
    let reply: Vec<u32> = pieces.iter().map(|p| p.token).collect();
    let mut held = prompt.clone();
    held.extend(&reply);
    assert_eq!(rt.tokens(s).expect("tokens"), held);
    assert!(matches!(
        rt.truncate(s, held.len() as u32 + 1),
        Err(HostError::InvalidInput(_))
    ));
    rt.truncate(s, prompt.len() as u32 - 1).expect("truncate");
    assert_eq!(rt.tokens(s).expect("tokens"), prompt[..prompt.len() - 1]);
    let mut again = Vec::new();
    rt.generate(s, &prompt[prompt.len() - 1..], &opts, |p| {
        again.push(p.token);
        ControlFlow::Continue(())
    })
    .expect("generate after truncate");
    assert_eq!(again, reply);

    // Cancel from the callback.
    rt.reset(s).expect("reset");
    let stats = rt
        .generate(s, &prompt, &opts, |_| ControlFlow::Break(()))
        .expect("generate");
    assert_eq!(stats.generated_tokens, 1);
    assert_eq!(stats.stop_reason, "cancelled");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn store_errors_are_typed() {
    let (kernel_path, _) = setup();
    let kernel = Kernel::from_file(&kernel_path, &KernelOptions::default()).expect("kernel");
    let mut rt = Runtime::new(&kernel, FileStore::new()).expect("runtime");
    match rt.load(&LoadOptions::new("/nonexistent/x.gguf")) {
        Err(HostError::Store(e)) => assert!(e.to_string().contains("No such file"), "{e}"),
        other => panic!("expected a store error, got {other:?}"),
    }
    let mem = MemStore::new();
    mem.insert(
        "zip",
        b"PK\x03\x04 this is not a gguf file at all....".to_vec(),
    );
    let mut rt = Runtime::new(&kernel, mem).expect("runtime");
    match rt.load(&LoadOptions::new("zip")) {
        Err(HostError::InvalidModel(m)) => assert!(m.contains("magic"), "{m}"),
        other => panic!("expected invalid model, got {other:?}"),
    }
}

/// A guest whose memory cap is too small for the model traps (or reports out
/// of memory); after a trap the runtime builds a fresh instance.
#[test]
fn trap_survival() {
    let (kernel_path, model) = setup();
    let kernel = Kernel::from_file(
        &kernel_path,
        &KernelOptions {
            max_guest_memory: Some(24 << 20),
            ..KernelOptions::default()
        },
    )
    .expect("kernel");
    let mut rt = Runtime::new(&kernel, FileStore::new()).expect("runtime");
    let mut opts = LoadOptions::new(&model);
    opts.residency = wasm_chord::Residency::Resident;
    match rt.load(&opts) {
        Err(HostError::Trap(reason)) => {
            assert!(!reason.contains('\n'), "one line: {reason}");
            assert_eq!(rt.instances_created(), 1);
            // The next request gets a fresh instance and a clean answer.
            match rt.load(&LoadOptions::new("/nonexistent/x.gguf")) {
                Err(HostError::Store(_)) => {}
                other => panic!("expected a store error from a fresh instance, got {other:?}"),
            }
            assert_eq!(rt.instances_created(), 2);
        }
        Err(HostError::OutOfMemory(_)) => {
            eprintln!("the kernel reported out-of-memory instead of trapping")
        }
        other => panic!("expected a trap or out-of-memory, got {other:?}"),
    }
}

/// A long call is cancelled from another thread (`HostError::Cancelled`) or
/// stopped by the call timeout (`DeadlineExceeded`); either way the runtime
/// serves the next calls (on a fresh instance, models reloaded).
#[test]
fn cancel_and_deadline_leave_a_usable_runtime() {
    let (kernel_path, model) = setup();
    let kernel = Kernel::from_file(&kernel_path, &KernelOptions::default()).expect("kernel");
    let mut rt = Runtime::new(&kernel, FileStore::new()).expect("runtime");
    let m = rt.load(&LoadOptions::new(&model)).expect("load");
    let prompt = rt
        .tokenize(m, "The capital of France is", true, true)
        .unwrap();
    // Scoring 2048 tokens takes tens of seconds here: it is stopped long before.
    let long: Vec<u32> = (0..2048).map(|i| prompt[i % prompt.len()]).collect();
    let s = rt.new_session(m, 2048).expect("session");

    let canceller = rt.canceller();
    let t = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(300));
        canceller.cancel();
    });
    let r = rt.score(s, &long, 1, 0);
    t.join().unwrap();
    assert_eq!(r, Err(HostError::Cancelled));
    assert_eq!(rt.instances_created(), 1, "replaced on the next call");
    // The session's KV cache went with the instance; the model is reloaded.
    assert!(matches!(rt.n_past(s), Err(HostError::StaleSession(_))));
    let s = rt.new_session(m, 2048).expect("session after cancel");
    assert_eq!(rt.instances_created(), 2);
    let ok = rt.score(s, &prompt, 1, 0).expect("score after cancel");
    assert_eq!(ok.len(), prompt.len() - 1);

    // A cancellation with no call running stops the next call before it
    // enters the guest: no new instance, the session survives.
    rt.canceller().cancel();
    assert_eq!(rt.n_past(s), Err(HostError::Cancelled));
    assert_eq!(rt.n_past(s), Ok(prompt.len() as u32 - 1)); // score evaluates all but the last
    assert_eq!(rt.instances_created(), 2);

    rt.set_call_timeout(Some(std::time::Duration::from_millis(300)));
    let r = rt.score(s, &long, 1, 0);
    assert_eq!(
        r,
        Err(HostError::DeadlineExceeded(
            std::time::Duration::from_millis(300)
        ))
    );
    assert_eq!(
        r.unwrap_err().to_string(),
        "the kernel call exceeded its deadline of 300 ms"
    );
    // Calls within their deadline run as usual (a generous one: the model is
    // reloaded first, slowly on a busy machine); without one anything goes.
    rt.set_call_timeout(Some(std::time::Duration::from_secs(600)));
    let s = rt.new_session(m, 2048).expect("session after deadline");
    assert_eq!(
        rt.score(s, &prompt, 1, 0).expect("short score").len(),
        prompt.len() - 1
    );
    rt.set_call_timeout(None);
    let mut pieces = 0;
    let stats = rt
        .generate(
            s,
            &prompt,
            &GenerateOptions {
                max_tokens: 3,
                ignore_eos: true,
                ..GenerateOptions::default()
            },
            |_| {
                pieces += 1;
                ControlFlow::Continue(())
            },
        )
        .expect("generate");
    assert_eq!((pieces, stats.generated_tokens), (3, 3));
    assert_eq!(rt.instances_created(), 3);
}

/// `score-full` returns n_vocab floats per position: more than the guest can
/// hold is a clear out-of-memory error before any work (it trapped at the
/// end), and the instance keeps serving.
#[test]
fn score_full_larger_than_the_guest_is_an_error() {
    let (kernel_path, model) = setup();
    let kernel = Kernel::from_file(
        &kernel_path,
        &KernelOptions {
            max_guest_memory: Some(320 << 20),
            ..KernelOptions::default()
        },
    )
    .expect("kernel");
    let mut rt = Runtime::new(&kernel, FileStore::new()).expect("runtime");
    let m = rt.load(&LoadOptions::new(&model)).expect("load");
    let n_vocab = rt.info(m).expect("info").n_vocab as usize;
    let prompt = rt
        .tokenize(m, "The capital of France is", true, true)
        .unwrap();
    let s = rt.new_session(m, 2048).expect("session");
    // 2000 rows of 49152 floats: 375 MiB.
    let long: Vec<u32> = (0..2000).map(|i| prompt[i % prompt.len()]).collect();
    let started = std::time::Instant::now();
    match rt.score_full(s, &long, 1) {
        Err(HostError::OutOfMemory(m)) => {
            assert!(m.contains("score-full") && m.contains("MiB"), "{m}")
        }
        other => panic!("expected out-of-memory, got {:?}", other.map(|v| v.len())),
    }
    assert!(started.elapsed().as_secs() < 5, "refused before the work");
    assert_eq!(rt.instances_created(), 1, "no trap");
    let rows = rt.score_full(s, &prompt, 1).expect("a small score-full");
    assert_eq!(rows.len(), (prompt.len() - 1) * n_vocab);
    // The same for score with a top-k as large as the vocabulary.
    match rt.score(s, &long, 1, n_vocab as u32) {
        Err(HostError::OutOfMemory(m)) => assert!(m.contains("score"), "{m}"),
        other => panic!("expected out-of-memory, got {:?}", other.map(|v| v.len())),
    }
    assert_eq!(rt.instances_created(), 1, "no trap");
}
