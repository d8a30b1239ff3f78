//! `moco-server train` and `moco-server export`: the engine headless, with a progress bar or
//! JSON lines, Ctrl-C saving a checkpoint.
use crate::config::Choice;
use crate::config::{describe_errors, Preset, RunConfig};
use crate::dist::launch::{LaunchArgs, RankPlace};
use crate::dist::{CommBackend, DataParallel, ProcessGroup};
use crate::train::events::{metric, LogLevel, Observer, RunOutcome, TrainEvent};
use crate::train::stop::StopFlag;
use crate::train::{run_training, TrainRequest};
use anyhow::{anyhow, bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;
use std::path::PathBuf;
use std::process::ExitCode;

/// Where a run's config comes from on the command line: `train` and `sweep` (its base) read it
/// alike.
#[derive(clap::Args, Debug, Clone)]
pub struct ConfigArgs {
    /// Starting point: a paper's settings (the list below; the README's Presets table says what
    /// each sets). Default: cifar on a machine with a GPU, demo otherwise.
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(Preset::names()))]
    pub preset: Option<String>,
    /// A TOML file with settings (any subset of the run config; `moco-server train --print-config`
    /// shows every field).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Dataset: "synthetic", a path (kind detected), or kind:path with kind one of cifar10,
    /// cifar100, stl10, image_folder.
    #[arg(long)]
    pub data: Option<String>,
    /// Settings as field=value (dotted for the dataset: dataset.synthetic_train=2000).
    #[arg(value_name = "FIELD=VALUE")]
    pub overrides: Vec<String>,
}

#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    #[command(flatten)]
    pub base: ConfigArgs,
    /// Where checkpoints and the encoder go (default ./runs/<name or preset-timestamp>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue from a full checkpoint.
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// With --resume: continue even though the config changes the run's trajectory (epochs,
    /// schedule, loss, augmentation, seed…), which is otherwise refused.
    #[arg(long, requires = "resume")]
    pub allow_config_change: bool,
    /// One JSON object per event on stdout instead of a progress bar.
    #[arg(long)]
    pub json: bool,
    /// Print the effective config as TOML and exit.
    #[arg(long)]
    pub print_config: bool,
    #[command(flatten)]
    pub launch: LaunchArgs,
}

#[derive(clap::Args, Debug)]
pub struct ExportArgs {
    /// A full checkpoint (*.ckpt.safetensors).
    pub checkpoint: PathBuf,
    /// The encoder file to write (safetensors with torchvision's keys).
    #[arg(long)]
    pub out: PathBuf,
}

/// The config the command line asks for: preset, then the TOML file, then --data, then
/// field=value overrides. Every error names its field.
pub fn build_config(args: &ConfigArgs) -> anyhow::Result<RunConfig> {
    let preset = match &args.preset {
        Some(name) => Preset::parse(name).ok_or_else(|| anyhow!("--preset: unknown {name:?}"))?,
        None => Preset::default_here(),
    };
    let mut cfg = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the config file {}", path.display()))?;
            let doc: toml::Value = toml::from_str(&text)
                .with_context(|| format!("{} is not valid TOML", path.display()))?;
            let doc = serde_json::to_value(doc)?;
            RunConfig::from_partial_json(&doc, preset)
                .map_err(|errors| anyhow!("{}:\n{}", path.display(), describe_errors(&errors)))?
        }
        None => RunConfig::preset(preset),
    };
    if let Some(spec) = &args.data {
        let dataset = crate::data::parse_dataset_spec(spec).context("--data")?;
        cfg.dataset = dataset;
    }
    let mut overrides: Vec<(String, Value)> = Vec::new();
    for raw in &args.overrides {
        overrides.push(
            RunConfig::parse_override(raw).map_err(|e| anyhow!("{}", describe_errors(&[e])))?,
        );
    }
    cfg = cfg
        .with_overrides(overrides.iter().map(|(k, v)| (k.as_str(), v.clone())))
        .map_err(|errors| anyhow!("{}", describe_errors(&errors)))?;
    cfg.validate()
        .map_err(|errors| anyhow!("{}", describe_errors(&errors)))?;
    Ok(cfg)
}

