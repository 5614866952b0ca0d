//! `wasm-chord serve`: an OpenAI-compatible HTTP server on a pool of kernel
//! instances (issue 18).
//!
//! Each instance is a [`crate::Runtime`] (one wasmtime store) on its own
//! thread with the model loaded and one KV cache; requests wait in a bounded
//! queue (a full queue answers 503 with `Retry-After`) and have a deadline.

mod api;
mod pool;

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use clap::Parser;
use serde_json::{json, Value};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use crate::{
    Kernel, KernelOptions, KvCacheType, LoadOptions, PieceLogprobs, Residency, TokenLogprob,
};
use api::{
    parse_body, usage, ApiError, ChatRequest, CompletionRequest, Plan, PromptField, Respond,
};
use pool::{Event, Job, Pool, Prompt, Work};

/// `--kv-cache`'s values.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum KvCacheArg {
    F16,
    F32,
}

/// `wasm-chord serve`'s command line.
#[derive(Debug, Parser)]
#[command(
    name = "wasm-chord serve",
    about = "Serve a model over an OpenAI-compatible HTTP API.",
    long_about = "Serve a model over an OpenAI-compatible HTTP API: POST /v1/chat/completions \
(the model's chat template; \"stream\": true for server-sent events), POST /v1/completions, \
GET /v1/models, GET /health, GET /metrics (Prometheus text), POST /tokenize, POST /detokenize.\n\n\
Every request runs in one of --parallel kernel instances (a wasmtime store each, on its own \
thread, each with its own KV cache and layer cache). Requests wait in a queue of --queue; past \
it the server answers 503 with Retry-After. The launcher's --max-guest-memory caps each \
instance's memory."
)]
pub struct ServeArgs {
    /// The GGUF model file to serve.
    #[arg(short = 'm', long, value_name = "MODEL")]
    pub model: PathBuf,
    /// Address to listen on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1")]
    pub host: String,
    /// TCP port (0: a free port). The address is printed once the model is loaded.
    #[arg(long, value_name = "PORT", default_value_t = 8080)]
    pub port: u16,
    /// Kernel instances generating at the same time (each holds its own KV cache
    /// and layer cache: see the README for the memory per instance).
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=256))]
    pub parallel: u32,
    /// Context size of each instance in tokens (0: the kernel's default, 4096
    /// capped at the model's training context). A longer prompt is a 400.
    #[arg(short = 'c', long = "ctx-size", value_name = "N", default_value_t = 0)]
    pub ctx_size: u32,
    /// Requests that may wait for a free instance; more get 503 with Retry-After.
    #[arg(long, value_name = "N", default_value_t = 32)]
    pub queue: u32,
    /// Seconds a request may take, waiting in the queue included; past it,
    /// generation stops and the request gets 504.
    #[arg(long, value_name = "SECONDS", default_value_t = 600,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout: u64,
    /// Require `Authorization: Bearer KEY` on every endpoint except /health.
    #[arg(long, value_name = "KEY")]
    pub api_key: Option<String>,
    /// Stream the layer weights through a bounded layer cache in each instance
    /// (instances then share the host's memory map of the file) instead of the
    /// default: resident when they fit (each instance holds its own copy).
    #[arg(long)]
    pub stream: bool,
    /// Layers each streamed cache keeps (0: as many as the memory budget allows).
    #[arg(long, value_name = "N", default_value_t = 0, requires = "stream")]
    pub cache_layers: u32,
    /// What each instance's KV cache stores: f16 (2 bytes per value,
    /// llama.cpp's default and its attention arithmetic) or f32 (4 bytes per
    /// value: attention in f32, faster in long contexts, twice the memory).
    #[arg(long, value_enum, value_name = "TYPE", default_value_t = KvCacheArg::F16)]
    pub kv_cache: KvCacheArg,
    /// The model's name in the API (default: the file name without `.gguf`).
    #[arg(long, value_name = "NAME")]
    pub alias: Option<String>,
    /// The kernel component (default: $WASM_CHORD_KERNEL, else
    /// wasm-chord-kernel.wasm next to the executable).
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,
}

