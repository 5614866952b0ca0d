//! Layer streaming through the component: streamed weights give exactly the
//! resident results (both cache policies), the pinned policy hits where LRU
//! thrashes, and a host without 64-bit storage refuses models over 3.5 GiB.

use std::ops::ControlFlow;
use wasm_chord::{
    CachePolicy, FileStore, GenerateOptions, Kernel, KernelOptions, LoadOptions, ModelStore,
    Residency, Runtime, Sampling, Source, StoreError,
};
use wasm_chord_tests::*;

fn runtime() -> Runtime {
    let kernel = Kernel::from_file(kernel(), &KernelOptions::default()).expect("kernel");
    Runtime::new(&kernel, FileStore::new()).expect("runtime")
}

/// (token, log-probability, top-5) of one scored position.
type Scored = (u32, f32, Vec<(u32, f32)>);

struct Outcome {
    scores: Vec<Scored>,
    greedy: Vec<u32>,
    hits: u64,
    misses: u64,
    resident_layers: u32,
}

fn evaluate(
    residency: Residency,
    cache_layers: u32,
    policy: CachePolicy,
    tokens: &[u32],
) -> Outcome {
    let mut rt = runtime();
    let mut o = LoadOptions::new(smollm2().to_str().unwrap());
    o.residency = residency;
    o.cache_layers = cache_layers;
    o.cache_policy = policy;
    let model = rt.load(&o).expect("load");
    let session = rt.new_session(model, 256).expect("session");
    let scores = rt
        .score(session, tokens, 1, 5)
        .expect("score")
        .into_iter()
        .map(|s| (s.token, s.logprob, s.top))
        .collect();
    let stats = rt.cache_stats(model).expect("cache stats");
    let opts = GenerateOptions {
        max_tokens: 12,
        sampling: Sampling {
            temperature: 0.0,
            ..Sampling::default()
        },
        ignore_eos: true,
        stop: vec![],
    };
    rt.reset(session).unwrap();
    let mut greedy = Vec::new();
    rt.generate(session, &tokens[..8], &opts, |p| {
        greedy.push(p.token);
        ControlFlow::Continue(())
    })
    .expect("generate");
    Outcome {
        scores,
        greedy,
        hits: stats.hits,
        misses: stats.misses,
        resident_layers: stats.resident_layers,
    }
}

#[test]
fn streamed_equals_resident_and_pinned_beats_lru() {
    let golden = Golden::load("smollm2-135m-instruct-q4_1.golden.json");
    let case = &golden.cases[1];
    let tokens: Vec<u32> = case
        .prompt_tokens
        .iter()
        .chain(&case.greedy_tokens)
        .copied()
        .collect();
    let resident = evaluate(Residency::Resident, 0, CachePolicy::Pinned, &tokens);
    assert_eq!(resident.resident_layers, 31, "30 blocks + the head");
    let pinned = evaluate(Residency::Streaming, 2, CachePolicy::Pinned, &tokens);
    let lru = evaluate(Residency::Streaming, 2, CachePolicy::Lru, &tokens);
    for (name, s) in [("pinned", &pinned), ("lru", &lru)] {
        assert_eq!(
            s.scores, resident.scores,
            "{name}: log-probabilities differ from resident"
        );
        assert_eq!(
            s.greedy, resident.greedy,
            "{name}: greedy tokens differ from resident"
        );
        assert!(
            s.resident_layers <= 3,
            "{name}: {} layers resident",
            s.resident_layers
        );
    }
    // Pinned keeps one block for good; LRU evicts exactly the block needed next.
    assert!(
        pinned.hits > lru.hits,
        "pinned {} hits vs lru {}",
        pinned.hits,
        lru.hits
    );
    eprintln!(
        "hit rate with 2 cached layers of 30: pinned {:.1}%, lru {:.1}%",
        100.0 * pinned.hits as f64 / (pinned.hits + pinned.misses) as f64,
        100.0 * lru.hits as f64 / (lru.hits + lru.misses) as f64
    );
}

/// A source that claims 4.5 GiB and has no bytes: the kernel must refuse it
/// from the size alone when the host has no 64-bit storage.
struct Huge;
struct HugeSource;
impl Source for HugeSource {
    fn size(&self) -> u64 {
        9 << 29
    }
    fn read_at(&self, offset: u64, _len: u64) -> Result<Vec<u8>, StoreError> {
        Err(StoreError::Io(format!("no bytes here (offset {offset})")))
    }
}
impl ModelStore for Huge {
    fn open(&self, _name: &str) -> Result<Box<dyn Source>, StoreError> {
        Ok(Box::new(HugeSource))
    }
    fn is_enabled(&self) -> bool {
        false
    }
}

#[test]
fn a_32_bit_host_refuses_models_over_3_5_gib() {
    let kernel = Kernel::from_file(kernel(), &KernelOptions::default()).expect("kernel");
    let mut rt = Runtime::new(&kernel, Huge).expect("runtime");
    let err = rt
        .load(&LoadOptions::new("huge.gguf"))
        .expect_err("must refuse")
        .to_string();
    assert!(err.contains("4.50 GiB") && err.contains("3.5 GiB"), "{err}");
}
