//! `data fetch` against a local HTTP server serving a small generated CIFAR archive, and the
//! `data` / `augment-preview` commands of the binary.
use md5::{Digest, Md5};
use moco_server::config::{DatasetConfig, DatasetKind};
use moco_server::data::fetch::{fetch, Archive, FetchOptions, FetchOutcome};
use moco_server::data::{self, cifar};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// A tar.gz holding `cifar-10-batches-bin/` with 2 records per training file and 2 test records.
fn cifar10_archive() -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    let mut add = |name: &str, bytes: Vec<u8>| {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(
            &mut header,
            format!("cifar-10-batches-bin/{name}"),
            &bytes[..],
        )
        .unwrap();
    };
    let image = |seed: u8| -> Vec<u8> {
        (0..cifar::PIXELS)
            .map(|i| (i as u8).wrapping_mul(seed))
            .collect()
    };
    for b in 1..=5u8 {
        add(
            &format!("data_batch_{b}.bin"),
            cifar::encode_records(&[(b, image(b)), (b + 1, image(b + 1))], false),
        );
    }
    add(
        "test_batch.bin",
        cifar::encode_records(&[(0, image(9)), (9, image(7))], false),
    );
    add(
        "batches.meta.txt",
        b"airplane\nautomobile\nbird\ncat\ndeer\ndog\nfrog\nhorse\nship\ntruck\n".to_vec(),
    );
    let tar = tar.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    gz.finish().unwrap()
}

/// Serves `body` at /cifar.tar.gz (404 elsewhere) on 127.0.0.1:0; counts requests.
fn serve(body: Vec<u8>) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            counter.fetch_add(1, Ordering::SeqCst);
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            reader.read_line(&mut request_line).unwrap();
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap() == 0 || line == "\r\n" {
                    break;
                }
            }
            let (status, payload): (&str, &[u8]) = if request_line.starts_with("GET /cifar.tar.gz ")
            {
                ("200 OK", &body)
            } else {
                ("404 Not Found", b"no such file")
            };
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nContent-Type: application/gzip\r\n\
                 Connection: close\r\n\r\n",
                payload.len()
            );
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(payload);
        }
    });
    (format!("http://{addr}"), hits)
}

fn md5_hex(bytes: &[u8]) -> String {
    hex::encode(Md5::digest(bytes))
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn fetch_downloads_verifies_and_extracts_into_place() {
    let archive = cifar10_archive();
    let sum = md5_hex(&archive);
    let (base, hits) = serve(archive);
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("data");
    let opts = FetchOptions {
        url: Some(format!("{base}/cifar.tar.gz")),
        md5: Some(sum.to_uppercase()),
        ..FetchOptions::default()
    };
    let outcome = fetch(Archive::Cifar10, &data_dir, &opts).unwrap();
    let dest = data_dir.join("cifar-10-batches-bin");
    assert_eq!(outcome, FetchOutcome::Downloaded(dest.clone()));
    // Only the dataset is left: no temporary archive or staging directory.
    assert_eq!(entries(&data_dir), vec!["cifar-10-batches-bin"]);
    let cfg = DatasetConfig {
        kind: DatasetKind::Cifar10,
        path: Some("cifar-10-batches-bin".into()),
        ..DatasetConfig::synthetic()
    };
    let splits = data::open_splits(&cfg, &data_dir).unwrap();
    assert_eq!((splits.train.len(), splits.test.len()), (10, 2));
    assert_eq!(splits.test.label(1), 9);

    // Already there: no second download.
    let again = fetch(Archive::Cifar10, &data_dir, &opts).unwrap();
    assert_eq!(again, FetchOutcome::AlreadyPresent(dest.clone()));
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    // --force replaces it.
    let forced = fetch(
        Archive::Cifar10,
        &data_dir,
        &FetchOptions {
            force: true,
            ..opts
        },
    )
    .unwrap();
    assert_eq!(forced, FetchOutcome::Downloaded(dest));
    assert_eq!(hits.load(Ordering::SeqCst), 2);
    assert_eq!(entries(&data_dir), vec!["cifar-10-batches-bin"]);
}

#[test]
fn a_checksum_mismatch_leaves_nothing_in_place() {
    let (base, _) = serve(cifar10_archive());
    let tmp = tempfile::tempdir().unwrap();
    let opts = FetchOptions {
        url: Some(format!("{base}/cifar.tar.gz")),
        // The canonical archive's sum, which the generated archive does not have.
        md5: None,
        ..FetchOptions::default()
    };
    let err = fetch(Archive::Cifar10, tmp.path(), &opts).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("checksum mismatch"), "{msg}");
    assert!(msg.contains(Archive::Cifar10.md5()), "{msg}");
    assert!(entries(tmp.path()).is_empty(), "{:?}", entries(tmp.path()));

    let err = fetch(
        Archive::Cifar10,
        tmp.path(),
        &FetchOptions {
            url: Some(format!("{base}/missing.tar.gz")),
            ..FetchOptions::default()
        },
    )
    .unwrap_err();
    assert!(format!("{err:#}").contains("404"), "{err:#}");
    assert!(entries(tmp.path()).is_empty());

    let err = fetch(
        Archive::Cifar10,
        tmp.path(),
        &FetchOptions {
            md5: Some("xyz".into()),
            ..opts
        },
    )
    .unwrap_err();
    assert!(format!("{err:#}").contains("--md5"), "{err:#}");
}

