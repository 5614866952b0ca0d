//! OpenAI's request and error shapes, and their checks: one set of rules for
//! the native `wasm-chord serve` (host/src/serve) and the `wasmtime serve`
//! component (guest/http). Plain Rust with serde only, so it builds natively
//! and for wasm32; each side converts a checked [`Plan`] into its own
//! bindings' types.

use serde::Deserialize;
use serde_json::{json, Value};

/// An error answered in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// The HTTP status.
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

/// Sampling as a checked request asks for it: llama.cpp's defaults (those of
/// `wasm-chord run`) where the request is silent.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    pub temperature: f32,
    pub top_k: u32,
    pub top_p: f32,
    pub min_p: f32,
    pub repeat_penalty: f32,
    pub repeat_last_n: u32,
    pub seed: u64,
}

impl Default for SamplingParams {
    /// Temperature 0.8, top-k 40, top-p 0.95, min-p 0.05, no repetition
    /// penalty (over the last 64 tokens when set), seed 0.
    fn default() -> Self {
        Self {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            seed: 0,
        }
    }
}

/// What a checked [`Common`] asks for.
#[derive(Debug, Clone)]
pub struct Plan {
    pub stream: bool,
    /// Report log-probabilities with this many most likely tokens per position.
    pub logprobs: Option<u32>,
    pub include_usage: bool,
    /// `u32::MAX`: up to the end of the context.
    pub max_tokens: u32,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
}

impl Common {
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

    /// Check every field against what the server can do. `served` is the
    /// model's id, `chat` says the request is a chat completion (else a
    /// legacy completion), and `random` gives the seed for a negative `seed`
    /// (llama-server's "-1: random").
    pub fn plan(
        &self,
        served: &str,
        chat: bool,
        random: impl FnOnce() -> u64,
    ) -> Result<Plan, ApiError> {
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
                    name,
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
            // llama-server's "-1: no limit".
            None | Some((_, -1)) => u32::MAX,
            Some((name, n)) => u32::try_from(n).ok().filter(|&n| n >= 1).ok_or_else(|| {
                ApiError::bad_param(name, format!("{name} must be at least 1 (got {n})"))
            })?,
        };
        let mut s = SamplingParams::default();
        if let Some(t) = self.temperature {
            if !t.is_finite() || !(0.0..=2.0).contains(&t) {
                return Err(ApiError::bad_param(
                    "temperature",
                    format!("temperature must be between 0 and 2 (got {t})"),
                ));
            }
            s.temperature = t as f32;
        }
        for (name, v, field) in [
            ("top_p", self.top_p, &mut s.top_p),
            ("min_p", self.min_p, &mut s.min_p),
        ] {
            if let Some(p) = v {
                if !(0.0..=1.0).contains(&p) {
                    return Err(ApiError::bad_param(
                        name,
                        format!("{name} must be between 0 and 1 (got {p})"),
                    ));
                }
                *field = p as f32;
            }
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
            logprobs,
            include_usage: self
                .stream_options
                .as_ref()
                .is_some_and(|o| o.include_usage),
            max_tokens,
            sampling: s,
            stop,
        })
    }
}

/// One chat message of a request; `content` is a string, null, or a list of text parts.
#[derive(Debug, Deserialize)]
pub struct Message {
    pub role: String,
    #[serde(default)]
    pub content: Value,
}

/// A chat message with its text: what the chat template renders.
#[derive(Debug, Clone, PartialEq)]
pub struct TextMessage {
    pub role: String,
    pub content: String,
}

/// The body of `POST /v1/chat/completions`.
#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    pub messages: Vec<Message>,
    #[serde(flatten)]
    pub common: Common,
}

