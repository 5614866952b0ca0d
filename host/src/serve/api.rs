//! OpenAI's request and error shapes, and their checks.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::{ChatMessage, GenerateOptions, Sampling};

/// An error answered in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<&'static str>,
    pub code: Option<&'static str>,
}

impl ApiError {
    /// 400 `invalid_request_error`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param: None,
            code: None,
        }
    }

    /// 400 about the request field `param`.
    pub fn bad_param(param: &'static str, message: impl Into<String>) -> Self {
        Self {
            param: Some(param),
            ..Self::bad_request(message)
        }
    }

    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
        }
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

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, axum::Json(self.body())).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        r
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

/// The most `top_logprobs` (chat) or `logprobs` (completions) a request may ask for.
pub const MAX_TOP_LOGPROBS: u64 = 20;

/// Fields shared by `/v1/chat/completions` and `/v1/completions`.
#[derive(Debug, Deserialize, Default)]
pub struct Common {
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

/// What a checked [`Common`] asks for.
#[derive(Debug, Clone)]
pub struct Plan {
    pub stream: bool,
    /// Report log-probabilities with this many most likely tokens per position.
    pub logprobs: Option<u32>,
    pub include_usage: bool,
    pub options: GenerateOptions,
}

impl Common {
    /// Check every field against what this server can do.
    /// `logprobs`/`top_logprobs` as the number of most likely tokens to
    /// report at each position (`None`: no log-probabilities). Chat:
    /// `logprobs: true` with `top_logprobs` 0..=20; completions: `logprobs` 0..=20.
    fn logprobs(&self, chat: bool) -> Result<Option<u32>, ApiError> {
        let top = |param: &'static str, v: &Value| -> Result<u32, ApiError> {
            v.as_u64()
                .filter(|&n| n <= MAX_TOP_LOGPROBS)
                .map(|n| n as u32)
                .ok_or_else(|| {
                    ApiError::bad_param(
                        param,
                        format!(
                            "{param} must be an integer from 0 to {MAX_TOP_LOGPROBS} (got {v})"
                        ),
                    )
                })
        };
        let top_logprobs = self.top_logprobs.as_ref().filter(|v| !v.is_null());
        if !chat {
            if let Some(v) = top_logprobs {
                return Err(ApiError::bad_param(
                    "top_logprobs",
                    format!("/v1/completions takes logprobs: N, not top_logprobs (got {v})"),
                ));
            }
            return match self.logprobs.as_ref().filter(|v| !v.is_null()) {
                None => Ok(None),
                Some(v) => top("logprobs", v).map(Some),
            };
        }
        let on = match &self.logprobs {
            None | Some(Value::Null) | Some(Value::Bool(false)) => false,
            Some(Value::Bool(true)) => true,
            Some(v) => {
                return Err(ApiError::bad_param(
                    "logprobs",
                    format!("logprobs must be a boolean (got {v})"),
                ))
            }
        };
        match (on, top_logprobs) {
            (false, None) => Ok(None),
            (false, Some(_)) => Err(ApiError::bad_param(
                "top_logprobs",
                "top_logprobs needs logprobs: true",
            )),
            (true, None) => Ok(Some(0)),
            (true, Some(v)) => top("top_logprobs", v).map(Some),
        }
    }

    /// Check every field against what this server can do (`chat`: the
    /// request is a chat completion, else a legacy completion).
    pub fn plan(&self, served: &str, chat: bool) -> Result<Plan, ApiError> {
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
        let logprobs = self.logprobs(chat)?;
        for (name, v) in [
            ("frequency_penalty", self.frequency_penalty),
            ("presence_penalty", self.presence_penalty),
        ] {
            if v.is_some_and(|v| v != 0.0) {
                return Err(ApiError::bad_param(
                    if name == "frequency_penalty" {
                        "frequency_penalty"
                    } else {
                        "presence_penalty"
                    },
                    format!("{name} is not supported (use repeat_penalty)"),
                ));
            }
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
            None => None,
            // llama-server's "-1: no limit".
            Some((_, -1)) => None,
            Some((name, n)) => {
                Some(u32::try_from(n).ok().filter(|&n| n >= 1).ok_or_else(|| {
                    ApiError::bad_param(
                        if name == "max_tokens" {
                            "max_tokens"
                        } else {
                            "max_completion_tokens"
                        },
                        format!("{name} must be at least 1 (got {n})"),
                    )
                })?)
            }
        };
        let mut s = Sampling::default();
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
            s.seed = u64::try_from(seed).unwrap_or_else(|_| random_seed());
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
            logprobs,
            include_usage: self
                .stream_options
                .as_ref()
                .is_some_and(|o| o.include_usage),
            options: GenerateOptions {
                // u32::MAX: up to the end of the context.
                max_tokens: max_tokens.unwrap_or(u32::MAX),
                sampling: s,
                ignore_eos: false,
                stop,
            },
        })
    }
}

fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

/// One chat message; `content` is a string, null, or a list of text parts.
#[derive(Debug, Deserialize)]
pub struct Message {
    pub role: String,
    #[serde(default)]
    pub content: Value,
}

#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    pub messages: Vec<Message>,
    #[serde(flatten)]
    pub common: Common,
}

impl ChatRequest {
    pub fn chat_messages(&self) -> Result<Vec<ChatMessage>, ApiError> {
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
                            format!("messages[{i}].content must be a string or a list of text parts"),
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

/// `prompt` of `/v1/completions`: a string, a list of one string, or token ids.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum PromptField {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
}

#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    pub prompt: PromptField,
    #[serde(default)]
    pub echo: bool,
    pub suffix: Option<String>,
    #[serde(flatten)]
    pub common: Common,
}

#[derive(Debug, Deserialize)]
pub struct TokenizeRequest {
    pub content: String,
    #[serde(default)]
    pub add_special: bool,
    #[serde(default = "yes")]
    pub parse_special: bool,
    #[serde(default)]
    pub with_pieces: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
pub struct DetokenizeRequest {
    pub tokens: Vec<u32>,
}