#[test]
fn an_archive_of_the_wrong_dataset_is_refused() {
    let archive = cifar10_archive();
    let sum = md5_hex(&archive);
    let (base, _) = serve(archive);
    let tmp = tempfile::tempdir().unwrap();
    let err = fetch(
        Archive::Cifar100,
        tmp.path(),
        &FetchOptions {
            url: Some(format!("{base}/cifar.tar.gz")),
            md5: Some(sum),
            ..FetchOptions::default()
        },
    )
    .unwrap_err();
    assert!(
        format!("{err:#}").contains("not a cifar100 archive"),
        "{err:#}"
    );
    assert!(entries(tmp.path()).is_empty());
}

fn binary() -> Command {
    Command::new(env!("CARGO_BIN_EXE_moco-server"))
}

#[test]
fn the_data_commands_fetch_and_inspect() {
    let archive = cifar10_archive();
    let sum = md5_hex(&archive);
    let (base, _) = serve(archive);
    let tmp = tempfile::tempdir().unwrap();
    let out = binary()
        .args(["data", "fetch", "cifar10", "--data-dir"])
        .arg(tmp.path())
        .args(["--url", &format!("{base}/cifar.tar.gz"), "--md5", &sum])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(tmp
        .path()
        .join("cifar-10-batches-bin/test_batch.bin")
        .is_file());

    let out = binary()
        .args(["data", "inspect", "cifar-10-batches-bin", "--data-dir"])
        .arg(tmp.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("train        10 images"), "{text}");
    assert!(text.contains("classes      10 (airplane"), "{text}");
    assert!(text.contains("image size   32×32"), "{text}");

    let out = binary()
        .args(["data", "inspect", "synthetic", "--json"])
        .output()
        .unwrap();
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["images"], 5000);
    assert_eq!(info["classes"], 10);
    assert_eq!(info["image_size"], 32);

    let out = binary()
        .args(["data", "fetch", "mnist", "--data-dir"])
        .arg(tmp.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown dataset \"mnist\""));
}

#[test]
fn augment_preview_writes_a_png_grid() {
    let tmp = tempfile::tempdir().unwrap();
    let png = tmp.path().join("grid.png");
    let out = binary()
        .args([
            "augment-preview",
            "--preset",
            "v3",
            "--data",
            "synthetic",
            "--images",
            "3",
        ])
        .arg("--out")
        .arg(&png)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let img = image::open(&png).unwrap().to_rgb8();
    // 32-px views upscaled 4× to 128 px, three columns and three rows with 4-px gaps.
    assert_eq!(img.dimensions(), (3 * 128 + 4 * 4, 3 * 128 + 4 * 4));
    assert_eq!(entries(tmp.path()), vec!["grid.png"]);

    let out = binary()
        .args(["augment-preview", "--preset", "v9", "--out"])
        .arg(&png)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--preset"));
}

#[test]
fn the_preview_is_the_same_for_the_same_seed() {
    let splits = data::open_splits(
        &DatasetConfig {
            synthetic_train: 40,
            synthetic_test: 10,
            ..DatasetConfig::synthetic()
        },
        Path::new("."),
    )
    .unwrap();
    let render = |seed| {
        data::preview::render_preview_png(
            splits.train.as_ref(),
            moco_server::config::AugRecipe::V2,
            32,
            splits.mean,
            splits.std,
            4,
            seed,
        )
        .unwrap()
    };
    let a = render(1);
    assert_eq!(&a[1..4], b"PNG");
    assert_eq!(a, render(1));
    assert_ne!(a, render(2));
    let err = data::preview::render_preview_png(
        splits.train.as_ref(),
        moco_server::config::AugRecipe::V2,
        32,
        splits.mean,
        splits.std,
        0,
        1,
    )
    .unwrap_err();
    assert!(err.to_string().contains("images"), "{err}");
}
