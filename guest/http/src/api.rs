//! OpenAI's request checks come from `wasm-chord-openai`, the same rules as
//! the native `wasm-chord serve`; this converts a checked chat request into
//! the kernel bindings' types.

pub use wasm_chord_openai::{finish_reason, parse_body, usage, ApiError, ChatRequest};

use crate::wasm_chord::runtime::inference::{ChatMessage, GenerateOptions, Sampling};

/// What a checked [`ChatRequest`] asks the kernel for.
#[derive(Debug, Clone)]
pub struct Plan {
    pub stream: bool,
    pub include_usage: bool,
    pub messages: Vec<ChatMessage>,
    pub options: GenerateOptions,
}

/// Check `req` (`served` is the model's id; `random` gives the seed for
/// `seed: -1`). This component does not report log-probabilities.
pub fn plan(
    req: &ChatRequest,
    served: &str,
    random: impl FnOnce() -> u64,
) -> Result<Plan, ApiError> {
    let p = req.common.plan(served, true, random)?;
    if p.logprobs.is_some() {
        return Err(ApiError::bad_param(
            "logprobs",
            "logprobs and top_logprobs are not supported by this server",
        ));
    }
    let s = &p.sampling;
    Ok(Plan {
        stream: p.stream,
        include_usage: p.include_usage,
        messages: req
            .text_messages()?
            .into_iter()
            .map(|m| ChatMessage {
                role: m.role,
                content: m.content,
            })
            .collect(),
        options: GenerateOptions {
            max_tokens: p.max_tokens,
            sampling: Sampling {
                temperature: s.temperature,
                top_k: s.top_k,
                top_p: s.top_p,
                min_p: s.min_p,
                repeat_penalty: s.repeat_penalty,
                repeat_last_n: s.repeat_last_n,
                seed: s.seed,
            },
            ignore_eos: false,
            stop: p.stop,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(body: &str) -> Result<Plan, ApiError> {
        plan(&parse_body::<ChatRequest>(body.as_bytes())?, "smol", || 7)
    }

    #[test]
    fn converts_a_checked_request() {
        let p = check(
            r#"{"messages": [{"role": "user", "content": "hi"}], "temperature": 0, "max_tokens": 3, "seed": -1, "stop": "x"}"#,
        )
        .unwrap();
        assert_eq!(p.options.max_tokens, 3);
        assert_eq!(p.options.sampling.temperature, 0.0);
        assert_eq!(p.options.sampling.seed, 7);
        assert_eq!(p.options.stop, vec!["x".to_string()]);
        assert_eq!(p.messages[0].content, "hi");
    }

    #[test]
    fn refuses_logprobs() {
        let e = check(r#"{"messages": [{"role": "user", "content": "hi"}], "logprobs": true}"#)
            .unwrap_err();
        assert_eq!((e.status, e.param), (400, Some("logprobs")));
    }
}
