//! Shared by every test that drives the server: the real `moco-server` binary on 127.0.0.1:0 with a
//! temporary data directory, driven over HTTP like a user would, a small server-sent-events
//! reader, and (in `browser`) headless Chromium for the dashboard's browser tests.
//!
//! Each test binary compiles all of it and uses only part, hence the `dead_code` allowance.
#![allow(dead_code)]

pub mod browser;
pub mod pages;

use futures::StreamExt;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a test waits for something that takes seconds before it gives up (a hang, not speed).
pub const PATIENCE: Duration = Duration::from_secs(240);

/// The server binary serving a data directory.
pub struct Server {
    child: Option<Child>,
    pub url: String,
    pub data_dir: PathBuf,
    pub client: reqwest::Client,
    /// Every line the server printed on stdout (the URL, the token).
    stdout: Arc<Mutex<Vec<String>>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Server {
    pub fn start(data_dir: &Path) -> Server {
        Server::start_with(data_dir, &[], &[])
    }

    /// Starts `moco-server serve --port 0 --data-dir <data_dir> <args>` and waits for its URL.
    pub fn start_with(data_dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Server {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_moco-server"));
        cmd.args(["serve", "--port", "0", "--data-dir"])
            .arg(data_dir)
            .args(args)
            .env("RUST_LOG", "warn")
            // Tests run next to each other: one intra-op thread per server keeps them from
            // fighting over the cores.
            .env("OMP_NUM_THREADS", "1")
            .env_remove("MOCO_TOKEN")
            .env_remove("MOCO_HOST")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if !args.contains(&"--host") {
            cmd.args(["--host", "127.0.0.1"]);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start moco-server");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let mut printed = Vec::new();
        let url = loop {
            let line = lines
                .next()
                .expect("the server printed its URL before exiting")
                .unwrap();
            printed.push(line.clone());
            if let Some(rest) = line.split("listening on ").nth(1) {
                break rest.trim().trim_end_matches('/').to_string();
            }
        };
        // Keep draining stdout (the server must never block on a full pipe), keeping the lines.
        let stdout = Arc::new(Mutex::new(printed));
        let sink = stdout.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Server {
            child: Some(child),
            url,
            data_dir: data_dir.to_path_buf(),
            client: reqwest::Client::new(),
            stdout,
        }
    }

    /// Waits for a line of stdout containing `needle` (lines after the URL come right after it).
    pub fn stdout_line(&self, needle: &str) -> String {
        let start = Instant::now();
        loop {
            if let Some(line) = self
                .stdout
                .lock()
                .unwrap()
                .iter()
                .find(|l| l.contains(needle))
            {
                return line.clone();
            }
            assert!(
                start.elapsed() < PATIENCE,
                "the server never printed {needle:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn at(&self, path: &str) -> String {
        format!("{}{}", self.url, path)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("server running").id()
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let pid = self.pid();
        let status = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM {pid} failed");
        self.wait_exit()
    }

    /// Waits for the process to exit on its own.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("server running");
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if start.elapsed() > PATIENCE {
                let _ = child.kill();
                panic!("the server did not exit");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the process with SIGKILL, as a crash would.
    pub fn crash(&mut self) {
        let mut child = self.child.take().expect("server running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.at(path)).send().await.unwrap()
    }

    pub async fn get_json(&self, path: &str) -> Value {
        let resp = self.get(path).await;
        let status = resp.status();
        let text = resp.text().await.unwrap();
        assert!(status.is_success(), "GET {path}: {status} {text}");
        serde_json::from_str(&text).unwrap()
    }

    /// POST with a JSON body; returns the status and the JSON answer (Null when empty).
    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let resp = self
            .client
            .post(self.at(path))
            .json(body)
            .send()
            .await
            .unwrap();
        status_and_json(resp).await
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        let resp = self.client.delete(self.at(path)).send().await.unwrap();
        status_and_json(resp).await
    }

    /// Creates a run and returns its id (panics unless 201).
    pub async fn create_run(&self, config: &Value) -> i64 {
        let (status, body) = self.post("/api/runs", config).await;
        assert_eq!(status, 201, "{body}");
        body["run"]["id"].as_i64().unwrap()
    }

    pub async fn run(&self, id: i64) -> Value {
        self.get_json(&format!("/api/runs/{id}")).await["run"].clone()
    }

    /// Polls the run until its state is one of `states`.
    pub async fn wait_state(&self, id: i64, states: &[&str]) -> Value {
        self.wait_run(id, |run| states.contains(&run["state"].as_str().unwrap()))
            .await
    }

    /// Like `wait_state`, but a run that fails on the way fails the test at once, with the run's
    /// error (unless "failed" is one of `states`).
    pub async fn wait_state_fail_fast(&self, id: i64, states: &[&str]) -> Value {
        self.wait_run(id, |run| {
            let state = run["state"].as_str().unwrap();
            if states.contains(&state) {
                return true;
            }
            assert_ne!(state, "failed", "run {id} failed: {}", run["error"]);
            false
        })
        .await
    }

    /// Polls the run until it has finished, whichever way (neither queued nor running).
    pub async fn wait_finished(&self, id: i64) -> Value {
        self.wait_run(id, |run| {
            !["queued", "running"].contains(&run["state"].as_str().unwrap())
        })
        .await
    }

    /// Polls the run until `ok` holds.
    pub async fn wait_run(&self, id: i64, ok: impl Fn(&Value) -> bool) -> Value {
        let start = Instant::now();
        loop {
            let run = self.run(id).await;
            if ok(&run) {
                return run;
            }
            assert!(
                start.elapsed() < PATIENCE,
                "run {id} did not get there; last seen: {run}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn checkpoints(&self, id: i64) -> Vec<Value> {
        self.get_json(&format!("/api/runs/{id}/checkpoints")).await["checkpoints"]
            .as_array()
            .unwrap()
            .clone()
    }

    /// Number of rows in the runs table (reads the API's list).
    pub async fn run_count(&self) -> usize {
        self.get_json("/api/runs").await["runs"]
            .as_array()
            .unwrap()
            .len()
    }
}

pub async fn status_and_json(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    (status, body)
}

/// A run that trains in seconds on a CPU: a width-8 ResNet-18 on 64 synthetic 16×16 images
/// (2 steps per epoch), metrics every step, kNN and a full checkpoint after every epoch.
pub fn tiny_run(name: &str, epochs: i64) -> Value {
    json!({
        "preset": "cifar",
        "name": name,
        "epochs": epochs,
        "width": 8,
        "batch_size": 32,
        "queue_size": 256,
        "shuffle_bn_splits": 2,
        "image_size": 16,
        "dataset": {"kind": "synthetic", "synthetic_train": 64, "synthetic_test": 32,
                    "synthetic_image_size": 16},
        "knn_every": 1,
        "knn_k": 20,
        "checkpoint_every": 1,
        "metrics_every": 1,
        "prefetch": 2,
        "loader_threads": 1,
        "device": "cpu",
    })
}

/// One server-sent event.
#[derive(Debug, Clone, PartialEq)]
pub struct SseEvent {
    pub id: Option<i64>,
    pub event: String,
    pub data: Value,
}

/// Reads an SSE response event by event.
pub struct SseReader {
    stream: futures::stream::BoxStream<'static, reqwest::Result<axum::body::Bytes>>,
    buf: String,
}

impl SseReader {
    /// Opens the event stream of run `id`, resuming after `last_event_id` when given.
    pub async fn open(server: &Server, id: i64, last_event_id: Option<i64>) -> SseReader {
        let mut req = server
            .client
            .get(server.at(&format!("/api/runs/{id}/events")));
        if let Some(last) = last_event_id {
            req = req.header("Last-Event-ID", last.to_string());
        }
        SseReader::from_response(req.send().await.unwrap())
    }

    /// Opens an event stream at `path` (query parameters included).
    pub async fn open_path(server: &Server, path: &str) -> SseReader {
        SseReader::from_response(server.get(path).await)
    }

    fn from_response(resp: reqwest::Response) -> SseReader {
        assert_eq!(resp.status(), 200);
        assert_eq!(
            resp.headers()["content-type"].to_str().unwrap(),
            "text/event-stream"
        );
        SseReader {
            stream: resp.bytes_stream().boxed(),
            buf: String::new(),
        }
    }

    /// The next event with an id (comments and retry lines are skipped); None when the stream ends.
    pub async fn next(&mut self) -> Option<SseEvent> {
        loop {
            while let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf[..end].to_string();
                self.buf.drain(..end + 2);
                let mut id = None;
                let mut event = String::from("message");
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        id = Some(v.trim().parse().unwrap());
                    } else if let Some(v) = line.strip_prefix("event:") {
                        event = v.trim().to_string();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.strip_prefix(' ').unwrap_or(v));
                    }
                }
                if id.is_some() {
                    return Some(SseEvent {
                        id,
                        event,
                        data: serde_json::from_str(&data).unwrap(),
                    });
                }
            }
            let chunk = tokio::time::timeout(PATIENCE, self.stream.next())
                .await
                .expect("no event arrived")?;
            self.buf.push_str(&String::from_utf8_lossy(&chunk.ok()?));
        }
    }

    /// Reads events until one satisfies `stop` (included).
    pub async fn until(&mut self, stop: impl Fn(&SseEvent) -> bool) -> Vec<SseEvent> {
        let mut out = Vec::new();
        while let Some(e) = self.next().await {
            let done = stop(&e);
            out.push(e);
            if done {
                return out;
            }
        }
        panic!("the stream ended early after {} events", out.len());
    }
}

/// A `state` event that ends the run.
pub fn is_final_state(e: &SseEvent) -> bool {
    e.event == "state"
        && matches!(
            e.data["state"].as_str(),
            Some("completed" | "failed" | "cancelled" | "interrupted")
        )
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}
