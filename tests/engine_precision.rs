//! The libtorch features reached through csrc/torch_ext.cpp, checked on the CPU: autocast in
//! bf16, channels_last, the gradient scaler's kernels and the fused SGD step.
use moco_server::torch_ext::{
    fused_sgd_step, is_channels_last, to_channels_last, unscale_and_check, AutocastGuard,
    ReducedPrecision,
};
use tch::{Device, Kind, Tensor};

#[test]
fn autocast_bf16_applies_inside_the_guard_only() {
    let a = Tensor::randn([4, 8], (Kind::Float, Device::Cpu));
    let b = Tensor::randn([8, 3], (Kind::Float, Device::Cpu));
    {
        let _autocast = AutocastGuard::new(Device::Cpu, ReducedPrecision::Bf16).unwrap();
        let product = a.matmul(&b);
        assert_eq!(product.kind(), Kind::BFloat16);
        let expected = a.matmul(&b);
        let reference = a.to_kind(Kind::BFloat16).matmul(&b.to_kind(Kind::BFloat16));
        assert_eq!(
            f64::try_from(
                (expected.to_kind(Kind::Float) - reference.to_kind(Kind::Float))
                    .abs()
                    .max()
            )
            .unwrap(),
            0.0
        );
        // Nested regions restore the outer one.
        {
            let _inner = AutocastGuard::new(Device::Cpu, ReducedPrecision::Bf16).unwrap();
        }
        assert_eq!(a.matmul(&b).kind(), Kind::BFloat16);
    }
    assert_eq!(a.matmul(&b).kind(), Kind::Float);
}

#[test]
fn channels_last_keeps_values_and_changes_strides() {
    let x = Tensor::arange(2 * 3 * 4 * 5, (Kind::Float, Device::Cpu)).view([2, 3, 4, 5]);
    assert!(!is_channels_last(&x));
    let y = to_channels_last(&x);
    assert!(is_channels_last(&y));
    assert_eq!(y.size(), vec![2, 3, 4, 5]);
    assert_eq!(y.stride(), vec![60, 1, 15, 3]);
    assert!(y.equal(&x));
    // A conv of a channels_last input gives the same numbers.
    let w = Tensor::randn([6, 3, 3, 3], (Kind::Float, Device::Cpu));
    let a = x.conv2d(&w, None::<&Tensor>, [1, 1], [1, 1], [1, 1], 1);
    let b = y.conv2d(&w, None::<&Tensor>, [1, 1], [1, 1], [1, 1], 1);
    assert!(f64::try_from((a - b).abs().max()).unwrap() < 1e-3);
}

#[test]
fn unscale_divides_finite_gradients_and_flags_infinities() {
    let grad = Tensor::from_slice(&[2.0f32, -4.0, 8.0]);
    let found_inf = Tensor::zeros([], (Kind::Float, Device::Cpu));
    let inv_scale = Tensor::from(0.5f32);
    unscale_and_check(&grad, &found_inf, &inv_scale);
    assert_eq!(Vec::<f32>::try_from(&grad).unwrap(), vec![1.0, -2.0, 4.0]);
    assert_eq!(f32::try_from(&found_inf).unwrap(), 0.0);

    let grad = Tensor::from_slice(&[1.0f32, f32::INFINITY, 3.0]);
    unscale_and_check(&grad, &found_inf, &inv_scale);
    assert_eq!(f32::try_from(&found_inf).unwrap(), 1.0);
    let grad = Tensor::from_slice(&[f32::NAN]);
    let found_nan = Tensor::zeros([], (Kind::Float, Device::Cpu));
    unscale_and_check(&grad, &found_nan, &inv_scale);
    assert_eq!(f32::try_from(&found_nan).unwrap(), 1.0);
}

