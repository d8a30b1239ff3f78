//! Data-parallel training over real c10d process groups (Gloo on the CPU, ranks on 127.0.0.1):
//! the collectives against hand values, N ranks against one process with the same global batch,
//! a killed rank, the launcher's validation, and runs on several processes through the server.
mod common;

use moco_server::config::BnStatsAcrossRanks;
use moco_server::dist::{CommBackend, DataParallel, ProcessGroup, Rendezvous};
use moco_server::moco::model::shuffled_encode;
use moco_server::train::checkpoint::read_safetensors;
use moco_server::train::stop::StopRequest;
use serde_json::Value;
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tch::{Device, Kind, Tensor};

fn moco() -> Command {
    Command::new(env!("CARGO_BIN_EXE_moco-server"))
}

/// A run of a few seconds: ResNet-18 at width 4 on 32×32 synthetic images, global batch 16 in 4
/// BatchNorm groups (2 per rank on 2 ranks), the CIFAR demo's symmetric loss.
const TINY: [&str; 15] = [
    "width=4",
    "image_size=32",
    "lr_first_epoch=0",
    "batch_size=16",
    "queue_size=64",
    "shuffle_bn_splits=4",
    "base_lr=0.06",
    "lr_base_batch=16",
    "knn_every=0",
    "metrics_every=1",
    "device=cpu",
    "loader_threads=1",
    "checkpoint_every=1",
    "dataset.synthetic_train=64",
    "dataset.synthetic_test=16",
];

/// `moco-server train --json` in `dir` with the TINY settings, `extra` settings and `flags`.
fn train(dir: &Path, flags: &[&str], extra: &[&str]) -> std::process::Output {
    train_preset(dir, "cifar", flags, &[&TINY[..], extra].concat())
}

/// The v3 step at TINY's scale: the v3-cifar preset (ResNet-18, v3 heads and loss, LARS) at
/// width 4 on 32×32 synthetic images, global batch 16, 2 steps per epoch.
const V3_TINY: [&str; 14] = [
    "width=4",
    "image_size=32",
    "batch_size=16",
    "lr_base_batch=16",
    "warmup_epochs=0",
    "epochs=2",
    "knn_every=0",
    "metrics_every=1",
    "device=cpu",
    "loader_threads=1",
    "checkpoint_every=1",
    "dataset.synthetic_train=32",
    "dataset.synthetic_test=16",
    "seed=0",
];

/// `moco-server train --preset <preset> --data synthetic --json` in `dir`, to be run.
fn train_command(dir: &Path, preset: &str, flags: &[&str], settings: &[&str]) -> Command {
    let mut command = moco();
    command
        .current_dir(dir)
        .args(["train", "--preset", preset, "--data", "synthetic", "--json"])
        .args(flags)
        .args(settings);
    command
}

/// `train_command`, run to its end.
fn train_preset(
    dir: &Path,
    preset: &str,
    flags: &[&str],
    settings: &[&str],
) -> std::process::Output {
    train_command(dir, preset, flags, settings)
        .output()
        .unwrap()
}

/// A TCP port free on 127.0.0.1 for a rendezvous.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn json_lines(stdout: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn losses(events: &[Value]) -> Vec<f64> {
    events
        .iter()
        .filter(|e| e["type"] == "metrics")
        .map(|e| e["values"]["loss"].as_f64().unwrap())
        .collect()
}

/// The newest full checkpoint in `dir`.
fn latest_checkpoint(dir: &Path) -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".ckpt.safetensors"))
        .collect();
    found.sort();
    found.pop().expect("a full checkpoint")
}

fn tensors(path: &Path) -> HashMap<String, Tensor> {
    read_safetensors(path, Device::Cpu)
        .unwrap()
        .0
        .into_iter()
        .collect()
}

/// The largest difference between two checkpoints per kind of float tensor (parameters of both
/// encoders, their BatchNorm statistics, the queue, the optimizer's momentum), with its name.
/// Every other tensor must be equal.
fn differences_by_kind(a: &Path, b: &Path) -> HashMap<&'static str, (f64, String)> {
    let (a, b) = (tensors(a), tensors(b));
    assert_eq!(a.len(), b.len(), "the same tensors");
    let mut worst: HashMap<&'static str, (f64, String)> = HashMap::new();
    for (name, ta) in &a {
        let tb = &b[name];
        assert_eq!(ta.size(), tb.size(), "{name}");
        if ta.kind() != Kind::Float {
            assert!(ta.equal(tb), "{name} differs");
            continue;
        }
        let kind = if name.starts_with("optimizer.") {
            "momentum_buffer"
        } else if name.starts_with("queue.") {
            "queue"
        } else if name.contains("running_") {
            "bn_statistics"
        } else {
            "parameters"
        };
        let d = (ta - tb).abs().max().double_value(&[]);
        let entry = worst.entry(kind).or_insert((0.0, String::new()));
        if d >= entry.0 {
            *entry = (d, name.clone());
        }
    }
    worst
}