impl ChatRequest {
    /// The messages with their text (text parts joined); at least one.
    pub fn text_messages(&self) -> Result<Vec<TextMessage>, ApiError> {
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
                Ok(TextMessage {
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

/// The body of `POST /v1/completions`.
#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    pub prompt: PromptField,
    #[serde(default)]
    pub echo: bool,
    pub suffix: Option<String>,
    #[serde(flatten)]
    pub common: Common,
}

/// llama-server's `POST /tokenize`.
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

/// llama-server's `POST /detokenize`.
#[derive(Debug, Deserialize)]
pub struct DetokenizeRequest {
    pub tokens: Vec<u32>,
}

/// OpenAI's `finish_reason` for the kernel's stop reason.
pub fn finish_reason(stop_reason: &str) -> &'static str {
    match stop_reason {
        "length" | "context" => "length",
        _ => "stop",
    }
}

/// OpenAI's `usage` object.
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

    fn chat(body: &str) -> Result<(Plan, Vec<TextMessage>), ApiError> {
        let req = parse_body::<ChatRequest>(body.as_bytes())?;
        Ok((req.common.plan("smol", true, || 7)?, req.text_messages()?))
    }

    fn completion(body: &str) -> Result<Plan, ApiError> {
        parse_body::<CompletionRequest>(body.as_bytes())?
            .common
            .plan("smol", false, || 7)
    }

    #[test]
    fn malformed_json_is_a_400() {
        let e = chat("{\"messages\": [").unwrap_err();
        assert_eq!(e.status, 400);
        assert!(e.message.starts_with("the body is not valid JSON"), "{e:?}");
        let e = chat("{\"messages\": 3}").unwrap_err();
        assert!(
            e.message.starts_with("the body does not fit this endpoint"),
            "{e:?}"
        );
        assert_eq!(e.body()["error"]["type"], "invalid_request_error");
    }

    #[test]
    fn checks_fields() {
        let m = r#""messages": [{"role": "user", "content": "hi"}]"#;
        let param = |body: String| chat(&body).unwrap_err().param;
        let e = chat(&format!("{{{m}, \"model\": \"other\"}}")).unwrap_err();
        assert_eq!((e.param, e.code), (Some("model"), Some("model_not_found")));
        assert_eq!(
            param(format!("{{{m}, \"temperature\": 3}}")),
            Some("temperature")
        );
        assert_eq!(
            param(format!("{{{m}, \"max_tokens\": 0}}")),
            Some("max_tokens")
        );
        assert_eq!(
            param(format!("{{{m}, \"max_completion_tokens\": -2}}")),
            Some("max_completion_tokens")
        );
        assert_eq!(param(format!("{{{m}, \"top_p\": 1.5}}")), Some("top_p"));
        assert_eq!(param(format!("{{{m}, \"min_p\": -0.1}}")), Some("min_p"));
        assert_eq!(param(format!("{{{m}, \"top_k\": -1}}")), Some("top_k"));
        assert_eq!(
            param(format!("{{{m}, \"repeat_penalty\": 0}}")),
            Some("repeat_penalty")
        );
        assert_eq!(
            param(format!("{{{m}, \"presence_penalty\": 1}}")),
            Some("presence_penalty")
        );
        assert_eq!(param(format!("{{{m}, \"n\": 2}}")), Some("n"));
        assert_eq!(param(format!("{{{m}, \"stop\": [\"\"]}}")), Some("stop"));
        assert_eq!(param(r#"{"messages": []}"#.into()), Some("messages"));
        assert_eq!(
            param(r#"{"messages": [{"role": "user", "content": 5}]}"#.into()),
            Some("messages")
        );
        let (p, msgs) = chat(&format!(
            "{{{m}, \"model\": \"smol\", \"temperature\": 0, \"max_tokens\": 3, \"seed\": -1, \"stop\": \"x\"}}"
        ))
        .unwrap();
        assert_eq!(p.max_tokens, 3);
        assert_eq!(p.sampling.temperature, 0.0);
        assert_eq!(p.sampling.seed, 7);
        assert_eq!(p.stop, vec!["x".to_string()]);
        assert_eq!(msgs[0].content, "hi");
        let (p, msgs) = chat(
            r#"{"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]}"#,
        )
        .unwrap();
        assert_eq!(msgs[0].content, "ab");
        assert_eq!(p.max_tokens, u32::MAX);
        assert_eq!(p.sampling, SamplingParams::default());
    }

    #[test]
    fn logprobs_per_endpoint() {
        let m = r#""messages": [{"role": "user", "content": "hi"}]"#;
        let lp = |body: String| chat(&body).map(|(p, _)| p.logprobs);
        assert_eq!(lp(format!("{{{m}}}")).unwrap(), None);
        assert_eq!(lp(format!("{{{m}, \"logprobs\": true}}")).unwrap(), Some(0));
        assert_eq!(
            lp(format!("{{{m}, \"logprobs\": true, \"top_logprobs\": 5}}")).unwrap(),
            Some(5)
        );
        for bad in [
            "\"logprobs\": 3",
            "\"top_logprobs\": 2",
            "\"logprobs\": true, \"top_logprobs\": 21",
        ] {
            assert!(lp(format!("{{{m}, {bad}}}")).is_err(), "{bad}");
        }
        assert_eq!(
            completion(r#"{"prompt": "a", "logprobs": 4}"#)
                .unwrap()
                .logprobs,
            Some(4)
        );
        let e = completion(r#"{"prompt": "a", "top_logprobs": 4}"#).unwrap_err();
        assert_eq!(e.param, Some("top_logprobs"));
    }
}