struct App {
    pool: Pool,
    model_id: String,
    api_key: Option<String>,
    timeout: Duration,
    created: u64,
    next_id: AtomicU64,
    requests: AtomicU64,
}

/// Run `wasm-chord serve ARGS` (`args` without "serve"); returns the exit code.
pub fn main(args: &[String], max_guest_memory: Option<u64>) -> i32 {
    let argv = std::iter::once("wasm-chord serve".to_string()).chain(args.iter().cloned());
    let a = match ServeArgs::try_parse_from(argv) {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    match serve(a, max_guest_memory) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {}", e.replace('\n', " "));
            1
        }
    }
}

fn serve(a: ServeArgs, max_guest_memory: Option<u64>) -> Result<(), String> {
    // A URL is checked by the HTTP store when the instances load it.
    let url = a.model.to_str().is_some_and(crate::store::is_url);
    if !url && !a.model.is_file() {
        return Err(format!(
            "cannot open model '{}': not a regular file",
            a.model.display()
        ));
    }
    let model_id = a.alias.clone().unwrap_or_else(|| {
        let name = a
            .model
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        name.strip_suffix(".gguf").unwrap_or(&name).to_string()
    });
    // Bind first: a taken port fails before the (slow) model load.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    let addr = format!("{}:{}", a.host, a.port);
    let listener = rt
        .block_on(tokio::net::TcpListener::bind(&addr))
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let local = listener
        .local_addr()
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let kernel = Kernel::from_file(
        crate::kernel::locate_kernel(a.kernel.as_deref())?,
        &KernelOptions {
            max_guest_memory,
            ..KernelOptions::default()
        },
    )
    .map_err(|e| e.to_string())?;
    let started = Instant::now();
    let mut load = LoadOptions::new(a.model.to_string_lossy().into_owned());
    load.kv_cache = match a.kv_cache {
        KvCacheArg::F16 => KvCacheType::F16,
        KvCacheArg::F32 => KvCacheType::F32,
    };
    if a.stream {
        load.residency = Residency::Streaming;
        load.cache_layers = a.cache_layers;
    }
    let pool = Pool::start(
        kernel,
        load,
        a.parallel as usize,
        a.queue as usize,
        a.ctx_size,
    )
    .map_err(|e| e.to_string())?;
    eprintln!(
        "wasm-chord serve: '{}' in {} instance(s) of {} tokens of context, loaded in {:.1} s",
        model_id,
        pool.parallel,
        pool.n_ctx,
        started.elapsed().as_secs_f64()
    );
    let app = Arc::new(App {
        pool,
        model_id,
        api_key: a.api_key.clone(),
        timeout: Duration::from_secs(a.timeout),
        created: unix_now(),
        next_id: AtomicU64::new(1),
        requests: AtomicU64::new(0),
    });
    let router = router(app);
    // Tests and scripts read this line to find the port.
    println!("listening on http://{local}");
    use std::io::Write;
    let _ = std::io::stdout().flush();
    rt.block_on(async move { axum::serve(listener, router).await })
        .map_err(|e| format!("server error: {e}"))
}

fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(models))
        .route("/tokenize", post(tokenize))
        .route("/detokenize", post(detokenize))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(Arc::clone(&app), auth))
        // /health answers without the key (load balancers' readiness probes).
        .route("/health", get(health))
        .with_state(app)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

async fn auth(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    if let Some(key) = &app.api_key {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        if given != Some(key.as_str()) {
            return ApiError::new(
                StatusCode::UNAUTHORIZED.as_u16(),
                "invalid_request_error",
                "a valid API key is required: send 'Authorization: Bearer KEY'",
            )
            .with_code("invalid_api_key")
            .into_response();
        }
    }
    next.run(req).await
}