#[test]
fn fused_sgd_matches_the_formula_and_skips_on_overflow() {
    let param = Tensor::from_slice(&[1.0f32, 2.0, -1.0]);
    let grad = Tensor::from_slice(&[0.5f32, -1.0, 2.0]);
    let buf = Tensor::from_slice(&[0.1f32, 0.0, -0.2]);
    fused_sgd_step(&param, &grad, &buf, 0.9, 0.1, None);
    // buf = 0.9·buf + g = [0.59, -1.0, 1.82]; θ -= 0.1·buf.
    let b = Vec::<f32>::try_from(&buf).unwrap();
    let p = Vec::<f32>::try_from(&param).unwrap();
    for (got, want) in b.iter().zip([0.59f32, -1.0, 1.82]) {
        assert!((got - want).abs() < 1e-6, "buffer {b:?}");
    }
    for (got, want) in p.iter().zip([0.941f32, 2.1, -1.182]) {
        assert!((got - want).abs() < 1e-6, "param {p:?}");
    }
    let found_inf = Tensor::from(1.0f32);
    let bad = Tensor::from_slice(&[f32::INFINITY, 0.0, 0.0]);
    fused_sgd_step(&param, &bad, &buf, 0.9, 0.1, Some(&found_inf));
    assert_eq!(Vec::<f32>::try_from(&param).unwrap(), p);
    assert_eq!(Vec::<f32>::try_from(&buf).unwrap(), b);
}

// --- The model under these settings -------------------------------------------------------

use moco_server::config::{MemoryFormat, Precision, Preset, RunConfig};
use moco_server::moco::model::MocoModel;
use moco_server::moco::norm::BatchNorm;
use moco_server::moco::params::ParamStore;
use moco_server::train::optim::FlatOptimizer;
use moco_server::train::scaler::INITIAL_SCALE;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    f64::try_from(
        (a.to_kind(Kind::Float) - b.to_kind(Kind::Float))
            .abs()
            .max(),
    )
    .unwrap()
}

/// One split BN layer, its input with gradient, and what a forward/backward leaves behind.
fn split_bn_pass(x: &Tensor, splits: i64) -> (Tensor, Tensor, Tensor, Tensor, Tensor) {
    let mut store = ParamStore::new(Device::Cpu);
    let bn = BatchNorm::new(&mut store, "bn", x.size()[1]);
    tch::no_grad(|| {
        bn.weight
            .shallow_clone()
            .copy_(&Tensor::from_slice(&[0.5f32, 1.5, -1.0, 2.0]))
    });
    let x = x.detach().set_requires_grad(true);
    let out = bn.forward(&x, true, splits);
    // A loss that weighs every element differently, so every gradient term matters.
    let weights = Tensor::arange(out.numel() as i64, (Kind::Float, Device::Cpu))
        .view(out.size().as_slice())
        .sin();
    (&out * &weights).sum(Kind::Float).backward();
    (
        out.detach(),
        x.grad(),
        bn.weight.grad(),
        bn.running_mean.shallow_clone(),
        bn.running_var.shallow_clone(),
    )
}

#[test]
fn split_batch_norm_on_channels_last_equals_the_grouped_path() {
    let x = (Tensor::arange(8 * 4 * 5 * 3, (Kind::Float, Device::Cpu)) * 0.37)
        .sin()
        .view([8, 4, 5, 3])
        * 2.0
        + 1.0;
    let nchw = split_bn_pass(&x, 4);
    let nhwc = split_bn_pass(&to_channels_last(&x), 4);
    assert!(is_channels_last(&nhwc.0), "the output stays channels_last");
    let names = [
        "output",
        "input grad",
        "weight grad",
        "running mean",
        "running var",
    ];
    for (name, (a, b)) in names.iter().zip([
        (&nchw.0, &nhwc.0),
        (&nchw.1, &nhwc.1),
        (&nchw.2, &nhwc.2),
        (&nchw.3, &nhwc.3),
        (&nchw.4, &nhwc.4),
    ]) {
        let diff = max_abs_diff(a, b);
        assert!(diff < 1e-4, "{name} differs by {diff}");
    }
    // The running statistics did move (0.9·init + 0.1·batch).
    assert!(max_abs_diff(&nchw.3, &Tensor::zeros([4], (Kind::Float, Device::Cpu))) > 0.05);
}

fn small_config(memory_format: MemoryFormat) -> RunConfig {
    let mut cfg = RunConfig::preset(Preset::Cifar);
    cfg.width = 8;
    cfg.batch_size = 16;
    cfg.queue_size = 64;
    cfg.shuffle_bn_splits = 4;
    cfg.memory_format = memory_format;
    cfg
}

