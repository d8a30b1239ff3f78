//! What the server refuses: invalid configs (422, nothing stored), paths that leave the data
//! directory, files it never registered, oversized bodies, and changes without the access token.
mod common;

use common::{tiny_run, Server};
use serde_json::{json, Value};
use std::path::Path;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn fields(body: &Value) -> Vec<String> {
    body["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("no errors in {body}"))
        .iter()
        .map(|e| {
            assert!(!e["message"].as_str().unwrap().is_empty());
            e["field"].as_str().unwrap().to_string()
        })
        .collect()
}

fn write_png(path: &Path, side: u32, shade: u8) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let img = image::RgbImage::from_fn(side, side, |x, y| {
        image::Rgb([shade, (x * 7) as u8, (y * 5) as u8])
    });
    img.save(path).unwrap();
}

/// A CIFAR-10 binary directory with `per_file` records in each of the six files.
fn write_cifar10(dir: &Path, per_file: usize) {
    std::fs::create_dir_all(dir).unwrap();
    let records: Vec<(u8, Vec<u8>)> = (0..per_file)
        .map(|i| ((i % 10) as u8, vec![(i * 3) as u8; 32 * 32 * 3]))
        .collect();
    let bytes = moco_server::data::cifar::encode_records(&records, false);
    for name in [
        "data_batch_1.bin",
        "data_batch_2.bin",
        "data_batch_3.bin",
        "data_batch_4.bin",
        "data_batch_5.bin",
        "test_batch.bin",
    ] {
        std::fs::write(dir.join(name), &bytes).unwrap();
    }
}

