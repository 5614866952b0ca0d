//! An OpenAI-compatible `wasi:http` front for the kernel, run by the stock
//! `wasmtime serve`.
//!
//! Built for wasm32-wasip2, this component exports
//! `wasi:http/incoming-handler` (the `wasi:http/proxy` world) and imports
//! `wasm-chord:runtime/inference` (the front world of `wit/worlds.wit`, the
//! one the CLI uses). `cargo xtask build` composes it with the kernel and the
//! wasi:filesystem layer store (`guest/fs-store`) into `wasm-chord-http.wasm`,
//! which imports only WASI:
//!
//! ```text
//! wasmtime serve -S cli --dir MODELS --env WASM_CHORD_MODEL=MODELS/model.gguf wasm-chord-http.wasm
//! ```
//!
//! It answers `POST /v1/chat/completions` (non-streamed, or server-sent
//! events with `"stream": true`) and `GET /v1/models`, with the request
//! checks and error shapes of the native `wasm-chord serve`.
//!
//! Configuration comes from the environment (`--env` of `wasmtime serve`):
//! `WASM_CHORD_MODEL` (the model path, inside a preopened directory),
//! `WASM_CHORD_ALIAS` (the model's id in the API; default: the file name
//! without `.gguf`), `WASM_CHORD_CTX_SIZE` (context size; default: the
//! kernel's) and `WASM_CHORD_API_KEY` (require `Authorization: Bearer KEY`).
//!
//! `wasmtime serve` makes a fresh instance for each request unless it is
//! told to reuse them (`--max-instance-reuse-count`). The loaded model lives
//! in this instance's state, so a reused instance loads it once; every
//! response says what the request cost in headers:
//! `x-wasm-chord-model-load-ms` (the kernel's `model.load` in this request,
//! 0 when the instance had the model; a model that fits is made resident
//! there, every layer read), `x-wasm-chord-layer-load-ms` (what the kernel's
//! layer cache spent loading layers during the request: inside the model
//! load for a resident model, on every pass for a streamed one) and
//! `x-wasm-chord-instance-requests` (requests this instance has served).

mod api;

use std::cell::{Cell, RefCell};
use std::io::{Read, Write};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use wasip2::http::types::{
    Fields, IncomingRequest, Method, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

use api::{finish_reason, parse_body, usage, ApiError, ChatRequest, Plan};

wit_bindgen::generate!({ world: "cli", path: "../../wit" });

use wasm_chord::runtime::inference::{
    CachePolicy, Error as KernelError, Generation, KvCacheType, LoadOptions, Model, Residency,
    Session,
};
use wasm_chord::runtime::layer_store::StoreError;

/// Largest request body read (a chat of a few thousand tokens is far smaller).
const MAX_BODY: usize = 16 << 20;

struct Front;

wasip2::http::proxy::export!(Front);

/// The server's settings, from the environment.
struct Config {
    model: String,
    id: String,
    ctx_size: u32,
    api_key: Option<String>,
}

impl Config {
    fn from_env() -> Result<Self, ApiError> {
        let model = std::env::var("WASM_CHORD_MODEL").map_err(|_| {
            ApiError::server(
                "WASM_CHORD_MODEL is not set: give the model's path with `wasmtime serve --env WASM_CHORD_MODEL=PATH` (in a --dir)",
            )
        })?;
        let id = match std::env::var("WASM_CHORD_ALIAS") {
            Ok(a) if !a.is_empty() => a,
            _ => {
                let name = model.rsplit('/').next().unwrap_or(&model);
                name.strip_suffix(".gguf").unwrap_or(name).to_string()
            }
        };
        let ctx_size = match std::env::var("WASM_CHORD_CTX_SIZE") {
            Ok(v) => v.parse().map_err(|_| {
                ApiError::server(format!(
                    "WASM_CHORD_CTX_SIZE is not a number of tokens: '{v}'"
                ))
            })?,
            Err(_) => 0,
        };
        let api_key = std::env::var("WASM_CHORD_API_KEY")
            .ok()
            .filter(|k| !k.is_empty());
        Ok(Self {
            model,
            id,
            ctx_size,
            api_key,
        })
    }
}

/// The model loaded in this instance, and one KV cache.
struct Served {
    model: Model,
    session: Session,
    n_ctx: u32,
}

thread_local! {
    /// Kept while `wasmtime serve` reuses this instance.
    static SERVED: RefCell<Option<Served>> = const { RefCell::new(None) };
    static REQUESTS: Cell<u64> = const { Cell::new(0) };
}

/// What one request cost, reported in response headers.
#[derive(Default)]
struct Cost {
    /// Loading the model (the GGUF header, the vocabulary and, for a
    /// resident model, every layer), when this request did.
    load_ms: f64,
    /// The kernel's layer-cache load time before this request.
    layer_nanos_before: u64,
}

/// Nanoseconds the loaded model's layer cache has spent loading layers (0:
/// no model loaded yet).
fn layer_load_nanos() -> u64 {
    SERVED.with(|cell| {
        cell.borrow()
            .as_ref()
            .map_or(0, |s| s.model.cache_stats().load_nanos)
    })
}

/// Load the model unless this instance has; run `f` with it.
fn with_model<T>(
    config: &Config,
    cost: &mut Cost,
    f: impl FnOnce(&Served) -> Result<T, ApiError>,
) -> Result<T, ApiError> {
    SERVED.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            let t = Instant::now();
            let model = Model::load(&LoadOptions {
                model: config.model.clone(),
                residency: Residency::Auto,
                max_memory: 0,
                cache_layers: 0,
                cache_policy: CachePolicy::Pinned,
                kv_cache: KvCacheType::F16,
            })
            .map_err(|e| {
                ApiError::server(format!(
                    "cannot load the model '{}': {}",
                    config.model,
                    kernel_message(&e)
                ))
            })?;
            let session = model
                .new_session(config.ctx_size)
                .map_err(|e| ApiError::server(kernel_message(&e)))?;
            let n_ctx = session.n_ctx();
            cost.load_ms = t.elapsed().as_secs_f64() * 1e3;
            *slot = Some(Served {
                model,
                session,
                n_ctx,
            });
        }
        f(slot.as_ref().expect("loaded above"))
    })
}