/// A batch of 16 images with values in [-2, 2) drawn from `seed` (not torch's global generator,
/// which tests running in parallel share).
fn images(seed: u64) -> Tensor {
    use rand::Rng;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let values: Vec<f32> = (0..16 * 3 * 32 * 32)
        .map(|_| rng.gen_range(-2.0..2.0))
        .collect();
    Tensor::from_slice(&values).view([16, 3, 32, 32])
}

/// Loss and query-encoder gradient of one MoCo step from seed 11 on fixed inputs.
fn one_step(cfg: &RunConfig, precision: Option<ReducedPrecision>) -> (f64, Tensor) {
    let mut model = MocoModel::seeded(cfg, Device::Cpu, 11);
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    // Fill the queue with real keys first: against random unit vectors an untrained encoder's
    // positive stands out trivially and the loss is nearly 0, which would hide any difference.
    for step in 0..4 {
        let _guard = tch::no_grad_guard();
        let x = images(100 + step as u64);
        let keys = model.forward_step(&x, &x, 0.99, &mut rng).unwrap().keys;
        model.queue.enqueue(&keys, step + 1);
    }
    let (x1, x2) = (images(1), images(2));
    let out = {
        let _autocast = precision.map(|p| AutocastGuard::new(Device::Cpu, p).unwrap());
        model.forward_step(&x1, &x2, 0.99, &mut rng).unwrap()
    };
    model.query.store.zero_grad();
    out.loss.backward();
    (
        f64::try_from(&out.loss).unwrap(),
        model.query.store.flat_grad(),
    )
}

fn cosine(a: &Tensor, b: &Tensor) -> f64 {
    f64::try_from((a * b).sum(Kind::Float) / (a.norm() * b.norm())).unwrap()
}

#[test]
fn a_channels_last_step_computes_the_same_loss_and_gradients() {
    let (loss_a, grad_a) = one_step(&small_config(MemoryFormat::Contiguous), None);
    let (loss_b, grad_b) = one_step(&small_config(MemoryFormat::ChannelsLast), None);
    assert!((loss_a - loss_b).abs() < 1e-4, "{loss_a} vs {loss_b}");
    let relative = max_abs_diff(&grad_a, &grad_b) / f64::try_from(grad_a.abs().max()).unwrap();
    assert!(
        relative < 1e-3,
        "gradients differ by {relative} of their largest entry"
    );
}

#[test]
fn a_bf16_autocast_step_stays_close_to_fp32() {
    let cfg = small_config(MemoryFormat::Contiguous);
    let (loss32, grad32) = one_step(&cfg, None);
    let (loss16, grad16) = one_step(&cfg, Some(ReducedPrecision::Bf16));
    // Against a queue of real keys an untrained model's loss is near ln(K + 1) = ln(65) ≈ 4.17.
    // Measured: loss 4.2013 vs 4.2021 (4.2138 channels_last), gradient cosine 0.95 (0.93): bf16
    // keeps 8 bits of mantissa, this width-8 network's conv gradients are computed in it, and an
    // untrained encoder's keys are so alike (similarity 0.93) that the logits magnify rounding.
    assert!((loss32 - 4.2).abs() < 0.1, "fp32 loss {loss32}");
    assert!((loss32 - loss16).abs() < 0.03, "{loss32} vs {loss16}");
    assert_ne!(loss32, loss16, "autocast changed the arithmetic");
    assert_eq!(
        grad16.kind(),
        Kind::Float,
        "parameters and gradients stay fp32"
    );
    let c = cosine(&grad32, &grad16);
    assert!(c > 0.9, "gradient direction cosine {c}");
    // The channels_last split BN under bf16 too.
    let (loss_cl, grad_cl) = one_step(
        &small_config(MemoryFormat::ChannelsLast),
        Some(ReducedPrecision::Bf16),
    );
    assert!((loss32 - loss_cl).abs() < 0.03, "{loss32} vs {loss_cl}");
    let c = cosine(&grad32, &grad_cl);
    assert!(c > 0.9, "channels_last gradient direction cosine {c}");
}

