//! Chat templates: the model's Jinja `tokenizer.chat_template`, rendered with
//! minijinja the way Hugging Face's `apply_chat_template` does.

use crate::{Error, Result};
use minijinja::{context, Environment, ErrorKind};
use serde::Serialize;

/// One message of a conversation.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

/// Render `messages` with `template`.
pub fn apply_chat_template(
    template: &str,
    messages: &[ChatMessage],
    add_generation_prompt: bool,
    bos_token: &str,
    eos_token: &str,
) -> Result<String> {
    let mut env = Environment::new();
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
    tpl.render(context! {
        messages => messages,
        add_generation_prompt => add_generation_prompt,
        bos_token => bos_token,
        eos_token => eos_token,
    })
    .map_err(err)
}