fn kernel_message(e: &KernelError) -> String {
    match e {
        KernelError::InvalidModel(m) => format!("invalid model: {m}"),
        KernelError::Unsupported(m) => format!("unsupported: {m}"),
        KernelError::Store(StoreError::NotFound(m)) => m.clone(),
        KernelError::Store(StoreError::OutOfRange(m)) => format!("layer store: out of range: {m}"),
        KernelError::Store(StoreError::Io(m)) => format!("layer store: I/O error: {m}"),
        KernelError::Store(StoreError::TooLarge(n)) => {
            format!("layer store: request of {n} bytes is too large")
        }
        KernelError::ContextFull(m) => format!("context full: {m}"),
        KernelError::InvalidInput(m) => format!("invalid input: {m}"),
        KernelError::OutOfMemory(m) => format!("out of memory: {m}"),
    }
}

/// Bad input is a 400; anything else the kernel says is a 500.
fn kernel_error(e: KernelError) -> ApiError {
    match &e {
        KernelError::InvalidInput(_) => ApiError::bad_request(kernel_message(&e)),
        KernelError::ContextFull(_) => {
            ApiError::bad_request(kernel_message(&e)).with_code("context_length_exceeded")
        }
        _ => ApiError::server(kernel_message(&e)),
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl wasip2::exports::http::incoming_handler::Guest for Front {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let n = REQUESTS.with(|r| {
            r.set(r.get() + 1);
            r.get()
        });
        let mut cost = Cost {
            layer_nanos_before: layer_load_nanos(),
            ..Cost::default()
        };
        let reply = route(&request, &mut cost);
        // Layers load in the model load (resident) or in the prompt's pass
        // (streamed), both before any response (streamed or not) is sent.
        let layer_ms = layer_load_nanos().saturating_sub(cost.layer_nanos_before) as f64 / 1e6;
        let headers = |content_type: &str| {
            let mut h: Vec<(String, Vec<u8>)> = vec![
                ("content-type".into(), content_type.as_bytes().to_vec()),
                (
                    "x-wasm-chord-model-load-ms".into(),
                    format!("{:.1}", cost.load_ms).into_bytes(),
                ),
                (
                    "x-wasm-chord-layer-load-ms".into(),
                    format!("{layer_ms:.1}").into_bytes(),
                ),
                (
                    "x-wasm-chord-instance-requests".into(),
                    n.to_string().into_bytes(),
                ),
            ];
            if content_type == "text/event-stream" {
                h.push(("cache-control".into(), b"no-cache".to_vec()));
            }
            h
        };
        match reply {
            Reply::Json(status, body) => {
                let bytes = serde_json::to_vec(&body).expect("JSON values serialize");
                send(out, status, headers("application/json"), &bytes);
            }
            Reply::Error(e) => {
                let bytes = serde_json::to_vec(&e.body()).expect("JSON values serialize");
                send(out, e.status, headers("application/json"), &bytes);
            }
            Reply::Stream(s) => s.run(out, headers("text/event-stream")),
        }
    }
}

/// A response: whole, or a stream of server-sent events.
enum Reply {
    Json(u16, Value),
    Error(ApiError),
    Stream(Box<Streamed>),
}

impl From<Result<Reply, ApiError>> for Reply {
    fn from(r: Result<Reply, ApiError>) -> Self {
        r.unwrap_or_else(Reply::Error)
    }
}

fn route(request: &IncomingRequest, cost: &mut Cost) -> Reply {
    let path_query = request.path_with_query().unwrap_or_default();
    let path = path_query.split('?').next().unwrap_or("");
    let method = request.method();
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => return Reply::Error(e),
    };
    if let Some(key) = &config.api_key {
        let given = request.headers().get("authorization");
        let ok = given.iter().any(|v| {
            std::str::from_utf8(v)
                .ok()
                .and_then(|v| v.strip_prefix("Bearer "))
                .is_some_and(|v| v.trim() == key)
        });
        if !ok {
            return Reply::Error(
                ApiError::new(
                    401,
                    "invalid_request_error",
                    "a valid API key is required: send 'Authorization: Bearer KEY'",
                )
                .with_code("invalid_api_key"),
            );
        }
    }
    match (path, method) {
        ("/v1/models", Method::Get) => Reply::Json(
            200,
            json!({
                "object": "list",
                "data": [{
                    "id": config.id,
                    "object": "model",
                    "created": unix_now(),
                    "owned_by": "wasm-chord",
                }],
            }),
        ),
        ("/v1/chat/completions", Method::Post) => chat(request, &config, cost).into(),
        ("/v1/models", m) | ("/v1/chat/completions", m) => Reply::Error(
            ApiError::new(
                405,
                "invalid_request_error",
                format!("{} is not allowed on {path}", method_name(&m)),
            )
            .with_code("method_not_allowed"),
        ),
        (_, m) => Reply::Error(
            ApiError::new(
                404,
                "invalid_request_error",
                format!("no endpoint {} {path}", method_name(&m)),
            )
            .with_code("not_found"),
        ),
    }
}

