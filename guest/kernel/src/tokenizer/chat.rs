//! Chat templates: the model's Jinja `tokenizer.chat_template`, rendered with
//! minijinja the way Hugging Face's `apply_chat_template` does.

use crate::{Error, Result};
use minijinja::{context, Environment, ErrorKind};
use serde::Serialize;

/// Template instructions one render may execute. Real chat templates spend a
/// few dozen per message; this bounds a template that loops forever.
pub const CHAT_TEMPLATE_FUEL: u64 = 2_000_000;

/// Fixed headroom of the rendered text over the conversation itself
/// (system preambles, tool descriptions, role markers).
pub const CHAT_TEMPLATE_OUTPUT_SLACK: usize = 1 << 20;

/// The rendered text may be at most this large: four times what it is made of
/// (messages, BOS/EOS) plus [`CHAT_TEMPLATE_OUTPUT_SLACK`].
pub fn chat_template_output_cap(messages: &[ChatMessage], bos: &str, eos: &str) -> usize {
    let input: usize = messages
        .iter()
        .map(|m| m.role.len() + m.content.len() + bos.len() + eos.len())
        .sum();
    input
        .saturating_mul(4)
        .saturating_add(CHAT_TEMPLATE_OUTPUT_SLACK)
}

/// A `Vec` that refuses to grow beyond `cap` bytes.
struct CappedWriter {
    buf: Vec<u8>,
    cap: usize,
    overflowed: bool,
}

impl std::io::Write for CappedWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if data.len() > self.cap - self.buf.len() {
            self.overflowed = true;
            return Err(std::io::Error::other("chat template output cap"));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// One message of a conversation.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

/// Render `messages` with `template`.
///
/// The render is bounded: at most [`CHAT_TEMPLATE_FUEL`] instructions and
/// [`chat_template_output_cap`] bytes of output. A template over either budget
/// is an [`Error::InvalidModel`] (the template comes from the model file); an
/// error the template raises about the messages is an [`Error::InvalidInput`].
pub fn apply_chat_template(
    template: &str,
    messages: &[ChatMessage],
    add_generation_prompt: bool,
    bos_token: &str,
    eos_token: &str,
) -> Result<String> {
    let mut env = Environment::new();
    env.set_fuel(Some(CHAT_TEMPLATE_FUEL));
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function(
        "raise_exception",
        |msg: String| -> std::result::Result<String, minijinja::Error> {
            Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
        },
    );
    // No clock inside the sandbox: a fixed date keeps renders reproducible.
    env.add_function("strftime_now", |_fmt: String| -> String {
        "01 Jan 2026".to_string()
    });
    let err = |e: minijinja::Error| Error::InvalidInput(format!("chat template: {e}"));
    env.add_template("chat", template).map_err(err)?;
    let tpl = env.get_template("chat").map_err(err)?;
    let mut out = CappedWriter {
        buf: Vec::new(),
        cap: chat_template_output_cap(messages, bos_token, eos_token),
        overflowed: false,
    };
    let rendered = tpl.render_captured_to(
        context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => bos_token,
            eos_token => eos_token,
        },
        &mut out,
    );
    match rendered {
        Ok(_) => {}
        Err(_) if out.overflowed => {
            return Err(Error::InvalidModel(format!(
                "chat template: the rendered text exceeds {} bytes",
                out.cap
            )))
        }
        Err(e) if e.kind() == ErrorKind::OutOfFuel => {
            return Err(Error::InvalidModel(format!(
                "chat template: rendering exceeds {CHAT_TEMPLATE_FUEL} instructions"
            )))
        }
        Err(e) => return Err(err(e)),
    }
    String::from_utf8(out.buf)
        .map_err(|_| Error::InvalidModel("chat template: the output is not UTF-8".into()))
}