async fn not_found(req: Request) -> Response {
    ApiError::new(
        StatusCode::NOT_FOUND.as_u16(),
        "invalid_request_error",
        format!("no endpoint {} {}", req.method(), req.uri().path()),
    )
    .with_code("not_found")
    .into_response()
}

async fn health(State(app): State<Arc<App>>) -> Json<Value> {
    let c = &app.pool.counters;
    Json(json!({
        "status": "ok",
        "instances": app.pool.parallel,
        "busy": c.busy.load(Ordering::SeqCst),
        "queued": c.queued.load(Ordering::SeqCst),
        "n_ctx": app.pool.n_ctx,
        "guest_memory_bytes": c.guest_memory.iter().map(|m| m.load(Ordering::Relaxed)).collect::<Vec<_>>(),
    }))
}

async fn models(State(app): State<Arc<App>>) -> Json<Value> {
    Json(json!({
        "object": "list",
        "data": [{
            "id": app.model_id,
            "object": "model",
            "created": app.created,
            "owned_by": "wasm-chord",
            "meta": {"n_ctx": app.pool.n_ctx},
        }],
    }))
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    let c = &app.pool.counters;
    let mut s = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, v: u64| {
        s.push_str(&format!(
            "# HELP wasm_chord_{name} {help}\n# TYPE wasm_chord_{name} {kind}\nwasm_chord_{name} {v}\n"
        ));
    };
    metric(
        "requests_total",
        "counter",
        "Generation, tokenize and detokenize requests accepted into the queue.",
        app.requests.load(Ordering::Relaxed),
    );
    metric(
        "requests_rejected_total",
        "counter",
        "Requests answered 503 because the queue was full.",
        c.rejected.load(Ordering::Relaxed),
    );
    metric(
        "prompt_tokens_total",
        "counter",
        "Prompt tokens evaluated.",
        c.prompt_tokens.load(Ordering::Relaxed),
    );
    metric(
        "completion_tokens_total",
        "counter",
        "Tokens generated.",
        c.completion_tokens.load(Ordering::Relaxed),
    );
    metric(
        "kernel_traps_total",
        "counter",
        "Kernel traps (each replaced its instance).",
        c.traps.load(Ordering::Relaxed),
    );
    metric(
        "queue_depth",
        "gauge",
        "Requests waiting for an instance.",
        c.queued.load(Ordering::SeqCst) as u64,
    );
    metric(
        "instances_busy",
        "gauge",
        "Instances working on a request.",
        c.busy.load(Ordering::SeqCst) as u64,
    );
    metric(
        "guest_memory_bytes",
        "gauge",
        "Guest linear memory of all instances.",
        c.guest_memory
            .iter()
            .map(|m| m.load(Ordering::Relaxed))
            .sum(),
    );
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        )],
        s,
    )
        .into_response()
}

fn body_error(e: BytesRejection) -> ApiError {
    ApiError::new(e.status().as_u16(), "invalid_request_error", e.body_text())
}

impl App {
    /// Queue `work`; the receiver gets the instance's events.
    fn submit(&self, work: Work) -> Result<UnboundedReceiver<Event>, ApiError> {
        let (tx, rx) = unbounded_channel();
        self.pool.submit(Job {
            work,
            deadline: Instant::now() + self.timeout,
            reply: tx,
        })?;
        self.requests.fetch_add(1, Ordering::Relaxed);
        Ok(rx)
    }

    fn id(&self, prefix: &str) -> String {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        format!("{prefix}-{:x}{n:06x}", self.created)
    }
}

/// The instance went away without a word (cannot happen unless a thread died).
fn lost() -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR.as_u16(),
        "server_error",
        "the kernel instance stopped answering",
    )
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Chat,
    Text,
}

async fn chat(State(app): State<Arc<App>>, body: Result<Bytes, BytesRejection>) -> Response {
    let body = match body {
        Ok(b) => b,
        Err(e) => return body_error(e).into_response(),
    };
    let run = || -> Result<(Prompt, Plan), ApiError> {
        let req: ChatRequest = parse_body(&body)?;
        let plan = req.common.plan(&app.model_id, true, api::random_seed)?;
        Ok((Prompt::Messages(api::chat_messages(&req)?), plan))
    };
    match run() {
        Ok((prompt, plan)) => generate(app, Kind::Chat, prompt, plan).await,
        Err(e) => e.into_response(),
    }
}

