//! The composed `wasi:http` component (`wasm-chord-http.wasm`: the http front,
//! the kernel and the wasi:filesystem layer store) under the stock
//! `wasmtime serve`: chat completions (greedy text equal to `wasm-chord run
//! --messages`, streamed text equal to the whole one), `/v1/models`, errors in
//! OpenAI's shape, and the per-request model load of fresh instances against
//! reused ones.
//!
//! `cargo xtask test` sets WASMTIME_BIN, WASM_TOOLS_BIN, WASM_CHORD_HTTP_WASM,
//! WASM_CHORD_SMOLLM2, WASM_CHORD_BIN and WASM_CHORD_KERNEL.

use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use wasm_chord_tests::*;

const MODEL_ID: &str = "SmolLM2-135M-Instruct.Q4_1";

/// A `wasmtime serve` child on a free loopback port, killed on drop.
struct Serve {
    child: Child,
    base: String,
    agent: ureq::Agent,
}

impl Serve {
    /// `wasmtime serve -S cli --dir MODELS --env WASM_CHORD_MODEL=SMOLLM2 EXTRA... wasm-chord-http.wasm`.
    fn start(extra: &[&str]) -> Self {
        Self::start_with(&smollm2(), extra)
    }

    /// [`Serve::start`] with `model` as WASM_CHORD_MODEL (the models folder still preopened).
    fn start_with(model: &Path, extra: &[&str]) -> Self {
        let smol = smollm2();
        let models = smol.parent().unwrap();
        let mut child = Command::new(env_path("WASMTIME_BIN"))
            .args([
                "serve",
                "-C",
                "cache=y",
                "-S",
                "cli",
                "--addr",
                "127.0.0.1:0",
            ])
            .arg("--dir")
            .arg(models)
            .arg(format!("--env=WASM_CHORD_MODEL={}", model.display()))
            .args(extra)
            .arg(env_path("WASM_CHORD_HTTP_WASM"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn wasmtime serve");
        // wasmtime prints "Serving HTTP on http://127.0.0.1:PORT/" on stderr
        // once it listens (after compiling the component).
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let base = loop {
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(url) = line.strip_prefix("Serving HTTP on ") {
                        break url.trim_end_matches('/').to_string();
                    }
                    eprintln!("wasmtime serve: {line}");
                }
                _ => {
                    let status = child.wait().expect("wait");
                    panic!("wasmtime serve exited before listening ({status})");
                }
            }
        };
        // Keep draining its log (per-request lines) so it never blocks.
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                eprintln!("wasmtime serve: {line}");
            }
        });
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(300)))
            .build()
            .into();
        Serve { child, base, agent }
    }

    fn read(mut r: ureq::http::Response<ureq::Body>) -> Reply {
        let status = r.status().as_u16();
        let header = |name: &str| {
            r.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let content_type = header("content-type").unwrap_or_default();
        let load_ms = header("x-wasm-chord-model-load-ms").map(|v| v.parse::<f64>().unwrap());
        let instance_requests =
            header("x-wasm-chord-instance-requests").map(|v| v.parse::<u64>().unwrap());
        let text = r.body_mut().read_to_string().expect("body");
        Reply {
            status,
            content_type,
            load_ms,
            instance_requests,
            text,
        }
    }

    fn get(&self, path: &str) -> Reply {
        Self::read(
            self.agent
                .get(format!("{}{path}", self.base))
                .call()
                .expect("GET"),
        )
    }

    fn post(&self, path: &str, body: &str) -> Reply {
        Self::read(
            self.agent
                .post(format!("{}{path}", self.base))
                .header("Content-Type", "application/json")
                .send(body)
                .expect("POST"),
        )
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Reply {
    status: u16,
    content_type: String,
    load_ms: Option<f64>,
    instance_requests: Option<u64>,
    text: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.text))
    }

    /// An `invalid_request_error` in OpenAI's shape with this status;
    /// returns its `error` object.
    fn openai_error(&self, status: u16) -> Value {
        let e = self.error_of_type(status);
        assert_eq!(e["type"], "invalid_request_error", "{e}");
        e
    }

    /// An error in OpenAI's shape with this status; returns its `error` object.
    fn error_of_type(&self, status: u16) -> Value {
        assert_eq!(self.status, status, "{}", self.text);
        assert_eq!(self.content_type, "application/json");
        let v = self.json();
        let e = &v["error"];
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
        assert!(e["type"].is_string(), "{v}");
        for key in ["param", "code"] {
            assert!(e.get(key).is_some(), "no {key}: {v}");
        }
        e.clone()
    }
}

