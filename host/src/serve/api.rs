//! OpenAI's request and error shapes: the rules live in `wasm-chord-openai`
//! (shared with the `wasmtime serve` component); this is their axum side.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

pub use wasm_chord_openai::{
    parse_body, usage, ApiError, ChatRequest, CompletionRequest, DetokenizeRequest, Plan,
    PromptField, TokenizeRequest,
};

use crate::{ChatMessage, GenerateOptions, Sampling};

/// An [`ApiError`] as an HTTP response (503 carries `Retry-After`).
pub trait Respond {
    fn into_response(self) -> Response;
}

impl Respond for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut r = (status, axum::Json(self.body())).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        r
    }
}

/// What the kernel is asked to generate for a checked request.
pub fn options(plan: &Plan) -> GenerateOptions {
    let s = &plan.sampling;
    GenerateOptions {
        max_tokens: plan.max_tokens,
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
        stop: plan.stop.clone(),
    }
}

/// The request's messages as the kernel's chat messages.
pub fn chat_messages(req: &ChatRequest) -> Result<Vec<ChatMessage>, ApiError> {
    Ok(req
        .text_messages()?
        .into_iter()
        .map(|m| ChatMessage {
            role: m.role,
            content: m.content,
        })
        .collect())
}

/// A seed for a request that asks for a random one (`seed: -1`).
pub fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_sampling_is_the_runtimes() {
        let plan =
            parse_body::<ChatRequest>(br#"{"messages": [{"role": "user", "content": "hi"}]}"#)
                .unwrap()
                .common
                .plan("m", true, random_seed)
                .unwrap();
        assert_eq!(
            format!("{:?}", options(&plan).sampling),
            format!("{:?}", Sampling::default())
        );
    }

    #[test]
    fn a_503_says_when_to_retry() {
        let r = Respond::into_response(ApiError::new(503, "server_error", "full"));
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[header::RETRY_AFTER], "1");
    }
}