/// The rank this test process plays when a test starts it as one of two ranks.
fn test_rank() -> Option<usize> {
    std::env::var("MOCO_TEST_RANK")
        .ok()
        .map(|r| r.parse().unwrap())
}

/// Runs test `name` of this binary as ranks 0 and 1 of a Gloo group and asserts both pass.
fn run_as_two_ranks(name: &str) {
    let port = free_port();
    let children: Vec<_> = (0..2)
        .map(|rank| {
            Command::new(std::env::current_exe().unwrap())
                .args([name, "--exact", "--nocapture", "--test-threads=1"])
                .env("MOCO_TEST_RANK", rank.to_string())
                .env("MOCO_TEST_PORT", port.to_string())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for (rank, child) in children.into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "rank {rank} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("1 passed"),
            "rank {rank} ran the test"
        );
    }
}

fn join_test_group(rank: usize) -> DataParallel {
    let port = std::env::var("MOCO_TEST_PORT").unwrap().parse().unwrap();
    let group = ProcessGroup::join(&Rendezvous {
        master_addr: "127.0.0.1".into(),
        master_port: port,
        rank,
        world: 2,
        backend: CommBackend::Gloo,
        timeout: Duration::from_secs(60),
        bind: "127.0.0.1".into(),
    })
    .unwrap();
    DataParallel::new(group, Device::Cpu)
}

fn values(t: &Tensor) -> Vec<f32> {
    Vec::try_from(t.to_kind(Kind::Float).reshape([-1])).unwrap()
}

#[test]
fn collectives_and_the_cross_rank_shuffle_give_hand_values() {
    let Some(rank) = test_rank() else {
        return run_as_two_ranks("collectives_and_the_cross_rank_shuffle_give_hand_values");
    };
    let dp = join_test_group(rank);
    let group = &dp.group;
    let r = rank as f64;

    let sum = Tensor::full([3], r + 1.0, (Kind::Float, Device::Cpu));
    group
        .all_reduce_(&sum, moco_server::dist::group::ReduceOp::Sum)
        .unwrap();
    assert_eq!(values(&sum), [3.0, 3.0, 3.0]);
    let max = Tensor::from_slice(&[r, 5.0 - r]);
    group
        .all_reduce_(&max, moco_server::dist::group::ReduceOp::Max)
        .unwrap();
    assert_eq!(values(&max), [1.0, 5.0]);

    let b = Tensor::full([2], 10.0 * r + 7.0, (Kind::Float, Device::Cpu));
    group.broadcast_(&b, 1).unwrap();
    assert_eq!(values(&b), [17.0, 17.0]);

    let mine = Tensor::from_slice(&[r as f32, r as f32 + 0.5]).view([2, 1]);
    assert_eq!(
        values(&group.all_gather(&mine).unwrap()),
        [0.0, 0.5, 1.0, 1.5]
    );

    // Rank r holds rows r, r+2, r+4 of a global batch of 6; gathering puts them back in order.
    let global = Tensor::arange(12, (Kind::Float, Device::Cpu)).view([6, 2]);
    let local = dp.local_rows(&global);
    assert_eq!(
        values(&local.get(0)),
        [2.0 * r as f32, 2.0 * r as f32 + 1.0]
    );
    assert!(dp.gather_rows(&local).unwrap().equal(&global));

    // Shuffle, encode, unshuffle across ranks: with an encoder that marks its rank, each row
    // comes back to its place, encoded by the rank that held its shuffled position.
    let mut rng = moco_server::rng::stream(3, moco_server::rng::Purpose::Step, 9);
    let (k_local, k_all) =
        shuffled_encode(&local, Some(&dp), &mut rng, |x| x + 1000.0 * r).unwrap();
    let mut again = moco_server::rng::stream(3, moco_server::rng::Purpose::Step, 9);
    let perm = moco_server::moco::shuffle::Shuffle::new(6, &mut again, Device::Cpu);
    let forward: Vec<i64> = Vec::try_from(&perm.forward).unwrap();
    let marks = values(&(&k_all - &global).select(1, 0));
    for (shuffled_position, &row) in forward.iter().enumerate() {
        let encoded_by = (shuffled_position % 2) as f32;
        assert_eq!(marks[row as usize], 1000.0 * encoded_by, "row {row}");
    }
    assert!(k_local.equal(&dp.local_rows(&k_all)));
    // Without marks the round trip is the identity on each rank's rows.
    let mut rng = moco_server::rng::stream(3, moco_server::rng::Purpose::Step, 10);
    let (same, _) = shuffled_encode(&local, Some(&dp), &mut rng, |x| x.shallow_clone()).unwrap();
    assert!(same.equal(&local));

    // BatchNorm statistics after a step: the ranks' mean, or rank 0's as DDP broadcasts them.
    let mut store = moco_server::moco::params::ParamStore::new(Device::Cpu);
    let stats = store.buffer(
        "bn.running_var".into(),
        Tensor::from_slice(&[r as f32 + 1.0, 4.0 * r as f32]),
    );
    dp.sync_buffers(&store, BnStatsAcrossRanks::Mean).unwrap();
    assert_eq!(values(&stats), [1.5, 2.0]);
    let _ = stats.shallow_clone().fill_(r + 7.0);
    dp.sync_buffers(&store, BnStatsAcrossRanks::Rank0).unwrap();
    assert_eq!(values(&stats), [7.0, 7.0]);

    // A stop seen by one rank stops both; rank 0's figure reaches every rank.
    let seen = if rank == 1 {
        StopRequest::Interrupt
    } else {
        StopRequest::None
    };
    assert_eq!(dp.agree_on_stop(seen).unwrap(), StopRequest::Interrupt);
    assert_eq!(dp.leader_value(41.5 + r).unwrap(), 41.5);
}

