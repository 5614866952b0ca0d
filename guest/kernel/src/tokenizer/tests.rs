use super::*;

fn tiny() -> Tokenizer {
    // Bytes, then merges building "he", "hel", "hell", "hello", "Ġw".
    let mut tokens: Vec<String> = (0..=255u8).map(|b| bpe::byte_char(b).to_string()).collect();
    for t in ["he", "hel", "hell", "hello", "Ġw", "<|end|>", "<x>"] {
        tokens.push(t.to_string());
    }
    let mut types = vec![token_type::NORMAL; tokens.len()];
    let n = types.len();
    types[n - 2] = token_type::CONTROL;
    types[n - 1] = token_type::USER_DEFINED;
    Tokenizer::new(TokenizerData {
        model: "gpt2".into(),
        pre: Some("gpt2".into()),
        tokens,
        token_types: types,
        merges: ["h e", "he l", "hel l", "hell o", "Ġ w"]
            .map(String::from)
            .to_vec(),
        eos: Some(261),
        add_bos: false,
        ..Default::default()
    })
    .unwrap()
}

#[test]
fn bpe_merges_and_specials() {
    let t = tiny();
    assert_eq!(t.encode("hello", false, false), [259]);
    assert_eq!(t.encode("hello w", false, false), [259, 260]);
    // Control tokens only with parse_special; user-defined always.
    assert_eq!(
        t.encode("hi<|end|>", false, true),
        [b'h' as u32, b'i' as u32, 261]
    );
    assert_ne!(t.encode("hi<|end|>", false, false).last(), Some(&261));
    assert_eq!(
        t.encode("a<x>b", false, false),
        [b'a' as u32, 262, b'b' as u32]
    );
    assert!(t.is_eog(261));
    assert_eq!(t.decode(&[259, 260, 261]), "hello w");
    // llama.cpp's clean_spaces when decoding (not when streaming).
    let ids = t.encode("a , b ' c 're 't !", false, false);
    assert_eq!(t.decode(&ids), "a, b'c're 't!");
    let mut d = Detokenizer::new();
    let streamed: String = ids.iter().map(|&i| d.push(&t, i)).collect();
    assert_eq!(streamed, "a , b ' c 're 't !");
}

#[test]
fn byte_mapping_round_trips() {
    for b in 0..=255u8 {
        assert_eq!(bpe::decode_bytes(&bpe::byte_char(b).to_string()), [b]);
    }
    assert_eq!(bpe::byte_char(b' '), 'Ġ');
    assert_eq!(bpe::byte_char(b'\n'), 'Ċ');
}

#[test]
fn detokenizer_reassembles_utf8() {
    let t = tiny();
    let mut d = Detokenizer::new();
    // "é" is C3 A9: two byte tokens.
    assert_eq!(d.push(&t, 0xC3), "");
    assert_eq!(d.push(&t, 0xA9), "é");
    // An invalid byte is replaced once it cannot complete.
    assert_eq!(d.push(&t, 0xFF), "\u{FFFD}");
    assert_eq!(d.push(&t, 0xE2), "");
    assert_eq!(d.flush(), "\u{FFFD}");
}

#[test]
fn unsupported_models_are_named() {
    let d = TokenizerData {
        model: "t5".into(),
        tokens: vec!["a".into()],
        ..Default::default()
    };
    assert!(matches!(Tokenizer::new(d), Err(Error::Unsupported(m)) if m.contains("t5")));
    let d = TokenizerData {
        model: "gpt2".into(),
        pre: Some("nope".into()),
        tokens: vec!["a".into()],
        ..Default::default()
    };
    assert!(matches!(Tokenizer::new(d), Err(Error::Unsupported(m)) if m.contains("nope")));
}

/// A small SentencePiece vocabulary: <unk> <s> </s>, byte tokens, pieces.
fn tiny_spm(add_space_prefix: bool) -> Tokenizer {
    let mut tokens: Vec<String> = ["<unk>", "<s>", "</s>"].map(String::from).to_vec();
    let mut types = vec![
        token_type::UNKNOWN,
        token_type::CONTROL,
        token_type::CONTROL,
    ];
    let mut scores = vec![0.0; 3];
    for b in 0..=255u8 {
        tokens.push(format!("<0x{b:02X}>"));
        types.push(token_type::BYTE);
        scores.push(0.0);
    }
    // 259.. : pieces with scores (higher merges first).
    for (t, s) in [
        ("▁", -1.0),
        ("a", -2.0),
        ("b", -2.0),
        ("ab", -3.0),
        ("▁ab", -4.0),
        ("ba", -2.5),
        ("<x>", 0.0),
    ] {
        tokens.push(t.into());
        types.push(token_type::NORMAL);
        scores.push(s);
    }
    *types.last_mut().unwrap() = token_type::USER_DEFINED;
    Tokenizer::new(TokenizerData {
        model: "llama".into(),
        tokens,
        token_types: types,
        scores,
        bos: Some(1),
        eos: Some(2),
        unk: Some(0),
        add_bos: true,
        add_space_prefix,
        ..Default::default()
    })
    .unwrap()
}

