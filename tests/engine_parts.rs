//! The MoCo building blocks on real libtorch with tiny sizes: queue, momentum update, shuffle and
//! split BN, InfoNCE, the flat SGD step.
use moco_server::config::{Preset, RunConfig};
use moco_server::moco::loss::{end_to_end, info_nce};
use moco_server::moco::memory_bank::MemoryBank;
use moco_server::moco::model::MocoModel;
use moco_server::moco::norm::BatchNorm;
use moco_server::moco::params::ParamStore;
use moco_server::moco::queue::Queue;
use moco_server::moco::shuffle::Shuffle;
use moco_server::train::optim::FlatOptimizer;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde_json::Value;
use tch::{Device, Kind, Tensor};

fn tiny_config() -> RunConfig {
    RunConfig::preset(Preset::Cifar)
        .with_overrides([
            ("width", Value::from(8)),
            ("batch_size", 8.into()),
            ("queue_size", 32.into()),
            ("shuffle_bn_splits", 2.into()),
            ("dim", 16.into()),
            ("device", "cpu".into()),
        ])
        .unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

#[test]
fn queue_is_fifo_and_wraps_around() {
    let mut queue = Queue::new(6, 2, Device::Cpu);
    let initial = queue.keys.copy();
    let batch = |v: f32| Tensor::from_slice(&[v, 0.0, v, 0.0]).view([2, 2]);
    queue.enqueue(&batch(1.0), 1);
    assert_eq!(queue.ptr, 2);
    queue.enqueue(&batch(2.0), 2);
    queue.enqueue(&batch(3.0), 3);
    assert_eq!(
        queue.ptr, 0,
        "three batches of 2 fill a queue of 6 and wrap"
    );
    let col0: Vec<f32> = Vec::try_from(queue.keys.select(1, 0)).unwrap();
    assert_eq!(col0, vec![1.0, 1.0, 2.0, 2.0, 3.0, 3.0]);
    // The oldest keys (rows 0 and 1) are replaced first.
    queue.enqueue(&batch(4.0), 4);
    let col0: Vec<f32> = Vec::try_from(queue.keys.select(1, 0)).unwrap();
    assert_eq!(col0, vec![4.0, 4.0, 2.0, 2.0, 3.0, 3.0]);
    let stamps: Vec<i64> = Vec::try_from(&queue.stamps).unwrap();
    assert_eq!(stamps, vec![4, 4, 2, 2, 3, 3]);
    let stats = queue.stats(4);
    assert_eq!(stats.fill.double_value(&[]), 1.0);
    assert!(
        (stats.age_mean.double_value(&[]) - (0.0 + 0.0 + 2.0 + 2.0 + 1.0 + 1.0) / 6.0).abs() < 1e-6
    );
    assert_eq!(stats.age_max.double_value(&[]), 2.0);
    assert!(max_abs_diff(&initial, &queue.keys) > 0.0);
}

#[test]
fn queue_starts_as_random_unit_vectors_with_zero_fill() {
    tch::manual_seed(0);
    let queue = Queue::new(64, 8, Device::Cpu);
    let norms = queue.keys.norm_scalaropt_dim(2.0, [1], false);
    assert!(max_abs_diff(&norms, &Tensor::ones([64], (Kind::Float, Device::Cpu))) < 1e-5);
    let stats = queue.stats(0);
    assert_eq!(stats.fill.double_value(&[]), 0.0);
    // Random directions in 8-D are far from collapsed.
    assert!(stats.similarity.double_value(&[]).abs() < 0.2);
}

#[test]
fn momentum_update_is_exact_over_every_parameter() {
    tch::manual_seed(1);
    let cfg = tiny_config();
    let mut model = MocoModel::new(&cfg, Device::Cpu);
    // f_k starts as a copy of f_q.
    assert_eq!(
        max_abs_diff(model.query.store.flat(), model.key.store.flat()),
        0.0
    );
    // Move f_q away, then update: θk ← m·θk + (1−m)·θq.
    let theta_k = model.key.store.flat().copy();
    tch::no_grad(|| {
        let _ = model.query.store.flat().shallow_clone().g_add_scalar_(1.0);
    });
    let theta_q = model.query.store.flat().copy();
    model.momentum_update(0.9);
    let expected = &theta_k * 0.9 + &theta_q * 0.1;
    assert!(max_abs_diff(model.key.store.flat(), &expected) < 1e-6);
    // The named parameters see the update (they are views of the flat buffer).
    let first = &model.key.store.params[0];
    let offset = first.offset;
    let from_flat = model.key.store.flat().narrow(0, offset, first.numel);
    assert_eq!(max_abs_diff(&first.tensor.reshape([-1]), &from_flat), 0.0);
    // m = 1 leaves f_k unchanged; m = 0 copies f_q.
    let before = model.key.store.flat().copy();
    model.momentum_update(1.0);
    assert_eq!(max_abs_diff(model.key.store.flat(), &before), 0.0);
    model.momentum_update(0.0);
    assert!(max_abs_diff(model.key.store.flat(), &theta_q) < 1e-6);
}

#[test]
fn shuffle_then_unshuffle_is_the_identity() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let x = Tensor::arange(40, (Kind::Float, Device::Cpu)).view([10, 4]);
    let shuffle = Shuffle::new(10, &mut rng, Device::Cpu);
    let shuffled = shuffle.apply(&x);
    assert!(
        max_abs_diff(&shuffled, &x) > 0.0,
        "the permutation moves rows"
    );
    assert_eq!(max_abs_diff(&shuffle.undo(&shuffled), &x), 0.0);
}