#[test]
fn the_gradient_is_all_reduced_in_buckets_that_backward_starts() {
    let Some(rank) = test_rank() else {
        return run_as_two_ranks("the_gradient_is_all_reduced_in_buckets_that_backward_starts");
    };
    let dp = join_test_group(rank);
    let r = rank as f64;
    let mut store = moco_server::moco::params::ParamStore::new(Device::Cpu);
    let a = store.param("a".into(), Tensor::from_slice(&[1f32, 2.0, 3.0]), false);
    let _frozen = store.param("frozen".into(), Tensor::from_slice(&[5f32, 6.0]), false);
    let b = store.param("b".into(), Tensor::from_slice(&[-1f32, 4.0]), false);
    store.freeze(&["frozen"]);
    store.flatten();
    store.attach_flat_grad();
    // 4-byte buckets: one per parameter, started in the order b, frozen, a.
    let reducer = dp.gradient_reducer(&store, 4.0 / 1048576.0).unwrap();
    assert_eq!(reducer.buckets(), 3);

    // Loss (r+1)·Σa² + (r+1)²·Σb: gradients 2(r+1)·a and (r+1)², whose means over the ranks
    // are 3a and 2.5.
    store.zero_grad();
    reducer.arm().unwrap();
    ((a.square().sum(Kind::Float) * (r + 1.0)) + b.sum(Kind::Float) * (r + 1.0).powi(2)).backward();
    assert_eq!(
        reducer.finish().unwrap(),
        3,
        "backward started every bucket"
    );
    assert_eq!(
        values(&store.flat_grad()),
        [3.0, 6.0, 9.0, 0.0, 0.0, 2.5, 2.5]
    );

    // Armed again, a loss without b: b's bucket, the first, never completes in backward, so
    // none starts there; all three start and finish after it, b's gradient 0.
    store.zero_grad();
    reducer.arm().unwrap();
    (a.sum(Kind::Float) * (2.0 * r + 1.0)).backward();
    assert_eq!(reducer.finish().unwrap(), 0);
    assert_eq!(
        values(&store.flat_grad()),
        [2.0, 2.0, 2.0, 0.0, 0.0, 0.0, 0.0]
    );
}

/// The same run on one process (`dir`/one) and on two ranks (`dir`/two), both successful: their
/// events, and their losses, one per step for the 4 steps of the runs compared here.
fn one_and_two_ranks(dir: &Path, preset: &str, settings: &[&str]) -> [(Vec<Value>, Vec<f64>); 2] {
    [&["--out", "one"][..], &["--out", "two", "--nproc", "2"]].map(|flags| {
        let out = train_preset(dir, preset, flags, settings);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let events = json_lines(&out.stdout);
        let losses = losses(&events);
        assert_eq!(losses.len(), 4, "2 epochs of 2 steps");
        (events, losses)
    })
}

/// The two runs' losses agree within `loss_bound` at every step, and their last checkpoints
/// within each kind's bound (`differences_by_kind`).
fn assert_trained_alike(
    dir: &Path,
    l1: &[f64],
    l2: &[f64],
    loss_bound: f64,
    bounds: &[(&str, f64)],
) {
    assert_eq!(l1.len(), l2.len());
    for (step, (a, b)) in l1.iter().zip(l2).enumerate() {
        assert!(
            (a - b).abs() < loss_bound,
            "step {}: loss {a} vs {b}",
            step + 1
        );
    }
    let worst = differences_by_kind(
        &latest_checkpoint(&dir.join("one")),
        &latest_checkpoint(&dir.join("two")),
    );
    for (kind, bound) in bounds {
        let (diff, name) = &worst[kind];
        assert!(diff < bound, "{kind}: {name} differs by {diff}");
    }
}

