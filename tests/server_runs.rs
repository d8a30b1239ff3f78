//! A run through the server, as a user drives it over HTTP: create it, watch it complete, read its
//! metrics, evaluations and checkpoints, and download the encoder it exported.
mod common;

use common::{sha256_hex, tiny_run, Server};
use serde_json::json;

#[tokio::test]
async fn a_run_completes_and_its_encoder_downloads_intact() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"));

    let (status, created) = server.post("/api/runs", &tiny_run("first", 2)).await;
    assert_eq!(status, 201, "{created}");
    let id = created["run"]["id"].as_i64().unwrap();
    assert_eq!(created["run"]["name"], "first");
    assert_eq!(created["run"]["state"], "queued");
    assert_eq!(created["run"]["device"], "cpu");
    assert_eq!(created["run"]["epochs"], 2);
    assert_eq!(created["config"]["width"], 8);
    assert_eq!(
        created["config"]["temperature"], 0.1,
        "cifar preset default"
    );

    let run = server.wait_state(id, &["completed", "failed"]).await;
    assert_eq!(run["state"], "completed", "{run}");
    // 64 images / batch 32 = 2 steps per epoch, 2 epochs.
    assert_eq!(run["step"], 4);
    assert_eq!(run["total_steps"], 4);
    assert_eq!(run["epoch"], 2);
    assert_eq!(run["progress"], 1.0);
    assert!(run["eta_seconds"].is_null());
    assert!(run["last_loss"].as_f64().unwrap().is_finite());
    assert!(run["images_per_sec"].as_f64().unwrap() > 0.0);
    let knn = run["last_knn"].as_f64().unwrap();
    assert!((0.0..=100.0).contains(&knn));
    assert!(run["best_knn"].as_f64().unwrap() >= knn);
    assert!(run["started_at"].is_string() && run["finished_at"].is_string());

    // Metrics: every step was recorded, and downsampling keeps at most max_points.
    let m = server
        .get_json(&format!("/api/runs/{id}/metrics?names=loss,lr"))
        .await;
    let loss = m["series"]["loss"].as_array().unwrap();
    let steps: Vec<i64> = loss.iter().map(|p| p[0].as_i64().unwrap()).collect();
    assert_eq!(steps, vec![1, 2, 3, 4]);
    assert_eq!(m["series"]["lr"].as_array().unwrap().len(), 4);
    assert_eq!(m["series"].as_object().unwrap().len(), 2);
    let m = server
        .get_json(&format!("/api/runs/{id}/metrics?names=loss&since_step=2"))
        .await;
    let steps: Vec<i64> = m["series"]["loss"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p[0].as_i64().unwrap())
        .collect();
    assert_eq!(steps, vec![3, 4]);
    let m = server
        .get_json(&format!("/api/runs/{id}/metrics?names=loss&max_points=2"))
        .await;
    let pts = m["series"]["loss"].as_array().unwrap();
    assert!(pts.len() <= 2 && !pts.is_empty(), "{m}");
    let all_values: Vec<f64> = loss.iter().map(|p| p[1].as_f64().unwrap()).collect();
    let max = all_values.iter().cloned().fold(f64::MIN, f64::max);
    assert!(
        pts.iter().any(|p| p[1].as_f64().unwrap() == max),
        "the maximum survives downsampling: {m}"
    );
    let m = server.get_json(&format!("/api/runs/{id}/metrics")).await;
    assert!(m["series"]["queue_fill"].is_array(), "all names by default");

    // The untrained encoder as epoch 0, then one kNN evaluation per epoch; the run's best and
    // last kNN are of the trained encoder.
    let evals = server
        .get_json(&format!("/api/runs/{id}/evaluations"))
        .await;
    let evals = evals["evaluations"].as_array().unwrap();
    let epochs: Vec<i64> = evals.iter().map(|e| e["epoch"].as_i64().unwrap()).collect();
    assert_eq!(epochs, vec![0, 1, 2]);
    assert_eq!(evals[0]["step"], 0);
    assert_eq!(evals[2]["knn_top1"].as_f64().unwrap(), knn);
    let trained_best = evals[1..]
        .iter()
        .map(|e| e["knn_top1"].as_f64().unwrap())
        .fold(f64::MIN, f64::max);
    assert_eq!(run["best_knn"].as_f64().unwrap(), trained_best);

    // The encoder export downloads byte for byte, with a clean name and its length.
    let ckpts = server.checkpoints(id).await;
    let encoder = ckpts
        .iter()
        .find(|c| c["kind"] == "encoder")
        .unwrap_or_else(|| panic!("no encoder export in {ckpts:?}"));
    assert!(ckpts.iter().any(|c| c["kind"] == "full" && c["step"] == 4));
    let url = encoder["download_url"].as_str().unwrap();
    assert_eq!(
        url,
        format!("/api/runs/{id}/checkpoints/{}/download", encoder["id"])
    );
    let resp = server.get(url).await;
    assert_eq!(resp.status(), 200);
    let headers = resp.headers().clone();
    let body = resp.bytes().await.unwrap();
    assert_eq!(body.len() as i64, encoder["size_bytes"].as_i64().unwrap());
    assert_eq!(
        headers["content-length"].to_str().unwrap(),
        body.len().to_string()
    );
    assert_eq!(
        headers["content-disposition"].to_str().unwrap(),
        format!("attachment; filename=\"run-{id}-encoder-epoch2.safetensors\"")
    );
    assert_eq!(sha256_hex(&body), encoder["sha256"].as_str().unwrap());
    // The safetensors header names torchvision-style tensors.
    let header_len = u64::from_le_bytes(body[..8].try_into().unwrap()) as usize;
    let header = std::str::from_utf8(&body[8..8 + header_len]).unwrap();
    assert!(header.contains("conv1.weight"), "{header}");

    // A single range: 206 with exactly those bytes; a range past the end: 416.
    let resp = server
        .client
        .get(server.at(url))
        .header("Range", "bytes=10-19")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 206);
    assert_eq!(
        resp.headers()["content-range"].to_str().unwrap(),
        format!("bytes 10-19/{}", body.len())
    );
    assert_eq!(&resp.bytes().await.unwrap()[..], &body[10..20]);
    let resp = server
        .client
        .get(server.at(url))
        .header("Range", format!("bytes={}-", body.len() + 10))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 416);

    // Files live in <data_dir>/runs/<id>/.
    let run_dir = server.data_dir.join("runs").join(id.to_string());
    let files: Vec<_> = std::fs::read_dir(&run_dir).unwrap().collect();
    assert!(files.len() >= 2, "{}", run_dir.display());

    // The Prometheus page counts it.
    let text = server.get("/metrics").await.text().await.unwrap();
    assert!(text.contains("moco_runs{state=\"completed\"} 1"), "{text}");
    assert!(text.contains("moco_runs{state=\"running\"} 0"), "{text}");
}

