//! Sweeps over the JSON API: a grid queued as ordinary runs, its table (seeds folded) as JSON,
//! CSV and Markdown; an invalid member refused before anything is stored; cancel, resume, a
//! crash and a restart, delete.
mod common;

use common::{tiny_run, Server, PATIENCE};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

async fn sweep_detail(server: &Server, id: i64) -> Value {
    server.get_json(&format!("/api/sweeps/{id}")).await
}

/// Polls the sweep until `ok` holds of its detail.
async fn wait_sweep(server: &Server, id: i64, ok: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let detail = sweep_detail(server, id).await;
        if ok(&detail) {
            return detail;
        }
        assert!(
            start.elapsed() < PATIENCE,
            "sweep {id} did not get there; last seen: {detail}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn member_states(detail: &Value) -> Vec<String> {
    detail["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["run"]["state"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn a_sweep_queues_each_grid_point_as_a_run_and_tabulates_them_with_seeds_folded() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"));
    let spec = json!({
        "base": tiny_run("", 1),
        "vary": [{"field": "temperature", "values": [0.1, 0.2]}, {"field": "seed", "values": [0, 1]}]
    });

    // The plan says what would run, storing nothing.
    let (status, plan) = server.post("/api/sweeps/plan", &spec).await;
    assert_eq!(status, 200, "{plan}");
    assert_eq!(plan["runs"], 4);
    assert_eq!(
        plan["members"],
        json!([
            "temperature=0.1 seed=0",
            "temperature=0.1 seed=1",
            "temperature=0.2 seed=0",
            "temperature=0.2 seed=1"
        ])
    );
    assert!(
        plan["text"].as_str().unwrap().starts_with("4 runs, about "),
        "{plan}"
    );
    assert_eq!(server.run_count().await, 0);

    let (status, created) = server.post("/api/sweeps", &spec).await;
    assert_eq!(status, 201, "{created}");
    let id = created["sweep"]["id"].as_i64().unwrap();
    assert_eq!(created["sweep"]["name"], "temperature × seed");
    assert_eq!(created["sweep"]["members"], 4);
    // Each member is an ordinary run with its own name and config.
    let first = created["members"][0]["run"]["id"].as_i64().unwrap();
    let config = server.get_json(&format!("/api/runs/{first}")).await["config"].clone();
    assert_eq!(config["temperature"], 0.1);
    assert_eq!(config["seed"], 0);
    assert_eq!(
        config["name"],
        "temperature × seed · temperature=0.1 seed=0"
    );
    assert_eq!(server.run_count().await, 4);

    let done = wait_sweep(&server, id, |d| d["sweep"]["state"] == "finished").await;
    assert_eq!(member_states(&done), vec!["completed"; 4], "{done}");
    let rows = done["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "two temperatures, the seeds folded: {done}");
    assert_eq!(rows[0]["label"], "temperature=0.1");
    assert_eq!(rows[0]["outcome"], "2 completed");
    assert_eq!(rows[0]["negatives"], 256);
    assert_eq!(rows[0]["best_knn"]["n"], 2);
    let knn: Vec<f64> = done["members"].as_array().unwrap()[..2]
        .iter()
        .map(|m| m["run"]["best_knn"].as_f64().unwrap())
        .collect();
    let mean = rows[0]["best_knn"]["mean"].as_f64().unwrap();
    assert!(
        (mean - (knn[0] + knn[1]) / 2.0).abs() < 1e-9,
        "{mean} vs {knn:?}"
    );

    let csv = server
        .get(&format!("/api/sweeps/{id}/table?format=csv"))
        .await;
    assert_eq!(csv.status(), 200);
    assert_eq!(csv.headers()["content-type"], "text/csv; charset=utf-8");
    assert_eq!(
        csv.headers()["content-disposition"],
        format!("attachment; filename=\"sweep-{id}.csv\"")
    );
    let text = csv.text().await.unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(
        lines[0].starts_with("temperature,K,run_ids,state,seeds,best_knn_mean"),
        "{text}"
    );
    assert!(lines[1].starts_with("0.1,256,"), "{text}");
    let md = server
        .get(&format!("/api/sweeps/{id}/table?format=md"))
        .await
        .text()
        .await
        .unwrap();
    assert!(
        md.starts_with("| temperature | K | runs | state | best kNN % |"),
        "{md}"
    );
    let (status, bad) = status_and_json(
        server
            .get(&format!("/api/sweeps/{id}/table?format=xls"))
            .await,
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        bad["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("csv or md"),
        "{bad}"
    );

    let list = server.get_json("/api/sweeps").await;
    assert_eq!(list["sweeps"][0]["id"], id);
    assert_eq!(list["sweeps"][0]["counts"]["completed"], 4);

    // A linear probe of a member's checkpoint joins its row.
    let (status, created) = server
        .post(
            "/api/evals",
            &json!({"run_id": first, "protocol": "fast", "device": "cpu",
                    "settings": {"epochs": 2, "batch_size": 16, "loader_threads": 1}}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let eval = created["eval"]["id"].as_i64().unwrap();
    let start = Instant::now();
    let top1 = loop {
        let e = server.get_json(&format!("/api/evals/{eval}")).await;
        match e["eval"]["state"].as_str().unwrap() {
            "completed" => break e["eval"]["top1"].as_f64().unwrap(),
            "failed" => panic!("{e}"),
            _ => {}
        }
        assert!(start.elapsed() < PATIENCE, "{e}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let rows = sweep_detail(&server, id).await["rows"].clone();
    assert_eq!(rows[0]["linear_top1"]["n"], 1, "{rows}");
    assert_eq!(rows[0]["linear_top1"]["mean"].as_f64().unwrap(), top1);
    assert_eq!(rows[1]["linear_top1"], Value::Null);
}

use common::status_and_json;

#[tokio::test]
async fn an_invalid_member_or_grid_is_refused_naming_it_and_nothing_is_stored() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"));
    let (status, body) = server
        .post(
            "/api/sweeps",
            &json!({"base": tiny_run("", 1), "vary": [{"field": "queue_size", "values": [256, 100]}]}),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["errors"][0]["field"], "members[1].queue_size");
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .starts_with("queue_size=100: queue_size 100 must be a multiple"),
        "{body}"
    );
    let cases = [
        (
            json!({"base": tiny_run("", 1), "vary": [{"field": "momentun", "values": [0.9]}]}),
            "vary",
        ),
        (json!({"base": tiny_run("", 1), "recipe": "lr"}), "recipe"),
        (json!({"base": tiny_run("", 1), "vary": [], "extra": 1}), ""),
        (
            json!({"base": {"epochs": 0}, "vary": [{"field": "seed", "values": [1]}]}),
            "base.epochs",
        ),
    ];
    for (spec, field) in cases {
        let (status, body) = server.post("/api/sweeps", &spec).await;
        assert_eq!(status, 422, "{spec}: {body}");
        assert_eq!(body["errors"][0]["field"], field, "{spec}: {body}");
    }
    assert_eq!(server.run_count().await, 0);
    assert_eq!(server.get_json("/api/sweeps").await["sweeps"], json!([]));
    let (status, _) = server.post("/api/sweeps/99/cancel", &json!({})).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn a_sweep_cancels_resumes_survives_a_crash_and_is_deleted_with_its_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut server = Server::start(&data);
    // Members long enough to be caught running.
    let spec = json!({"name": "long", "base": tiny_run("", 1000),
                      "vary": [{"field": "seed", "values": [0, 1]}]});
    let (status, created) = server.post("/api/sweeps", &spec).await;
    assert_eq!(status, 201, "{created}");
    let id = created["sweep"]["id"].as_i64().unwrap();
    let runs: Vec<i64> = created["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["run"]["id"].as_i64().unwrap())
        .collect();
    // One device: the first member trains, the second waits its turn.
    server
        .wait_run(runs[0], |r| {
            r["state"] == "running" && r["step"].as_i64().unwrap() >= 2
        })
        .await;
    assert_eq!(server.run(runs[1]).await["state"], "queued");
    assert_eq!(sweep_detail(&server, id).await["sweep"]["state"], "running");

    let (status, body) = server
        .post(&format!("/api/sweeps/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    let cancelled = wait_sweep(&server, id, |d| d["sweep"]["state"] == "cancelled").await;
    assert_eq!(member_states(&cancelled), vec!["cancelled", "cancelled"]);
    // The running member wrote a checkpoint as it stopped.
    assert!(!server.checkpoints(runs[0]).await.is_empty());

    let (status, body) = server
        .post(&format!("/api/sweeps/{id}/resume"), &json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    server.wait_state(runs[0], &["running"]).await;
    assert_eq!(server.run(runs[1]).await["state"], "queued");

    // A crash: the next server finds the running member interrupted and the sweep intact.
    server.crash();
    let server = Server::start(&data);
    let after = sweep_detail(&server, id).await;
    assert_eq!(after["sweep"]["name"], "long");
    let states = member_states(&after);
    assert_eq!(states[0], "interrupted", "{after}");
    // The waiting member starts on the new server as soon as it is up.
    assert!(
        ["queued", "running"].contains(&states[1].as_str()),
        "{after}"
    );

    // Deleting is refused while a member runs, then takes the runs along.
    server.wait_state(runs[1], &["running"]).await;
    let (status, body) = server.delete(&format!("/api/sweeps/{id}")).await;
    assert_eq!(status, 409, "{body}");
    let (status, _) = server
        .post(&format!("/api/sweeps/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(status, 200);
    wait_sweep(&server, id, |d| d["sweep"]["state"] == "cancelled").await;
    let (status, body) = server.delete(&format!("/api/sweeps/{id}")).await;
    assert_eq!(status, 204, "{body}");
    assert_eq!(server.run_count().await, 0);
    let (status, _) = status_and_json(server.get(&format!("/api/sweeps/{id}")).await).await;
    assert_eq!(status, 404);
}