#[test]
fn two_ranks_train_as_one_process_with_the_same_global_batch() {
    let dir = tempfile::tempdir().unwrap();
    // 16 KiB gradient buckets: the all-reduce runs in 8 of them, which backward starts while it
    // computes (DDP's 25 MiB would take this tiny encoder's 190 KiB in one).
    let extra = [
        "epochs=2",
        "dataset.synthetic_train=32",
        "bucket_cap_mb=0.015625",
    ];
    let settings = [&TINY[..], &extra].concat();
    let [(_, l1), (two_events, l2)] = one_and_two_ranks(dir.path(), "cifar", &settings);
    assert_eq!(two_events.last().unwrap()["state"], "completed");
    assert!(
        two_events.iter().any(|e| e["message"]
            .as_str()
            .is_some_and(|m| m.contains("over 2 ranks in 8 buckets"))),
        "the run says how its gradient is reduced"
    );
    // The ranks see the same images, views, permutations and BatchNorm groups as the one
    // process; only the order of float sums differs (half-batch kernels, the all-reduce). That
    // moves activations by ~1e-7, which now and then flips a ReLU sitting at 0 and so changes a
    // gradient outright: forward figures stay within 1e-6 while a flipped unit's weights move
    // by lr × its gradient. Measured with exactly this run over seeds 0–5 × OMP_NUM_THREADS 1
    // and 2: loss ≤ 6.8e-4 (≤ 1.2e-6 without a flip), parameters ≤ 2.3e-3, BatchNorm
    // statistics ≤ 2.4e-4, queue ≤ 1.5e-5, momentum buffer ≤ 7.7e-2 (of max 1.3); with 4 steps
    // of one epoch at splits 2 and 4, parameters ≤ 4.2e-3 and BatchNorm statistics ≤ 4.4e-4.
    // The bounds are at least 3× those. Two ranks with the wrong BatchNorm groups (one process
    // at splits 2) are off by: loss 2.5e-3 to 2.5e-2, parameters 9.1e-2, BatchNorm statistics
    // 0.21, queue 0.12, momentum 0.72.
    assert_trained_alike(
        dir.path(),
        &l1,
        &l2,
        2.1e-3,
        &[
            ("parameters", 1.5e-2),
            ("bn_statistics", 1.5e-3),
            ("queue", 5e-5),
            ("momentum_buffer", 0.25),
        ],
    );
    assert!(
        (l1[3] - l1[0]).abs() > 0.1,
        "training moved the loss: {l1:?}"
    );
    let files = |run: &str| {
        let mut names: Vec<_> = std::fs::read_dir(dir.path().join(run))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        names
    };
    assert_eq!(
        files("two"),
        files("one"),
        "rank 0 writes what one process writes"
    );
}

#[test]
fn v3_on_two_ranks_trains_as_one_process_with_sync_batch_norm() {
    let dir = tempfile::tempdir().unwrap();
    // Gradient buckets of 16 KiB: backward starts them among SyncBatchNorm's own collectives.
    let settings = [&V3_TINY[..], &["bucket_cap_mb=0.015625"]].concat();
    let [(_, l1), (_, l2)] = one_and_two_ranks(dir.path(), "v3-cifar", &settings);
    // SyncBatchNorm normalises every layer over the global batch, as the one process's
    // BatchNorm does, and each rank's queries meet the gathered keys of the whole batch: the
    // same step up to float summation order. Measured with exactly this run over seeds 0–5 ×
    // OMP_NUM_THREADS 1 and 2: loss ≤ 9.5e-7, parameters ≤ 6.5e-5, BatchNorm statistics ≤ 4.3e-6,
    // momentum buffer ≤ 1.6e-3 (the larger figures where a ReLU at 0 flipped; ≤ 1.3e-6 without
    // one). The bounds are at least 3× those. Two ranks with per-rank BatchNorm instead are off
    // by: loss 0.026 to 0.068, parameters 0.12 to 0.24, BatchNorm statistics 0.15 to 0.41.
    assert_trained_alike(
        dir.path(),
        &l1,
        &l2,
        5e-6,
        &[
            ("parameters", 3e-4),
            ("bn_statistics", 2e-5),
            ("momentum_buffer", 6e-3),
        ],
    );
    // Seed 0's loss falls by 0.076 over the 4 steps (the same to 1e-6 at 1 and 2 threads).
    assert!(l1[0] - l1[3] > 0.02, "training moved the loss: {l1:?}");
}

#[test]
fn sync_bn_queries_on_two_ranks_train_as_one_process() {
    let dir = tempfile::tempdir().unwrap();
    let extra = [
        "epochs=2",
        "dataset.synthetic_train=32",
        "sync_bn=true",
        "seed=0",
    ];
    let settings = [&TINY[..], &extra].concat();
    let [(_, l1), (_, l2)] = one_and_two_ranks(dir.path(), "cifar", &settings);
    // The queries' BatchNorm over the whole global batch on both (SyncBatchNorm across the
    // ranks), the keys in 4 shuffled groups. Measured with exactly this run over seeds 0–5 ×
    // OMP_NUM_THREADS 1 and 2: loss ≤ 2.5e-4, parameters ≤ 4.2e-3, BatchNorm statistics
    // ≤ 7.2e-4, queue ≤ 1.7e-5, momentum buffer ≤ 0.145 (where a ReLU at 0 flipped; ≤ 1e-6
    // otherwise). The bounds are at least 3× those. The queries normalised per rank instead are
    // off by: loss 0.032 to 0.18, parameters 0.063 to 0.21, BatchNorm statistics 0.089 to 0.52,
    // queue 3.3e-3 to 2.4e-2, momentum 0.95 to 2.0.
    assert_trained_alike(
        dir.path(),
        &l1,
        &l2,
        1e-3,
        &[
            ("parameters", 1.5e-2),
            ("bn_statistics", 2.5e-3),
            ("queue", 6e-5),
            ("momentum_buffer", 0.5),
        ],
    );
    assert!(
        (l1[3] - l1[0]).abs() > 0.1,
        "training moved the loss: {l1:?}"
    );
}

