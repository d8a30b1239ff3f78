//! MoCo steps of the engine equal the same steps in plain PyTorch, written the way the
//! official code does it (benches/py/moco_reference.py): same loss, same updated query and key
//! encoders (with BatchNorm buffers), same queue; MoCo v3's step with its heads and LARS likewise.
use moco_server::config::{Preset, RunConfig};
use moco_server::moco::model::MocoModel;
use moco_server::moco::shuffle::Shuffle;
use moco_server::train::checkpoint::{save_full, write_safetensors_atomic, TrainingState};
use moco_server::train::optim::FlatOptimizer;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use tch::{Device, Tensor};

/// Standard normal values from their own seeded stream: torch's process-wide generator is drawn
/// from by the other tests of this binary at the same time, which made the inputs, and so the
/// figures compared, differ from run to run.
fn normal(shape: &[i64], seed: u64) -> Tensor {
    use rand::Rng;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n: i64 = shape.iter().product();
    let values: Vec<f32> = (0..n)
        .map(|_| {
            // Box–Muller.
            let u: f64 = rng.gen_range(f64::EPSILON..1.0);
            let v: f64 = rng.gen();
            ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
        })
        .collect();
    Tensor::from_slice(&values).view(shape)
}

/// `lr` for the three steps: AdamW's update is about lr per weight whatever the gradient, so a
/// gradient near 0, whose sign the two sides' summation orders may disagree on, moves a weight by
/// up to 2·lr apart; its test takes a small lr.
fn compare_one_step(overrides: Value, lr: f64) {
    let mut doc = json!({
        "preset": "cifar", "width": 8, "batch_size": 8, "queue_size": 32,
        "shuffle_bn_splits": 2, "dim": 16, "device": "cpu", "weight_decay": 5e-4
    });
    for (k, v) in overrides.as_object().unwrap() {
        doc[k] = v.clone();
    }
    let cfg = RunConfig::from_partial_json(&doc, Preset::Cifar).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut model = MocoModel::seeded(&cfg, Device::Cpu, 11);
    let mut optimizer = FlatOptimizer::for_run(&model.query.store, &cfg);
    // Fill part of the queue so the pointer is not at 0.
    model
        .queue
        .enqueue(&normal(&[cfg.keys_per_step(), cfg.dim], 100), 0);
    let mut state = TrainingState {
        epoch: 0,
        batch_in_epoch: 0,
        step: 0,
        queue_ptr: model.queue.ptr,
        best_knn: None,
        last_knn: None,
        mean: [0.5; 3],
        std: [0.25; 3],
        config: cfg.clone(),
    };
    let before = dir.path().join("before.safetensors");
    save_full(&before, &model, &optimizer, &state).unwrap();

    // Three steps with fresh inputs each: the momentum buffer, the zeroing of gradients, the
    // momentum update and the queue pointer all carry over between steps.
    let steps = 3;
    let mut tensors = Vec::new();
    let mut losses = Vec::new();
    let m = 0.9;
    for step in 0..steps {
        let x1 = normal(&[8, 3, 32, 32], 1000 + 2 * step);
        let x2 = normal(&[8, 3, 32, 32], 1001 + 2 * step);
        let rng = ChaCha8Rng::seed_from_u64(3 + step);
        let mut replay = rng.clone();
        let perm1 = Shuffle::new(8, &mut replay, Device::Cpu).forward;
        let perm2 = Shuffle::new(8, &mut replay, Device::Cpu).forward;
        let mut rng = rng;
        let out = model.forward_step(&x1, &x2, m, &mut rng).unwrap();
        model.query.store.zero_grad();
        out.loss.backward();
        optimizer.step(&model.query.store, lr);
        model.queue.enqueue(&out.keys, step as i64 + 1);
        losses.push(out.loss.double_value(&[]).to_string());
        tensors.push((format!("x1.{step}"), x1));
        tensors.push((format!("x2.{step}"), x2));
        tensors.push((format!("perm1.{step}"), perm1));
        if cfg.symmetric {
            tensors.push((format!("perm2.{step}"), perm2));
        }
    }
    state.step = steps as i64;
    state.queue_ptr = model.queue.ptr;
    let after = dir.path().join("after.safetensors");
    save_full(&after, &model, &optimizer, &state).unwrap();

    let inputs = dir.path().join("inputs.safetensors");
    let meta = HashMap::from([
        ("lr".to_string(), lr.to_string()),
        ("m".to_string(), m.to_string()),
        ("steps".to_string(), steps.to_string()),
        ("losses".to_string(), losses.join(",")),
        // The query's parameters in the optimizer state's flat order, so the reference can
        // compare that state (momentum, Adam's moments) tensor by tensor.
        (
            "flat_params".to_string(),
            model
                .query
                .store
                .params
                .iter()
                .map(|p| p.name.clone())
                .collect::<Vec<_>>()
                .join(","),
        ),
    ]);
    write_safetensors_atomic(&inputs, &tensors, meta).unwrap();

    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let output = Command::new(root.join(".venv/bin/python"))
        .arg(root.join("benches/py/moco_reference.py"))
        .arg("check")
        .args([&before, &inputs, &after])
        .output()
        .expect("run the reference implementation with the venv's python");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "engine and PyTorch reference disagree: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_str(stdout.trim()).unwrap();
    eprintln!("reference check: {report}");
    assert_eq!(report["ok"], true, "{report}");
    // Every parameter and buffer of both encoders, plus the queue, was compared.
    assert!(
        report["tensors_compared"].as_u64().unwrap() > 100,
        "{report}"
    );
}

#[test]
fn v1_style_step_matches_pytorch() {
    compare_one_step(json!({"head": "linear"}), 0.05);
}

#[test]
fn v2_style_step_with_mlp_head_matches_pytorch() {
    compare_one_step(
        json!({"head": "mlp", "head_hidden": 32, "wd_exclude_bn_bias": true}),
        0.05,
    );
}

#[test]
fn v3_step_with_its_projector_predictor_and_lars_matches_pytorch() {
    compare_one_step(
        json!({
            "preset": "v3-cifar", "shuffle_bn_splits": 1, "head_hidden": 32,
            "weight_decay": 1e-4, "lars_trust": 0.02
        }),
        0.05,
    );
}

#[test]
fn v3_vit_step_with_a_frozen_patch_projection_and_adamw_matches_pytorch() {
    compare_one_step(
        json!({
            "preset": "v3-vit-s", "arch": "vit_tiny", "patch_size": 8, "image_size": 32,
            "shuffle_bn_splits": 1, "head_hidden": 32
        }),
        1e-5,
    );
}

#[test]
fn symmetric_step_matches_pytorch() {
    compare_one_step(json!({"symmetric": true, "queue_size": 48}), 0.05);
}