/// `wasm-chord run -m SMOLLM2 --messages FILE --temp 0 -n N --json`:
/// (generated text, generated tokens, prompt tokens).
fn run_messages(messages: &Value, n: u32) -> (String, u64, u64) {
    let dir = tmp_dir("wasmtime-serve");
    let f = dir.join(format!("messages-{}.json", std::process::id()));
    std::fs::write(&f, messages.to_string()).unwrap();
    let args: Vec<OsString> = vec![
        "run".into(),
        "-m".into(),
        smollm2().into(),
        "--messages".into(),
        f.clone().into(),
        "--temp".into(),
        "0".into(),
        "-n".into(),
        n.to_string().into(),
        "--json".into(),
    ];
    let out = run_cli(&args);
    assert!(out.status.success(), "{}", show(&out));
    let _ = std::fs::remove_file(&f);
    let (tokens, text, stats) = parse_run_json(&out.stdout);
    (
        text,
        tokens.len() as u64,
        stats["prompt_tokens"].as_u64().expect("prompt_tokens"),
    )
}

/// The deltas of a streamed chat completion, checked for OpenAI's chunk
/// format: (text, finish_reason, usage).
fn parse_sse(text: &str) -> (String, String, Value) {
    let mut content = String::new();
    let mut finish = String::new();
    let mut usage = Value::Null;
    let mut done = false;
    let mut first = true;
    for event in text.split("\n\n").filter(|e| !e.is_empty()) {
        let data = event
            .strip_prefix("data: ")
            .unwrap_or_else(|| panic!("not an SSE data event: {event:?}"));
        assert!(!done, "events after [DONE]: {text}");
        if data == "[DONE]" {
            done = true;
            continue;
        }
        let v: Value = serde_json::from_str(data).unwrap();
        assert_eq!(v["object"], "chat.completion.chunk", "{v}");
        assert_eq!(v["model"], MODEL_ID, "{v}");
        if let Some(u) = v.get("usage") {
            usage = u.clone();
            continue;
        }
        let choice = &v["choices"][0];
        if first {
            assert_eq!(choice["delta"]["role"], "assistant", "{v}");
            first = false;
        }
        if let Some(t) = choice["delta"]["content"].as_str() {
            content.push_str(t);
        }
        if let Some(f) = choice["finish_reason"].as_str() {
            finish = f.to_string();
        }
    }
    assert!(done, "no [DONE]: {text}");
    (content, finish, usage)
}

/// Conversations whose greedy replies are compared with `run --messages`.
fn conversations() -> Vec<Value> {
    vec![
        json!([{"role": "user", "content": "What is the tallest mountain in the world?"}]),
        json!([
            {"role": "system", "content": "You are a terse assistant. Answer in one sentence."},
            {"role": "user", "content": "Name three primary colours."},
            {"role": "assistant", "content": "Red, yellow and blue."},
            {"role": "user", "content": "And the secondary ones?"}
        ]),
    ]
}

#[test]
fn wasmtime_serve_answers_like_run_messages() {
    let srv = Serve::start(&[]);
    let n = 24;
    for messages in conversations() {
        let (want, want_tokens, want_prompt) = run_messages(&messages, n);
        let r = srv.post(
            "/v1/chat/completions",
            &json!({"model": MODEL_ID, "messages": messages, "temperature": 0, "max_tokens": n})
                .to_string(),
        );
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.content_type, "application/json");
        let v = r.json();
        assert_eq!(v["object"], "chat.completion", "{v}");
        assert_eq!(v["model"], MODEL_ID, "{v}");
        assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"), "{v}");
        let choice = &v["choices"][0];
        assert_eq!(choice["message"]["role"], "assistant", "{v}");
        let got = choice["message"]["content"].as_str().unwrap();
        assert_eq!(
            got, want,
            "wasmtime serve and `run --messages` differ for {messages}"
        );
        assert_eq!(v["usage"]["completion_tokens"], want_tokens, "{v}");
        assert_eq!(v["usage"]["prompt_tokens"], want_prompt, "{v}");
        let finish = if want_tokens == u64::from(n) {
            "length"
        } else {
            "stop"
        };
        assert_eq!(choice["finish_reason"], finish, "{v}");
        // A fresh instance for each request by default: each one loads the model.
        assert_eq!(r.instance_requests, Some(1));
        assert!(r.load_ms.is_some_and(|ms| ms > 0.0), "{:?}", r.load_ms);

        // Streamed: the same text, in OpenAI's chunks, then usage and [DONE].
        let r = srv.post(
            "/v1/chat/completions",
            &json!({"messages": messages, "temperature": 0, "max_tokens": n, "stream": true,
                    "stream_options": {"include_usage": true}})
            .to_string(),
        );
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.content_type, "text/event-stream");
        let (text, finish_reason, usage) = parse_sse(&r.text);
        assert_eq!(text, want, "streamed text differs from `run --messages`");
        assert_eq!(finish_reason, finish);
        assert_eq!(usage["completion_tokens"], want_tokens, "{usage}");
        assert_eq!(usage["prompt_tokens"], want_prompt, "{usage}");
    }

    let r = srv.get("/v1/models");
    assert_eq!(r.status, 200, "{}", r.text);
    let v = r.json();
    assert_eq!(v["object"], "list", "{v}");
    let data = v["data"].as_array().unwrap();
    assert_eq!(data.len(), 1, "{v}");
    assert_eq!(data[0]["id"], MODEL_ID, "{v}");
    assert_eq!(data[0]["object"], "model", "{v}");
    assert_eq!(data[0]["owned_by"], "wasm-chord", "{v}");
}