#[test]
fn split_bn_normalises_each_sub_batch_with_its_own_statistics() {
    tch::manual_seed(3);
    let mut store = ParamStore::new(Device::Cpu);
    let bn = BatchNorm::new(&mut store, "bn", 3);
    store.flatten();
    // Sub-batch j holds samples j, j + S, j + 2S, …; give each a different scale and offset.
    let splits = 2;
    let x = Tensor::randn([8, 3, 4, 4], (Kind::Float, Device::Cpu));
    let scale = Tensor::from_slice(&[1.0f32, 5.0, 1.0, 5.0, 1.0, 5.0, 1.0, 5.0]).view([8, 1, 1, 1]);
    let x = &x * &scale + &scale;
    let out = bn.forward(&x, true, splits);
    for j in 0..splits {
        let idx = Tensor::arange_start_step(j, 8, splits, (Kind::Int64, Device::Cpu));
        let sub = x.index_select(0, &idx);
        let mean = sub.mean_dim(&[0i64, 2, 3][..], true, Kind::Float);
        let var = (&sub - &mean)
            .square()
            .mean_dim(&[0i64, 2, 3][..], true, Kind::Float);
        let expected = (&sub - &mean) / (var + 1e-5).sqrt();
        assert!(max_abs_diff(&out.index_select(0, &idx), &expected) < 1e-4);
    }
    // Running statistics: the mean of the two sub-batches' updates (momentum 0.1 from 0 and 1).
    let m0 = x
        .index_select(0, &Tensor::from_slice(&[0i64, 2, 4, 6]))
        .mean_dim(&[0i64, 2, 3][..], false, Kind::Float);
    let m1 = x
        .index_select(0, &Tensor::from_slice(&[1i64, 3, 5, 7]))
        .mean_dim(&[0i64, 2, 3][..], false, Kind::Float);
    let expected_running = (m0 + m1) * 0.5 * 0.1;
    assert!(max_abs_diff(&bn.running_mean, &expected_running) < 1e-5);
    // One split is plain BatchNorm over the whole batch.
    let plain = bn.forward(&x, true, 1);
    let mean = x.mean_dim(&[0i64, 2, 3][..], true, Kind::Float);
    let var = (&x - &mean)
        .square()
        .mean_dim(&[0i64, 2, 3][..], true, Kind::Float);
    assert!(max_abs_diff(&plain, &((&x - mean) / (var + 1e-5).sqrt())) < 1e-4);
}

