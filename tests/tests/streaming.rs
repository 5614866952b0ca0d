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

/// SmolLM2 rewritten as a 3-shard split model (llama.cpp's gguf-split layout)
/// with the project's GGUF writer; returns the path of the first shard.
fn write_split(dir: &std::path::Path) -> std::path::PathBuf {
    use wasm_chord_kernel::gguf::{GgufFile, GgufWriter, Value};
    use wasm_chord_kernel::store::MemSource;
    let bytes = std::fs::read(smollm2()).unwrap();
    let g = GgufFile::parse(&MemSource::new(bytes.clone())).unwrap();
    let n = g.tensors.len();
    let mut paths = Vec::new();
    for k in 0..3usize {
        let mut w = GgufWriter::new();
        if k == 0 {
            for (key, v) in &g.metadata {
                if key != "GGUF.version" {
                    w.kv(key, v.clone());
                }
            }
        }
        w.kv("split.no", Value::U16(k as u16))
            .kv("split.count", Value::U16(3))
            .kv("split.tensors.count", Value::I32(n as i32));
        for t in &g.tensors[k * n / 3..(k + 1) * n / 3] {
            let data = bytes[t.offset as usize..(t.offset + t.n_bytes) as usize].to_vec();
            w.tensor(&t.name, &t.dims, t.ty, data);
        }
        let p = dir.join(format!("smol-{:05}-of-00003.gguf", k + 1));
        std::fs::write(&p, w.to_bytes()).unwrap();
        paths.push(p);
    }
    paths.swap_remove(0)
}

#[test]
fn split_model_loads_as_one() {
    let dir = std::env::temp_dir().join(format!("wasm-chord-split-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let first = write_split(&dir);
    let greedy = |model: &std::path::Path| {
        let out = run_cli(&[
            "run",
            "-m",
            model.to_str().unwrap(),
            "-p",
            "The capital of France is",
            "-n",
            "8",
            "--temp",
            "0",
            "--json",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        parse_run_json(&out.stdout).0
    };
    let want = greedy(&smollm2());
    assert_eq!(
        greedy(&first),
        want,
        "the split model must generate what the single file does"
    );
    let out = run_cli(&["info", "-m", first.to_str().unwrap(), "--json"]);
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).expect("info JSON");
    assert_eq!(info["n_tensors"], 272);

    // A truncated last shard fails at load; so does a missing one.
    let third = dir.join("smol-00003-of-00003.gguf");
    let len = std::fs::metadata(&third).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&third)
        .unwrap()
        .set_len(len - 1000)
        .unwrap();
    let out = run_cli(&["run", "-m", first.to_str().unwrap(), "-p", "hi", "-n", "2"]);
    assert_clean_error(&out, "truncated shard");
    std::fs::remove_file(&third).unwrap();
    let out = run_cli(&["run", "-m", first.to_str().unwrap(), "-p", "hi", "-n", "2"]);
    let err = assert_clean_error(&out, "missing shard");
    assert!(err.contains("00003-of-00003"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}