#[test]
fn wasmtime_serve_bad_requests_get_openai_errors() {
    let srv = Serve::start(&[]);
    let chat = "/v1/chat/completions";
    let e = srv
        .post(chat, "{\"messages\": [{\"role\": \"user\"")
        .openai_error(400);
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("the body is not valid JSON"),
        "{e}"
    );
    let e = srv.post(chat, "{\"messages\": \"hi\"}").openai_error(400);
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("does not fit this endpoint"),
        "{e}"
    );
    let hi = json!([{"role": "user", "content": "hi"}]);
    let e = srv
        .post(chat, &json!({"model": "gpt-4", "messages": hi}).to_string())
        .openai_error(400);
    assert_eq!(e["code"], "model_not_found", "{e}");
    assert_eq!(e["param"], "model", "{e}");
    let e = srv
        .post(
            chat,
            &json!({"messages": hi, "temperature": -1}).to_string(),
        )
        .openai_error(400);
    assert_eq!(e["param"], "temperature", "{e}");
    let e = srv
        .post(chat, &json!({"messages": []}).to_string())
        .openai_error(400);
    assert_eq!(e["param"], "messages", "{e}");
    // Beyond the context (4096 tokens): refused before generating.
    let long = "the cat sat on the mat. ".repeat(1000);
    let e = srv
        .post(
            chat,
            &json!({"messages": [{"role": "user", "content": long}], "max_tokens": 1}).to_string(),
        )
        .openai_error(400);
    assert_eq!(e["code"], "context_length_exceeded", "{e}");
    let e = srv.get("/v1/nothing").openai_error(404);
    assert_eq!(e["code"], "not_found", "{e}");
    let e = srv.get(chat).openai_error(405);
    assert_eq!(e["code"], "method_not_allowed", "{e}");
    // Still serving after all that.
    let r = srv.post(
        chat,
        &json!({"messages": hi, "temperature": 0, "max_tokens": 2}).to_string(),
    );
    assert_eq!(r.status, 200, "{}", r.text);
}

/// With `--max-instance-reuse-count`, an instance keeps its loaded model:
/// a request that an instance serves after its first loads nothing, and
/// gives the same greedy reply (each request starts on an empty KV cache),
/// also after a client hung up on it mid-stream. (Which instance serves a
/// request is wasmtime's choice: one still finishing its last request is
/// busy, so a request may get a fresh instance; a pause between requests
/// makes reuse the rule.)
#[test]
fn wasmtime_serve_reused_instance_loads_once() {
    let srv = Serve::start(&[
        "--max-instance-reuse-count",
        "100",
        "--idle-instance-timeout",
        "600s",
    ]);
    let body = json!({"messages": [{"role": "user", "content": "Hello"}],
                      "temperature": 0, "max_tokens": 12})
    .to_string();
    let mut reused = Vec::new();
    let mut first = None;
    let mut replies = Vec::new();
    for i in 0..5 {
        if i == 3 {
            // Hang up on a long stream after its first events.
            let r = srv
                .agent
                .post(format!("{}/v1/chat/completions", srv.base))
                .send(
                    json!({"messages": [{"role": "user", "content": "Count to 500."}],
                           "temperature": 0, "max_tokens": 2000, "stream": true})
                    .to_string(),
                )
                .expect("POST");
            assert_eq!(r.status().as_u16(), 200);
            let mut lines = BufReader::new(r.into_body().into_reader()).lines();
            for _ in 0..6 {
                lines.next().expect("an event").expect("read");
            }
            drop(lines);
            std::thread::sleep(Duration::from_millis(500));
        }
        let t = Instant::now();
        let r = srv.post("/v1/chat/completions", &body);
        let took = t.elapsed();
        assert_eq!(r.status, 200, "{}", r.text);
        replies.push(r.json()["choices"][0]["message"]["content"].clone());
        let n = r.instance_requests.expect("instance-requests header");
        let load = r.load_ms.expect("model-load header");
        if n == 1 {
            assert!(load > 0.0, "a fresh instance loads the model");
            first.get_or_insert(took);
        } else {
            assert_eq!(load, 0.0, "request {n} of its instance reloaded the model");
            reused.push(took);
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(
        replies.iter().all(|r| r == &replies[0]),
        "greedy replies differ between requests: {replies:?}"
    );
    assert!(
        reused.len() >= 2,
        "instances were not reused: {} of 5 requests",
        reused.len()
    );
    eprintln!("12-token completions: fresh instance {first:?}, reused instance {reused:?}");
}

/// A model that cannot be opened is the server's fault: 500 in OpenAI's
/// shape naming the file, for every chat request; `/v1/models` still answers.
#[test]
fn wasmtime_serve_missing_model_is_a_500() {
    let missing = smollm2().parent().unwrap().join("no-such-model.gguf");
    let srv = Serve::start_with(&missing, &[]);
    let body =
        json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}).to_string();
    for _ in 0..2 {
        let r = srv.post("/v1/chat/completions", &body);
        let e = r.error_of_type(500);
        assert_eq!(e["type"], "server_error", "{e}");
        assert!(
            e["message"]
                .as_str()
                .unwrap()
                .contains("no-such-model.gguf"),
            "{e}"
        );
    }
    let r = srv.get("/v1/models");
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["data"][0]["id"], "no-such-model", "{}", r.text);
}