#[test]
fn info_nce_matches_a_hand_computed_value() {
    // Two queries, one queue of two keys, T = 0.5.
    let q = Tensor::from_slice(&[1.0f32, 0.0, 0.0, 1.0]).view([2, 2]);
    let k = Tensor::from_slice(&[0.6f32, 0.8, 0.0, 1.0]).view([2, 2]);
    let queue = Tensor::from_slice(&[1.0f32, 0.0, -1.0, 0.0]).view([2, 2]);
    let out = info_nce(&q, &k, &queue, 0.5);
    // Row 0: logits (0.6, 1, −1)/0.5 = (1.2, 2, −2); row 1: (1, 0, 0)/0.5 = (2, 0, 0).
    let row = |l: [f64; 3]| {
        let lse = l.iter().map(|v| v.exp()).sum::<f64>().ln();
        lse - l[0]
    };
    let expected = (row([1.2, 2.0, -2.0]) + row([2.0, 0.0, 0.0])) / 2.0;
    assert!((out.loss.double_value(&[]) - expected).abs() < 1e-6);
    assert_eq!(
        out.top1().double_value(&[]),
        0.5,
        "only row 1 ranks its positive first"
    );
    let l_pos: Vec<f32> = Vec::try_from(&out.l_pos).unwrap();
    assert_eq!(l_pos, vec![0.6, 1.0]);
}

#[test]
fn the_end_to_end_loss_matches_a_hand_computed_value_and_reaches_the_keys() {
    // Two queries and their two keys, T = 0.5; the other row's key is the negative.
    let q = Tensor::from_slice(&[1.0f32, 0.0, 0.0, 1.0])
        .view([2, 2])
        .set_requires_grad(true);
    let k = Tensor::from_slice(&[0.6f32, 0.8, 1.0, 0.0])
        .view([2, 2])
        .set_requires_grad(true);
    let out = end_to_end(&q, &k, 0.5);
    // Row 0: logits (q0·k0, q0·k1)/T = (1.2, 2), label 0; row 1: (1.6, 0), label 1.
    let ce = |l: [f64; 2], label: usize| l.iter().map(|v| v.exp()).sum::<f64>().ln() - l[label];
    let expected = (ce([1.2, 2.0], 0) + ce([1.6, 0.0], 1)) / 2.0;
    assert!((out.loss.double_value(&[]) - expected).abs() < 1e-6);
    let l_pos: Vec<f32> = Vec::try_from(&out.l_pos).unwrap();
    assert_eq!(l_pos, vec![0.6, 0.0]);
    let l_neg: Vec<f32> = Vec::try_from(&out.l_neg.flatten(0, -1)).unwrap();
    assert_eq!(l_neg, vec![1.0, 0.8]);
    assert_eq!(
        out.top1().double_value(&[]),
        0.0,
        "neither positive ranks first"
    );
    // The keys come from the query encoder: the loss's gradient reaches them.
    out.loss.backward();
    assert!(k.grad().abs().sum(Kind::Float).double_value(&[]) > 0.1);
}

#[test]
fn the_memory_bank_reads_samples_and_moves_its_entries_towards_the_queries() {
    let mut bank = MemoryBank::new(5, 2, 0.5, Device::Cpu);
    let features: Vec<f32> = vec![1.0, 0.0, 0.0, 1.0, -1.0, 0.0, 0.0, -1.0, 0.6, 0.8];
    bank.features
        .copy_(&Tensor::from_slice(&features).view([5, 2]));
    let indices = Tensor::from_slice(&[4i64, 1]);
    let positives: Vec<f32> = Vec::try_from(&bank.entries(&indices).flatten(0, -1)).unwrap();
    assert_eq!(positives, vec![0.6, 0.8, 0.0, 1.0]);
    // Three negatives drawn from the step's stream: the rows the same stream picks.
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let mut expected_rng = rng.clone();
    let picks: Vec<i64> = (0..3)
        .map(|_| rand::Rng::gen_range(&mut expected_rng, 0..5i64))
        .collect();
    let sampled = bank.sample(3, &mut rng);
    let by_hand = bank.entries(&Tensor::from_slice(&picks));
    assert_eq!(max_abs_diff(&sampled, &by_hand), 0.0);
    // entry ← normalise(0.5·entry + 0.5·q): row 4, (0.6, 0.8) with (1, 0) → (0.8, 0.4)/‖·‖;
    // row 1, (0, 1) with (1, 0) → (0.5, 0.5)/‖·‖; the other rows stay.
    let queries = Tensor::from_slice(&[1.0f32, 0.0, 1.0, 0.0]).view([2, 2]);
    bank.update(&indices, &queries);
    let after: Vec<f32> = Vec::try_from(&bank.features.flatten(0, -1)).unwrap();
    let (a, b) = (0.8f32 / 0.8f32.hypot(0.4), 0.4f32 / 0.8f32.hypot(0.4));
    let h = std::f32::consts::FRAC_1_SQRT_2;
    let expected = [1.0, 0.0, h, h, -1.0, 0.0, 0.0, -1.0, a, b];
    for (x, y) in after.iter().zip(expected) {
        assert!((x - y).abs() < 1e-6, "{after:?} vs {expected:?}");
    }
}

