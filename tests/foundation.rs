//! The product starts: the real binary serves the dashboard on a free port with a fresh data
//! directory, creating its SQLite file; `doctor` reports libtorch.
mod common;

use common::Server;
use std::process::Command;

#[tokio::test]
async fn serves_index_and_health_with_a_fresh_data_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("nested").join("data");
    let server = Server::start(&data_dir);
    assert!(
        server.url.starts_with("http://127.0.0.1:"),
        "{}",
        server.url
    );
    assert_ne!(server.url, "http://127.0.0.1:0");

    let index = reqwest::get(format!("{}/", server.url)).await.unwrap();
    assert_eq!(index.status(), 200);
    let body = index.text().await.unwrap();
    assert!(body.contains("moco-server"), "{body}");

    let health = reqwest::get(format!("{}/healthz", server.url))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(health.text().await.unwrap(), "ok");

    assert!(data_dir.join("moco.sqlite").is_file());
}

#[test]
fn doctor_reports_versions_and_devices() {
    let out = Command::new(env!("CARGO_BIN_EXE_moco-server"))
        .arg("doctor")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("libtorch    2.11.0"), "{text}");
    assert!(text.contains("tch         0.24.0"), "{text}");
    assert!(text.contains(&format!("moco-server {}", env!("CARGO_PKG_VERSION"))));
    assert!(text.contains("CUDA        "), "{text}");
    assert!(text.contains("libtorch works"), "{text}");
    let precision = text
        .lines()
        .find(|l| l.starts_with("precision   "))
        .unwrap_or_else(|| panic!("no precision line: {text}"));
    if tch::Cuda::is_available() {
        assert!(precision.contains("autocast"), "{precision}");
    } else {
        assert_eq!(
            precision,
            "precision   fp32 (what precision = auto uses here)"
        );
    }
}