/// The composed component imports only WASI and exports the wasi:http handler
/// (so any wasi:http 0.2 host can run it).
#[test]
fn http_component_imports_only_wasi() {
    let out = Command::new(env_path("WASM_TOOLS_BIN"))
        .args(["component", "wit"])
        .arg(env_path("WASM_CHORD_HTTP_WASM"))
        .output()
        .expect("spawn wasm-tools");
    assert!(out.status.success(), "{}", show(&out));
    let wit = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = wit
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("import ") || l.starts_with("export "))
        .collect();
    let exports: Vec<&&str> = lines.iter().filter(|l| l.starts_with("export ")).collect();
    assert_eq!(exports.len(), 1, "{lines:?}");
    assert!(
        exports[0].starts_with("export wasi:http/incoming-handler@0.2."),
        "{lines:?}"
    );
    for l in &lines {
        assert!(
            l.starts_with("import wasi:") || l.starts_with("export wasi:"),
            "the http component must import only WASI: {l}"
        );
    }
}

/// User + system CPU clock ticks of process `pid` (Linux).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// A client that hangs up in the middle of a stream stops its generation:
/// the server's CPU goes idle instead of generating the remaining tokens.
#[test]
fn wasmtime_serve_hang_up_stops_generation() {
    let srv = Serve::start(&[]);
    let body = json!({"messages": [{"role": "user", "content": "Count from 1 to 1000, separated by commas."}],
                      "temperature": 0, "max_tokens": 3000, "stream": true})
    .to_string();
    let r = srv
        .agent
        .post(format!("{}/v1/chat/completions", srv.base))
        .send(body)
        .expect("POST");
    assert_eq!(r.status().as_u16(), 200);
    let mut lines = BufReader::new(r.into_body().into_reader()).lines();
    let mut content = 0;
    while content < 5 {
        let line = lines.next().expect("an event").expect("read");
        if line.contains("\"content\":\"") && !line.contains("\"role\"") {
            content += 1;
        }
    }
    let pid = srv.child.id();
    // Generating: the server is busy (on a loaded machine, maybe not much).
    let t0 = cpu_ticks(pid);
    std::thread::sleep(Duration::from_secs(1));
    let busy = cpu_ticks(pid) - t0;
    drop(lines);
    std::thread::sleep(Duration::from_millis(500));
    let t1 = cpu_ticks(pid);
    std::thread::sleep(Duration::from_secs(1));
    let after = cpu_ticks(pid) - t1;
    assert!(
        busy >= 5,
        "the stream was not generating ({busy} ticks in 1 s)"
    );
    assert!(
        after <= (busy / 5).max(2),
        "still generating after the client hung up ({after} ticks in 1 s; {busy} in 1 s while streaming)"
    );
}

/// With WASM_CHORD_API_KEY, every endpoint wants `Authorization: Bearer KEY`:
/// 401 in OpenAI's shape without it or with another key.
#[test]
fn wasmtime_serve_api_key() {
    let srv = Serve::start(&["--env=WASM_CHORD_API_KEY=sesame"]);
    let e = srv.get("/v1/models").openai_error(401);
    assert_eq!(e["code"], "invalid_api_key", "{e}");
    let with = |key: &str| {
        Serve::read(
            srv.agent
                .get(format!("{}/v1/models", srv.base))
                .header("Authorization", format!("Bearer {key}"))
                .call()
                .expect("GET"),
        )
    };
    with("open").openai_error(401);
    let r = with("sesame");
    assert_eq!(r.status, 200, "{}", r.text);
    let e = srv
        .post("/v1/chat/completions", &json!({"messages": []}).to_string())
        .openai_error(401);
    assert_eq!(e["code"], "invalid_api_key", "{e}");
}