#[test]
fn spm_merges_by_score_with_byte_fallback() {
    let t = tiny_spm(true);
    // "▁ab": "ab" (-3) beats "▁a" (not a token); then "▁ab" (-4).
    assert_eq!(t.encode("ab", true, false), [1, 263]);
    // "aba": "ab" and "ba" compete: "ba" scores higher (-2.5 > -3).
    assert_eq!(t.encode("aba", false, false), [259, 260, 264]);
    // Equal scores: the leftmost pair wins ("▁" + "bab" → "▁", "ba", "b").
    assert_eq!(t.encode("bab", false, false), [259, 264, 261]);
    // Unknown characters fall back to their UTF-8 bytes: "é" = C3 A9.
    assert_eq!(t.encode("é", false, false), [259, 3 + 0xC3, 3 + 0xA9]);
    // A user-defined token splits the text; the text after it gets a space prefix.
    assert_eq!(t.encode("a<x>b", false, false), [259, 260, 265, 259, 261]);
    // Control tokens only with parse_special.
    assert_eq!(t.encode("</s>a", false, true), [2, 259, 260]);
    assert_eq!(t.encode("", true, false), [1]);
}

#[test]
fn spm_without_space_prefix_and_unk_fallback() {
    let t = tiny_spm(false);
    assert_eq!(t.encode("a b", false, false), [260, 259, 261]);
    // Without byte tokens, unknown bytes become <unk>.
    let d = TokenizerData {
        model: "llama".into(),
        tokens: ["<unk>", "a"].map(String::from).to_vec(),
        token_types: vec![token_type::UNKNOWN, token_type::NORMAL],
        unk: Some(0),
        ..Default::default()
    };
    let t = Tokenizer::new(d).unwrap();
    assert_eq!(t.encode("a€", false, false), [1, 0, 0, 0]);
}

#[test]
fn spm_decodes_spaces_and_bytes() {
    let t = tiny_spm(true);
    // The leading space of the first piece is dropped, as llama.cpp's detokenize.
    assert_eq!(t.decode(&[263, 259, 260]), "ab a");
    // After BOS the space stays (llama.cpp: BOS consumes the stripping).
    assert_eq!(t.decode(&[1, 263]), " ab");
    assert_eq!(t.decode(&[3 + 0xC3, 3 + 0xA9, 265]), "é<x>");
    // Streaming keeps the space and reassembles bytes.
    let mut d = Detokenizer::new();
    assert_eq!(d.push(&t, 263), " ab");
    assert_eq!(d.push(&t, 3 + 0xC3), "");
    assert_eq!(d.push(&t, 3 + 0xA9), "é");
    assert_eq!(d.push(&t, 2), "");
}

#[test]
fn bpe_ties_go_leftmost_and_stale_pairs_are_skipped() {
    // Merges: "a a" first. "aaa" → "aa" + "a" (leftmost pair merges first).
    let mut tokens: Vec<String> = (0..=255u8).map(|b| bpe::byte_char(b).to_string()).collect();
    tokens.push("aa".into()); // 256
    tokens.push("aaaa".into()); // 257
    let t = Tokenizer::new(TokenizerData {
        model: "gpt2".into(),
        pre: Some("gpt2".into()),
        tokens,
        merges: ["a a", "aa aa"].map(String::from).to_vec(),
        ..Default::default()
    })
    .unwrap();
    let a = u32::from(b'a');
    assert_eq!(t.encode("aaa", false, false), [256, a]);
    assert_eq!(t.encode("aaaaa", false, false), [257, a]);
    assert_eq!(t.encode("aaaaaa", false, false), [257, 256]);
}

#[test]
fn many_specials_and_long_words_tokenize() {
    // Adversarial sizes, not timed: 200 KB of one letter, 30,000 special tokens.
    let t = tiny();
    let text = "h".repeat(200_000);
    let ids = t.encode(&text, false, false);
    assert_eq!(ids.len(), 200_000);
    assert!(ids.iter().all(|&i| i == u32::from(b'h')));
    let text = "<|end|>".repeat(30_000);
    let ids = t.encode(&text, false, true);
    assert_eq!(ids, vec![261; 30_000]);
    let s = tiny_spm(true);
    // "▁abab…b": "ba" outscores "ab", so: "▁", "a", "ba" × 99,999, "b".
    let ids = s.encode(&"ab".repeat(100_000), false, false);
    let mut want = vec![259, 260];
    want.extend(std::iter::repeat_n(264, 99_999));
    want.push(261);
    assert_eq!(ids, want);
}

