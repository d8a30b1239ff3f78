//! `data fetch` against a local HTTP server serving a small generated CIFAR or STL-10 archive, and
//! the `data` / `augment-preview` commands of the binary.
mod mirror_support;

use mirror_support::{cifar10_archive, md5_hex, stl10_archive};
use moco_server::config::{DatasetConfig, DatasetKind};
use moco_server::data;
use moco_server::data::fetch::{
    fetch, fetch_with_progress, Archive, FetchOptions, FetchOutcome, Progress, Stage,
};
use std::path::Path;
use std::process::Command;
use std::sync::Mutex;

/// Serves `body` like a mirror: (base address, request counter).
fn serve(body: Vec<u8>) -> (String, mirror_support::Mirror) {
    let mirror = mirror_support::serve(body);
    (mirror.base.clone(), mirror)
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
    assert_eq!(hits.hits(), 1);
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
    assert_eq!(hits.hits(), 2);
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

/// Records what a fetch reports.
#[derive(Default)]
struct Recorder {
    stages: Mutex<Vec<Stage>>,
    bytes: Mutex<Vec<(u64, Option<u64>)>>,
}

impl Progress for Recorder {
    fn stage(&self, stage: Stage) {
        self.stages.lock().unwrap().push(stage);
    }

    fn bytes(&self, done: u64, total: Option<u64>) {
        self.bytes.lock().unwrap().push((done, total));
    }
}

#[test]
fn stl10_is_fetched_checked_and_readable() {
    let archive = stl10_archive(true);
    let sum = md5_hex(&archive);
    let size = archive.len() as u64;
    // Enough pieces that the transfer is reported in several steps.
    let mirror = mirror_support::serve_slowly(archive, 4, std::time::Duration::from_millis(20));
    let tmp = tempfile::tempdir().unwrap();
    let recorder = Recorder::default();
    let outcome = fetch_with_progress(
        Archive::Stl10,
        tmp.path(),
        &FetchOptions {
            url: Some(mirror.url()),
            md5: Some(sum),
            ..FetchOptions::default()
        },
        &recorder,
    )
    .unwrap();
    let dest = tmp.path().join("stl10_binary");
    assert_eq!(outcome, FetchOutcome::Downloaded(dest.clone()));
    assert_eq!(entries(tmp.path()), vec!["stl10_binary"]);
    assert_eq!(
        *recorder.stages.lock().unwrap(),
        vec![Stage::Downloading, Stage::Extracting]
    );
    let reports = recorder.bytes.lock().unwrap().clone();
    assert_eq!(reports.first(), Some(&(0, Some(size))));
    assert_eq!(reports.last(), Some(&(size, Some(size))));
    assert!(reports.windows(2).all(|w| w[0].0 <= w[1].0), "{reports:?}");

    let cfg = DatasetConfig {
        kind: DatasetKind::Stl10,
        path: Some("stl10_binary".into()),
        ..DatasetConfig::synthetic()
    };
    let splits = data::open_splits(&cfg, tmp.path()).unwrap();
    assert_eq!((splits.train.len(), splits.test.len()), (3, 2));
    assert_eq!(splits.train.label(2), 9);
    assert!(Archive::Stl10.is_present(tmp.path()));
    assert_eq!(Archive::parse("stl10").unwrap(), Archive::Stl10);
    assert_eq!(Archive::Stl10.md5(), "91f7769df0f17e558f3565bffb0c7dfb");
}

#[test]
fn a_broken_stl10_archive_is_refused_and_leaves_nothing() {
    let archive = stl10_archive(false);
    let sum = md5_hex(&archive);
    let (base, _mirror) = serve(archive);
    let tmp = tempfile::tempdir().unwrap();
    let err = fetch(
        Archive::Stl10,
        tmp.path(),
        &FetchOptions {
            url: Some(format!("{base}/cifar.tar.gz")),
            md5: Some(sum),
            ..FetchOptions::default()
        },
    )
    .unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("not a stl10 archive"), "{msg}");
    assert!(msg.contains("train_y.bin: 2 labels for 3 images"), "{msg}");
    assert!(entries(tmp.path()).is_empty(), "{:?}", entries(tmp.path()));
}

/// Stops the download after the first report of received bytes.
struct StopEarly;

impl Progress for StopEarly {
    fn cancelled(&self) -> bool {
        true
    }
}

#[test]
fn a_stopped_download_leaves_nothing() {
    let (base, _mirror) = serve(cifar10_archive());
    let tmp = tempfile::tempdir().unwrap();
    let err = fetch_with_progress(
        Archive::Cifar10,
        tmp.path(),
        &FetchOptions {
            url: Some(format!("{base}/cifar.tar.gz")),
            ..FetchOptions::default()
        },
        &StopEarly,
    )
    .unwrap_err();
    assert!(format!("{err:#}").contains("was stopped"), "{err:#}");
    assert!(entries(tmp.path()).is_empty(), "{:?}", entries(tmp.path()));
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

    let stl = stl10_archive(true);
    let stl_sum = md5_hex(&stl);
    let (stl_base, _stl_mirror) = serve(stl);
    let out = binary()
        .args(["data", "fetch", "stl10", "--data-dir"])
        .arg(tmp.path())
        .args([
            "--url",
            &format!("{stl_base}/cifar.tar.gz"),
            "--md5",
            &stl_sum,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("use it as stl10:stl10_binary"), "{text}");

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
    let v2 = data::Augmenter::new(
        moco_server::config::AugRecipe::V2,
        32,
        splits.mean,
        splits.std,
    );
    let render = |augmenter: &data::Augmenter, seed| {
        data::preview::render_preview_png(splits.train.as_ref(), augmenter, 4, seed).unwrap()
    };
    let a = render(&v2, 1);
    assert_eq!(&a[1..4], b"PNG");
    assert_eq!(a, render(&v2, 1));
    assert_ne!(a, render(&v2, 2));
    // The crop minimum reaches the views: crops of at least 0.9 of the image draw other views.
    let wide = data::Augmenter::new(
        moco_server::config::AugRecipe::V2,
        32,
        splits.mean,
        splits.std,
    )
    .with_crop_min(0.9);
    assert_ne!(a, render(&wide, 1));
    let err = data::preview::render_preview_png(splits.train.as_ref(), &v2, 0, 1).unwrap_err();
    assert!(err.to_string().contains("images"), "{err}");
}