#[test]
fn a_memory_bank_step_contrasts_each_query_with_its_own_entry_and_the_drawn_ones() {
    let cfg = tiny_config()
        .with_overrides([("mechanism", Value::from("memory_bank"))])
        .unwrap();
    let mut model = MocoModel::seeded(&cfg, Device::Cpu, 0);
    model.attach_memory_bank(&cfg, 40, 1);
    let x1 = Tensor::randn([8, 3, 32, 32], (Kind::Float, Device::Cpu));
    let indices = Tensor::arange_start(10, 18, (Kind::Int64, Device::Cpu));
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut reference_rng = rng.clone();
    let out = model
        .forward_step_indexed(&x1, &x1, Some(&indices), 0.99, &mut rng)
        .unwrap();
    // The same loss from its parts: q from f_q, the positives at the batch's indices, K = 32
    // negatives drawn from the same stream (the shuffle draws nothing in this mechanism).
    let bank = model.bank.as_ref().unwrap();
    let q = tch::no_grad(|| model.query.embed(&x1, true, cfg.shuffle_bn_splits));
    let negatives = bank.sample(cfg.queue_size, &mut reference_rng);
    let reference = info_nce(&q, &bank.entries(&indices), &negatives, cfg.temperature);
    let diff = (out.loss.double_value(&[]) - reference.loss.double_value(&[])).abs();
    assert!(diff < 1e-5, "loss differs by {diff}");
    assert_eq!(out.terms[0].l_neg.size(), vec![8, 32]);
    // After the step the batch's entries move towards their queries; the others stay.
    let before = bank.features.copy();
    model.store_keys(&out, 1);
    let after = &model.bank.as_ref().unwrap().features;
    let moved = (after - &before)
        .abs()
        .sum_dim_intlist(1i64, false, Kind::Float);
    let moved: Vec<f32> = Vec::try_from(&moved).unwrap();
    for (row, m) in moved.iter().enumerate() {
        assert_eq!(*m > 1e-6, (10..18).contains(&row), "row {row} moved {m}");
    }
}

#[test]
fn flat_sgd_matches_torch_sgd_arithmetic() {
    let mut store = ParamStore::new(Device::Cpu);
    let w = store.param("w".into(), Tensor::from_slice(&[1.0f32, -2.0]), false);
    let b = store.param("b".into(), Tensor::from_slice(&[0.5f32]), true);
    store.flatten();
    store.attach_flat_grad();
    let mut sgd = FlatOptimizer::new(&store, 0.9, 0.1, true);
    for _ in 0..2 {
        store.zero_grad();
        // loss = Σw² + 3b → grad w = 2w, grad b = 3.
        let loss = w.square().sum(Kind::Float) + &b * 3.0;
        loss.sum(Kind::Float).backward();
        sgd.step(&store, 0.01);
    }
    // By hand: step 1: d_w = 2w + 0.1w = 2.1w, buf = d, w1 = w − 0.01·d; b: d = 3 (no decay).
    let w0 = [1.0f64, -2.0];
    let mut expected_w = [0.0; 2];
    for i in 0..2 {
        let d1 = 2.1 * w0[i];
        let w1 = w0[i] - 0.01 * d1;
        let buf2 = 0.9 * d1 + 2.1 * w1;
        expected_w[i] = w1 - 0.01 * buf2;
    }
    let expected_b = 0.5 - 0.01 * 3.0 - 0.01 * (0.9 * 3.0 + 3.0);
    let got: Vec<f32> = Vec::try_from(store.flat()).unwrap();
    assert!((got[0] as f64 - expected_w[0]).abs() < 1e-6, "{got:?}");
    assert!((got[1] as f64 - expected_w[1]).abs() < 1e-6, "{got:?}");
    assert!((got[2] as f64 - expected_b).abs() < 1e-6, "{got:?}");
}

