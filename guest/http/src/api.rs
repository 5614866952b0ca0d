//! OpenAI's request and error shapes, and their checks (the same rules as
//! the native `wasm-chord serve`).

use serde::Deserialize;
use serde_json::{json, Value};

use crate::wasm_chord::runtime::inference::{ChatMessage, GenerateOptions, Sampling};

/// An error answered in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<&'static str>,
    pub code: Option<&'static str>,
}

impl ApiError {
    pub fn new(status: u16, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
        }
    }

    /// 400 `invalid_request_error`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "invalid_request_error", message)
    }

    /// 400 about the request field `param`.
    pub fn bad_param(param: &'static str, message: impl Into<String>) -> Self {
        Self {
            param: Some(param),
            ..Self::bad_request(message)
        }
    }

    /// 500 `server_error`: the server (its configuration, the kernel) failed.
    pub fn server(message: impl Into<String>) -> Self {
        Self::new(500, "server_error", message)
    }

    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    /// The JSON body.
    pub fn body(&self) -> Value {
        json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }})
    }
}

/// Parse a JSON body into `T`; any failure is a 400 in OpenAI's shape.
pub fn parse_body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| {
        let what = if e.is_syntax() || e.is_eof() {
            "the body is not valid JSON"
        } else {
            "the body does not fit this endpoint"
        };
        ApiError::bad_request(format!("{what}: {e}"))
    })
}

/// `stop`: one string or a list of them.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize, Default)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// One chat message; `content` is a string, null, or a list of text parts.
#[derive(Debug, Deserialize)]
pub struct Message {
    pub role: String,
    #[serde(default)]
    pub content: Value,
}

/// The body of `POST /v1/chat/completions`.
#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    pub messages: Vec<Message>,
    pub model: Option<String>,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    pub max_tokens: Option<i64>,
    pub max_completion_tokens: Option<i64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    /// llama-server's extensions.
    pub top_k: Option<i64>,
    pub min_p: Option<f64>,
    pub repeat_penalty: Option<f64>,
    pub seed: Option<i64>,
    pub stop: Option<Stop>,
    pub n: Option<i64>,
    pub logprobs: Option<Value>,
    pub top_logprobs: Option<Value>,
    pub frequency_penalty: Option<f64>,
    pub presence_penalty: Option<f64>,
    pub tools: Option<Vec<Value>>,
}

/// What a checked [`ChatRequest`] asks for.
#[derive(Debug, Clone)]
pub struct Plan {
    pub stream: bool,
    pub include_usage: bool,
    pub messages: Vec<ChatMessage>,
    pub options: GenerateOptions,
}

/// llama.cpp's sampling defaults (those of `wasm-chord run` and `serve`).
fn default_sampling() -> Sampling {
    Sampling {
        temperature: 0.8,
        top_k: 40,
        top_p: 0.95,
        min_p: 0.05,
        repeat_penalty: 1.0,
        repeat_last_n: 64,
        seed: 0,
    }
}

