//! `moco-server eval linear` and `moco-server eval knn`: an evaluation of a checkpoint or encoder
//! export from the command line, with `train`'s progress bar or, with `--json`, one JSON object
//! per line ending in `{"type":"result",…}`.
//!
//! Everything is checked before anything runs, in this order: the settings (each error names its
//! field), the device, the encoder file (an error names it and says why), the dataset.
use super::feature_cache::FeatureCache;
use super::knn::run_knn;
use super::linear::{run_probe, ProbeEvent, ProbeObserver, ProbeRequest};
use super::{open_labelled, FrozenEncoder};
use crate::cli_train::step_bar;
use crate::config::{
    describe_errors, parse_device, Choice, FieldError, KnnConfig, ProbeConfig, Protocol, RunConfig,
};
use crate::train::checkpoint::sha256_of_file;
use anyhow::{anyhow, Context};
use indicatif::ProgressBar;
use serde_json::Value;
use std::path::PathBuf;
use std::process::ExitCode;
use tch::Device;

#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    #[command(subcommand)]
    pub command: EvalCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum EvalCommand {
    /// Train a linear classifier on the frozen backbone's features and report held-out top-1 and
    /// top-5, by the protocol of MoCo's main_lincls.py (moco), MoCo v3's (v3), or on features
    /// computed once (fast).
    Linear(LinearArgs),
    /// The weighted kNN top-1 of the backbone's features (training split as the bank).
    Knn(KnnArgs),
}

/// What both evaluations take.
#[derive(clap::Args, Debug)]
pub struct Common {
    /// A run's full checkpoint (*.ckpt.safetensors), an encoder export (encoder-*.safetensors),
    /// or torchvision-keyed ResNet weights saved with safetensors.
    pub encoder: PathBuf,
    /// A labelled dataset: "synthetic", a path (kind detected), or kind:path with kind one of
    /// cifar10, cifar100, stl10, folder.
    #[arg(long)]
    pub data: String,
    /// One JSON object per line on stdout instead of a progress bar.
    #[arg(long)]
    pub json: bool,
    /// auto (a GPU when there is one), cpu or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Settings as field=value (dotted for the dataset: dataset.synthetic_train=2000).
    #[arg(value_name = "FIELD=VALUE")]
    pub overrides: Vec<String>,
}

#[derive(clap::Args, Debug)]
pub struct LinearArgs {
    #[command(flatten)]
    pub common: Common,
    /// moco (main_lincls.py: lr 30, ×0.1 at epochs 60 and 80 of 100, batch 256), v3 (MoCo v3's:
    /// lr 0.1 × B/256, cosine, 90 epochs, batch 1024) or fast (moco's classifier on features of
    /// the un-augmented images computed once).
    #[arg(long, default_value = "moco",
          value_parser = clap::builder::PossibleValuesParser::new(Protocol::names()))]
    pub protocol: String,
    /// fast: keep the features in this directory (one file per encoder, by its SHA-256, and
    /// dataset), so probing the same encoder again skips the pass over the data.
    #[arg(long, value_name = "DIR")]
    pub feature_cache: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct KnnArgs {
    #[command(flatten)]
    pub common: Common,
}

pub fn eval(args: EvalArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        EvalCommand::Linear(args) => linear(args),
        EvalCommand::Knn(args) => knn(args),
    }
}

/// `field=value` arguments as (field, JSON value) pairs.
fn parse_overrides(raw: &[String]) -> anyhow::Result<Vec<(String, Value)>> {
    raw.iter()
        .map(|s| RunConfig::parse_override(s).map_err(|e| anyhow!("{}", describe_errors(&[e]))))
        .collect()
}

fn settings_error(errors: Vec<FieldError>) -> anyhow::Error {
    anyhow!("{}", describe_errors(&errors))
}

/// The device, the encoder and the dataset an evaluation runs on, all checked.
fn open(
    common: &Common,
    dataset: &crate::config::DatasetConfig,
) -> anyhow::Result<(Device, FrozenEncoder, crate::data::DatasetSplits)> {
    let device = parse_device(&common.device)
        .ok_or_else(|| {
            anyhow!(
                "--device: must be auto, cpu or cuda:N, got {:?}",
                common.device
            )
        })?
        .resolve()
        .map_err(|e| anyhow!("--device: {e}"))?;
    let encoder = FrozenEncoder::load(&common.encoder, device)?;
    let splits = open_labelled(dataset, &std::env::current_dir()?)?;
    Ok((device, encoder, splits))
}