#[test]
fn the_loss_scaler_backs_off_on_overflow_and_the_step_is_skipped() {
    let cfg = small_config(MemoryFormat::Contiguous);
    let model = MocoModel::seeded(&cfg, Device::Cpu, 1);
    let store = &model.query.store;
    let mut sgd = FlatOptimizer::new(store, 0.9, 1e-4, false).with_loss_scaling();
    let before = store.flat().copy();

    // A loss that overflows fp32 once scaled: its gradients are infinite.
    let huge = store.params[0].tensor.sum(Kind::Float) * 1e36;
    sgd.backward(&huge).unwrap();
    sgd.step(store, 0.1);
    let scaler = sgd.scaler.as_ref().unwrap();
    assert_eq!(f64::try_from(&scaler.found_inf).unwrap(), 1.0);
    assert_eq!(f64::try_from(&scaler.scale).unwrap(), INITIAL_SCALE / 2.0);
    assert_eq!(
        max_abs_diff(store.flat(), &before),
        0.0,
        "the step was skipped"
    );
    assert_eq!(f64::try_from(sgd.buffer.abs().max()).unwrap(), 0.0);

    // A normal loss: gradients are unscaled exactly and the step is taken.
    let _ = store.params[0].tensor.grad().zero_();
    let loss = store.params[0].tensor.sum(Kind::Float);
    sgd.backward(&loss).unwrap();
    let scaled = store.params[0].tensor.grad().copy();
    sgd.step(store, 0.1);
    let scaler = sgd.scaler.as_ref().unwrap();
    assert_eq!(f64::try_from(&scaler.found_inf).unwrap(), 0.0);
    assert_eq!(f64::try_from(&scaler.scale).unwrap(), INITIAL_SCALE / 2.0);
    assert_eq!(i64::try_from(&scaler.growth_tracker).unwrap(), 1);
    assert_eq!(
        f64::try_from(scaled.mean(Kind::Float)).unwrap(),
        INITIAL_SCALE / 2.0,
        "backward saw the scaled loss"
    );
    // d(sum θ)/dθ = 1 after unscaling; with wd 1e-4: θ ← θ − 0.1·(1 + 1e-4·θ).
    let n = store.params[0].numel;
    let moved = store.flat().narrow(0, 0, n) - before.narrow(0, 0, n);
    let expected = -(before.narrow(0, 0, n) * 1e-4 + 1.0) * 0.1;
    assert!(max_abs_diff(&moved, &expected) < 1e-6);

    // The scale travels in the optimizer's checkpoint state.
    let mut restored = FlatOptimizer::new(store, 0.9, 1e-4, false).with_loss_scaling();
    restored.load_state(&sgd.named_state()).unwrap();
    assert_eq!(
        f64::try_from(&restored.scaler.as_ref().unwrap().scale).unwrap(),
        INITIAL_SCALE / 2.0
    );
}

#[test]
fn auto_precision_is_fp32_on_the_cpu_and_explicit_choices_are_kept() {
    use moco_server::train::device::reduced_precision;
    assert_eq!(
        reduced_precision(Precision::Auto, Device::Cpu).unwrap(),
        None
    );
    assert_eq!(
        reduced_precision(Precision::Fp32, Device::Cpu).unwrap(),
        None
    );
    assert_eq!(
        reduced_precision(Precision::Bf16, Device::Cpu).unwrap(),
        Some(ReducedPrecision::Bf16)
    );
    assert_eq!(
        reduced_precision(Precision::Fp16, Device::Cpu).unwrap(),
        Some(ReducedPrecision::Fp16)
    );
    assert!(!MemoryFormat::Auto.channels_last_on(Device::Cpu));
    assert!(MemoryFormat::Auto.channels_last_on(Device::Cuda(0)));
    // Unknown values are rejected by name.
    let doc = serde_json::json!({"preset": "cifar", "precision": "fp8"});
    let errors = RunConfig::from_partial_json(&doc, Preset::Cifar).unwrap_err();
    assert_eq!(errors[0].field, "precision", "{errors:?}");
}

#[test]
fn the_profiler_runs_and_reports_no_device_time_on_the_cpu() {
    use moco_server::torch_ext::DeviceProfile;
    let profile = DeviceProfile::start(Device::Cpu).unwrap();
    let a = Tensor::ones([64, 64], (Kind::Float, Device::Cpu));
    assert_eq!(
        f64::try_from(a.matmul(&a).sum(Kind::Float)).unwrap(),
        64.0 * 64.0 * 64.0
    );
    let activity = profile.finish().unwrap();
    assert_eq!((activity.busy_ns, activity.activities), (0, 0));
    // It can be started again once finished.
    DeviceProfile::start(Device::Cpu).unwrap().finish().unwrap();
}
