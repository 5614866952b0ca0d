//! What the fuzz targets share: driving a loaded model the way a host does.
//!
//! Every path here must end in `Ok` or a typed kernel error; a panic, an
//! abort, a hang (libFuzzer's `-timeout`) or an allocation beyond its
//! `-rss_limit_mb` is a finding.

use wasm_chord_kernel::model::{LoadOptions, Model, Residency, Session};
use wasm_chord_kernel::store::ByteSource;
use wasm_chord_kernel::tokenizer::ChatMessage;

/// Context of the sessions the targets open: small, so a crafted model's
/// KV cache stays small too.
pub const N_CTX: u32 = 8;

/// Load options the targets try: the default (resident below 3 GiB) and a
/// streamed load under a small guest budget (two-layer cache, evictions).
pub fn load_options(selector: u8) -> LoadOptions {
    if selector & 1 == 0 {
        LoadOptions::default()
    } else {
        LoadOptions {
            residency: Residency::Stream,
            max_memory: 64 << 20,
            cache_layers: 2,
            ..LoadOptions::default()
        }
    }
}

/// Load the model behind `src` and, if it loads, use it as a host would:
/// chat template, tokenize, a session evaluating a few tokens (some of them
/// possibly out of the vocabulary), detokenize.
pub fn load_and_use(src: Box<dyn ByteSource>, selector: u8, tokens_seed: &[u8]) {
    let Ok(model) = Model::load(src, &load_options(selector)) else {
        return;
    };
    let _ = model.cache_stats();
    let messages = [
        ChatMessage {
            role: "system".into(),
            content: "Be brief.".into(),
        },
        ChatMessage {
            role: "user".into(),
            content: "Hi <|im_end|> there".into(),
        },
    ];
    let prompt = model
        .apply_chat_template(&messages, true)
        .unwrap_or_else(|_| "Hello, world".into());
    let ids = model.tokenizer.encode(&prompt, true, true);
    let n_vocab = model.tokenizer.n_vocab();
    assert!(
        ids.iter().all(|&t| (t as usize) < n_vocab),
        "encode returned a token outside the vocabulary"
    );
    let _ = model.tokenizer.decode(&ids);
    if !model.has_weights() {
        return;
    }
    let Ok(mut session) = Session::new(&model, N_CTX) else {
        return;
    };
    // Tokens: the prompt's first few, then ids taken from the input (the
    // kernel must reject those outside the vocabulary, not index with them).
    let mut toks: Vec<u32> = ids.iter().copied().take(3).collect();
    toks.extend(tokens_seed.iter().take(2).map(|&b| {
        if b & 0x80 != 0 {
            n_vocab as u32 + u32::from(b & 0x7f)
        } else {
            u32::from(b) % n_vocab.max(1) as u32
        }
    }));
    let mut n_logits = 0usize;
    let r = session.eval(&model, &toks, 0, &mut |_, logits| {
        assert_eq!(logits.len(), n_vocab, "a logits row is not n_vocab long");
        n_logits += 1;
    });
    if r.is_ok() {
        assert_eq!(n_logits, toks.len(), "one logits row per evaluated token");
    }
}