async fn completions(State(app): State<Arc<App>>, body: Result<Bytes, BytesRejection>) -> Response {
    let body = match body {
        Ok(b) => b,
        Err(e) => return body_error(e).into_response(),
    };
    let run = || -> Result<(Prompt, Plan), ApiError> {
        let req: CompletionRequest = parse_body(&body)?;
        let plan = req.common.plan(&app.model_id, false, api::random_seed)?;
        if req.echo {
            return Err(ApiError::bad_param("echo", "echo is not supported"));
        }
        if req.suffix.as_ref().is_some_and(|s| !s.is_empty()) {
            return Err(ApiError::bad_param("suffix", "suffix is not supported"));
        }
        let prompt = match req.prompt {
            PromptField::Text(t) => Prompt::Text(t),
            PromptField::Texts(mut v) if v.len() == 1 => Prompt::Text(v.remove(0)),
            PromptField::Texts(v) => {
                return Err(ApiError::bad_param(
                    "prompt",
                    format!("prompt must be one string (got a list of {})", v.len()),
                ))
            }
            PromptField::Tokens(t) => Prompt::Tokens(t),
        };
        Ok((prompt, plan))
    };
    match run() {
        Ok((prompt, plan)) => generate(app, Kind::Text, prompt, plan).await,
        Err(e) => e.into_response(),
    }
}

async fn generate(app: Arc<App>, kind: Kind, prompt: Prompt, plan: Plan) -> Response {
    let mut rx = match app.submit(Work::Generate {
        prompt,
        options: api::options(&plan),
        logprobs: plan.logprobs,
    }) {
        Ok(rx) => rx,
        Err(e) => return e.into_response(),
    };
    // Wait for the instance to accept the prompt, so that a bad prompt is a
    // plain error response even when streaming.
    match rx.recv().await {
        Some(Event::Started) => {}
        Some(Event::Error(e)) => return e.into_response(),
        _ => return lost().into_response(),
    }
    let id = app.id(if kind == Kind::Chat {
        "chatcmpl"
    } else {
        "cmpl"
    });
    let created = unix_now();
    if plan.stream {
        return stream(app, kind, id, created, plan, rx);
    }
    let mut text = String::new();
    let mut logprobs = plan.logprobs.map(|_| Logprobs::new(kind));
    loop {
        match rx.recv().await {
            Some(Event::Piece {
                text: t,
                logprobs: lp,
            }) => {
                text.push_str(&t);
                if let (Some(all), Some(lp)) = (logprobs.as_mut(), lp) {
                    all.push(lp);
                }
            }
            Some(Event::Done {
                prompt_tokens,
                completion_tokens,
                finish_reason,
            }) => {
                let choice = if kind == Kind::Chat {
                    json!({
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "logprobs": logprobs.as_mut().map(Logprobs::take),
                        "finish_reason": finish_reason,
                    })
                } else {
                    json!({
                        "index": 0,
                        "text": text,
                        "logprobs": logprobs.as_mut().map(Logprobs::take),
                        "finish_reason": finish_reason,
                    })
                };
                return Json(json!({
                    "id": id,
                    "object": if kind == Kind::Chat { "chat.completion" } else { "text_completion" },
                    "created": created,
                    "model": app.model_id,
                    "choices": [choice],
                    "usage": usage(prompt_tokens, completion_tokens),
                }))
                .into_response();
            }
            Some(Event::Error(e)) => return e.into_response(),
            _ => return lost().into_response(),
        }
    }
}