impl ChatRequest {
    /// Check every field against what this server can do; `served` is the
    /// model's id and `random` gives a seed for a negative `seed`.
    pub fn plan(&self, served: &str, random: impl FnOnce() -> u64) -> Result<Plan, ApiError> {
        if let Some(m) = &self.model {
            if m != served {
                return Err(ApiError::bad_param(
                    "model",
                    format!("the model '{m}' does not exist; this server serves '{served}'"),
                )
                .with_code("model_not_found"));
            }
        }
        if let Some(n) = self.n {
            if n != 1 {
                return Err(ApiError::bad_param(
                    "n",
                    format!(
                        "n must be 1 (got {n}); generate several completions with several requests"
                    ),
                ));
            }
        }
        let logprobs_on = !matches!(
            &self.logprobs,
            None | Some(Value::Null) | Some(Value::Bool(false))
        );
        if logprobs_on || self.top_logprobs.as_ref().is_some_and(|v| !v.is_null()) {
            return Err(ApiError::bad_param(
                "logprobs",
                "logprobs and top_logprobs are not supported by this server",
            ));
        }
        if self.frequency_penalty.is_some_and(|v| v != 0.0) {
            return Err(ApiError::bad_param(
                "frequency_penalty",
                "frequency_penalty is not supported (use repeat_penalty)",
            ));
        }
        if self.presence_penalty.is_some_and(|v| v != 0.0) {
            return Err(ApiError::bad_param(
                "presence_penalty",
                "presence_penalty is not supported (use repeat_penalty)",
            ));
        }
        if self.tools.as_ref().is_some_and(|t| !t.is_empty()) {
            return Err(ApiError::bad_param("tools", "tools are not supported"));
        }
        let max_tokens = match (self.max_completion_tokens, self.max_tokens) {
            (Some(n), _) => Some(("max_completion_tokens", n)),
            (None, Some(n)) => Some(("max_tokens", n)),
            (None, None) => None,
        };
        let max_tokens = match max_tokens {
            // llama-server's "-1: no limit".
            None | Some((_, -1)) => u32::MAX,
            Some((name, n)) => u32::try_from(n).ok().filter(|&n| n >= 1).ok_or_else(|| {
                ApiError::bad_param(
                    if name == "max_tokens" {
                        "max_tokens"
                    } else {
                        "max_completion_tokens"
                    },
                    format!("{name} must be at least 1 (got {n})"),
                )
            })?,
        };
        let mut s = default_sampling();
        if let Some(t) = self.temperature {
            if !t.is_finite() || !(0.0..=2.0).contains(&t) {
                return Err(ApiError::bad_param(
                    "temperature",
                    format!("temperature must be between 0 and 2 (got {t})"),
                ));
            }
            s.temperature = t as f32;
        }
        if let Some(p) = self.top_p {
            if !(0.0..=1.0).contains(&p) {
                return Err(ApiError::bad_param(
                    "top_p",
                    format!("top_p must be between 0 and 1 (got {p})"),
                ));
            }
            s.top_p = p as f32;
        }
        if let Some(p) = self.min_p {
            if !(0.0..=1.0).contains(&p) {
                return Err(ApiError::bad_param(
                    "min_p",
                    format!("min_p must be between 0 and 1 (got {p})"),
                ));
            }
            s.min_p = p as f32;
        }
        if let Some(k) = self.top_k {
            s.top_k = u32::try_from(k).map_err(|_| {
                ApiError::bad_param("top_k", format!("top_k must be >= 0 (got {k})"))
            })?;
        }
        if let Some(r) = self.repeat_penalty {
            if !r.is_finite() || r <= 0.0 {
                return Err(ApiError::bad_param(
                    "repeat_penalty",
                    format!("repeat_penalty must be a finite number > 0 (got {r})"),
                ));
            }
            s.repeat_penalty = r as f32;
        }
        if let Some(seed) = self.seed {
            // Like llama-server, a negative seed (-1) asks for a random one.
            s.seed = u64::try_from(seed).unwrap_or_else(|_| random());
        }
        let stop = match &self.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s.clone()],
            Some(Stop::Many(v)) => v.clone(),
        };
        if stop.iter().any(String::is_empty) {
            return Err(ApiError::bad_param(
                "stop",
                "stop strings must not be empty",
            ));
        }
        Ok(Plan {
            stream: self.stream,
            include_usage: self
                .stream_options
                .as_ref()
                .is_some_and(|o| o.include_usage),
            messages: self.chat_messages()?,
            options: GenerateOptions {
                // u32::MAX: up to the end of the context.
                max_tokens,
                sampling: s,
                ignore_eos: false,
                stop,
            },
        })
    }

    fn chat_messages(&self) -> Result<Vec<ChatMessage>, ApiError> {
        if self.messages.is_empty() {
            return Err(ApiError::bad_param(
                "messages",
                "messages must hold at least one message",
            ));
        }
        self.messages
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let content = match &m.content {
                    Value::Null => String::new(),
                    Value::String(s) => s.clone(),
                    Value::Array(parts) => {
                        let mut text = String::new();
                        for p in parts {
                            match (p.get("type").and_then(Value::as_str), p.get("text")) {
                                (Some("text"), Some(Value::String(t))) => text.push_str(t),
                                _ => {
                                    return Err(ApiError::bad_param(
                                        "messages",
                                        format!(
                                            "messages[{i}].content: only text parts ({{\"type\": \"text\", \"text\": ...}}) are supported"
                                        ),
                                    ))
                                }
                            }
                        }
                        text
                    }
                    _ => {
                        return Err(ApiError::bad_param(
                            "messages",
                            format!(
                                "messages[{i}].content must be a string or a list of text parts"
                            ),
                        ))
                    }
                };
                Ok(ChatMessage {
                    role: m.role.clone(),
                    content,
                })
            })
            .collect()
    }
}

/// OpenAI's `finish_reason` for the kernel's stop reason.
pub fn finish_reason(stop_reason: &str) -> &'static str {
    match stop_reason {
        "length" | "context" => "length",
        _ => "stop",
    }
}

pub fn usage(prompt: u32, completion: u32) -> Value {
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(body: &str) -> Result<Plan, ApiError> {
        parse_body::<ChatRequest>(body.as_bytes())?.plan("smol", || 7)
    }

    #[test]
    fn malformed_json_is_a_400() {
        let e = plan("{\"messages\": [").unwrap_err();
        assert_eq!(e.status, 400);
        assert!(e.message.starts_with("the body is not valid JSON"), "{e:?}");
        let e = plan("{\"messages\": 3}").unwrap_err();
        assert!(
            e.message.starts_with("the body does not fit this endpoint"),
            "{e:?}"
        );
        let body = e.body();
        assert_eq!(body["error"]["type"], "invalid_request_error");
    }

    #[test]
    fn checks_fields() {
        let m = r#""messages": [{"role": "user", "content": "hi"}]"#;
        let e = plan(&format!("{{{m}, \"model\": \"other\"}}")).unwrap_err();
        assert_eq!((e.param, e.code), (Some("model"), Some("model_not_found")));
        let e = plan(&format!("{{{m}, \"temperature\": 3}}")).unwrap_err();
        assert_eq!(e.param, Some("temperature"));
        let e = plan(&format!("{{{m}, \"max_tokens\": 0}}")).unwrap_err();
        assert_eq!(e.param, Some("max_tokens"));
        let e = plan(r#"{"messages": []}"#).unwrap_err();
        assert_eq!(e.param, Some("messages"));
        let e = plan(r#"{"messages": [{"role": "user", "content": 5}]}"#).unwrap_err();
        assert_eq!(e.param, Some("messages"));
        let p = plan(&format!(
            "{{{m}, \"model\": \"smol\", \"temperature\": 0, \"max_tokens\": 3, \"seed\": -1, \"stop\": \"x\"}}"
        ))
        .unwrap();
        assert_eq!(p.options.max_tokens, 3);
        assert_eq!(p.options.sampling.temperature, 0.0);
        assert_eq!(p.options.sampling.seed, 7);
        assert_eq!(p.options.stop, vec!["x".to_string()]);
        assert_eq!(p.messages[0].content, "hi");
        let p = plan(
            r#"{"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]}"#,
        )
        .unwrap();
        assert_eq!(p.messages[0].content, "ab");
        assert_eq!(p.options.max_tokens, u32::MAX);
    }
}