/// The pids of `parent`'s children, whichever of its threads started them.
fn children_of(parent: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{parent}/task")) else {
        return Vec::new();
    };
    tasks
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("children")).ok())
        .flat_map(|list| {
            list.split_whitespace()
                .map(|p| p.parse().unwrap())
                .collect::<Vec<u32>>()
        })
        .collect()
}

fn rank_of(pid: u32) -> Option<String> {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    environ
        .split(|&b| b == 0)
        .filter_map(|v| std::str::from_utf8(v).ok())
        .find_map(|v| v.strip_prefix("RANK=").map(str::to_string))
}

#[test]
fn a_killed_rank_fails_the_run_and_it_resumes_on_one_process() {
    let dir = tempfile::tempdir().unwrap();
    // 32 steps per epoch, 3 epochs: long enough to kill rank 1 after the first checkpoint.
    let long = ["epochs=3", "dataset.synthetic_train=512"];
    let flags = ["--out", "two", "--nproc", "2", "--dist-timeout", "60"];
    let mut launcher = train_command(dir.path(), "cifar", &flags, &[&TINY[..], &long].concat())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(launcher.stdout.take().unwrap()).lines();
    for line in lines.by_ref() {
        if line.unwrap().contains("\"checkpoint_saved\"") {
            break;
        }
    }
    let rank1 = children_of(launcher.id())
        .into_iter()
        .find(|&pid| rank_of(pid).as_deref() == Some("1"))
        .expect("rank 1 is running");
    let killed_at = Instant::now();
    unsafe { libc::kill(rank1 as i32, libc::SIGKILL) };
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = launcher.wait().unwrap();
    // rank 0 sees the broken connection at its next collective; the launcher stops it.
    assert!(
        killed_at.elapsed() < Duration::from_secs(30),
        "ended {:?} after the kill",
        killed_at.elapsed()
    );
    assert!(!status.success());
    let outcome: Value = serde_json::from_str(rest.last().expect("an outcome")).unwrap();
    assert_eq!(outcome["state"], "failed", "{outcome}");
    let reason = outcome["reason"].as_str().unwrap();
    assert!(
        reason.starts_with(&format!("rank 1 (pid {rank1}) was killed by signal 9")),
        "{reason}"
    );
    assert!(outcome["step"].as_i64().unwrap() >= 32, "{outcome}");
    assert!(children_of(launcher.id()).is_empty());

    // The last checkpoint resumes on one process (the global batch is the same) and finishes
    // the run.
    let checkpoint = latest_checkpoint(&dir.path().join("two"));
    let resume = checkpoint.to_string_lossy().into_owned();
    let resumed = train(
        dir.path(),
        &["--out", "resumed", "--resume", &resume],
        &long,
    );
    assert!(
        resumed.status.success(),
        "{}",
        String::from_utf8_lossy(&resumed.stderr)
    );
    let events = json_lines(&resumed.stdout);
    let started = events.iter().find(|e| e["type"] == "started").unwrap();
    assert!(started["start_step"].as_i64().unwrap() >= 32, "{started}");
    assert_eq!(
        events.last().unwrap(),
        &serde_json::json!({"state": "completed", "step": 96, "final_knn_top1": null})
    );
}

