//! The life of runs across cancels, deletes, crashes and shutdowns: queued runs wait for their
//! device, cancel stops a run within a step, a crashed server's runs come back interrupted and
//! resume from their checkpoint, and SIGTERM checkpoints the running run before the process exits.
mod common;

use common::{is_final_state, tiny_run, Server, SseReader};
use serde_json::{json, Value};

fn step(run: &Value) -> i64 {
    run["step"].as_i64().unwrap()
}

fn latest_full(ckpts: &[Value]) -> Option<&Value> {
    ckpts
        .iter()
        .filter(|c| c["kind"] == "full")
        .max_by_key(|c| c["step"].as_i64().unwrap())
}

/// Steps of the loss series, in order.
async fn loss_steps(server: &Server, id: i64) -> Vec<i64> {
    let m = server
        .get_json(&format!(
            "/api/runs/{id}/metrics?names=loss&max_points=100000"
        ))
        .await;
    m["series"]["loss"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p[0].as_i64().unwrap())
        .collect()
}

#[tokio::test]
async fn cancel_stops_running_and_queued_runs_and_delete_removes_them() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"));
    let a = server.create_run(&tiny_run("long a", 500)).await;
    let b = server.create_run(&tiny_run("waiting b", 500)).await;

    let run_a = server
        .wait_run(a, |r| r["state"] == "running" && step(r) >= 1)
        .await;
    assert_eq!(run_a["total_steps"], 1000);
    assert!(run_a["eta_seconds"].as_f64().unwrap() > 0.0);
    assert!(run_a["progress"].as_f64().unwrap() > 0.0);
    // One run at a time per device: b waits while a trains.
    assert_eq!(server.run(b).await["state"], "queued");

    // Running runs cannot be deleted; completed ones cannot be resumed.
    let (status, body) = server.delete(&format!("/api/runs/{a}")).await;
    assert_eq!(status, 409, "{body}");
    assert!(body["error"].as_str().unwrap().contains("cancel"));

    // The queued run is cancelled at once and never starts.
    let (status, body) = server
        .post(&format!("/api/runs/{b}/cancel"), &json!({}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["run"]["state"], "cancelled");
    // The running one stops within a step, saving a full checkpoint where it stopped.
    let (status, body) = server
        .post(&format!("/api/runs/{a}/cancel"), &json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    let run_a = server
        .wait_state(a, &["cancelled", "failed", "completed"])
        .await;
    assert_eq!(run_a["state"], "cancelled", "{run_a}");
    assert!(step(&run_a) < 1000);
    let ckpts = server.checkpoints(a).await;
    assert_eq!(latest_full(&ckpts).unwrap()["step"], run_a["step"]);

    let run_b = server.run(b).await;
    assert_eq!(run_b["state"], "cancelled");
    assert!(run_b["started_at"].is_null(), "{run_b}");
    assert_eq!(step(&run_b), 0);
    assert!(server.checkpoints(b).await.is_empty());

    // Cancelling twice is a conflict, not a change.
    let (status, _) = server
        .post(&format!("/api/runs/{a}/cancel"), &json!({}))
        .await;
    assert_eq!(status, 409);

    // Delete takes the rows and the files.
    let run_dir = server.data_dir.join(format!("runs/{a}"));
    assert!(run_dir.is_dir());
    let (status, _) = server.delete(&format!("/api/runs/{a}")).await;
    assert_eq!(status, 204);
    assert!(!run_dir.exists());
    assert_eq!(server.get(&format!("/api/runs/{a}")).await.status(), 404);
    assert_eq!(
        server
            .get(&format!("/api/runs/{a}/checkpoints"))
            .await
            .status(),
        404
    );
    let (status, _) = server.delete(&format!("/api/runs/{a}")).await;
    assert_eq!(status, 404);
    let (status, _) = server.delete(&format!("/api/runs/{b}")).await;
    assert_eq!(status, 204);
    assert_eq!(server.run_count().await, 0);
}

#[tokio::test]
async fn a_run_left_running_by_a_crash_is_interrupted_and_resumes_from_its_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut server = Server::start(&data);
    let id = server.create_run(&tiny_run("survivor", 500)).await;
    // Wait for a full checkpoint (one per epoch of 2 steps), then kill the process outright.
    let start = std::time::Instant::now();
    loop {
        let ckpts = server.checkpoints(id).await;
        if latest_full(&ckpts).is_some_and(|c| c["step"].as_i64().unwrap() >= 2) {
            break;
        }
        assert!(start.elapsed() < common::PATIENCE, "no checkpoint came");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    server.crash();

    let server = Server::start(&data);
    let run = server.run(id).await;
    assert_eq!(run["state"], "interrupted", "{run}");
    assert!(run["error"].as_str().unwrap().contains("stopped"), "{run}");
    let ckpt_step = latest_full(&server.checkpoints(id).await).unwrap()["step"]
        .as_i64()
        .unwrap();
    assert!(ckpt_step >= 2);

    // Resume: the run trains again from the checkpoint's step, not from 0.
    let mut events = SseReader::open(&server, id, None).await;
    let history = events
        .until(|e| e.event == "state" && e.data["state"] == "interrupted")
        .await;
    assert_eq!(history[0].data["state"], "queued");
    let (status, body) = server
        .post(&format!("/api/runs/{id}/resume"), &json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["run"]["state"], "queued");
    let seen = events.until(|e| e.event == "metrics").await;
    assert_eq!(seen[0].event, "state");
    assert_eq!(seen[0].data["state"], "queued");
    assert_eq!(seen[1].event, "state");
    assert_eq!(seen[1].data["state"], "running");
    assert_eq!(seen[1].data["step"], ckpt_step);
    let first_metrics = seen.last().unwrap();
    assert_eq!(first_metrics.data["step"], ckpt_step + 1);
    assert!(seen.iter().any(|e| e.event == "log"
        && e.data["message"]
            .as_str()
            .unwrap()
            .contains(&format!("resuming at step {ckpt_step}"))));

    let (status, _) = server
        .post(&format!("/api/runs/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(status, 200);
    let run = server.wait_state(id, &["cancelled"]).await;
    assert!(step(&run) > ckpt_step);
    // Metrics the dead process wrote after its checkpoint were replaced: one point per step.
    let steps = loss_steps(&server, id).await;
    assert_eq!(steps, (1..=step(&run)).collect::<Vec<_>>());
}

#[tokio::test]
async fn sigterm_checkpoints_the_running_run_and_auto_resume_continues_it() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut server = Server::start(&data);
    let id = server.create_run(&tiny_run("interrupted", 500)).await;
    let mut events = SseReader::open(&server, id, None).await;
    server
        .wait_run(id, |r| r["state"] == "running" && step(r) >= 1)
        .await;

    let status = server.terminate();
    assert!(status.success(), "{status:?}");
    // The open event stream saw the run interrupted, then ended with the server.
    let seen = events.until(is_final_state).await;
    let last = seen.last().unwrap();
    assert_eq!(last.data["state"], "interrupted", "{last:?}");
    let stopped_at = last.data["step"].as_i64().unwrap();
    assert!(stopped_at >= 1);
    assert!(events.next().await.is_none(), "the stream ends on shutdown");

    // Restarted with --auto-resume, the run continues from the checkpoint written at shutdown.
    let mut server = Server::start_with(&data, &["--auto-resume"], &[]);
    let ckpt = latest_full(&server.checkpoints(id).await).unwrap().clone();
    assert_eq!(ckpt["step"], stopped_at);
    let run = server
        .wait_run(id, |r| r["state"] == "running" && step(r) > stopped_at)
        .await;
    assert!(run["error"].is_null());
    let status = server.terminate();
    assert!(status.success());

    let server = Server::start(&data);
    let run = server.run(id).await;
    assert_eq!(run["state"], "interrupted");
    assert_eq!(
        latest_full(&server.checkpoints(id).await).unwrap()["step"],
        run["step"]
    );
}

#[tokio::test]
async fn several_runs_share_a_device_when_allowed() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start_with(&tmp.path().join("data"), &["--runs-per-device", "2"], &[]);
    let a = server.create_run(&tiny_run("a", 500)).await;
    let b = server.create_run(&tiny_run("b", 500)).await;
    let c = server.create_run(&tiny_run("c", 500)).await;
    server
        .wait_run(a, |r| r["state"] == "running" && step(r) >= 1)
        .await;
    server
        .wait_run(b, |r| r["state"] == "running" && step(r) >= 1)
        .await;
    assert_eq!(server.run(c).await["state"], "queued");
    for id in [c, a, b] {
        let (status, _) = server
            .post(&format!("/api/runs/{id}/cancel"), &json!({}))
            .await;
        assert_eq!(status, 200);
    }
    for id in [a, b] {
        server.wait_state(id, &["cancelled"]).await;
    }
    assert!(server.run(c).await["started_at"].is_null());

    // A cancelled run resumes from its checkpoint; a completed run cannot resume.
    let (status, body) = server
        .post(&format!("/api/runs/{a}/resume"), &json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = server
        .post(&format!("/api/runs/{a}/resume"), &json!({}))
        .await;
    assert_eq!(status, 409, "already queued or running");
    let (status, _) = server
        .post(&format!("/api/runs/{a}/cancel"), &json!({}))
        .await;
    assert_eq!(status, 200);
    server.wait_state(a, &["cancelled"]).await;
    let done = server.create_run(&tiny_run("short", 1)).await;
    server.wait_state(done, &["completed"]).await;
    let (status, body) = server
        .post(&format!("/api/runs/{done}/resume"), &json!({}))
        .await;
    assert_eq!(status, 409);
    assert!(body["error"].as_str().unwrap().contains("completed"));
}