pub fn train(mut args: TrainArgs) -> anyhow::Result<ExitCode> {
    let mut cfg = build_config(&args.base)?;
    // --nproc is the `devices` setting, given on the command line.
    if let Some(nproc) = args.launch.nproc {
        cfg.devices = i64::from(nproc);
        cfg.validate()
            .map_err(|errors| anyhow!("{}", describe_errors(&errors)))?;
    }
    args.launch.nproc = Some(cfg.devices as u16);
    if args.print_config {
        print!("{}", cfg.to_toml());
        return Ok(ExitCode::SUCCESS);
    }
    let rank_devices = crate::config::devices::resolve_rank_devices(&cfg.device, cfg.devices)
        .map_err(|e| anyhow!("{}", describe_errors(&[e])))?;
    let mut device = rank_devices[0];
    let place = RankPlace::from_env()?;
    if place.is_none() && args.launch.is_distributed() {
        let backend = args.launch.validate(device.is_cuda())?;
        crate::dist::check_config(&cfg, args.launch.world())
            .map_err(|errors| anyhow!("{}", describe_errors(&errors)))?;
        let run_dir = resolve_run_dir(&args, &cfg)?;
        return crate::dist::launch::supervise(&args.launch, backend, &run_dir, args.json);
    }
    let mut parallel = None;
    if let Some(place) = &place {
        place.set_threads();
        device = match place.rendezvous.backend {
            CommBackend::Gloo => tch::Device::Cpu,
            // This machine's ranks take a GPU each, as `device` lays them out for as many
            // processes as the launcher (or torchrun) started here.
            CommBackend::Nccl => {
                crate::config::devices::resolve_rank_devices(&cfg.device, place.local_world as i64)
                    .map_err(|e| anyhow!("{}", describe_errors(&[e])))?[place.local_rank]
            }
        };
        let group = ProcessGroup::join(&place.rendezvous)?;
        parallel = Some(std::sync::Arc::new(DataParallel::new(group, device)));
    }
    let leader = place.as_ref().is_none_or(|p| p.rendezvous.rank == 0);
    let run_dir = match place.as_ref().and_then(|p| p.run_dir.clone()) {
        Some(dir) => dir,
        None => resolve_run_dir(&args, &cfg)?,
    };
    let stop = StopFlag::new();
    let handler_stop = stop.clone();
    // A rank is signalled by its launcher, which tells the user what happens (and after a rank
    // failed, stops the others with a signal that saves nothing): a rank says nothing itself.
    let speaks = place.is_none();
    ctrlc::set_handler(move || {
        if handler_stop.is_set() {
            if speaks {
                eprintln!("\nstopping now");
            }
            std::process::exit(130);
        }
        if speaks {
            eprintln!(
                "\ninterrupt: saving a checkpoint after this step (press Ctrl-C again to quit at \
                 once)"
            );
        }
        handler_stop.interrupt();
    })
    .context("cannot install the Ctrl-C handler")?;

    let request = TrainRequest {
        config: cfg.clone(),
        data_dir: std::env::current_dir()?,
        run_dir: run_dir.clone(),
        device,
        stop,
        resume_from: args.resume.clone(),
        allow_config_change: args.allow_config_change,
        parallel,
    };
    let json = args.json;
    // tch tensors are not Sync: the engine runs on its own thread, joined before we return.
    let worker = std::thread::spawn(move || {
        // Rank 0 speaks for a distributed run; the other ranks report errors only.
        let mut observer: Box<dyn Observer> = if !leader {
            Box::new(ErrorsOnly)
        } else if json {
            Box::new(JsonLines)
        } else {
            Box::new(ProgressObserver::new())
        };
        let outcome = run_training(&request, observer.as_mut());
        drop(observer);
        outcome
    });
    let outcome = worker.join().map_err(|panic| {
        anyhow!(
            "the training thread panicked: {}",
            crate::jobs::worker::panic_message(panic.as_ref())
        )
    })??;
    if !leader {
        return Ok(match outcome {
            RunOutcome::Completed { .. } => ExitCode::SUCCESS,
            RunOutcome::Cancelled { .. } | RunOutcome::Interrupted { .. } => {
                ExitCode::from(crate::dist::launch::INTERRUPTED_STATUS as u8)
            }
            RunOutcome::Failed { .. } => ExitCode::FAILURE,
        });
    }
    if json {
        println!("{}", serde_json::to_string(&outcome)?);
    }
    match outcome {
        RunOutcome::Completed {
            step,
            final_knn_top1,
        } => {
            if !json {
                let knn = final_knn_top1
                    .map(|k| format!(", kNN top-1 {k:.2}%"))
                    .unwrap_or_default();
                eprintln!(
                    "completed {step} steps{knn}; checkpoints in {}",
                    run_dir.display()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        RunOutcome::Cancelled { step } | RunOutcome::Interrupted { step } => {
            if !json {
                eprintln!(
                    "stopped at step {step}; resume with: moco-server train --resume {}/<latest .ckpt.safetensors> (same settings)",
                    run_dir.display()
                );
            }
            Ok(ExitCode::from(
                crate::dist::launch::INTERRUPTED_STATUS as u8,
            ))
        }
        RunOutcome::Failed { reason, .. } => {
            if !json {
                eprintln!("failed: {reason}");
            }
            Ok(ExitCode::FAILURE)
        }
    }
}

/// The run's directory: --out, or ./runs/<name, or preset-timestamp>; absolute, so the paths in
/// events and messages work from any directory.
fn resolve_run_dir(args: &TrainArgs, cfg: &RunConfig) -> anyhow::Result<PathBuf> {
    let run_dir = match &args.out {
        Some(dir) => dir.clone(),
        None => {
            let stamp = time::OffsetDateTime::now_utc()
                .format(time::macros::format_description!(
                    "[year][month][day]-[hour][minute][second]"
                ))
                .unwrap_or_default();
            let name = if cfg.name.trim().is_empty() {
                format!("{}-{stamp}", cfg.preset.name())
            } else {
                sanitize_file_name(&cfg.name)
            };
            PathBuf::from("runs").join(name)
        }
    };
    Ok(std::env::current_dir()?.join(run_dir))
}

pub fn export(args: ExportArgs) -> anyhow::Result<ExitCode> {
    if args.out.extension().and_then(|e| e.to_str()) != Some("safetensors") {
        bail!("--out: the encoder file must end in .safetensors");
    }
    let info = crate::train::checkpoint::export_from_checkpoint(&args.checkpoint, &args.out)?;
    println!(
        "wrote {} ({} bytes, sha256 {}) from epoch {}, step {}",
        info.path.display(),
        info.size_bytes,
        info.sha256,
        info.epoch,
        info.step
    );
    Ok(ExitCode::SUCCESS)
}

/// Letters, digits, '-', '_' and '.', so a run name cannot steer the output path.
pub(crate) fn sanitize_file_name(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    s.trim_start_matches('.').to_string()
}

struct JsonLines;

/// A rank other than 0: its errors on stderr, the rest left to rank 0.
struct ErrorsOnly;

impl Observer for ErrorsOnly {
    fn on_event(&mut self, event: TrainEvent) {
        if let TrainEvent::Log {
            level: LogLevel::Error,
            message,
        } = event
        {
            eprintln!("error: {message}");
        }
    }
}

impl Observer for JsonLines {
    fn on_event(&mut self, event: TrainEvent) {
        if let Ok(line) = serde_json::to_string(&event) {
            println!("{line}");
        }
    }
}

/// A terminal progress bar over all steps: epoch, step, loss, images/s and ETA.
pub(crate) struct ProgressObserver {
    bar: ProgressBar,
    steps_per_epoch: i64,
}

/// The terminal's progress bar over a job's steps: prefix (the epoch), bar, steps, a message
/// (loss and the like) and the ETA. `train` and `eval` share it.
pub(crate) fn step_bar() -> ProgressBar {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} steps {msg} ETA {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar
}

impl ProgressObserver {
    pub(crate) fn new() -> Self {
        ProgressObserver {
            bar: step_bar(),
            steps_per_epoch: 1,
        }
    }
}

impl Observer for ProgressObserver {
    fn on_event(&mut self, event: TrainEvent) {
        match event {
            TrainEvent::Started {
                device,
                start_step,
                steps_per_epoch,
                total_steps,
                train_images,
                parameters,
                ..
            } => {
                self.steps_per_epoch = steps_per_epoch.max(1);
                self.bar.println(format!(
                    "training on {device}: {train_images} images, {steps_per_epoch} steps per epoch, {parameters} parameters"
                ));
                self.bar.set_length(total_steps as u64);
                self.bar.set_position(start_step as u64);
                self.bar.reset_eta();
            }
            TrainEvent::Metrics(m) => {
                let v = |n: &str| m.values.get(n).copied().unwrap_or(f64::NAN);
                self.bar.set_prefix(format!(
                    "epoch {}",
                    m.step.saturating_sub(1) / self.steps_per_epoch + 1
                ));
                self.bar.set_position(m.step as u64);
                let memory = m
                    .values
                    .get(metric::DEVICE_MEMORY_MB)
                    .map(|mib| format!(" {:.1} GiB", mib / 1024.0))
                    .unwrap_or_default();
                self.bar.set_message(format!(
                    "loss {:.4} top1 {:.2} {:.0} img/s{memory}",
                    v("loss"),
                    v("top1"),
                    v("images_per_sec")
                ));
            }
            TrainEvent::Evaluation {
                epoch, knn_top1, ..
            } => {
                let untrained = if epoch == 0 { " (untrained)" } else { "" };
                self.bar.println(format!(
                    "epoch {epoch}{untrained}: kNN top-1 {knn_top1:.2}%"
                ));
            }
            TrainEvent::CheckpointSaved(c) => {
                self.bar.println(format!(
                    "saved {} checkpoint {} ({} bytes)",
                    c.kind.name(),
                    c.path.display(),
                    c.size_bytes
                ));
            }
            TrainEvent::Log { level, message } => {
                let tag = match level {
                    LogLevel::Info => "info",
                    LogLevel::Warn => "warning",
                    LogLevel::Error => "error",
                };
                self.bar.println(format!("{tag}: {message}"));
            }
        }
    }
}

impl Drop for ProgressObserver {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
    }
}