fn method_name(m: &Method) -> String {
    match m {
        Method::Get => "GET".into(),
        Method::Head => "HEAD".into(),
        Method::Post => "POST".into(),
        Method::Put => "PUT".into(),
        Method::Delete => "DELETE".into(),
        Method::Connect => "CONNECT".into(),
        Method::Options => "OPTIONS".into(),
        Method::Trace => "TRACE".into(),
        Method::Patch => "PATCH".into(),
        Method::Other(s) => s.clone(),
    }
}

/// The request body, at most [`MAX_BODY`] bytes.
fn read_body(request: &IncomingRequest) -> Result<Vec<u8>, ApiError> {
    let body = request
        .consume()
        .map_err(|()| ApiError::server("the request body was already taken"))?;
    let mut bytes = Vec::new();
    {
        let stream = body
            .stream()
            .map_err(|()| ApiError::server("the request body has no stream"))?;
        let mut limited = stream.take(MAX_BODY as u64 + 1);
        limited
            .read_to_end(&mut bytes)
            .map_err(|e| ApiError::bad_request(format!("cannot read the request body: {e}")))?;
    }
    drop(body);
    if bytes.len() > MAX_BODY {
        return Err(ApiError::new(
            413,
            "invalid_request_error",
            format!("the request body is larger than {MAX_BODY} bytes"),
        ));
    }
    Ok(bytes)
}

fn random_id() -> u64 {
    wasip2::random::random::get_random_u64()
}

fn chat(request: &IncomingRequest, config: &Config, cost: &mut Cost) -> Result<Reply, ApiError> {
    let body = read_body(request)?;
    let req: ChatRequest = parse_body(&body)?;
    let plan = api::plan(&req, &config.id, random_id)?;
    let generation = with_model(config, cost, |s| start(s, &plan))?;
    let reply = Streamed {
        id: format!("chatcmpl-{:016x}", random_id()),
        created: unix_now(),
        model_id: config.id.clone(),
        include_usage: plan.include_usage,
        generation,
    };
    if plan.stream {
        return Ok(Reply::Stream(Box::new(reply)));
    }
    let mut content = String::new();
    let mut completion = 0u32;
    while let Some(piece) = reply.generation.next().map_err(kernel_error)? {
        completion += 1;
        content.push_str(&piece.text);
    }
    let reason = reply.generation.stop_reason().unwrap_or_default();
    Ok(Reply::Json(
        200,
        json!({
            "id": reply.id,
            "object": "chat.completion",
            "created": reply.created,
            "model": reply.model_id,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "logprobs": null,
                "finish_reason": finish_reason(&reason),
            }],
            "usage": usage(reply.generation.prompt_tokens(), completion),
        }),
    ))
}

