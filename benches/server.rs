//! The server's cost to training, and its API latency while it trains.
//!
//! 1. Training throughput (images/s, the engine's own measurement, mean over the run after the
//!    first records) of the same run headless (`run_training` with an in-memory observer) and
//!    through the server (POST /api/runs) with 50 SSE clients following it, alternated for
//!    MOCO_BENCH_ROUNDS rounds (3) to spread machine noise; the goal is a gap within 2 %.
//! 2. Latency percentiles of GET /api/runs and GET /api/runs/{id}/metrics under a bounded local
//!    load (tokio tasks on loopback, a fixed number of requests each) while a run trains.
//!
//! The server is the real one, bound in-process on 127.0.0.1:0 with a temporary data directory.
//! A CUDA device is used when there is one (bigger run), the CPU otherwise. MOCO_BENCH_QUICK=1
//! shrinks everything for a smoke run.
use futures::StreamExt;
use moco_server::config::{Preset, RunConfig};
use moco_server::server::{self, ServerConfig};
use moco_server::train::events::{metric, CollectingObserver};
use moco_server::train::stop::StopFlag;
use moco_server::train::{run_training, TrainRequest};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const SSE_CLIENTS: usize = 50;
const LOAD_TASKS: usize = 8;

struct Scale {
    device: &'static str,
    config: Value,
    requests_per_task: usize,
}

fn scale() -> Scale {
    let quick = std::env::var("MOCO_BENCH_QUICK").is_ok_and(|v| v == "1");
    let cuda = tch::Cuda::is_available();
    let (device, width, batch, images, epochs) = match (cuda, quick) {
        (true, false) => ("cuda:0", 64, 256, 256 * 120, 1),
        (true, true) => ("cuda:0", 32, 256, 256 * 30, 1),
        (false, false) => ("cpu", 16, 64, 64 * 40, 1),
        (false, true) => ("cpu", 8, 32, 32 * 12, 1),
    };
    let config = json!({
        "preset": "cifar",
        "name": "bench",
        "width": width,
        "batch_size": batch,
        "queue_size": batch * 16,
        "epochs": epochs,
        "dataset": {"kind": "synthetic", "synthetic_train": images, "synthetic_test": 256},
        // Every step reports metrics: the most events the server can be asked to carry.
        "metrics_every": 1,
        "knn_every": 0,
        "checkpoint_every": 0,
        "device": device,
    });
    Scale {
        device,
        config,
        requests_per_task: if quick { 50 } else { 400 },
    }
}

/// Mean images/s over the records after the first few (warm-up: allocator, cuDNN autotuning).
fn steady_mean(values: &[f64]) -> f64 {
    let skip = (values.len() / 10)
        .max(3)
        .min(values.len().saturating_sub(1));
    let rest = &values[skip..];
    rest.iter().sum::<f64>() / rest.len().max(1) as f64
}

fn headless(config: &Value, data_dir: &std::path::Path) -> f64 {
    let cfg = RunConfig::from_partial_json(config, Preset::Cifar).expect("bench config is valid");
    let device = moco_server::config::parse_device(&cfg.device)
        .unwrap()
        .resolve()
        .unwrap();
    let run_dir = tempfile::tempdir_in(data_dir).unwrap();
    let req = TrainRequest {
        config: cfg,
        data_dir: data_dir.to_path_buf(),
        run_dir: run_dir.path().to_path_buf(),
        device,
        stop: StopFlag::new(),
        resume_from: None,
        allow_config_change: false,
        parallel: None,
    };
    // On its own thread, as the server's worker runs it.
    let observer = std::thread::spawn(move || {
        let mut observer = CollectingObserver::default();
        run_training(&req, &mut observer).expect("headless training");
        observer
    })
    .join()
    .unwrap();
    let ips: Vec<f64> = observer
        .metrics()
        .filter_map(|m| m.values.get(metric::IMAGES_PER_SEC).copied())
        .collect();
    steady_mean(&ips)
}

async fn get_json(client: &reqwest::Client, url: String) -> Value {
    client.get(url).send().await.unwrap().json().await.unwrap()
}