#[tokio::test]
async fn invalid_configs_get_422_naming_fields_and_store_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"));

    let cases: Vec<(Value, Vec<&str>)> = vec![
        (
            json!({"queue_size": 1000, "batch_size": 256}),
            vec!["queue_size", "batch_size"],
        ),
        (json!({"epochz": 3}), vec!["epochz"]),
        (json!({"epochs": "three"}), vec!["epochs"]),
        (json!({"preset": "v9"}), vec!["preset"]),
        (json!({"temperature": -1.0}), vec!["temperature"]),
        (json!({"dataset": {"kind": "mnist"}}), vec!["dataset.kind"]),
        (
            json!({"dataset": {"kind": "cifar10"}}),
            vec!["dataset.path"],
        ),
        (json!({"device": "tpu"}), vec!["device"]),
        (json!({"device": "cuda:7"}), vec!["device"]),
        (json!([1, 2, 3]), vec![""]),
    ];
    for (body, expected) in cases {
        let (status, answer) = server.post("/api/runs", &body).await;
        assert_eq!(status, 422, "{body} → {answer}");
        assert_eq!(fields(&answer), expected, "{body}");
    }
    // Not JSON at all: 400 with the same shape.
    let resp = server
        .client
        .post(server.at("/api/runs"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.unwrap();
    assert!(body["errors"][0]["message"]
        .as_str()
        .unwrap()
        .contains("JSON"));

    // A body over 1 MiB is refused from its declared length, before any of it is read.
    let addr = server.url.trim_start_matches("http://").to_string();
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /api/runs HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{{\"name\": \"",
        2 * 1024 * 1024
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");

    assert_eq!(server.run_count().await, 0, "nothing was stored");
    assert!(std::fs::read_dir(server.data_dir.join("runs"))
        .unwrap()
        .next()
        .is_none());
}

#[tokio::test]
async fn dataset_paths_stay_inside_the_data_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    // Inside: an image folder with train/test splits and a CIFAR-10 binary set.
    for (split, n) in [("train", 3), ("test", 1)] {
        for class in ["cat", "dog"] {
            for i in 0..n {
                write_png(
                    &data.join(format!("sets/shapes/{split}/{class}/{i}.png")),
                    20,
                    40,
                );
            }
        }
    }
    write_cifar10(&data.join("sets/cifar/cifar-10-batches-bin"), 4);
    // Outside, reachable only through a symbolic link placed inside.
    let outside = tmp.path().join("outside");
    for i in 0..3 {
        write_png(&outside.join(format!("secret/{i}.png")), 20, 200);
    }
    std::fs::create_dir_all(tmp.path().join("x")).unwrap();
    std::os::unix::fs::symlink(&outside, data.join("escape")).unwrap();
    let server = Server::start(&data);

    let with_dataset = |ds: Value| {
        let mut cfg = tiny_run("paths", 1);
        cfg["dataset"] = ds;
        cfg
    };
    let refused = [
        (
            json!({"kind": "image_folder", "path": "../x"}),
            "dataset.path",
            "..",
        ),
        (
            json!({"kind": "image_folder", "path": "sets/../../x"}),
            "dataset.path",
            "..",
        ),
        (
            json!({"kind": "image_folder", "path": "/etc"}),
            "dataset.path",
            "absolute",
        ),
        (
            json!({"kind": "image_folder", "path": tmp.path().join("outside").to_str().unwrap()}),
            "dataset.path",
            "absolute",
        ),
        (
            json!({"kind": "image_folder", "path": "escape"}),
            "dataset.path",
            "outside",
        ),
        (
            json!({"kind": "image_folder", "path": "escape/secret"}),
            "dataset.path",
            "outside",
        ),
        (
            json!({"kind": "image_folder", "path": "sets/none"}),
            "dataset.path",
            "does not exist",
        ),
        (
            json!({"kind": "cifar10", "path": "sets/shapes"}),
            "dataset.kind",
            "image_folder",
        ),
    ];
    for (ds, field, words) in refused {
        let (status, body) = server.post("/api/runs", &with_dataset(ds.clone())).await;
        assert_eq!(status, 422, "{ds} → {body}");
        assert_eq!(fields(&body), vec![field], "{ds}");
        let message = body["errors"][0]["message"].as_str().unwrap();
        assert!(message.contains(words), "{ds}: {message}");
    }
    assert_eq!(server.run_count().await, 0);

    // The listing offers what is inside (synthetic first) and nothing behind the link.
    let list = server.get_json("/api/datasets").await;
    let list = list["datasets"].as_array().unwrap();
    assert_eq!(list[0]["kind"], "synthetic");
    let entries: Vec<(String, String, i64, i64, i64)> = list[1..]
        .iter()
        .map(|d| {
            (
                d["kind"].as_str().unwrap().to_string(),
                d["path"].as_str().unwrap().to_string(),
                d["images"].as_i64().unwrap(),
                d["test_images"].as_i64().unwrap(),
                d["classes"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        entries,
        vec![
            ("cifar10".into(), "sets/cifar".into(), 20, 4, 10),
            ("image_folder".into(), "sets/shapes".into(), 6, 2, 2),
        ]
    );
    assert_eq!(list[2]["image_size"], 20);

    // A listed dataset is accepted as it is offered.
    let (status, body) = server
        .post("/api/runs", &with_dataset(list[2]["config"].clone()))
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["run"]["dataset"], "image_folder:sets/shapes");
    let id = body["run"]["id"].as_i64().unwrap();
    let (status, _) = server
        .post(&format!("/api/runs/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn only_registered_files_are_served() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"));
    let id = server.create_run(&tiny_run("one", 1)).await;
    server.wait_state(id, &["completed"]).await;
    let ckpts = server.checkpoints(id).await;
    assert!(!ckpts.is_empty());
    let max_id = ckpts
        .iter()
        .map(|c| c["id"].as_i64().unwrap())
        .max()
        .unwrap();
    // A file dropped into the run's folder is not a checkpoint.
    std::fs::write(
        server
            .data_dir
            .join(format!("runs/{id}/planted.safetensors")),
        b"not yours",
    )
    .unwrap();
    let other = server.create_run(&tiny_run("two", 1)).await;
    let (status, _) = server
        .post(&format!("/api/runs/{other}/cancel"), &json!({}))
        .await;
    assert_eq!(status, 200);

    for path in [
        format!("/api/runs/{id}/checkpoints/{}/download", max_id + 1),
        format!("/api/runs/{id}/checkpoints/9999/download"),
        format!("/api/runs/{other}/checkpoints/{max_id}/download"),
        format!("/api/runs/{id}/checkpoints/planted.safetensors/download"),
        format!("/api/runs/{id}/checkpoints/..%2F..%2Fmoco.sqlite/download"),
        format!("/api/runs/{id}/checkpoints/-1/download"),
        "/api/runs/0/checkpoints/1/download".to_string(),
        "/api/runs/abc".to_string(),
        "/api/runs/99/metrics".to_string(),
        "/api/runs/99/events".to_string(),
    ] {
        let resp = server.get(&path).await;
        assert_eq!(resp.status(), 404, "{path}");
        let body: Value = resp.json().await.unwrap();
        assert!(body["error"].is_string(), "{path}: {body}");
    }

    // A registered file that went missing is a 404 too, never a server error.
    let ckpt = &ckpts[0];
    let rows = server.data_dir.join(format!("runs/{id}"));
    for entry in std::fs::read_dir(&rows).unwrap() {
        let p = entry.unwrap().path();
        if p.file_name().unwrap() != "planted.safetensors" {
            std::fs::remove_file(p).unwrap();
        }
    }
    let resp = server.get(ckpt["download_url"].as_str().unwrap()).await;
    assert_eq!(resp.status(), 404);
}

#[tokio::test]
async fn changes_need_the_token_when_one_is_set() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start_with(&tmp.path().join("data"), &["--token", "s3cret-token"], &[]);
    server.stdout_line("access token given");

    // Without it (or with a wrong one) nothing changes; reading stays open.
    let (status, body) = server.post("/api/runs", &tiny_run("no", 1)).await;
    assert_eq!(status, 401, "{body}");
    assert!(body["error"].as_str().unwrap().contains("Bearer"));
    let resp = server
        .client
        .post(server.at("/api/runs"))
        .bearer_auth("wrong")
        .json(&tiny_run("no", 1))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(server.run_count().await, 0);
    assert_eq!(server.get("/api/health").await.status(), 200);
    // Every operation the API document marks as a change answers 401 without it, as do the
    // pages' forms, the encoder uploads included.
    let doc = server.get_json("/api/openapi.json").await;
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            if op.get("security").is_none() {
                continue;
            }
            let concrete = path.replace("{id}", "1").replace("{name}", "x.safetensors");
            let resp = server
                .client
                .request(method.to_uppercase().parse().unwrap(), server.at(&concrete))
                .body("{}")
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 401, "{method} {concrete}");
        }
    }
    for form in [
        "/evals",
        "/evals/encoders",
        "/evals/1/cancel",
        "/runs/1/evaluate",
        "/sweeps",
        "/sweeps/plan",
        "/sweeps/1/cancel",
        "/sweeps/1/resume",
    ] {
        let resp = server.client.post(server.at(form)).send().await.unwrap();
        assert_eq!(resp.status(), 401, "{form}");
    }
    assert!(!server.data_dir.join("encoders/x.safetensors").exists());

    // With it, the run is created and can be cancelled and deleted with it only.
    let resp = server
        .client
        .post(server.at("/api/runs"))
        .bearer_auth("s3cret-token")
        .json(&tiny_run("yes", 500))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let id = resp.json::<Value>().await.unwrap()["run"]["id"]
        .as_i64()
        .unwrap();
    let (status, _) = server
        .post(&format!("/api/runs/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(status, 401);
    let resp = server
        .client
        .post(server.at(&format!("/api/runs/{id}/cancel")))
        .bearer_auth("s3cret-token")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    server.wait_state(id, &["cancelled"]).await;
    let (status, _) = server.delete(&format!("/api/runs/{id}")).await;
    assert_eq!(status, 401);

    // The login sets a cookie that browsers' forms authenticate with.
    let (status, _) = server.post("/api/login", &json!({"token": "nope"})).await;
    assert_eq!(status, 401);
    let resp = server
        .client
        .post(server.at("/api/login"))
        .json(&json!({"token": "s3cret-token"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let cookie = resp.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"));
    let pair = cookie.split(';').next().unwrap().to_string();
    let resp = server
        .client
        .delete(server.at(&format!("/api/runs/{id}")))
        .header("cookie", pair)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    assert_eq!(server.run_count().await, 0);
}

#[tokio::test]
async fn a_server_beyond_loopback_generates_and_requires_a_token() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start_with(&tmp.path().join("data"), &["--host", "0.0.0.0"], &[]);
    let line = server.stdout_line("access token");
    let token = line.rsplit(": ").next().unwrap().trim().to_string();
    assert_eq!(token.len(), 48, "{line}");
    let url = server.url.replace("0.0.0.0", "127.0.0.1");
    let client = reqwest::Client::new();
    let resp = client
        .post(format!("{url}/api/runs"))
        .json(&tiny_run("x", 1))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let resp = client
        .post(format!("{url}/api/runs"))
        .bearer_auth(&token)
        .json(&json!({"preset": "v9"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 422, "authorised, then validated");
}
