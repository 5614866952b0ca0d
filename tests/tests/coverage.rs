//! Tensor-type coverage through the component in wasmtime: SmolLM2-135M
//! requantized by llama.cpp's `llama-quantize` into each type of the
//! acceptance list (`cargo xtask fetch variants`), held to llama.cpp's own
//! outputs on the same file (tests/fixtures/variants/, made with
//! `cargo xtask golden`): teacher-forced scoring (top-1 = llama.cpp's greedy
//! token at >= 90% of steps, |Δ logprob| over its top-5 median <= 0.15 and
//! max <= 1.0) and free-running greedy decoding under the fixture rule.

use wasm_chord_tests::*;

fn variant(ty: &str) {
    let file = format!("smollm2-{ty}.gguf");
    let model = variants_dir().join(&file);
    assert!(
        model.is_file(),
        "{} is missing: `cargo xtask fetch variants` makes it",
        model.display()
    );
    let golden = Golden::load(&format!("variants/smollm2-{ty}.golden.json"));
    assert_eq!(golden.model, file, "the golden file is for another model");
    let scored = teacher_forced(&model, &golden);
    eprintln!("{ty}: {scored}");
    let greedy = greedy_parity(&model, &golden);
    eprintln!("{ty}: {greedy}");
    let mut failures = Vec::new();
    if let Err(e) = scored.check_default() {
        failures.push(format!("teacher-forced: {e}"));
    }
    failures.extend(greedy.failures.iter().map(|e| format!("greedy: {e}")));
    assert!(failures.is_empty(), "{ty}:\n{}", failures.join("\n"));
}

macro_rules! variants {
    ($($name:ident: $ty:literal,)*) => {
        $(
            #[test]
            fn $name() {
                variant($ty);
            }
        )*
    };
}

variants! {
    f16: "F16",
    bf16: "BF16",
    q4_0: "Q4_0",
    q4_1: "Q4_1",
    q5_0: "Q5_0",
    q5_1: "Q5_1",
    q8_0: "Q8_0",
    q2_k: "Q2_K",
    q3_k_m: "Q3_K_M",
    q4_k_m: "Q4_K_M",
    q5_k_m: "Q5_K_M",
    q6_k: "Q6_K",
    iq4_nl: "IQ4_NL",
    iq4_xs: "IQ4_XS",
}
