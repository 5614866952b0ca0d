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
        model: "llama".into(),
        tokens: vec!["a".into()],
        ..Default::default()
    };
    assert!(matches!(Tokenizer::new(d), Err(Error::Unsupported(m)) if m.contains("llama")));
    let d = TokenizerData {
        model: "gpt2".into(),
        pre: Some("nope".into()),
        tokens: vec!["a".into()],
        ..Default::default()
    };
    assert!(matches!(Tokenizer::new(d), Err(Error::Unsupported(m)) if m.contains("nope")));
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
