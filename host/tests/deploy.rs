//! The deployment files in deploy/: every Kubernetes manifest parses and has
//! what its kind requires (probes on /health, selectors matching labels,
//! ports that exist, memory requests covering the README's memory per
//! instance), and the container's command line — the Dockerfile's ENTRYPOINT
//! and CMD, and the Deployments' args — runs here and answers /health.
//!
//! The serving part needs `WASM_CHORD_KERNEL` and `WASM_CHORD_SMOLLM2`
//! (`cargo xtask test` sets them).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use yaml_rust2::{Yaml, YamlLoader};

mod common;
use common::{bin, model, Content, Mode, RangeServer};

fn root() -> PathBuf {
    // The run-time manifest dir (binaries are reused across checkouts).
    let host = std::env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR");
    Path::new(&host).parent().expect("workspace").to_path_buf()
}

/// Every document of every YAML file under deploy/k8s, with its file name.
fn manifests() -> Vec<(String, Yaml)> {
    let dir = root().join("deploy").join("k8s");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    assert!(files.len() >= 3, "{files:?}");
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).expect("read");
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        let docs =
            YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{name}: not YAML: {e}"));
        assert!(!docs.is_empty(), "{name}: no documents");
        out.extend(docs.into_iter().map(|d| (name.clone(), d)));
    }
    out
}

fn s<'a>(y: &'a Yaml, what: &str) -> &'a str {
    y.as_str()
        .unwrap_or_else(|| panic!("{what}: expected a string, got {y:?}"))
}

fn list<'a>(y: &'a Yaml, what: &str) -> &'a [Yaml] {
    y.as_vec()
        .unwrap_or_else(|| panic!("{what}: expected a list, got {y:?}"))
}

