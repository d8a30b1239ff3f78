//! Dataset downloads through the real server: a local mirror serving a small generated CIFAR-10
//! archive, the JSON API polled until the download ends, the Datasets page and the New run
//! picker read back over HTTP.
mod common;
mod mirror_support;

use common::{status_and_json, Server, PATIENCE};
use mirror_support::{cifar10_archive, md5_hex};
use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};

/// A server whose CIFAR-10 downloads come from `url` (checked against `md5`).
fn server_with_mirror(data_dir: &Path, url: &str, md5: &str, args: &[&str]) -> Server {
    Server::start_with(
        data_dir,
        args,
        &[
            ("MOCO_FETCH_MIRROR_CIFAR10", url),
            ("MOCO_FETCH_MD5_CIFAR10", md5),
        ],
    )
}

/// The entry of `dataset` in GET /api/datasets/downloads.
async fn download(server: &Server, dataset: &str) -> Value {
    let list = server.get_json("/api/datasets/downloads").await;
    list["downloads"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["dataset"] == dataset)
        .unwrap_or_else(|| panic!("no {dataset} in {list}"))
        .clone()
}

/// Polls until the download of `dataset` is no longer running.
async fn wait_download(server: &Server, dataset: &str) -> Value {
    let start = Instant::now();
    loop {
        let d = download(server, dataset).await;
        if d["state"] != "running" {
            return d;
        }
        assert!(start.elapsed() < PATIENCE, "the download never ended: {d}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The names in a directory, hidden ones included, sorted.
fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

async fn page(server: &Server, path: &str) -> String {
    let resp = server.get(path).await;
    assert_eq!(resp.status(), 200, "GET {path}");
    resp.text().await.unwrap()
}

#[tokio::test]
async fn a_download_lands_in_the_listing_and_the_new_run_picker_at_once() {
    let archive = cifar10_archive();
    let size = archive.len() as u64;
    let sum = md5_hex(&archive);
    let mirror = mirror_support::serve(archive);
    let tmp = tempfile::tempdir().unwrap();
    let server = server_with_mirror(&tmp.path().join("data"), &mirror.url(), &sum, &[]);

    let before = download(&server, "cifar10").await;
    assert_eq!(before["state"], "idle", "{before}");
    assert_eq!(before["present"], false);
    assert_eq!(before["mirror"], true);
    assert_eq!(before["dir"], "cifar-10-batches-bin");
    // Listed once before the download, so a cached listing would hide the new set.
    let listed = server.get_json("/api/datasets").await;
    assert_eq!(listed["datasets"].as_array().unwrap().len(), 1, "{listed}");
    assert!(!page(&server, "/runs/new")
        .await
        .contains("cifar10:cifar-10-batches-bin"));

    let (status, body) = server
        .post("/api/datasets/downloads", &json!({"dataset": "cifar10"}))
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["download"]["dataset"], "cifar10");
    assert_eq!(body["download"]["state"], "running");
    let done = wait_download(&server, "cifar10").await;
    assert_eq!(done["state"], "done", "{done}");
    assert_eq!(done["bytes"], size);
    assert_eq!(done["total"], size);
    assert_eq!(done["present"], true);
    assert!(done["error"].is_null(), "{done}");
    assert_eq!(mirror.hits(), 1);

    // Nothing but the dataset was added: no temporary archive or staging directory.
    let data_dir = tmp.path().join("data");
    assert!(
        !entries(&data_dir)
            .iter()
            .any(|n| n.starts_with(".fetch-") || n.starts_with(".extract-")),
        "{:?}",
        entries(&data_dir)
    );
    let listed = server.get_json("/api/datasets").await;
    let entry = listed["datasets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["kind"] == "cifar10")
        .unwrap_or_else(|| panic!("cifar10 is not listed: {listed}"))
        .clone();
    assert_eq!(entry["path"], "cifar-10-batches-bin");
    assert_eq!(entry["images"], 10);
    assert_eq!(entry["test_images"], 2);
    let new_run = page(&server, "/runs/new").await;
    assert!(
        new_run.contains("value=\"cifar10:cifar-10-batches-bin\""),
        "the picker lacks the new set"
    );

    // Present now: the page says so and a second download is refused.
    let (status, body) = server
        .post("/api/datasets/downloads", &json!({"dataset": "cifar10"}))
        .await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("already in the data directory"),
        "{body}"
    );
    let html = page(&server, "/datasets").await;
    let cifar_item = &html[html.find("id=\"download-cifar10\"").unwrap()..];
    let cifar_item = &cifar_item[..cifar_item.find("</li>").unwrap()];
    assert!(cifar_item.contains("disabled"), "{cifar_item}");
    assert!(cifar_item.contains(">Present<"), "{cifar_item}");
    assert!(cifar_item.contains("100.0 % · done"), "{cifar_item}");
    // Mean/std: not computed before anyone asks ...
    assert!(html.contains("data-dataset=\"cifar10:cifar-10-batches-bin\""));
    assert!(
        html.contains("data-pending"),
        "mean/std shown before computing"
    );

    // ... computed on request, then remembered and rendered with the page.
    let stats = server
        .get_json("/api/datasets/stats?dataset=cifar10:cifar-10-batches-bin")
        .await;
    let mean = stats["mean"].as_array().unwrap();
    assert_eq!(mean.len(), 3);
    assert!(mean
        .iter()
        .all(|m| (0.0..=1.0).contains(&m.as_f64().unwrap())));
    assert_eq!(stats["class_names"][1], "automobile");
    let html = page(&server, "/datasets").await;
    let row = &html[html
        .find("data-dataset=\"cifar10:cifar-10-batches-bin\"")
        .unwrap()..];
    let row = &row[..row.find("</tr>").unwrap()];
    let shown = format!(
        "{:.4} {:.4} {:.4}",
        mean[0].as_f64().unwrap(),
        mean[1].as_f64().unwrap(),
        mean[2].as_f64().unwrap()
    );
    assert!(row.contains(&shown), "{row}");
    assert!(!row.contains("data-pending"), "{row}");
}

#[tokio::test]
async fn a_checksum_mismatch_fails_and_leaves_the_data_directory_unchanged() {
    let archive = cifar10_archive();
    let mirror = mirror_support::serve(archive);
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("data");
    // The mirror's archive does not have this sum.
    let wrong = "0123456789abcdef0123456789abcdef";
    let server = server_with_mirror(&data_dir, &mirror.url(), wrong, &[]);
    // Let the server finish creating its files before the snapshot.
    server.get_json("/api/datasets").await;
    let before = entries(&data_dir);

    let (status, body) = server
        .post("/api/datasets/downloads", &json!({"dataset": "cifar10"}))
        .await;
    assert_eq!(status, 202, "{body}");
    let failed = wait_download(&server, "cifar10").await;
    assert_eq!(failed["state"], "failed", "{failed}");
    let error = failed["error"].as_str().unwrap();
    assert!(error.contains("checksum mismatch"), "{error}");
    assert!(error.contains(&mirror.url()), "{error}");
    assert!(error.contains(wrong), "{error}");
    // The server's own layout stays out of the message.
    let canonical = data_dir.canonicalize().unwrap();
    assert!(!error.contains(&canonical.display().to_string()), "{error}");
    assert_eq!(failed["present"], false);
    assert_eq!(entries(&data_dir), before);
    let listed = server.get_json("/api/datasets").await;
    assert_eq!(listed["datasets"].as_array().unwrap().len(), 1, "{listed}");

    // A failed download may be tried again (it fails the same way here).
    let (status, _) = server
        .post("/api/datasets/downloads", &json!({"dataset": "cifar10"}))
        .await;
    assert_eq!(status, 202);
    assert_eq!(wait_download(&server, "cifar10").await["state"], "failed");
    assert_eq!(entries(&data_dir), before);
}

#[tokio::test]
async fn bad_requests_are_refused_with_the_field_named() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"));
    let field = |body: &Value| {
        body["errors"][0]["field"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };

    let (status, body) = server
        .post("/api/datasets/downloads", &json!({"dataset": "mnist"}))
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(field(&body), "dataset");
    assert!(body["errors"][0]["message"]
        .as_str()
        .unwrap()
        .contains("cifar10, cifar100, stl10"));
    let (status, body) = server.post("/api/datasets/downloads", &json!({})).await;
    assert_eq!(
        (status, field(&body)),
        (422, "dataset".to_string()),
        "{body}"
    );
    let (status, body) = server
        .post(
            "/api/datasets/downloads",
            &json!({"dataset": "cifar10", "size": 3}),
        )
        .await;
    assert_eq!((status, field(&body)), (422, "size".to_string()), "{body}");
    // This server takes no download address from requests.
    let (status, body) = server
        .post(
            "/api/datasets/downloads",
            &json!({"dataset": "cifar10", "url": "http://127.0.0.1:9/x.tar.gz"}),
        )
        .await;
    assert_eq!((status, field(&body)), (422, "url".to_string()), "{body}");
    let resp = server
        .client
        .post(server.at("/api/datasets/downloads"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(status_and_json(resp).await.0, 400);
    // Nothing was started by any of them.
    assert_eq!(download(&server, "cifar10").await["state"], "idle");

    let resp = server.get("/api/datasets/stats").await;
    assert_eq!(resp.status(), 400);
    let resp = server
        .get("/api/datasets/stats?dataset=cifar10:../../etc")
        .await;
    assert_eq!(resp.status(), 404);
    let stats = server
        .get_json("/api/datasets/stats?dataset=synthetic")
        .await;
    assert_eq!(stats["mean"].as_array().unwrap().len(), 3);

    let doc = server.get_json("/api/openapi.json").await;
    assert!(doc["paths"]["/api/datasets/downloads"]["post"].is_object());
    assert!(doc["paths"]["/api/datasets/stats"]["get"].is_object());

    // Starting a download is a change: a server with a token wants it.
    let guarded = Server::start_with(&tmp.path().join("guarded"), &["--token", "s3cret"], &[]);
    let (status, _) = guarded
        .post("/api/datasets/downloads", &json!({"dataset": "cifar10"}))
        .await;
    assert_eq!(status, 401);
    assert_eq!(download(&guarded, "cifar10").await["state"], "idle");
}

#[tokio::test]
async fn a_request_may_name_its_source_only_where_the_server_allows_it() {
    let archive = cifar10_archive();
    let sum = md5_hex(&archive);
    let mirror = mirror_support::serve(archive);
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start_with(&tmp.path().join("data"), &["--allow-fetch-source"], &[]);

    // A missing file on the mirror: failed, with the status and the address.
    let missing = format!("{}/missing.tar.gz", mirror.base);
    let (status, body) = server
        .post(
            "/api/datasets/downloads",
            &json!({"dataset": "cifar10", "url": missing, "md5": sum}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let failed = wait_download(&server, "cifar10").await;
    let error = failed["error"].as_str().unwrap();
    assert!(error.contains("404") && error.contains(&missing), "{error}");

    let (status, body) = server
        .post(
            "/api/datasets/downloads",
            &json!({"dataset": "cifar10", "url": "ftp://example/x", "md5": "xyz"}),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["errors"][0]["field"], "url");
    assert_eq!(body["errors"][1]["field"], "md5");

    let (status, body) = server
        .post(
            "/api/datasets/downloads",
            &json!({"dataset": "cifar10", "url": mirror.url(), "md5": sum.to_uppercase()}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(wait_download(&server, "cifar10").await["state"], "done");
}

#[tokio::test]
async fn the_datasets_page_lists_the_sets_and_offers_the_downloads() {
    let archive = cifar10_archive();
    let sum = md5_hex(&archive);
    let mirror = mirror_support::serve(archive);
    let tmp = tempfile::tempdir().unwrap();
    let server = server_with_mirror(&tmp.path().join("data"), &mirror.url(), &sum, &[]);

    let html = page(&server, "/datasets").await;
    assert!(html.contains("<h1>Datasets</h1>"));
    assert!(
        html.contains("href=\"/datasets\" aria-current=\"page\""),
        "nav link"
    );
    assert!(html.contains("id=\"datasets-table\""));
    assert!(html.contains("data-dataset=\"synthetic\""));
    for (name, title) in [
        ("cifar10", "CIFAR-10"),
        ("cifar100", "CIFAR-100"),
        ("stl10", "STL-10"),
    ] {
        assert!(html.contains(&format!("id=\"download-{name}\"")), "{name}");
        assert!(
            html.contains(&format!(">Download {title}</button>")),
            "{title}"
        );
    }
    assert!(html.contains("/static/datasets.js"));
    // Every page links to it.
    assert!(page(&server, "/").await.contains("href=\"/datasets\""));
    let js = server.get("/static/datasets.js").await;
    assert_eq!(js.status(), 200);

    // The form works without JavaScript: an unknown set is refused on the page ...
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let resp = client
        .post(server.at("/datasets/downloads"))
        .form(&[("dataset", "imagenet")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 422);
    let text = resp.text().await.unwrap();
    assert!(
        text.contains("Unknown dataset") && text.contains("imagenet"),
        "{text}"
    );
    // ... a known one starts and comes back to the page.
    let resp = client
        .post(server.at("/datasets/downloads"))
        .form(&[("dataset", "cifar10")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 303);
    assert_eq!(resp.headers()["location"], "/datasets#downloads");
    assert_eq!(wait_download(&server, "cifar10").await["state"], "done");
    let html = page(&server, "/datasets").await;
    assert!(html.contains("data-dataset=\"cifar10:cifar-10-batches-bin\""));
}