fn linear(args: LinearArgs) -> anyhow::Result<ExitCode> {
    let protocol = Protocol::parse(&args.protocol)
        .ok_or_else(|| anyhow!("--protocol: unknown {:?}", args.protocol))?;
    let common = &args.common;
    let dataset = crate::data::parse_dataset_spec(&common.data).context("--data")?;
    let overrides = parse_overrides(&common.overrides)?;
    let cfg = ProbeConfig::for_protocol(protocol, dataset)
        .with_overrides(overrides.iter().map(|(k, v)| (k.as_str(), v.clone())))
        .map_err(settings_error)?;
    let (device, encoder, splits) = open(common, &cfg.dataset)?;
    let cache = match &args.feature_cache {
        Some(dir) => Some(FeatureCache {
            dir: dir.clone(),
            encoder_sha256: sha256_of_file(&common.encoder)?,
        }),
        None => None,
    };
    let mut observer: Box<dyn ProbeObserver> = if common.json {
        Box::new(JsonLines)
    } else {
        Box::new(ProbeProgress::new())
    };
    let result = run_probe(
        &ProbeRequest {
            encoder: &encoder,
            splits: &splits,
            config: &cfg,
            device,
            feature_cache: cache.as_ref(),
        },
        observer.as_mut(),
    );
    drop(observer);
    let result = result?;
    if !common.json {
        println!(
            "linear probe ({} protocol, {} epochs) of {} on {}: top-1 {:.2}%, top-5 {:.2}% \
             (best top-1 {:.2}%); backbone unchanged",
            result.protocol.name(),
            result.epochs,
            result.encoder,
            result.dataset,
            result.top1,
            result.top5,
            result.best_top1
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn knn(args: KnnArgs) -> anyhow::Result<ExitCode> {
    let common = &args.common;
    let dataset = crate::data::parse_dataset_spec(&common.data).context("--data")?;
    let overrides = parse_overrides(&common.overrides)?;
    let cfg = KnnConfig::new(dataset)
        .with_overrides(overrides.iter().map(|(k, v)| (k.as_str(), v.clone())))
        .map_err(settings_error)?;
    let (device, encoder, splits) = open(common, &cfg.dataset)?;
    let spinner = (!common.json).then(|| {
        let bar = ProgressBar::new_spinner();
        bar.set_message(format!(
            "kNN over {} bank and {} query images",
            splits.train.len(),
            splits.test.len()
        ));
        bar.enable_steady_tick(std::time::Duration::from_millis(200));
        bar
    });
    let result = run_knn(&encoder, &splits, &cfg, device);
    if let Some(bar) = spinner {
        bar.finish_and_clear();
    }
    let result = result?;
    if common.json {
        let mut line = serde_json::to_value(&result)?;
        line["type"] = Value::from("result");
        line["method"] = Value::from("knn");
        println!("{line}");
    } else {
        println!(
            "weighted kNN (k {}, t {}) of {} on {}: top-1 {:.2}%",
            result.k, result.t, result.encoder, result.dataset, result.top1
        );
    }
    Ok(ExitCode::SUCCESS)
}

struct JsonLines;

impl ProbeObserver for JsonLines {
    fn on_event(&mut self, event: &ProbeEvent) {
        if let Ok(line) = serde_json::to_string(event) {
            println!("{line}");
        }
    }
}

/// `train`'s progress bar over the probe's steps: epoch, last loss and top-1, ETA.
struct ProbeProgress {
    bar: ProgressBar,
    epochs: i64,
}

impl ProbeProgress {
    fn new() -> Self {
        ProbeProgress {
            bar: step_bar(),
            epochs: 1,
        }
    }
}

impl ProbeObserver for ProbeProgress {
    fn on_event(&mut self, event: &ProbeEvent) {
        match event {
            ProbeEvent::Started {
                protocol,
                device,
                train_images,
                test_images,
                classes,
                epochs,
                total_steps,
                ..
            } => {
                self.epochs = *epochs;
                self.bar.println(format!(
                    "linear probe ({} protocol) on {device}: {train_images} training and \
                     {test_images} held-out images, {classes} classes",
                    protocol.name()
                ));
                self.bar.set_length(*total_steps as u64);
                self.bar.set_prefix(if *protocol == Protocol::Fast {
                    "features"
                } else {
                    "epoch 1"
                });
                self.bar.reset_eta();
            }
            ProbeEvent::Features {
                seconds, cached, ..
            } => {
                let how = if *cached {
                    "read from the feature cache"
                } else {
                    "computed"
                };
                self.bar
                    .println(format!("features {how} in {seconds:.1} s"));
                self.bar.set_prefix("epoch 1");
                self.bar.reset_eta();
            }
            ProbeEvent::Epoch {
                epoch, loss, top1, ..
            } => {
                self.bar
                    .set_prefix(format!("epoch {}", (epoch + 1).min(self.epochs)));
                let top1 = top1.map(|t| format!(" top1 {t:.2}")).unwrap_or_default();
                self.bar.set_message(format!("loss {loss:.4}{top1}"));
            }
            ProbeEvent::Result(_) => {}
        }
    }

    fn on_step(&mut self, step: i64) {
        self.bar.set_position(step as u64);
    }
}

impl Drop for ProbeProgress {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
    }
}
