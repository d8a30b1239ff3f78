//! The engine on a CUDA device. These checks run where `tch::Cuda::is_available()`; elsewhere each
//! reports itself as skipped (a machine without a GPU cannot check them). A plain `main` rather
//! than the libtest harness, so "skipped" is said out loud instead of passing silently.
use moco_server::config::{Preset, RunConfig};
use moco_server::dist::{CommBackend, DataParallel, ProcessGroup, Rendezvous};
use moco_server::moco::model::MocoModel;
use moco_server::moco::params::ParamStore;
use moco_server::train::events::{CheckpointKind, CollectingObserver, RunOutcome, TrainEvent};
use moco_server::train::stop::StopFlag;
use moco_server::train::stop::StopRequest;
use moco_server::train::{run_training, TrainRequest};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tch::{Device, Kind, Tensor};

/// A named check that needs a CUDA device.
type Check = (&'static str, fn(Device));

fn main() {
    let checks: [Check; 5] = [
        (
            "a_tiny_run_completes_on_cuda_with_checkpoints",
            a_tiny_run_completes_on_cuda_with_checkpoints,
        ),
        (
            "a_cuda_step_matches_the_cpu_step",
            a_cuda_step_matches_the_cpu_step,
        ),
        (
            "auto_on_cuda_is_bf16_channels_last_with_memory_metrics",
            auto_on_cuda_is_bf16_channels_last_with_memory_metrics,
        ),
        ("fp16_on_cuda_scales_the_loss", fp16_on_cuda_scales_the_loss),
        (
            "an_nccl_group_of_one_rank_reduces_and_trains",
            an_nccl_group_of_one_rank_reduces_and_trains,
        ),
    ];
    let available = tch::Cuda::is_available();
    let (mut passed, mut failed, mut skipped) = (0, 0, 0);
    for (name, check) in checks {
        if !available {
            println!("test {name} ... skipped (no CUDA device on this machine)");
            skipped += 1;
            continue;
        }
        match std::panic::catch_unwind(|| check(Device::Cuda(0))) {
            Ok(()) => {
                println!("test {name} ... ok");
                passed += 1;
            }
            Err(_) => {
                println!("test {name} ... FAILED");
                failed += 1;
            }
        }
    }
    println!("cuda: {passed} passed, {failed} failed, {skipped} skipped");
    if failed > 0 {
        std::process::exit(1);
    }
}

/// Trains the tiny CIFAR-shaped config (2 epochs of 8 steps) on `device` with `overrides`.
fn tiny_run(device: Device, overrides: serde_json::Value) -> (RunOutcome, CollectingObserver) {
    tiny_run_in(device, overrides, None)
}

/// `tiny_run` as a rank of `parallel` when given.
fn tiny_run_in(
    device: Device,
    overrides: serde_json::Value,
    parallel: Option<Arc<DataParallel>>,
) -> (RunOutcome, CollectingObserver) {
    let dir = tempfile::tempdir().unwrap();
    let mut doc = json!({
        "preset": "cifar", "width": 16, "batch_size": 64, "queue_size": 256,
        "epochs": 2, "device": "cuda:0", "metrics_every": 4, "knn_every": 1,
        "dataset": {"kind": "synthetic", "synthetic_train": 512, "synthetic_test": 128}
    });
    for (k, v) in overrides.as_object().unwrap() {
        doc[k] = v.clone();
    }
    let cfg = RunConfig::from_partial_json(&doc, Preset::Cifar).unwrap();
    let mut observer = CollectingObserver::default();
    let outcome = run_training(
        &TrainRequest {
            config: cfg,
            data_dir: dir.path().into(),
            run_dir: dir.path().into(),
            device,
            stop: StopFlag::new(),
            resume_from: None,
            allow_config_change: false,
            parallel,
        },
        &mut observer,
    )
    .unwrap();
    (outcome, observer)
}

fn logged(observer: &CollectingObserver, line: &str) -> bool {
    observer
        .events
        .iter()
        .any(|e| matches!(e, TrainEvent::Log { message, .. } if message == line))
}

fn a_tiny_run_completes_on_cuda_with_checkpoints(device: Device) {
    let (outcome, observer) = tiny_run(device, json!({}));
    assert!(
        matches!(outcome, RunOutcome::Completed { step: 16, .. }),
        "{outcome:?}"
    );
    let last = observer.metrics().last().unwrap();
    assert!(last.values["loss"].is_finite());
    assert!(last.values["images_per_sec"] > 0.0);
    let kinds: Vec<_> = observer.checkpoints().map(|c| c.kind).collect();
    assert_eq!(kinds, vec![CheckpointKind::Full, CheckpointKind::Encoder]);
}

/// On an Ampere-or-newer GPU, auto means bf16 autocast and channels_last, and the records carry
/// the allocator's memory figures.
fn auto_on_cuda_is_bf16_channels_last_with_memory_metrics(device: Device) {
    let (outcome, observer) = tiny_run(device, json!({"knn_every": 0}));
    assert!(
        matches!(outcome, RunOutcome::Completed { .. }),
        "{outcome:?}"
    );
    let expected = if moco_server::torch_ext::cuda_bf16_supported(device) {
        "computing in bf16 autocast, channels_last activations"
    } else {
        "computing in fp16 autocast with loss scaling, channels_last activations"
    };
    assert!(logged(&observer, expected), "no log line {expected:?}");
    for record in observer.metrics() {
        let reserved = record.values["device_memory_mb"];
        let peak = record.values["device_memory_peak_mb"];
        assert!(
            reserved > 1.0 && peak > 1.0 && peak <= reserved + 1e-9,
            "{reserved} {peak}"
        );
        assert!(record.values["loss"].is_finite());
    }
}

fn fp16_on_cuda_scales_the_loss(device: Device) {
    let (outcome, observer) = tiny_run(device, json!({"knn_every": 0, "precision": "fp16"}));
    assert!(
        matches!(outcome, RunOutcome::Completed { .. }),
        "{outcome:?}"
    );
    for record in observer.metrics() {
        let scale = record.values["loss_scale"];
        assert!((1.0..=65536.0).contains(&scale), "loss scale {scale}");
        assert!(record.values["loss"].is_finite());
    }
}

fn a_cuda_step_matches_the_cpu_step(device: Device) {
    let cfg = RunConfig::preset(Preset::Cifar)
        .with_overrides([
            ("width", serde_json::Value::from(8)),
            ("batch_size", 16.into()),
            ("queue_size", 64.into()),
            ("shuffle_bn_splits", 2.into()),
        ])
        .unwrap();
    let x1 = Tensor::randn([16, 3, 32, 32], (Kind::Float, Device::Cpu));
    let x2 = Tensor::randn([16, 3, 32, 32], (Kind::Float, Device::Cpu));
    let loss_on = |d: Device| {
        let mut model = MocoModel::seeded(&cfg, Device::Cpu, 1);
        if d.is_cuda() {
            // Same initial state on both devices: build on the CPU, then copy across.
            let mut on_device = MocoModel::seeded(&cfg, d, 1);
            let _guard = tch::no_grad_guard();
            on_device
                .query
                .store
                .flat()
                .shallow_clone()
                .copy_(model.query.store.flat());
            on_device
                .key
                .store
                .flat()
                .shallow_clone()
                .copy_(model.key.store.flat());
            on_device.queue.keys.copy_(&model.queue.keys);
            model = on_device;
        }
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let out = model
            .forward_step(&x1.to_device(d), &x2.to_device(d), 0.99, &mut rng)
            .unwrap();
        out.loss.double_value(&[])
    };
    let cpu = loss_on(Device::Cpu);
    let gpu = loss_on(device);
    assert!((cpu - gpu).abs() < 1e-3, "cpu {cpu} vs cuda {gpu}");
}

/// A real NCCL group of one rank: host values cross through the GPU, the bucketed gradient
/// all-reduce runs from CUDA's autograd thread, and a run trains as that rank.
fn an_nccl_group_of_one_rank_reduces_and_trains(device: Device) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let group = ProcessGroup::join(&Rendezvous {
        master_addr: "127.0.0.1".into(),
        master_port: port,
        rank: 0,
        world: 1,
        backend: CommBackend::Nccl,
        timeout: Duration::from_secs(120),
        bind: String::new(),
    })
    .unwrap();
    let dp = Arc::new(DataParallel::new(group, device));
    assert_eq!(
        dp.agree_on_stop(StopRequest::Interrupt).unwrap(),
        StopRequest::Interrupt
    );
    assert_eq!(dp.leader_value(2.5).unwrap(), 2.5);
    assert_eq!(dp.gather_values(&[1.0, 2.0]).unwrap(), vec![vec![1.0, 2.0]]);
    assert_eq!(
        dp.leader_bytes(|| Ok(vec![7, 8, 9])).unwrap(),
        vec![7, 8, 9]
    );

    let mut store = ParamStore::new(device);
    let a = store.param("a".into(), Tensor::from_slice(&[1f32, 2.0, 3.0]), false);
    let b = store.param("b".into(), Tensor::from_slice(&[-1f32, 4.0]), false);
    store.flatten();
    store.attach_flat_grad();
    // 4-byte buckets: one per parameter.
    let reducer = dp.gradient_reducer(&store, 4.0 / 1048576.0).unwrap();
    assert_eq!(reducer.buckets(), 2);
    store.zero_grad();
    reducer.arm().unwrap();
    (a.square().sum(Kind::Float) + b.sum(Kind::Float) * 3.0).backward();
    assert_eq!(
        reducer.finish().unwrap(),
        2,
        "backward started both buckets"
    );
    let grad = Vec::<f32>::try_from(store.flat_grad().to_device(Device::Cpu)).unwrap();
    assert_eq!(grad, [2.0, 4.0, 6.0, 3.0, 3.0]);

    let (outcome, observer) = tiny_run_in(device, json!({}), Some(dp));
    assert!(
        matches!(outcome, RunOutcome::Completed { step: 16, .. }),
        "{outcome:?}"
    );
    assert!(observer.events.iter().any(|e| matches!(
        e,
        TrainEvent::Log { message, .. } if message.starts_with("gradients all-reduced over 1 ranks")
    )));
    assert!(observer.metrics().last().unwrap().values["loss"].is_finite());
}
