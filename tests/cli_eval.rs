//! `moco-server eval linear` and `moco-server eval knn` as a user runs them, on a run that
//! `moco-server train` made.
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn moco() -> Command {
    Command::new(env!("CARGO_BIN_EXE_moco-server"))
}

/// A one-epoch run of seconds on the CPU.
const TINY_RUN: [&str; 10] = [
    "width=8",
    "batch_size=16",
    "queue_size=64",
    "shuffle_bn_splits=2",
    "epochs=1",
    "knn_every=0",
    "device=cpu",
    "loader_threads=1",
    "dataset.synthetic_train=64",
    "dataset.synthetic_test=20",
];

/// The same small synthetic set for the evaluations.
const SMALL_SET: [&str; 3] = [
    "dataset.synthetic_train=64",
    "dataset.synthetic_test=20",
    "loader_threads=1",
];

fn json_lines(out: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn assert_ok(out: &Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Trains the tiny run in `dir`; returns its full checkpoint and its encoder export.
fn trained(dir: &Path) -> (PathBuf, PathBuf) {
    let out = moco()
        .current_dir(dir)
        .args([
            "train",
            "--preset",
            "cifar",
            "--data",
            "synthetic",
            "--json",
            "--out",
            "run",
        ])
        .args(TINY_RUN)
        .output()
        .unwrap();
    assert_ok(&out);
    let lines = json_lines(&out);
    let saved = |kind: &str| {
        let path = lines
            .iter()
            .find(|l| l["type"] == "checkpoint_saved" && l["kind"] == kind)
            .unwrap_or_else(|| panic!("no {kind} checkpoint"))["path"]
            .as_str()
            .unwrap()
            .to_string();
        dir.join(path)
    };
    (saved("full"), saved("encoder"))
}

fn eval(dir: &Path, args: &[&str]) -> Output {
    moco()
        .current_dir(dir)
        .arg("eval")
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn the_fast_probe_of_a_checkpoint_and_of_its_export_reports_every_epoch_and_the_result() {
    let dir = tempfile::tempdir().unwrap();
    let (checkpoint, encoder) = trained(dir.path());
    let mut results = Vec::new();
    for file in [&checkpoint, &encoder] {
        let mut args = vec![
            "linear",
            file.to_str().unwrap(),
            "--data",
            "synthetic",
            "--protocol",
            "fast",
            "--json",
            "--device",
            "cpu",
            "epochs=3",
        ];
        args.extend(SMALL_SET);
        let out = eval(dir.path(), &args);
        assert_ok(&out);
        let lines = json_lines(&out);
        assert_eq!(lines[0]["type"], "started");
        assert_eq!(lines[0]["total_steps"], 3);
        assert_eq!(lines[0]["feature_dim"], 64);
        assert_eq!(lines[1]["type"], "features");
        let epochs: Vec<&Value> = lines.iter().filter(|l| l["type"] == "epoch").collect();
        assert_eq!(
            epochs
                .iter()
                .map(|l| l["epoch"].as_i64().unwrap())
                .collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        for e in &epochs {
            assert!(e["loss"].as_f64().unwrap().is_finite(), "{e}");
            // Scored every epoch by default, as main_lincls.py.
            assert!(e["top1"].is_number(), "{e}");
        }
        let result = lines.last().unwrap();
        assert_eq!(result["type"], "result");
        assert_eq!(result["protocol"], "fast");
        assert_eq!(result["epochs"], 3);
        assert_eq!(result["dataset"], "synthetic");
        assert_eq!(result["test_images"], 20);
        assert_eq!(result["backbone_unchanged"], true);
        let (top1, top5) = (
            result["top1"].as_f64().unwrap(),
            result["top5"].as_f64().unwrap(),
        );
        assert!((0.0..=100.0).contains(&top1), "{result}");
        assert!(top5 >= top1 && top5 <= 100.0, "{result}");
        results.push((top1, top5, result["final_loss"].as_f64().unwrap()));
    }
    // The export holds the checkpoint's query backbone and normalisation: the same probe.
    assert_eq!(results[0], results[1]);

    // Without --json: the summary on stdout.
    let mut args = vec![
        "linear",
        encoder.to_str().unwrap(),
        "--data",
        "synthetic",
        "--protocol",
        "fast",
        "--device",
        "cpu",
        "epochs=1",
    ];
    args.extend(SMALL_SET);
    let out = eval(dir.path(), &args);
    assert_ok(&out);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("fast protocol, 1 epochs") && text.contains("top-1"),
        "{text}"
    );
}

#[test]
fn knn_of_a_checkpoint_prints_its_top1() {
    let dir = tempfile::tempdir().unwrap();
    let (checkpoint, _) = trained(dir.path());
    let mut args = vec![
        "knn",
        checkpoint.to_str().unwrap(),
        "--data",
        "synthetic",
        "--json",
        "--device",
        "cpu",
        "k=10",
        "t=0.2",
    ];
    args.extend(SMALL_SET);
    let out = eval(dir.path(), &args);
    assert_ok(&out);
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 1);
    let result = &lines[0];
    assert_eq!(result["type"], "result");
    assert_eq!(result["method"], "knn");
    assert_eq!(
        (result["k"].as_i64(), result["t"].as_f64()),
        (Some(10), Some(0.2))
    );
    assert_eq!(result["bank_images"], 64);
    assert!((0.0..=100.0).contains(&result["top1"].as_f64().unwrap()));
}

#[test]
fn bad_inputs_are_named_and_nothing_runs() {
    let dir = tempfile::tempdir().unwrap();
    let notes = dir.path().join("notes.txt");
    std::fs::write(&notes, "not a checkpoint\n").unwrap();
    let notes = notes.to_str().unwrap();
    let cases: [(Vec<&str>, &str); 6] = [
        (
            vec!["linear", notes, "--data", "synthetic", "--device", "cpu"],
            "notes.txt is not a safetensors file",
        ),
        (
            vec!["knn", notes, "--data", "synthetic", "--device", "cpu"],
            "notes.txt is not a safetensors file",
        ),
        (
            vec!["linear", "missing.safetensors", "--data", "synthetic"],
            "missing.safetensors: no such file",
        ),
        (
            vec!["linear", notes, "--data", "synthetic", "--protocol", "dino"],
            "--protocol",
        ),
        (
            vec!["linear", notes, "--data", "synthetic", "epochs=0"],
            "epochs: must be between 1 and 10000, got 0",
        ),
        (
            vec![
                "linear",
                notes,
                "--data",
                "synthetic",
                "dataset.use_unlabeled=true",
            ],
            "dataset.use_unlabeled: must be false",
        ),
    ];
    for (args, expected) in cases {
        let out = eval(dir.path(), &args);
        assert!(!out.status.success(), "{args:?} succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expected), "{args:?}: {err}");
        assert!(out.stdout.is_empty(), "{args:?} printed {:?}", out.stdout);
    }
}