#[test]
fn a_run_on_two_machines_resumes_from_a_checkpoint_only_the_first_one_has() {
    let dir = tempfile::tempdir().unwrap();
    let extra = ["epochs=2", "dataset.synthetic_train=32"];
    let one = train(dir.path(), &["--out", "one"], &extra);
    assert!(
        one.status.success(),
        "{}",
        String::from_utf8_lossy(&one.stderr)
    );
    let after_epoch_1 = dir
        .path()
        .join("one/checkpoint-epoch0001-step00000002.ckpt.safetensors");
    assert!(after_epoch_1.exists());
    let port = free_port().to_string();
    // Two machines with a disk each (node0/, node1/), one rank each, over the loopback
    // interface; only the first has the checkpoint.
    let nodes: Vec<_> = [
        after_epoch_1.clone(),
        dir.path().join("node1/nothing-here.ckpt.safetensors"),
    ]
    .iter()
    .enumerate()
    .map(|(node, resume)| {
        let cwd = dir.path().join(format!("node{node}"));
        std::fs::create_dir_all(&cwd).unwrap();
        let node_rank = node.to_string();
        let flags = [
            "--out",
            "two",
            "--nproc",
            "1",
            "--nnodes",
            "2",
            "--node-rank",
            &node_rank,
            "--master-addr",
            "127.0.0.1",
            "--master-port",
            &port,
            "--dist-timeout",
            "60",
            "--resume",
            resume.to_str().unwrap(),
        ];
        train_command(&cwd, "cifar", &flags, &[&TINY[..], &extra].concat())
            .env("GLOO_SOCKET_IFNAME", "lo")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    })
    .collect();
    let outputs: Vec<_> = nodes
        .into_iter()
        .map(|n| n.wait_with_output().unwrap())
        .collect();
    for (node, out) in outputs.iter().enumerate() {
        assert!(
            out.status.success(),
            "node {node}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let events = json_lines(&outputs[0].stdout);
    let started = events.iter().find(|e| e["type"] == "started").unwrap();
    assert_eq!(started["start_step"], 2, "{started}");
    assert_eq!(events.last().unwrap()["state"], "completed");
    // Rank 1 trained from rank 0's copy of the checkpoint (its step, so its rows' views): steps
    // 3 and 4 are the one process's. Measured with exactly this run over seeds 0–5 ×
    // OMP_NUM_THREADS 1 and 2: loss ≤ 7.2e-7; the bound is 3e-6. Both machines drawing other
    // views (seed 1 for the resumed steps) are off by 0.049 to 0.055.
    let resumed = losses(&events);
    let single = losses(&json_lines(&one.stdout));
    assert_eq!(resumed.len(), 2);
    for (a, b) in resumed.iter().zip(&single[2..]) {
        assert!((a - b).abs() < 3e-6, "loss {a} vs {b}");
    }
}

#[test]
fn a_distributed_run_that_cannot_split_is_refused_before_any_rank_starts() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&[&str], &str); 3] = [
        (&["batch_size=18", "queue_size=72", "shuffle_bn_splits=2"], "batch_size: the global batch 18 must split evenly over 4 ranks"),
        (&["shuffle_bn_splits=2"], "shuffle_bn_splits: the global batch's 2 BatchNorm groups must split evenly over 4 ranks"),
        (&["mechanism=end_to_end", "symmetric=false"], "mechanism: the end_to_end mechanism trains on one process"),
    ];
    for (settings, expected) in cases {
        let out = train(dir.path(), &["--out", "refused", "--nproc", "4"], settings);
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expected), "{settings:?}: {stderr}");
        assert!(!dir.path().join("refused").exists(), "nothing started");
    }
    let out = train(dir.path(), &["--nproc", "2", "--backend", "nccl"], &[]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--backend nccl needs GPUs"));
}

/// When an API time (RFC 3339) was.
fn when(value: &Value) -> time::OffsetDateTime {
    let text = value
        .as_str()
        .unwrap_or_else(|| panic!("not a time: {value}"));
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).unwrap()
}