#[tokio::test]
async fn runs_list_filters_searches_and_sorts() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"));
    // Queued runs are enough to list: hold them back by cancelling right away isn't needed, the
    // names and presets are what is filtered. Each is a huge run, cancelled at once.
    let mut ids = Vec::new();
    for (name, preset) in [
        ("alpha cifar", "cifar"),
        ("beta_v2", "v2"),
        ("gamma 100%", "cifar"),
    ] {
        let mut cfg = tiny_run(name, 500);
        cfg["preset"] = json!(preset);
        if preset == "v2" {
            cfg["head_hidden"] = json!(16);
        }
        ids.push(server.create_run(&cfg).await);
    }
    for id in &ids {
        let (status, body) = server
            .post(&format!("/api/runs/{id}/cancel"), &json!({}))
            .await;
        assert_eq!(status, 200, "{body}");
    }
    for id in &ids {
        server.wait_state(*id, &["cancelled"]).await;
    }

    let names = |v: serde_json::Value| -> Vec<String> {
        v["runs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        names(server.get_json("/api/runs").await),
        vec!["gamma 100%", "beta_v2", "alpha cifar"],
        "newest first by default"
    );
    assert_eq!(
        names(server.get_json("/api/runs?sort=created_asc").await),
        vec!["alpha cifar", "beta_v2", "gamma 100%"]
    );
    assert_eq!(
        names(server.get_json("/api/runs?sort=name_desc").await),
        vec!["gamma 100%", "beta_v2", "alpha cifar"]
    );
    assert_eq!(
        names(server.get_json("/api/runs?preset=v2").await),
        vec!["beta_v2"]
    );
    assert_eq!(
        names(server.get_json("/api/runs?search=ALPHA").await),
        vec!["alpha cifar"]
    );
    // % and _ are matched literally.
    assert_eq!(
        names(server.get_json("/api/runs?search=100%25").await),
        vec!["gamma 100%"]
    );
    assert_eq!(
        names(server.get_json("/api/runs?search=a_v").await),
        vec!["beta_v2"]
    );
    assert_eq!(
        names(server.get_json("/api/runs?state=cancelled&limit=2").await).len(),
        2
    );
    assert!(names(server.get_json("/api/runs?state=running").await).is_empty());

    let resp = server.get("/api/runs?state=sleeping").await;
    assert_eq!(resp.status(), 400);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["errors"][0]["field"], "state");
    let resp = server.get("/api/runs?sort=random").await;
    assert_eq!(resp.status(), 400);
}