#[test]
fn random_texts_round_trip_through_the_streaming_detokenizer() {
    const POOL: &[&str] = &[
        "a", "b", "h", "e", "l", "o", " ", "  ", "\n", "\t", "'s", "7", "42", "é", "中", "🦙",
        "\u{301}", "<x>", "<|end|>", "<", "|", "\u{3000}", "\r\n", ",", "!",
    ];
    let (bpe, spm) = (tiny(), tiny_spm(false));
    let mut state: u64 = 1;
    for _ in 0..300 {
        let mut text = String::new();
        for _ in 0..(state % 24) {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            text.push_str(POOL[(state >> 33) as usize % POOL.len()]);
        }
        for t in [&bpe, &spm] {
            let ids = t.encode(&text, false, false);
            let mut d = Detokenizer::new();
            let mut back: String = ids.iter().map(|&i| d.push(t, i)).collect();
            back.push_str(&d.flush());
            assert_eq!(back, text, "{ids:?}");
        }
        state = state.wrapping_add(text.len() as u64);
    }
}

#[test]
fn chat_template_renders() {
    let tpl = "{% for m in messages %}<{{ m.role }}>{{ m.content | trim }}\n{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}";
    let msgs = [ChatMessage {
        role: "user".into(),
        content: " hi ".into(),
    }];
    assert_eq!(
        apply_chat_template(tpl, &msgs, true, "", "").unwrap(),
        "<user>hi\n<assistant>"
    );
    let bad = "{{ raise_exception('no system role') }}";
    assert!(
        matches!(apply_chat_template(bad, &msgs, true, "", ""), Err(Error::InvalidInput(m)) if m.contains("no system role"))
    );
}

fn one_message() -> [ChatMessage; 1] {
    [ChatMessage {
        role: "user".into(),
        content: "hi".into(),
    }]
}

#[test]
fn chat_template_endless_loop_runs_out_of_fuel() {
    // 10^10 iterations unbounded; the fuel stops it after a few million.
    let tpl =
        "{% for a in range(100000) %}{% for b in range(100000) %}{{ a }}{% endfor %}{% endfor %}";
    let r = apply_chat_template(tpl, &one_message(), true, "", "");
    assert!(
        matches!(&r, Err(Error::InvalidModel(m)) if m.contains("instructions")),
        "{r:?}"
    );
}

#[test]
fn chat_template_huge_output_is_capped() {
    // 10^5 × 100 MB of output unbounded; the cap stops it at the first write.
    let tpl = "{% for i in range(100000) %}{{ 'x'*100000000 }}{% endfor %}";
    let r = apply_chat_template(tpl, &one_message(), true, "", "");
    assert!(
        matches!(&r, Err(Error::InvalidModel(m)) if m.contains("exceeds")),
        "{r:?}"
    );
    // A large but honest conversation still renders.
    let msgs = [ChatMessage {
        role: "user".into(),
        content: "y".repeat(3 << 20),
    }];
    let ok = apply_chat_template(
        "{% for m in messages %}{{ m.content }}{% endfor %}",
        &msgs,
        true,
        "",
        "",
    )
    .unwrap();
    assert_eq!(ok.len(), 3 << 20);
}

#[test]
fn text_over_the_size_cap_is_invalid_input() {
    let t = tiny();
    let big = "a".repeat(MAX_TEXT_BYTES + 1);
    let r = t.try_encode(&big, true, true);
    assert!(
        matches!(&r, Err(Error::InvalidInput(m)) if m.contains("limit")),
        "{:?}",
        r.as_ref().map(Vec::len)
    );
    let ok = t.try_encode(&big[..1 << 20], false, false).unwrap();
    assert_eq!(ok.len(), 1 << 20);
}