#[test]
fn adamw_matches_torch_adamw_arithmetic() {
    let mut store = ParamStore::new(Device::Cpu);
    let w = store.param("w".into(), Tensor::from_slice(&[1.0f32, -2.0]), false);
    let b = store.param("b".into(), Tensor::from_slice(&[0.5f32]), true);
    store.flatten();
    store.attach_flat_grad();
    let (lr, wd) = (0.01, 0.1);
    let mut adamw = FlatOptimizer::adamw(&store, wd);
    for _ in 0..2 {
        store.zero_grad();
        // loss = Σw² + 3b → grad w = 2w, grad b = 3.
        let loss = w.square().sum(Kind::Float) + &b * 3.0;
        loss.sum(Kind::Float).backward();
        adamw.step(&store, lr);
    }
    // By hand, torch.optim.AdamW: θ ← θ(1 − lr·wd); m ← 0.9m + 0.1g; v ← 0.999v + 0.001g²;
    // θ ← θ − lr/(1 − 0.9ᵗ) · m / (√v/√(1 − 0.999ᵗ) + 1e-8).
    let grad = |theta: &[f64; 3]| [2.0 * theta[0], 2.0 * theta[1], 3.0];
    let mut theta = [1.0f64, -2.0, 0.5];
    let (mut m, mut v) = ([0.0f64; 3], [0.0f64; 3]);
    for t in 1..=2 {
        let g = grad(&theta);
        for i in 0..3 {
            theta[i] *= 1.0 - lr * wd;
            m[i] = 0.9 * m[i] + 0.1 * g[i];
            v[i] = 0.999 * v[i] + 0.001 * g[i] * g[i];
            let denom = v[i].sqrt() / (1.0 - 0.999f64.powi(t)).sqrt() + 1e-8;
            theta[i] -= lr / (1.0 - 0.9f64.powi(t)) * m[i] / denom;
        }
    }
    let got: Vec<f32> = Vec::try_from(store.flat()).unwrap();
    for i in 0..3 {
        // fp32 against f64, values near 1: a few ulps.
        assert!(
            (got[i] as f64 - theta[i]).abs() < 1e-6,
            "{got:?} vs {theta:?}"
        );
    }
    // The state a checkpoint keeps: m, v and the step.
    let state = adamw.named_state();
    let names: Vec<&str> = state.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "optimizer.momentum_buffer",
            "optimizer.exp_avg_sq",
            "optimizer.step"
        ]
    );
    assert_eq!(state[2].1.int64_value(&[]), 2);
    let mut restored = FlatOptimizer::adamw(&store, wd);
    restored.load_state(&state).unwrap();
    assert_eq!(restored.named_state()[2].1.int64_value(&[]), 2);
}

#[test]
fn lars_scales_matrices_by_the_trust_ratio_and_leaves_vectors_plain() {
    let mut store = ParamStore::new(Device::Cpu);
    let w = store.param(
        "w".into(),
        Tensor::from_slice(&[3.0f32, 0.0, 0.0, 4.0]).view([2, 2]),
        false,
    );
    let b = store.param("b".into(), Tensor::from_slice(&[0.5f32, -1.0]), true);
    store.flatten();
    store.attach_flat_grad();
    let (lr, wd, trust, mu) = (0.1, 0.01, 0.001, 0.9);
    let mut lars = FlatOptimizer::lars(&store, mu, wd, trust);
    for _ in 0..2 {
        store.zero_grad();
        // loss = Σw² + Σ(2·b) → grad w = 2w, grad b = 2.
        let loss = w.square().sum(Kind::Float) + (&b * 2.0).sum(Kind::Float);
        loss.backward();
        lars.step(&store, lr);
    }
    // By hand, moco-v3's optimizer.py: w (2-D): d = g + wd·w, q = trust·‖w‖/‖d‖, d ← q·d;
    // b (1-D): d = g, no decay, no scaling; then μ-momentum and θ ← θ − lr·μ-buffer.
    let mut w_h = [3.0f64, 0.0, 0.0, 4.0];
    let mut b_h = [0.5f64, -1.0];
    let (mut mu_w, mut mu_b) = ([0.0f64; 4], [0.0f64; 2]);
    for _ in 0..2 {
        let d: Vec<f64> = w_h.iter().map(|x| 2.0 * x + wd * x).collect();
        let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
        let q = trust * norm(&w_h) / norm(&d);
        for i in 0..4 {
            mu_w[i] = mu * mu_w[i] + q * d[i];
            w_h[i] -= lr * mu_w[i];
        }
        for i in 0..2 {
            mu_b[i] = mu * mu_b[i] + 2.0;
            b_h[i] -= lr * mu_b[i];
        }
    }
    let got: Vec<f32> = Vec::try_from(store.flat()).unwrap();
    let expected: Vec<f64> = w_h.iter().chain(&b_h).copied().collect();
    for (g, e) in got.iter().zip(&expected) {
        assert!((*g as f64 - e).abs() < 1e-6, "{got:?} vs {expected:?}");
    }
    // The matrix moved by about trust × its norm per step, far less than plain SGD would.
    assert!((got[0] as f64 - 3.0).abs() < 0.01, "{got:?}");
}