#[tokio::test]
async fn reference_endpoints_describe_the_server() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"));

    let presets = server.get_json("/api/presets").await;
    let names: Vec<&str> = presets["presets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        vec!["v1", "v2", "cifar", "demo", "v3", "v3-cifar", "v3-vit-s", "v3-vit-b"]
    );
    // MoCo v3: in-batch keys, LARS at lr 0.6 × B/256 over batches of 4096, T 1.
    let v3 = &presets["presets"][4]["config"];
    assert_eq!(
        (
            &v3["framework"],
            &v3["optimizer"],
            &v3["batch_size"],
            &v3["temperature"]
        ),
        (&json!("v3"), &json!("lars"), &json!(4096), &json!(1.0))
    );
    assert_eq!(presets["presets"][1]["config"]["head"], "mlp");
    assert_eq!(presets["presets"][2]["config"]["queue_size"], 4096);
    // v2's MLP is as wide as the backbone's features (2048 for ResNet-50); the CIFAR demo's kNN
    // reads the head, sets its lr per epoch counted from 1 and normalises with its constants.
    assert_eq!(presets["presets"][1]["config"]["head_hidden"], 0);
    let cifar = &presets["presets"][2]["config"];
    assert_eq!(cifar["knn_features"], "head");
    assert_eq!(cifar["lr_update"], "epoch");
    assert_eq!(cifar["lr_first_epoch"], 1);
    assert_eq!(cifar["normalization"], "cifar");

    // How long a run would take, before it is stored: the demo on the synthetic set is
    // 5000 / 128 = 39 steps for each of 8 epochs, with the untrained encoder and every second
    // epoch evaluated.
    let runs_before = server.run_count().await;
    let (status, estimate) = server
        .post("/api/estimate", &json!({"preset": "demo", "device": "cpu"}))
        .await;
    assert_eq!(status, 200, "{estimate}");
    assert_eq!(estimate["steps_per_epoch"], 39);
    assert_eq!(estimate["total_steps"], 312);
    assert_eq!(estimate["evaluations"], 5);
    assert_eq!(estimate["train_images"], 5000);
    assert_eq!(estimate["device"], "cpu");
    assert!(estimate["seconds"].as_f64().unwrap() > 0.0);
    assert!(estimate["text"].as_str().unwrap().starts_with("about "));
    let (status, refused) = server
        .post("/api/estimate", &json!({"preset": "demo", "epochs": 0}))
        .await;
    assert_eq!(status, 422);
    assert_eq!(refused["errors"][0]["field"], "epochs");
    let (status, refused) = server
        .post(
            "/api/estimate",
            &json!({"dataset": {"kind": "cifar10", "path": "nowhere"}}),
        )
        .await;
    assert_eq!(status, 422);
    assert_eq!(refused["errors"][0]["field"], "dataset.path");
    assert_eq!(server.run_count().await, runs_before);

    let health = server.get_json("/api/health").await;
    assert_eq!(health["status"], "ok");
    assert_eq!(health["database"], "ok");

    let version = server.get_json("/api/version").await;
    assert_eq!(version["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(version["libtorch"], "2.11.0");

    let devices = server.get_json("/api/devices").await;
    assert_eq!(devices["devices"][0]["name"], "cpu");

    // The OpenAPI document lists every path the server answers, and each one is served.
    let doc = server.get_json("/api/openapi.json").await;
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let mut listed: Vec<&str> = doc["paths"]
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    listed.sort();
    let mut expected = moco_server::server::openapi::PATHS.to_vec();
    expected.sort();
    assert_eq!(listed, expected);
    for path in expected {
        let concrete = path.replace("{id}", "999").replace("{ckpt}", "1");
        let method = doc["paths"][path]
            .as_object()
            .unwrap()
            .keys()
            .next()
            .unwrap()
            .to_uppercase();
        let resp = server
            .client
            .request(method.parse().unwrap(), server.at(&concrete))
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        // Routed: never the generic "no such endpoint" answer.
        let status = resp.status();
        let text = resp.text().await.unwrap();
        assert!(
            !text.contains("no such API endpoint") && status != 405,
            "{method} {concrete}: {status} {text}"
        );
    }
    let resp = server.get("/api/nothing-here").await;
    assert_eq!(resp.status(), 404);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("openapi.json"));

    let text = server.get("/metrics").await.text().await.unwrap();
    for state in [
        "queued",
        "running",
        "completed",
        "failed",
        "cancelled",
        "interrupted",
    ] {
        assert!(
            text.contains(&format!("moco_runs{{state=\"{state}\"}} 0")),
            "{text}"
        );
    }
    assert!(text.contains("# TYPE moco_run_images_per_second gauge"));
}