/// Render and tokenize the conversation exactly as `wasm-chord run
/// --messages` does, check that it fits, and start generating on an empty
/// KV cache (the prompt is evaluated here, before any response is sent).
fn start(s: &Served, plan: &Plan) -> Result<Generation, ApiError> {
    let text = s
        .model
        .apply_chat_template(&plan.messages, true)
        .map_err(kernel_error)?;
    let tokens = s.model.tokenize(&text, true, true).map_err(kernel_error)?;
    if tokens.is_empty() {
        return Err(ApiError::bad_param("messages", "the prompt is empty"));
    }
    let n = u32::try_from(tokens.len()).unwrap_or(u32::MAX);
    if n >= s.n_ctx {
        return Err(ApiError::bad_request(format!(
            "the prompt is {n} tokens; the context holds {} (at least one must be left to generate; set a larger WASM_CHORD_CTX_SIZE)",
            s.n_ctx
        ))
        .with_code("context_length_exceeded"));
    }
    s.session.reset();
    let mut options = plan.options.clone();
    options.max_tokens = options.max_tokens.min(s.n_ctx - n);
    s.session.generate(&tokens, &options).map_err(kernel_error)
}

/// A started generation and what its chunks say.
struct Streamed {
    id: String,
    created: u64,
    model_id: String,
    include_usage: bool,
    generation: Generation,
}

impl Streamed {
    fn chunk(&self, choices: Value, usage: Option<Value>) -> Vec<u8> {
        let mut v = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model_id,
            "choices": choices,
        });
        if let Some(u) = usage {
            v["usage"] = u;
        }
        format!("data: {v}\n\n").into_bytes()
    }

    /// Send the head, then one event per piece, the finish, the usage if
    /// asked, and `data: [DONE]`. A client that goes away stops the generation.
    fn run(self, out: ResponseOutparam, headers: Vec<(String, Vec<u8>)>) {
        let body = head(out, 200, headers);
        let Ok(mut stream) = body.write() else {
            return;
        };
        let mut write = |bytes: &[u8]| {
            stream
                .write_all(bytes)
                .and_then(|()| Write::flush(&mut stream))
        };
        let role = json!([{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}]);
        if write(&self.chunk(role, None)).is_err() {
            return;
        }
        let mut completion = 0u32;
        loop {
            match self.generation.next() {
                Ok(Some(piece)) => {
                    completion += 1;
                    if piece.text.is_empty() {
                        continue;
                    }
                    let c = json!([{"index": 0, "delta": {"content": piece.text}, "logprobs": null, "finish_reason": null}]);
                    if write(&self.chunk(c, None)).is_err() {
                        // The client went away.
                        return;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    let _ = write(format!("data: {}\n\n", kernel_error(e).body()).as_bytes());
                    drop(stream);
                    let _ = OutgoingBody::finish(body, None);
                    return;
                }
            }
        }
        let reason = self.generation.stop_reason().unwrap_or_default();
        let fin = json!([{"index": 0, "delta": {}, "logprobs": null, "finish_reason": finish_reason(&reason)}]);
        let mut tail = self.chunk(fin, None);
        if self.include_usage {
            let u = usage(self.generation.prompt_tokens(), completion);
            tail.extend(self.chunk(json!([]), Some(u)));
        }
        tail.extend_from_slice(b"data: [DONE]\n\n");
        if write(&tail).is_ok() {
            drop(stream);
            let _ = OutgoingBody::finish(body, None);
        }
    }
}

/// Set the response's status and headers; returns its body to write.
fn head(out: ResponseOutparam, status: u16, headers: Vec<(String, Vec<u8>)>) -> OutgoingBody {
    // Our own header names and values: always valid.
    let fields = Fields::from_list(&headers).unwrap_or_else(|_| Fields::new());
    let response = OutgoingResponse::new(fields);
    // Our own status codes: always valid.
    let _ = response.set_status_code(status);
    let body = response
        .body()
        .expect("a new response's body is taken once");
    ResponseOutparam::set(out, Ok(response));
    body
}

/// A whole response.
fn send(out: ResponseOutparam, status: u16, headers: Vec<(String, Vec<u8>)>, bytes: &[u8]) {
    let body = head(out, status, headers);
    if let Ok(mut stream) = body.write() {
        // The client may be gone; nothing to tell it then.
        let ok = stream
            .write_all(bytes)
            .and_then(|()| Write::flush(&mut stream))
            .is_ok();
        drop(stream);
        if ok {
            let _ = OutgoingBody::finish(body, None);
        }
    }
}