#[tokio::test]
async fn the_server_trains_a_run_on_two_processes_with_the_cpu_to_itself() {
    let tmp = tempfile::tempdir().unwrap();
    let server = common::Server::start(&tmp.path().join("data"));
    let two = |overrides: Value| {
        let mut run = common::tiny_run("two", 2);
        run["devices"] = 2.into();
        for (k, v) in overrides.as_object().unwrap() {
            run[k] = v.clone();
        }
        run
    };

    // What the ranks could not train is refused with the field, and nothing is stored.
    let refused = [
        (
            two(serde_json::json!({"mechanism": "memory_bank"})),
            "mechanism",
            "trains on one process",
        ),
        (
            two(serde_json::json!({"devices": 3})),
            "batch_size",
            "split evenly over 3 ranks",
        ),
        (
            two(serde_json::json!({"device": "cuda:0,cuda:1", "devices": 3})),
            "devices",
            "devices must be 2",
        ),
        (
            two(serde_json::json!({"device": "cpu,cuda:0"})),
            "device",
            "either the CPU",
        ),
    ];
    for (config, field, words) in refused {
        let (status, body) = server.post("/api/runs", &config).await;
        assert_eq!(status, 422, "{body}");
        let errors = body["errors"]
            .as_array()
            .unwrap_or_else(|| panic!("{body}"));
        assert!(
            errors
                .iter()
                .any(|e| e["field"] == field && e["message"].as_str().unwrap().contains(words)),
            "{field}: {body}"
        );
    }
    assert_eq!(server.run_count().await, 0);

    // A run on two CPU processes, then a run on one queued behind it: the ranks have the CPU to
    // themselves, so the second starts only once the first has ended.
    let (status, created) = server.post("/api/runs", &two(serde_json::json!({}))).await;
    assert_eq!(status, 201, "{created}");
    let id = created["run"]["id"].as_i64().unwrap();
    assert_eq!(created["run"]["device"], "cpu,cpu");
    assert_eq!(created["config"]["devices"], 2);
    let after = server.create_run(&common::tiny_run("after", 1)).await;
    let run = server.wait_state_fail_fast(id, &["completed"]).await;
    let next = server.wait_state_fail_fast(after, &["completed"]).await;
    assert!(
        when(&next["started_at"]) >= when(&run["finished_at"]),
        "{next} started while {run} trained"
    );

    // The same run as on one process: 64 images / global batch 32 = 2 steps per epoch, kNN of
    // the untrained encoder and after each epoch, the encoder exported by rank 0.
    assert_eq!(run["step"], 4);
    assert_eq!(run["total_steps"], 4);
    assert!(run["images_per_sec"].as_f64().unwrap() > 0.0);
    let evals = server
        .get_json(&format!("/api/runs/{id}/evaluations"))
        .await;
    let epochs: Vec<i64> = evals["evaluations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["epoch"].as_i64().unwrap())
        .collect();
    assert_eq!(epochs, vec![0, 1, 2]);
    let ckpts = server.checkpoints(id).await;
    let encoder = ckpts
        .iter()
        .find(|c| c["kind"] == "encoder")
        .expect("an encoder");
    let body = server
        .get(encoder["download_url"].as_str().unwrap())
        .await
        .bytes()
        .await
        .unwrap();
    assert_eq!(
        common::sha256_hex(&body),
        encoder["sha256"].as_str().unwrap()
    );
    assert!(ckpts.iter().any(|c| c["kind"] == "full" && c["step"] == 4));

    // Each rank's own throughput and time in collectives, at every step. A rank's own work is
    // its interval less its time in collectives, so its images/s are at least its share of the
    // run's (16 of 32 images over the whole interval): exactly so for rank 0, whose interval the
    // run's figure is; rank 1's interval starts and ends at the same collectives, give or take
    // well under the 10% allowed of a step of ~30 ms. 16 images in well under a microsecond
    // would mean waits from outside the interval were counted in it.
    let names =
        "images_per_sec,images_per_sec_rank0,images_per_sec_rank1,comm_ms_rank0,comm_ms_rank1";
    let m = server
        .get_json(&format!("/api/runs/{id}/metrics?names={names}"))
        .await;
    let series = |name: &str| -> Vec<(i64, f64)> {
        m["series"][name]
            .as_array()
            .unwrap_or_else(|| panic!("{name}: {m}"))
            .iter()
            .map(|p| (p[0].as_i64().unwrap(), p[1].as_f64().unwrap()))
            .collect()
    };
    let run_speed = series("images_per_sec");
    for rank in 0..2 {
        let own = series(&format!("images_per_sec_rank{rank}"));
        let comm = series(&format!("comm_ms_rank{rank}"));
        let steps: Vec<i64> = own.iter().map(|p| p.0).collect();
        assert_eq!(steps, vec![1, 2, 3, 4], "rank {rank}");
        assert_eq!(comm.len(), 4, "rank {rank}");
        for ((&(step, own), &(_, whole)), &(_, ms)) in own.iter().zip(&run_speed).zip(&comm) {
            assert!(
                own >= whole / 2.0 * 0.9 && own < 1e6,
                "rank {rank} step {step}: {own} images/s of its own, the run {whole}"
            );
            assert!(ms >= 0.0, "rank {rank} step {step}: {ms} ms");
        }
    }

    // The run page lists the ranks with their devices and figures.
    let page = server
        .get(&format!("/runs/{id}"))
        .await
        .text()
        .await
        .unwrap();
    assert!(page.contains("id=\"rank-table\""), "{page}");
    for rank in ["0", "1"] {
        assert!(
            page.contains(&format!(
                "<tr data-rank=\"{rank}\"><td class=\"num\">{rank}</td><td class=\"mono\">cpu</td>"
            )),
            "rank {rank}"
        );
        assert!(page.contains(&format!("data-metric=\"images_per_sec_rank{rank}\"")));
    }
    // CPU processes have no device memory or loss scale to show.
    assert!(!page.contains("data-metric=\"device_memory_mb\""));
    let single = server
        .get(&format!("/runs/{after}"))
        .await
        .text()
        .await
        .unwrap();
    assert!(!single.contains("rank-table"));
}

/// The launcher the server started for its run, and that launcher's rank `rank`.
fn launcher_and_rank(server_pid: u32, rank: &str) -> (u32, u32) {
    for launcher in children_of(server_pid) {
        if let Some(pid) = children_of(launcher)
            .into_iter()
            .find(|&pid| rank_of(pid).as_deref() == Some(rank))
        {
            return (launcher, pid);
        }
    }
    panic!("no rank {rank} under the server");
}

#[tokio::test]
async fn a_run_on_two_processes_cancels_resumes_and_fails_with_the_rank_that_died() {
    let tmp = tempfile::tempdir().unwrap();
    let server = common::Server::start(&tmp.path().join("data"));
    let mut config = common::tiny_run("long", 30);
    config["devices"] = 2.into();
    config["knn_every"] = 0.into();
    let id = server.create_run(&config).await;

    // A cancel reaches every rank at the same step; rank 0 writes the checkpoint.
    server
        .wait_run(id, |run| run["step"].as_i64().unwrap() >= 3)
        .await;
    let (status, body) = server
        .post(&format!("/api/runs/{id}/cancel"), &Value::Null)
        .await;
    assert!(status < 300, "{status} {body}");
    let cancelled = server.wait_finished(id).await;
    assert_eq!(cancelled["state"], "cancelled", "{cancelled}");
    let at = cancelled["step"].as_i64().unwrap();
    assert!(
        server
            .checkpoints(id)
            .await
            .iter()
            .any(|c| c["kind"] == "full" && c["step"] == at),
        "a full checkpoint at step {at}"
    );

    // Resumed, it goes on from there; a rank killed then fails the run, naming it.
    let (status, body) = server
        .post(&format!("/api/runs/{id}/resume"), &Value::Null)
        .await;
    assert!(status < 300, "{status} {body}");
    server
        .wait_run(id, |run| {
            run["state"] == "running" && run["step"].as_i64().unwrap() > at + 1
        })
        .await;
    let (launcher, rank1) = launcher_and_rank(server.pid(), "1");
    let killed_at = Instant::now();
    unsafe { libc::kill(rank1 as i32, libc::SIGKILL) };
    let failed = server.wait_finished(id).await;
    assert!(
        killed_at.elapsed() < Duration::from_secs(30),
        "ended {:?} after the kill",
        killed_at.elapsed()
    );
    assert_eq!(failed["state"], "failed", "{failed}");
    let error = failed["error"].as_str().unwrap();
    assert!(
        error.starts_with(&format!("rank 1 (pid {rank1}) was killed by signal 9")),
        "{error}"
    );
    assert!(children_of(launcher).is_empty(), "every rank stopped");

    // A failed run resumes from its last checkpoint and completes.
    let (status, body) = server
        .post(&format!("/api/runs/{id}/resume"), &Value::Null)
        .await;
    assert!(status < 300, "{status} {body}");
    let done = server.wait_state_fail_fast(id, &["completed"]).await;
    assert_eq!(done["step"], 60);
}

/// Whether process `pid` is gone (or a zombie nobody has reaped yet, which runs nothing).
fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
    }
}

