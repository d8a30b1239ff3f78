//! Evaluations as jobs over the JSON API: a linear probe or a kNN of a run's checkpoint or of an
//! encoder file queues on the run's device, reports its epochs, ends with its scores; bad input
//! stores nothing and names the field; cancel, restart, delete; a crash leaves it interrupted and
//! a restart runs it again.
mod common;

use common::{tiny_run, Server, PATIENCE};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// The tiny run's dataset, for the probe's settings.
fn tiny_dataset() -> Value {
    tiny_run("", 1)["dataset"].clone()
}

async fn create_eval(server: &Server, body: &Value) -> i64 {
    let (status, created) = server.post("/api/evals", body).await;
    assert_eq!(status, 201, "{created}");
    created["eval"]["id"].as_i64().unwrap()
}

async fn eval_detail(server: &Server, id: i64) -> Value {
    server.get_json(&format!("/api/evals/{id}")).await
}

/// Polls the evaluation until `ok` holds of its summary.
async fn wait_eval(server: &Server, id: i64, ok: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let detail = eval_detail(server, id).await;
        if ok(&detail["eval"]) {
            return detail;
        }
        assert!(
            start.elapsed() < PATIENCE,
            "evaluation {id} did not get there; last seen: {detail}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_eval_state(server: &Server, id: i64, states: &[&str]) -> Value {
    wait_eval(server, id, |e| {
        states.contains(&e["state"].as_str().unwrap())
    })
    .await
}

/// A trained tiny run (one epoch: a full checkpoint and an encoder export).
async fn trained_run(server: &Server) -> i64 {
    let id = server.create_run(&tiny_run("probed", 1)).await;
    let run = server.wait_finished(id).await;
    assert_eq!(run["state"], "completed", "{run}");
    id
}

/// A probe long enough to be caught running: the moco protocol sends every step's crops through
/// the backbone (64 images in batches of 16: 4 steps per epoch).
fn long_probe(run_id: i64, epochs: i64) -> Value {
    json!({"run_id": run_id, "protocol": "moco", "device": "cpu",
           "settings": {"epochs": epochs, "batch_size": 16, "loader_threads": 1}})
}

#[tokio::test]
async fn a_probe_of_a_runs_checkpoint_reports_every_epoch_and_its_scores() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"));
    let run = trained_run(&server).await;
    let ckpts = server.checkpoints(run).await;

    let id = create_eval(
        &server,
        &json!({"run_id": run, "protocol": "fast", "device": "cpu",
                "settings": {"epochs": 3, "batch_size": 16, "loader_threads": 1}}),
    )
    .await;
    let done = wait_eval_state(&server, id, &["completed", "failed"]).await;
    let eval = &done["eval"];
    assert_eq!(eval["state"], "completed", "{done}");
    assert_eq!(eval["label"], "linear (fast)");
    assert_eq!(eval["dataset"], "synthetic");
    assert_eq!(eval["encoder_epoch"], 1);
    assert_eq!(eval["encoder_arch"], "resnet18");
    // By default the newest checkpoint, the encoder export where both were written at one step.
    let export = ckpts.iter().find(|c| c["kind"] == "encoder").unwrap();
    assert_eq!(eval["checkpoint_id"], export["id"]);
    assert_eq!(eval["encoder_sha256"], export["sha256"]);
    // 64 training images in batches of 16, scored after every epoch.
    let steps: Vec<i64> = done["epochs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["step"].as_i64().unwrap())
        .collect();
    assert_eq!(steps, vec![4, 8, 12]);
    assert!(done["epochs"].as_array().unwrap().iter().all(|e| e["loss"]
        .as_f64()
        .unwrap()
        .is_finite()
        && e["top1"].is_number()));
    let (top1, top5) = (
        eval["top1"].as_f64().unwrap(),
        eval["top5"].as_f64().unwrap(),
    );
    assert!((0.0..=100.0).contains(&top1) && top5 >= top1, "{eval}");
    assert_eq!(eval["top1"], done["epochs"][2]["top1"]);
    assert_eq!(eval["progress"], 1.0);
    assert_eq!(done["result"]["protocol"], "fast");
    assert_eq!(done["result"]["backbone_unchanged"], true);
    assert_eq!(done["result"]["test_images"], 32);
    assert_eq!(done["settings"]["epochs"], 3);
    // Its features are kept for the next probe of the same encoder.
    let features = std::fs::read_dir(tmp.path().join("data/features"))
        .unwrap()
        .count();
    assert_eq!(features, 1);

    // The run's kNN of the same checkpoint, and a transfer of its export to another set.
    let knn = create_eval(
        &server,
        &json!({"run_id": run, "method": "knn", "device": "cpu",
                "settings": {"k": 10, "loader_threads": 1}}),
    )
    .await;
    let mut other = tiny_dataset();
    other["synthetic_train"] = json!(48);
    let export_path = std::fs::read_dir(tmp.path().join(format!("data/runs/{run}")))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .find(|n| n.starts_with("encoder-"))
        .unwrap();
    let transfer = create_eval(
        &server,
        &json!({"encoder": format!("runs/{run}/{export_path}"), "protocol": "fast",
                "device": "cpu",
                "settings": {"epochs": 2, "batch_size": 16, "loader_threads": 1, "dataset": other}}),
    )
    .await;
    let knn = wait_eval_state(&server, knn, &["completed", "failed"]).await;
    assert_eq!(knn["eval"]["state"], "completed", "{knn}");
    assert_eq!(knn["eval"]["label"], "knn");
    assert!(knn["eval"]["top1"].as_f64().unwrap() >= 0.0);
    assert!(knn["eval"]["top5"].is_null());
    assert_eq!(knn["result"]["k"], 10);
    let transfer = wait_eval_state(&server, transfer, &["completed", "failed"]).await;
    assert_eq!(transfer["eval"]["state"], "completed", "{transfer}");
    assert!(transfer["eval"]["run_id"].is_null());
    assert_eq!(transfer["result"]["train_images"], 48);
    assert_eq!(transfer["eval"]["encoder_sha256"], export["sha256"]);

    // Listed newest first, all of them or a run's.
    let all = server.get_json("/api/evals").await;
    let ids: Vec<i64> = all["evals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids.len(), 3);
    assert_eq!(ids[0], transfer["eval"]["id"].as_i64().unwrap());
    let of_run = server.get_json(&format!("/api/evals?runs={run}")).await;
    assert_eq!(of_run["evals"].as_array().unwrap().len(), 2);
    let resp = server.get("/api/evals?runs=1,x").await;
    assert_eq!(resp.status().as_u16(), 400);

    // Deleting the run takes its evaluations with it; the file's evaluation stays.
    let (status, _) = server.delete(&format!("/api/runs/{run}")).await;
    assert_eq!(status, 204);
    assert_eq!(
        server.get_json("/api/evals").await["evals"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn bad_evaluation_requests_name_the_field_and_store_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let server = Server::start(&data);
    let run = trained_run(&server).await;
    std::fs::create_dir_all(data.join("encoders")).unwrap();
    std::fs::write(
        data.join("encoders/notes.safetensors"),
        b"not a safetensors file",
    )
    .unwrap();
    // A folder of images of a single class: nothing to classify.
    std::fs::create_dir_all(data.join("one-class/cats")).unwrap();
    image::RgbImage::from_pixel(8, 8, image::Rgb([10, 20, 30]))
        .save(data.join("one-class/cats/a.png"))
        .unwrap();

    let cases = [
        (json!({"protocol": "fast"}), "run_id", "give run_id"),
        (json!({"run_id": 999}), "run_id", "there is no run 999"),
        (
            json!({"run_id": run, "checkpoint_id": 999}),
            "checkpoint_id",
            "has no checkpoint 999",
        ),
        (
            json!({"run_id": run, "encoder": "x"}),
            "encoder",
            "not both",
        ),
        (json!({"encoder": "../etc/passwd"}), "encoder", "'..'"),
        (
            json!({"encoder": "encoders/notes.safetensors", "settings": {"dataset": tiny_dataset()}}),
            "encoder",
            "encoders/notes.safetensors",
        ),
        (
            json!({"encoder": "encoders/notes.safetensors"}),
            "settings.dataset",
            "is required",
        ),
        (
            json!({"run_id": run, "settings": {"epochs": 0}}),
            "settings.epochs",
            "between 1",
        ),
        (
            json!({"run_id": run, "settings": {"epochz": 1}}),
            "settings.epochz",
            "unknown",
        ),
        (
            json!({"run_id": run, "method": "svm"}),
            "method",
            "unknown variant",
        ),
        (json!({"run_id": run, "device": "tpu"}), "device", "cuda:N"),
        (
            json!({"run_id": run, "settings": {"dataset": {"use_unlabeled": true}}}),
            "settings.dataset.use_unlabeled",
            "labelled",
        ),
        (
            json!({"run_id": run, "settings": {"dataset": {"kind": "image_folder", "path": "one-class"}}}),
            "settings.dataset",
            "1 class",
        ),
        (
            json!({"run_id": run, "settings": {"dataset": {"kind": "image_folder", "path": "/etc"}}}),
            "settings.dataset.path",
            "absolute",
        ),
    ];
    for (body, field, needle) in cases {
        let (status, answer) = server.post("/api/evals", &body).await;
        assert_eq!(status, 422, "{body}: {answer}");
        let error = &answer["errors"][0];
        assert_eq!(error["field"], field, "{body}: {answer}");
        let message = error["message"].as_str().unwrap();
        assert!(message.contains(needle), "{body}: {message}");
        assert!(
            !message.contains(data.to_str().unwrap()),
            "the data directory leaked: {message}"
        );
    }
    assert!(server.get_json("/api/evals").await["evals"]
        .as_array()
        .unwrap()
        .is_empty());
    for path in ["/api/evals/999", "/api/evals/abc"] {
        assert_eq!(server.get(path).await.status().as_u16(), 404, "{path}");
    }
}

#[tokio::test]
async fn evaluations_queue_behind_training_cancel_restart_and_survive_a_crash() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut server = Server::start(&data);
    let run = trained_run(&server).await;

    // A long run holds the CPU's one slot: the evaluation waits for it.
    let long = server.create_run(&tiny_run("long", 500)).await;
    server.wait_state(long, &["running"]).await;
    let waiting = create_eval(&server, &long_probe(run, 1)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        eval_detail(&server, waiting).await["eval"]["state"],
        "queued"
    );
    let (status, body) = server
        .post(&format!("/api/evals/{waiting}/cancel"), &json!({}))
        .await;
    assert_eq!(
        (status, &body["eval"]["state"]),
        (200, &json!("cancelled")),
        "{body}"
    );
    let (status, body) = server
        .post(&format!("/api/evals/{waiting}/cancel"), &json!({}))
        .await;
    assert_eq!(status, 409, "{body}");
    let (status, body) = server
        .post(&format!("/api/evals/{waiting}/restart"), &json!({}))
        .await;
    assert_eq!(
        (status, &body["eval"]["state"]),
        (200, &json!("queued")),
        "{body}"
    );
    // A file evaluated by its hash: changed while it waits, it is not evaluated in its new form.
    let run_files: Vec<std::path::PathBuf> = std::fs::read_dir(data.join(format!("runs/{run}")))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let export = run_files
        .iter()
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("encoder-")
        })
        .unwrap();
    std::fs::create_dir_all(data.join("encoders")).unwrap();
    std::fs::copy(export, data.join("encoders/moving.safetensors")).unwrap();
    let moving = create_eval(
        &server,
        &json!({"encoder": "encoders/moving.safetensors", "method": "knn", "device": "cpu",
                "settings": {"dataset": tiny_dataset(), "loader_threads": 1}}),
    )
    .await;
    let full = run_files
        .iter()
        .find(|p| p.to_str().unwrap().ends_with(".ckpt.safetensors"))
        .unwrap();
    std::fs::copy(full, data.join("encoders/moving.safetensors")).unwrap();
    let (status, _) = server
        .post(&format!("/api/runs/{long}/cancel"), &json!({}))
        .await;
    assert_eq!(status, 200);
    let done = wait_eval_state(&server, waiting, &["completed", "failed"]).await;
    assert_eq!(done["eval"]["state"], "completed", "{done}");
    let moved = wait_eval_state(&server, moving, &["completed", "failed"]).await;
    assert_eq!(moved["eval"]["state"], "failed", "{moved}");
    let error = moved["eval"]["error"].as_str().unwrap();
    assert!(
        error.starts_with("encoders/moving.safetensors changed since the evaluation was queued"),
        "{error}"
    );
    let (status, body) = server
        .post(&format!("/api/evals/{waiting}/restart"), &json!({}))
        .await;
    assert_eq!(status, 409, "{body}");

    // A running evaluation stops within a step when cancelled, and cannot be deleted meanwhile.
    let running = create_eval(&server, &long_probe(run, 1000)).await;
    wait_eval(&server, running, |e| {
        e["state"] == "running" && e["step"].as_i64() > Some(0)
    })
    .await;
    let (status, body) = server.delete(&format!("/api/evals/{running}")).await;
    assert_eq!(status, 409, "{body}");
    let (status, body) = server.delete(&format!("/api/runs/{run}")).await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("evaluation"),
        "{body}"
    );
    let (status, _) = server
        .post(&format!("/api/evals/{running}/cancel"), &json!({}))
        .await;
    assert_eq!(status, 200);
    let cancelled = wait_eval_state(&server, running, &["cancelled", "completed", "failed"]).await;
    assert_eq!(cancelled["eval"]["state"], "cancelled", "{cancelled}");
    assert!(cancelled["eval"]["step"].as_i64().unwrap() < 4000);
    let (status, _) = server.delete(&format!("/api/evals/{running}")).await;
    assert_eq!(status, 204);
    assert_eq!(
        server
            .get(&format!("/api/evals/{running}"))
            .await
            .status()
            .as_u16(),
        404
    );

    // A crash mid-evaluation: the next server finds it interrupted; restarted, it runs again.
    let crashed = create_eval(&server, &long_probe(run, 1000)).await;
    // Its speed, hence its ETA, is known within a second of its first step.
    wait_eval(&server, crashed, |e| {
        e["state"] == "running" && e["eta_seconds"].as_f64().is_some_and(|s| s > 0.0)
    })
    .await;
    server.crash();
    let server = Server::start(&data);
    let after = eval_detail(&server, crashed).await;
    assert_eq!(after["eval"]["state"], "interrupted", "{after}");
    assert!(
        after["eval"]["error"].as_str().unwrap().contains("restart"),
        "{after}"
    );
    let (status, body) = server
        .post(&format!("/api/evals/{crashed}/restart"), &json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    // It runs again (from its first step: an evaluation keeps no state between attempts).
    let again = wait_eval(&server, crashed, |e| {
        e["state"] == "running" && e["step"].as_i64() > Some(0)
    })
    .await;
    assert!(again["eval"]["error"].is_null(), "{again}");
    let (status, _) = server
        .post(&format!("/api/evals/{crashed}/cancel"), &json!({}))
        .await;
    assert_eq!(status, 200);
    wait_eval_state(&server, crashed, &["cancelled"]).await;
}