/// Server-sent events in OpenAI's chunk format, ending with `data: [DONE]`.
/// Dropping the body (the client went away) drops `rx`, which stops the
/// instance at its next token.
fn stream(
    app: Arc<App>,
    kind: Kind,
    id: String,
    created: u64,
    plan: Plan,
    rx: UnboundedReceiver<Event>,
) -> Response {
    let object = if kind == Kind::Chat {
        "chat.completion.chunk"
    } else {
        "text_completion"
    };
    let chunk = move |choices: Value, usage: Option<Value>| -> String {
        let mut v = json!({
            "id": id,
            "object": object,
            "created": created,
            "model": app.model_id,
            "choices": choices,
        });
        if let Some(u) = usage {
            v["usage"] = u;
        }
        format!("data: {v}\n\n")
    };
    let choice = move |text: Option<&str>, logprobs: Value, finish: Option<&str>| -> Value {
        if kind == Kind::Chat {
            let delta = match text {
                Some(t) => json!({"content": t}),
                None => json!({}),
            };
            json!([{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}])
        } else {
            json!([{"index": 0, "text": text.unwrap_or(""), "logprobs": logprobs, "finish_reason": finish}])
        }
    };
    let first = if kind == Kind::Chat {
        Some(chunk(
            json!([{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}]),
            None,
        ))
    } else {
        None
    };
    struct St<C, H> {
        rx: UnboundedReceiver<Event>,
        first: Option<String>,
        pending: Vec<String>,
        done: bool,
        chunk: C,
        choice: H,
        include_usage: bool,
        /// Log-probabilities of the tokens not yet sent.
        logprobs: Option<Logprobs>,
    }
    let st = St {
        rx,
        first,
        pending: Vec::new(),
        done: false,
        chunk,
        choice,
        include_usage: plan.include_usage,
        logprobs: plan.logprobs.map(|_| Logprobs::new(kind)),
    };
    let body = futures_util::stream::unfold(st, |mut st| async move {
        if let Some(f) = st.first.take() {
            return Some((Ok::<_, Infallible>(f), st));
        }
        if let Some(p) = st.pending.pop() {
            return Some((Ok(p), st));
        }
        if st.done {
            return None;
        }
        loop {
            match st.rx.recv().await {
                Some(Event::Piece { text, logprobs }) => {
                    if let (Some(all), Some(lp)) = (st.logprobs.as_mut(), logprobs) {
                        all.push(lp);
                    }
                    // Tokens without text yet (inside a UTF-8 sequence, or
                    // held for a stop string) go with the next text.
                    if text.is_empty() {
                        continue;
                    }
                    let lp = st.logprobs.as_mut().map_or(Value::Null, Logprobs::take);
                    let c = (st.chunk)((st.choice)(Some(&text), lp, None), None);
                    return Some((Ok(c), st));
                }
                Some(Event::Done {
                    prompt_tokens,
                    completion_tokens,
                    finish_reason,
                }) => {
                    st.done = true;
                    // Sent in reverse order (popped from the end).
                    st.pending.push("data: [DONE]\n\n".into());
                    if st.include_usage {
                        st.pending.push((st.chunk)(
                            json!([]),
                            Some(usage(prompt_tokens, completion_tokens)),
                        ));
                    }
                    let lp = st
                        .logprobs
                        .as_mut()
                        .filter(|l| !l.is_empty())
                        .map_or(Value::Null, Logprobs::take);
                    let c = (st.chunk)((st.choice)(None, lp, Some(finish_reason)), None);
                    return Some((Ok(c), st));
                }
                Some(Event::Error(e)) => {
                    st.done = true;
                    return Some((Ok(format!("data: {}\n\n", e.body())), st));
                }
                _ => {
                    st.done = true;
                    return Some((Ok(format!("data: {}\n\n", lost().body())), st));
                }
            }
        }
    });
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        Body::from_stream(body),
    )
        .into_response()
}

/// Log-probabilities gathered for a response or a chunk: chat's
/// `{"content": [{token, logprob, bytes, top_logprobs}]}`, or the legacy
/// completions' `{tokens, token_logprobs, top_logprobs, text_offset}`.
struct Logprobs {
    kind: Kind,
    entries: Vec<PieceLogprobs>,
    /// Legacy `text_offset` of the next token (bytes of the completion text so far).
    offset: usize,
}