#[tokio::test]
async fn a_run_on_two_processes_survives_a_shutdown_and_a_crash_of_the_server() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut server = common::Server::start(&data);
    let mut config = common::tiny_run("long", 30);
    config["devices"] = 2.into();
    config["knn_every"] = 0.into();
    let id = server.create_run(&config).await;
    server
        .wait_run(id, |run| run["step"].as_i64().unwrap() >= 3)
        .await;

    // A shutdown interrupts the ranks at one step and rank 0 saves it.
    assert!(server.terminate().success());
    let mut server = common::Server::start(&data);
    let run = server.run(id).await;
    assert_eq!(run["state"], "interrupted", "{run}");
    let at = run["step"].as_i64().unwrap();
    assert!(at >= 3);
    assert!(server
        .checkpoints(id)
        .await
        .iter()
        .any(|c| c["kind"] == "full" && c["step"] == at));

    // Resumed, then the server is killed: its launcher and ranks stop instead of training on
    // unwatched, and the next server finds the run interrupted and resumes it to the end.
    let (status, body) = server
        .post(&format!("/api/runs/{id}/resume"), &Value::Null)
        .await;
    assert!(status < 300, "{status} {body}");
    server
        .wait_run(id, |run| {
            run["state"] == "running" && run["step"].as_i64().unwrap() > at + 1
        })
        .await;
    let (launcher, rank1) = launcher_and_rank(server.pid(), "1");
    let rank0 = children_of(launcher)
        .into_iter()
        .find(|&pid| pid != rank1)
        .expect("rank 0");
    server.crash();
    let crashed_at = Instant::now();
    while ![launcher, rank0, rank1].into_iter().all(gone) {
        assert!(
            crashed_at.elapsed() < Duration::from_secs(60),
            "the ranks kept running after the server died"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let server = common::Server::start(&data);
    assert_eq!(server.run(id).await["state"], "interrupted");
    let (status, body) = server
        .post(&format!("/api/runs/{id}/resume"), &Value::Null)
        .await;
    assert!(status < 300, "{status} {body}");
    let done = server.wait_state_fail_fast(id, &["completed"]).await;
    assert_eq!(done["step"], 60);
}

#[tokio::test]
async fn a_run_on_two_processes_is_not_overtaken_by_younger_runs_on_its_devices() {
    let tmp = tempfile::tempdir().unwrap();
    let server =
        common::Server::start_with(&tmp.path().join("data"), &["--runs-per-device", "2"], &[]);
    // A long run holds one of the CPU's two slots; the run on two processes needs the CPU to
    // itself and waits; a younger one-process run could take the free slot, but waits its turn.
    let mut long = common::tiny_run("long", 200);
    long["knn_every"] = 0.into();
    let long = server.create_run(&long).await;
    server.wait_state_fail_fast(long, &["running"]).await;
    let mut two = common::tiny_run("two", 1);
    two["devices"] = 2.into();
    let two = server.create_run(&two).await;
    let young = server.create_run(&common::tiny_run("young", 1)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        server.run(young).await["state"],
        "queued",
        "the younger run waits"
    );
    assert_eq!(server.run(two).await["state"], "queued");
    let (status, body) = server
        .post(&format!("/api/runs/{long}/cancel"), &Value::Null)
        .await;
    assert!(status < 300, "{status} {body}");
    let two = server.wait_state_fail_fast(two, &["completed"]).await;
    let young = server.wait_state_fail_fast(young, &["completed"]).await;
    assert!(
        when(&young["started_at"]) >= when(&two["finished_at"]),
        "{young} overtook {two}"
    );
}