/// A Kubernetes quantity of memory in bytes (`700Mi`, `1Gi`, `512M`).
fn bytes(q: &str) -> u64 {
    let units = [
        ("Ki", 1u64 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("K", 1000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
    ];
    for (u, m) in units {
        if let Some(n) = q.strip_suffix(u) {
            return n.parse::<u64>().expect("quantity") * m;
        }
    }
    q.parse().expect("quantity")
}

/// The README's measured memory per serving instance, in bytes.
fn readme_mib_per_instance() -> u64 {
    let readme = std::fs::read_to_string(root().join("README.md")).expect("README");
    let at = readme
        .find(" MiB per instance**")
        .expect("README states the memory per instance");
    let digits: String = readme[..at]
        .chars()
        .rev()
        .take_while(char::is_ascii_digit)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    digits.parse::<u64>().expect("a number") << 20
}

fn check_probe(p: &Yaml, ports: &[&str], what: &str) {
    let get = &p["httpGet"];
    assert_eq!(s(&get["path"], what), "/health", "{what}");
    let port = &get["port"];
    match port.as_str() {
        Some(name) => assert!(ports.contains(&name), "{what}: port {name} not declared"),
        None => assert_eq!(port.as_i64(), Some(8080), "{what}"),
    }
}

#[test]
fn manifests_parse_and_are_complete() {
    let docs = manifests();
    let per_instance = readme_mib_per_instance();
    let mut kinds = Vec::new();
    let mut services = Vec::new();
    let mut pod_labels = Vec::new();
    for (file, d) in &docs {
        let kind = s(&d["kind"], file);
        let name = s(&d["metadata"]["name"], file);
        let what = format!("{file}: {kind} {name}");
        assert!(!s(&d["apiVersion"], &what).is_empty());
        kinds.push(kind.to_string());
        match kind {
            "Deployment" => {
                assert_eq!(s(&d["apiVersion"], &what), "apps/v1");
                let spec = &d["spec"];
                let tpl = &spec["template"];
                let labels = &tpl["metadata"]["labels"];
                for (k, v) in spec["selector"]["matchLabels"]
                    .as_hash()
                    .unwrap_or_else(|| panic!("{what}: no selector"))
                {
                    assert_eq!(&labels[s(k, &what)], v, "{what}: selector matches labels");
                }
                pod_labels.push(labels.clone());
                let containers = list(&tpl["spec"]["containers"], &what);
                assert!(!containers.is_empty(), "{what}");
                let c = &containers[0];
                assert!(!s(&c["image"], &what).is_empty());
                let ports: Vec<&str> = list(&c["ports"], &what)
                    .iter()
                    .filter_map(|p| p["name"].as_str())
                    .collect();
                let mem = s(&c["resources"]["requests"]["memory"], &what);
                assert!(bytes(mem) > 0, "{what}");
                if let Some(limit) = c["resources"]["limits"]["memory"].as_str() {
                    assert!(bytes(limit) >= bytes(mem), "{what}: limit below request");
                }
                // The wasm-chord servers: probes on /health, and a memory
                // request covering --parallel instances as the README measures them.
                if s(&c["image"], &what).contains("wasm-chord") {
                    for probe in ["readinessProbe", "livenessProbe"] {
                        check_probe(&c[probe], &ports, &format!("{what}: {probe}"));
                    }
                    let args: Vec<&str> = list(&c["args"], &what)
                        .iter()
                        .map(|a| s(a, &what))
                        .collect();
                    assert!(args.contains(&"-m"), "{what}: {args:?}");
                    let parallel = args
                        .iter()
                        .position(|a| *a == "--parallel")
                        .map_or(1, |i| args[i + 1].parse::<u64>().expect("--parallel N"));
                    assert!(
                        bytes(mem) >= parallel * per_instance,
                        "{what}: {mem} is below {parallel} x {} MiB",
                        per_instance >> 20
                    );
                }
            }
            "Service" => {
                assert_eq!(s(&d["apiVersion"], &what), "v1");
                let ports = list(&d["spec"]["ports"], &what);
                assert!(!ports.is_empty(), "{what}");
                services.push((what.clone(), d["spec"]["selector"].clone()));
            }
            "PersistentVolumeClaim" => {
                assert!(!list(&d["spec"]["accessModes"], &what).is_empty());
                assert!(bytes(s(&d["spec"]["resources"]["requests"]["storage"], &what)) > 0);
            }
            "SpinApp" => {
                assert_eq!(s(&d["apiVersion"], &what), "core.spinkube.dev/v1alpha1");
                let spec = &d["spec"];
                assert!(!s(&spec["image"], &what).is_empty());
                assert_eq!(s(&spec["executor"], &what), "containerd-shim-spin");
                assert!(spec["replicas"].as_i64().is_some_and(|n| n >= 1));
                for probe in ["readiness", "liveness"] {
                    assert!(
                        s(&spec["checks"][probe]["httpGet"]["path"], &what).starts_with('/'),
                        "{what}: {probe}"
                    );
                }
            }
            other => panic!("{what}: unexpected kind {other}"),
        }
    }
    // Every Service selects the pods of some Deployment.
    for (what, selector) in &services {
        let sel = selector
            .as_hash()
            .unwrap_or_else(|| panic!("{what}: no selector"));
        assert!(
            pod_labels
                .iter()
                .any(|labels| sel.iter().all(|(k, v)| &labels[s(k, what)] == v)),
            "{what}: selects no Deployment's pods"
        );
    }
    for k in ["Deployment", "Service", "PersistentVolumeClaim", "SpinApp"] {
        assert!(kinds.iter().any(|x| x == k), "no {k} in deploy/k8s");
    }
    // The Spin manifest names the wasi:http component and the model.
    let spin = std::fs::read_to_string(root().join("deploy/spin/spin.toml")).expect("spin.toml");
    assert!(spin.contains("source = \"wasm-chord-http.wasm\""), "{spin}");
    assert!(spin.contains("WASM_CHORD_MODEL"), "{spin}");
}

/// A JSON array instruction of the Dockerfile (`ENTRYPOINT ["a", "b"]`).
fn dockerfile_array(text: &str, instruction: &str) -> Vec<String> {
    let line = text
        .lines()
        .rev()
        .find(|l| l.starts_with(&format!("{instruction} ")))
        .unwrap_or_else(|| panic!("no {instruction} in the Dockerfile"));
    let v: serde_json::Value =
        serde_json::from_str(&line[instruction.len()..]).expect("exec form (a JSON array)");
    v.as_array()
        .expect("array")
        .iter()
        .map(|a| a.as_str().expect("string").to_string())
        .collect()
}

/// Run `argv` (the binary at `argv[0]`) until it prints its address, then GET /health.
fn health_of(argv: &[String]) -> (u16, String) {
    let mut child = Command::new(&argv[0])
        .args(&argv[1..])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the server");
    let mut line = String::new();
    let _ = BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line);
    let result = line.trim().strip_prefix("listening on ").map(|base| {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let mut r = agent
            .get(format!("{base}/health"))
            .call()
            .expect("GET /health");
        let status = r.status().as_u16();
        (status, r.body_mut().read_to_string().expect("body"))
    });
    let _ = child.kill();
    let _ = child.wait();
    result.unwrap_or_else(|| panic!("{argv:?}: unexpected first line {line:?}"))
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// The container's command line, as the Dockerfile and the Deployments give
/// it, with only the paths and the port moved to this machine.
#[test]
fn container_command_line_serves_health() {
    let m = model();
    let docker = std::fs::read_to_string(root().join("deploy/Dockerfile")).expect("Dockerfile");
    let entry = dockerfile_array(&docker, "ENTRYPOINT");
    let cmd = dockerfile_array(&docker, "CMD");
    assert_eq!(entry[0], "/opt/wasm-chord/wasm-chord");
    assert_eq!(entry[1], "serve");
    let port = free_port().to_string();
    let here = |args: &[String], model_from: &str, model_to: &str| -> Vec<String> {
        std::iter::once(bin().to_string_lossy().into_owned())
            .chain(entry[1..].iter().chain(args).map(|a| {
                let a = if a == "8080" { port.clone() } else { a.clone() };
                let a = if a == "0.0.0.0" {
                    "127.0.0.1".into()
                } else {
                    a
                };
                a.replace(model_from, model_to)
            }))
            .collect()
    };
    // ENTRYPOINT + CMD, the model at the CMD's path.
    let (status, body) = health_of(&here(&cmd, "/models/model.gguf", m.to_str().expect("utf8")));
    assert_eq!(status, 200, "{body}");
    // ENTRYPOINT + each Deployment's args: from the model store over HTTP
    // (a local Range server in its place), and from the shared volume.
    let store = RangeServer::start(
        Content::Bytes(Arc::new(std::fs::read(&m).expect("model"))),
        Mode::Good,
    );
    let models_dir = m.parent().expect("dir").to_str().expect("utf8").to_string();
    let model_name = m.file_name().expect("name").to_str().expect("utf8");
    for (file, d) in manifests() {
        if d["kind"].as_str() != Some("Deployment") {
            continue;
        }
        let c = &d["spec"]["template"]["spec"]["containers"][0];
        if !s(&c["image"], &file).contains("wasm-chord") {
            continue;
        }
        let args: Vec<String> = list(&c["args"], &file)
            .iter()
            .map(|a| s(a, &file).replace("SmolLM2-135M-Instruct.Q4_1.gguf", model_name))
            .collect();
        let argv = if args.iter().any(|a| a.starts_with("http://model-store")) {
            here(&args, "http://model-store", &store.base())
        } else {
            here(&args, "/models", &models_dir)
        };
        let (status, body) = health_of(&argv);
        assert_eq!(status, 200, "{file}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("JSON health");
        assert!(v.is_object(), "{file}: {body}");
    }
    assert!(
        store.counts().0 > 0,
        "the HTTP Deployment read from the store"
    );
}