impl Logprobs {
    fn new(kind: Kind) -> Self {
        Self {
            kind,
            entries: Vec::new(),
            offset: 0,
        }
    }

    fn push(&mut self, lp: PieceLogprobs) {
        self.entries.push(lp);
    }

    fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The JSON of the entries gathered since the last `take`.
    fn take(&mut self) -> Value {
        let entries = std::mem::take(&mut self.entries);
        let text = |t: &TokenLogprob| String::from_utf8_lossy(&t.bytes).into_owned();
        if self.kind == Kind::Chat {
            // "id" is llama-server's addition.
            let entry = |t: &TokenLogprob| json!({"id": t.token, "token": text(t), "logprob": t.logprob, "bytes": t.bytes});
            let content: Vec<Value> = entries
                .iter()
                .map(|lp| {
                    let mut e = entry(&lp.chosen);
                    e["top_logprobs"] = lp.top.iter().map(entry).collect();
                    e
                })
                .collect();
            return json!({"content": content, "refusal": null});
        }
        let mut tokens = Vec::new();
        let mut token_logprobs = Vec::new();
        let mut top_logprobs = Vec::new();
        let mut text_offset = Vec::new();
        for lp in &entries {
            let t = text(&lp.chosen);
            text_offset.push(self.offset);
            self.offset += t.len();
            tokens.push(t);
            token_logprobs.push(lp.chosen.logprob);
            let top: serde_json::Map<String, Value> =
                lp.top.iter().map(|e| (text(e), json!(e.logprob))).collect();
            top_logprobs.push(top);
        }
        json!({
            "tokens": tokens,
            "token_logprobs": token_logprobs,
            "top_logprobs": top_logprobs,
            "text_offset": text_offset,
        })
    }
}

/// llama-server's `/tokenize`: `{"content", "add_special", "parse_special", "with_pieces"}`
/// → `{"tokens": [...]}` (with pieces: `[{"id", "piece"}]`).
async fn tokenize(State(app): State<Arc<App>>, body: Result<Bytes, BytesRejection>) -> Response {
    let body = match body {
        Ok(b) => b,
        Err(e) => return body_error(e).into_response(),
    };
    let req: api::TokenizeRequest = match parse_body(&body) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let mut rx = match app.submit(Work::Tokenize {
        content: req.content,
        add_special: req.add_special,
        parse_special: req.parse_special,
        with_pieces: req.with_pieces,
    }) {
        Ok(rx) => rx,
        Err(e) => return e.into_response(),
    };
    match rx.recv().await {
        Some(Event::Tokens(tokens, None)) => Json(json!({ "tokens": tokens })).into_response(),
        Some(Event::Tokens(tokens, Some(pieces))) => {
            let list: Vec<Value> = tokens
                .iter()
                .zip(pieces)
                .map(|(t, p)| json!({"id": t, "piece": p}))
                .collect();
            Json(json!({ "tokens": list })).into_response()
        }
        Some(Event::Error(e)) => e.into_response(),
        _ => lost().into_response(),
    }
}

/// llama-server's `/detokenize`: `{"tokens": [...]}` → `{"content"}`.
async fn detokenize(State(app): State<Arc<App>>, body: Result<Bytes, BytesRejection>) -> Response {
    let body = match body {
        Ok(b) => b,
        Err(e) => return body_error(e).into_response(),
    };
    let req: api::DetokenizeRequest = match parse_body(&body) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let mut rx = match app.submit(Work::Detokenize { tokens: req.tokens }) {
        Ok(rx) => rx,
        Err(e) => return e.into_response(),
    };
    match rx.recv().await {
        Some(Event::Text(content)) => Json(json!({ "content": content })).into_response(),
        Some(Event::Error(e)) => e.into_response(),
        _ => lost().into_response(),
    }
}