#[test]
fn encoder_has_torchvision_names_and_shapes() {
    let cfg = RunConfig::preset(Preset::V1);
    let model = MocoModel::new(&cfg, Device::Cpu);
    let named = model.query.store.named_tensors();
    let shape = |name: &str| {
        named
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("missing {name}"))
            .1
            .size()
    };
    assert_eq!(shape("conv1.weight"), vec![64, 3, 7, 7]);
    assert_eq!(shape("layer1.0.conv3.weight"), vec![256, 64, 1, 1]);
    assert_eq!(shape("layer4.2.bn3.running_var"), vec![2048]);
    assert_eq!(shape("layer2.0.downsample.0.weight"), vec![512, 256, 1, 1]);
    assert_eq!(shape("fc.weight"), vec![128, 2048]);
    // ResNet-50 backbone: 23,508,032 parameters (torchvision's 25,557,032 minus the 1000-way fc).
    let backbone: i64 = model
        .query
        .store
        .params
        .iter()
        .filter(|p| !p.name.starts_with("fc."))
        .map(|p| p.numel)
        .sum();
    assert_eq!(backbone, 23_508_032);
    // BatchNorm as torchvision initialises it.
    let bn_w = named
        .iter()
        .find(|(n, _)| n == "bn1.weight")
        .unwrap()
        .1
        .copy();
    assert_eq!(bn_w.min().double_value(&[]), 1.0);
    assert_eq!(bn_w.max().double_value(&[]), 1.0);
}

#[test]
fn attached_flat_gradients_receive_backward_in_place() {
    let mut store = ParamStore::new(Device::Cpu);
    let w = store.param(
        "w".into(),
        Tensor::from_slice(&[1.0f32, -2.0, 3.0, 0.5]).view([2, 2]),
        false,
    );
    let unused = store.param("unused".into(), Tensor::from_slice(&[7.0f32]), true);
    let b = store.param("b".into(), Tensor::from_slice(&[0.5f32]), true);
    store.flatten();
    store.attach_flat_grad();
    let buffer = store.flat_grad();
    for round in 1..=2 {
        store.zero_grad();
        // loss = Σw² + 3b → grad w = 2w, grad b = 3; `unused` gets none.
        let loss = w.square().sum(Kind::Float) + (&b * 3.0).sum(Kind::Float);
        loss.backward();
        let grad: Vec<f32> = Vec::try_from(&store.flat_grad()).unwrap();
        assert_eq!(grad, vec![2.0, -4.0, 6.0, 1.0, 0.0, 3.0], "round {round}");
    }
    // The parameters' gradients are views of the one buffer, not copies.
    assert_eq!(w.grad().data_ptr(), buffer.data_ptr());
    assert_eq!(Vec::<f32>::try_from(&buffer).unwrap()[5], 3.0);
    store.zero_grad();
    assert_eq!(f64::try_from(buffer.abs().sum(Kind::Float)).unwrap(), 0.0);
    assert_eq!(f64::try_from(unused.grad().sum(Kind::Float)).unwrap(), 0.0);
}