/// The two crashes the chat_template fuzz target found (fuzz/seeds/chat_template/
/// namespace-cycle*): a namespace stored in itself was an `Arc` cycle minijinja
/// never frees (a leak per render), and printing it recursed until the guest's
/// stack overflowed (a trap). Both are now a clear invalid-model error.
#[test]
fn chat_template_namespace_cycles_are_refused() {
    for tpl in [
        "{% set ns = namespace() %}{% set ns.n = ns %}",
        "{% set ns = namespace() %}{% set ns.n = ns %}{{ ns }}",
        "{% set ns = namespace() %}{% set ns.n = [1, {'a': ns}] %}{{ ns|tojson }}",
        "{% set a = namespace() %}{% set b = namespace(x=a) %}{% set a.y = b %}{{ a }}",
        "{% set ns = namespace() %}{% set ns.n = ns, 1 %}{{ ns }}",
    ] {
        let r = apply_chat_template(tpl, &one_message(), true, "", "");
        assert!(
            matches!(&r, Err(Error::InvalidModel(m)) if m.contains("cannot contain itself")),
            "{tpl}: {r:?}"
        );
    }
    // A lazy iterable is stored as the list it yields now, so it cannot
    // reach the namespace later.
    let lazy = "{% set ns = namespace() %}{% set ns.n = [ns]|map('string') %}{{ ns }}";
    assert_eq!(
        apply_chat_template(lazy, &one_message(), true, "", "").unwrap(),
        "{\"n\": [\"{}\"]}"
    );
    // Attribute assignments the guard does not see are refused up front (a
    // `for` target is already a syntax error in minijinja).
    for tpl in [
        "{% set ns = namespace() %}{% for ns.n in [ns] %}{% endfor %}{{ ns }}",
        "{% set ns = namespace() %}{% set ns.n, ns.m = [ns, ns] %}{{ ns }}",
        "{% set ns = namespace() %}{% set ns.n %}x{% endset %}",
        "{% set ns = namespace() %}{% with ns.n = ns %}{% endwith %}",
        "{{ __wasm_chord_namespace_set(1, 2) }}",
    ] {
        let r = apply_chat_template(tpl, &one_message(), true, "", "");
        assert!(
            matches!(&r, Err(Error::InvalidModel(_) | Error::InvalidInput(_))),
            "{tpl}: {r:?}"
        );
    }
}

/// A loop carries values from one iteration to the next only through a
/// namespace: its values are bounded in nesting and size, so neither a deep
/// structure (printing it recursed as deep) nor a doubling string can grow
/// across iterations (fuel alone let 30 doublings fill the guest).
#[test]
fn chat_template_namespace_values_are_bounded() {
    let deep = "{% set ns = namespace(x=0) %}{% for i in range(100000) %}{% set ns.x = [ns.x] %}{% endfor %}{{ ns.x }}";
    let r = apply_chat_template(deep, &one_message(), true, "", "");
    assert!(
        matches!(&r, Err(Error::InvalidModel(m)) if m.contains("nested deeper")),
        "{r:?}"
    );
    let doubling = "{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s|length }}";
    let r = apply_chat_template(doubling, &one_message(), true, "", "");
    assert!(
        matches!(&r, Err(Error::InvalidModel(m)) if m.contains("exceeds")),
        "{r:?}"
    );
    let list = "{% set ns = namespace(l=[]) %}{% for i in range(100000) %}{% set ns.l = ns.l + ['x' * 1000] %}{% endfor %}";
    let r = apply_chat_template(list, &one_message(), true, "", "");
    assert!(matches!(&r, Err(Error::InvalidModel(_))), "{r:?}");
    // What chat templates really do with namespaces still works.
    let tpl = "{% set ns = namespace(sys='', n=0, lines=[], found=false) %}\
        {% for m in messages %}{% if m.role == 'system' %}{% set ns.sys = ns.sys + m.content %}\
        {% else %}{% set ns.n = ns.n + 1 %}{% set ns.lines = ns.lines + [m.content] %}\
        {% set ns.last = m %}{% set ns.users = messages|selectattr('role', 'eq', 'user') %}{% endif %}\
        {% set ns.found = true %}{% endfor %}\
        [{{ ns.sys }}|{{ ns.n }}|{{ ns.lines|join(',') }}|{{ ns.last.content }}|{{ ns.users|list|length }}|{{ ns.found }}]";
    let msgs = [
        ChatMessage {
            role: "system".into(),
            content: "S".into(),
        },
        ChatMessage {
            role: "user".into(),
            content: "a".into(),
        },
        ChatMessage {
            role: "user".into(),
            content: "b".into(),
        },
    ];
    assert_eq!(
        apply_chat_template(tpl, &msgs, true, "", "").unwrap(),
        "[S|2|a,b|b|2|True]"
    );
    // Spans are byte offsets: text before an assignment may be any UTF-8.
    let utf8 = "日本語 é{% set ns = namespace(a='x') %}{% set ns.a = 'ü=1' ~ ns.a %}{{ ns.a }}";
    assert_eq!(
        apply_chat_template(utf8, &msgs, true, "", "").unwrap(),
        "日本語 éü=1x"
    );
}