async fn wait_finished(client: &reqwest::Client, base: &str, id: i64) -> Value {
    loop {
        let run = get_json(client, format!("{base}/api/runs/{id}")).await;
        let state = run["run"]["state"].as_str().unwrap().to_string();
        if !matches!(state.as_str(), "queued" | "running") {
            assert_eq!(state, "completed", "{run}");
            return run["run"].clone();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn create(client: &reqwest::Client, base: &str, config: &Value) -> i64 {
    let resp = client
        .post(format!("{base}/api/runs"))
        .json(config)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    resp.json::<Value>().await.unwrap()["run"]["id"]
        .as_i64()
        .unwrap()
}

/// images/s of a run created through the API while `SSE_CLIENTS` clients follow its events.
async fn through_server(client: &reqwest::Client, base: &str, config: &Value) -> (f64, usize) {
    let id = create(client, base, config).await;
    let mut followers = Vec::new();
    for _ in 0..SSE_CLIENTS {
        let resp = client
            .get(format!("{base}/api/runs/{id}/events"))
            .send()
            .await
            .unwrap();
        followers.push(tokio::spawn(async move {
            let mut stream = resp.bytes_stream();
            let mut events = 0usize;
            let mut pending = String::new();
            while let Some(Ok(chunk)) = stream.next().await {
                pending.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(end) = pending.find('\n') {
                    let line: String = pending.drain(..=end).collect();
                    if line.starts_with("id:") {
                        events += 1;
                    }
                    if line.starts_with("data:") && line.contains("\"state\":\"completed\"") {
                        return events;
                    }
                }
            }
            events
        }));
    }
    wait_finished(client, base, id).await;
    let mut delivered = 0;
    for f in followers {
        delivered += tokio::time::timeout(Duration::from_secs(30), f)
            .await
            .ok()
            .and_then(|r| r.ok())
            .unwrap_or(0);
    }
    let m = get_json(
        client,
        format!("{base}/api/runs/{id}/metrics?names=images_per_sec&max_points=100000"),
    )
    .await;
    let ips: Vec<f64> = m["series"]["images_per_sec"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p[1].as_f64().unwrap())
        .collect();
    (steady_mean(&ips), delivered)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// Latencies (ms) of `path` from `LOAD_TASKS` tasks sending `per_task` requests each, back to back.
async fn load(client: &reqwest::Client, url: String, per_task: usize) -> Vec<f64> {
    let mut tasks = Vec::new();
    for _ in 0..LOAD_TASKS {
        let client = client.clone();
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per_task);
            for _ in 0..per_task {
                let t = Instant::now();
                let resp = client.get(&url).send().await.unwrap();
                assert!(resp.status().is_success());
                let _ = resp.bytes().await.unwrap();
                lat.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort_by(|a, b| a.partial_cmp(b).unwrap());
    all
}

fn main() {
    let s = scale();
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("data");
    std::fs::create_dir_all(&data_dir).unwrap();
    let data_dir = data_dir.canonicalize().unwrap();
    println!(
        "server bench on {} ({} SSE clients): {}",
        s.device, SSE_CLIENTS, s.config
    );

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let bound = runtime
        .block_on(server::bind(&ServerConfig::new("127.0.0.1", 0, &data_dir)))
        .unwrap();
    let base = format!("http://{}", bound.local_addr());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let served = runtime.spawn(bound.serve(async {
        let _ = stop_rx.await;
    }));
    let client = reqwest::Client::new();

    // Warm-up (libtorch kernels, allocator) outside the measurement.
    let mut warm = s.config.clone();
    warm["dataset"]["synthetic_train"] = json!(s.config["batch_size"].as_i64().unwrap() * 4);
    headless(&warm, &data_dir);

    // Alternated so that slow phases of a shared machine hit both sides; the per-round ratio's
    // median is the headline.
    let rounds: usize = std::env::var("MOCO_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
        .max(1);
    let mut ratios = Vec::new();
    let (mut h_sum, mut v_sum) = (0.0, 0.0);
    for round in 1..=rounds {
        let h = headless(&s.config, &data_dir);
        let (v, d) = runtime.block_on(through_server(&client, &base, &s.config));
        println!(
            "round {round}: headless {h:.1} images/s, server + {SSE_CLIENTS} SSE clients \
             {v:.1} images/s ({d} events delivered)"
        );
        ratios.push(v / h);
        h_sum += h;
        v_sum += v;
    }
    ratios.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let median = ratios[ratios.len() / 2];
    println!(
        "training throughput: headless {:.1} images/s, through the server {:.1} images/s (means); \
         median per-round gap {:+.2} % (goal: within 2 %)",
        h_sum / rounds as f64,
        v_sum / rounds as f64,
        (1.0 - median) * 100.0
    );

    // API latency while a (longer) run trains.
    let mut long = s.config.clone();
    long["epochs"] = json!(50);
    let (runs_lat, metrics_lat, id) = runtime.block_on(async {
        let id = create(&client, &base, &long).await;
        // Let it train and record some metrics first.
        loop {
            let run = get_json(&client, format!("{base}/api/runs/{id}")).await;
            if run["run"]["step"].as_i64().unwrap() >= 5 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let runs = load(&client, format!("{base}/api/runs"), s.requests_per_task).await;
        let metrics = load(
            &client,
            format!("{base}/api/runs/{id}/metrics?names=loss,lr,top1&max_points=500"),
            s.requests_per_task,
        )
        .await;
        (runs, metrics, id)
    });
    for (name, lat) in [
        ("GET /api/runs", &runs_lat),
        ("GET /api/runs/{id}/metrics", &metrics_lat),
    ] {
        println!(
            "{name:<28} {} requests from {LOAD_TASKS} tasks while training: p50 {:.2} ms, p95 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            lat.len(),
            percentile(lat, 50.0),
            percentile(lat, 95.0),
            percentile(lat, 99.0),
            lat.last().copied().unwrap_or(f64::NAN)
        );
    }

    runtime.block_on(async {
        let _ = client
            .post(format!("{base}/api/runs/{id}/cancel"))
            .send()
            .await;
        let _ = stop_tx.send(());
        let _ = served.await;
    });
}
