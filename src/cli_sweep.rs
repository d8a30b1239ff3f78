//! `moco-server sweep`: a grid of runs headless, one member after another, each with its own
//! progress bar (or JSON lines tagged with the member), then the sweep's table. Each member
//! writes into its own folder under --out; running the same command again skips the members
//! that ended and resumes an interrupted one from its latest checkpoint.
use crate::cli_train::{build_config, sanitize_file_name, ConfigArgs, ProgressObserver};
use crate::config::{describe_errors, DeviceChoice};
use crate::db::runs::RunState;
use crate::sweep::table::{self, MemberResult};
use crate::sweep::{parse_axis, recipes, SweepSpec};
use crate::train::events::{Observer, RunOutcome, TrainEvent};
use crate::train::stop::StopFlag;
use crate::train::{run_training, TrainRequest};
use anyhow::{anyhow, Context};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct SweepArgs {
    /// The base config every member starts from.
    #[command(flatten)]
    pub base: ConfigArgs,
    /// A field and its values, e.g. --vary momentum=0,0.9,0.99; repeat for a second field and
    /// for seeds (--vary seed=0,1).
    #[arg(long, value_name = "FIELD=V1,V2")]
    pub vary: Vec<String>,
    /// A built-in grid mirroring the MoCo paper's ablations, with the paper's figures in the
    /// table.
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(recipes::names()))]
    pub recipe: Option<String>,
    /// The sweep's name (default: the recipe's title or the varied fields).
    #[arg(long)]
    pub name: Option<String>,
    /// Where the members' folders go (default ./sweeps/<name>); the same --out continues a sweep.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// One JSON object per event on stdout, each with its member's position, then the table.
    #[arg(long)]
    pub json: bool,
}

/// What a member's folder keeps once the member ended, so a rerun skips it.
#[derive(Debug, Serialize, Deserialize)]
struct MemberRecord {
    outcome: RunOutcome,
    best_knn: Option<f64>,
}

const RECORD_FILE: &str = "member.json";

pub fn sweep(args: SweepArgs) -> anyhow::Result<ExitCode> {
    let base = build_config(&args.base)?;
    let vary = args
        .vary
        .iter()
        .map(|v| parse_axis(v))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow!("{}", describe_errors(&[e])))?;
    let spec = SweepSpec {
        name: args.name.clone().unwrap_or_default(),
        recipe: args.recipe.clone(),
        base: serde_json::to_value(&base)?,
        vary,
    };
    let data_dir = std::env::current_dir()?;
    let train_images = crate::sweep::training_images(&base, &data_dir);
    let expanded = spec
        .expand(train_images)
        .map_err(|errors| anyhow!("{}", describe_errors(&errors)))?;
    let device = crate::config::parse_device(&base.device)
        .unwrap_or(DeviceChoice::Auto)
        .resolve()
        .map_err(|e| anyhow!("device: {e}"))?;
    let out = data_dir.join(
        args.out
            .clone()
            .unwrap_or_else(|| PathBuf::from("sweeps").join(sanitize_file_name(&expanded.name))),
    );
    let count = expanded.members.len();
    if !args.json {
        eprintln!(
            "sweep {:?}: {count} runs into {}",
            expanded.name,
            out.display()
        );
        for s in &expanded.skipped {
            eprintln!("left out: {s}");
        }
    }
    let stop = StopFlag::new();
    let handler_stop = stop.clone();
    ctrlc::set_handler(move || {
        if handler_stop.is_set() {
            std::process::exit(130);
        }
        eprintln!(
            "\ninterrupt: saving the running member's checkpoint; the same command continues"
        );
        handler_stop.interrupt();
    })
    .context("cannot install the Ctrl-C handler")?;

    let mut results = Vec::new();
    for member in &expanded.members {
        let label = member.label();
        let dir = out.join(format!(
            "{:02}-{}",
            member.position,
            sanitize_file_name(&label)
        ));
        let record = match read_record(&dir) {
            Some(record) => {
                if !args.json {
                    eprintln!(
                        "[{}/{count}] {label}: already ended, kept",
                        member.position + 1
                    );
                }
                record
            }
            None => {
                if !args.json {
                    eprintln!("[{}/{count}] {label}", member.position + 1);
                }
                std::fs::create_dir_all(&dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
                let request = TrainRequest {
                    config: member.config.clone(),
                    data_dir: data_dir.clone(),
                    run_dir: dir.clone(),
                    device,
                    stop: stop.clone(),
                    resume_from: latest_checkpoint(&dir),
                    allow_config_change: false,
                    parallel: None,
                };
                let record = train_member(request, member.position, args.json)?;
                if matches!(
                    record.outcome,
                    RunOutcome::Completed { .. } | RunOutcome::Failed { .. }
                ) {
                    write_record(&dir, &record)?;
                }
                record
            }
        };
        let (state, error, last_knn) = match &record.outcome {
            RunOutcome::Completed { final_knn_top1, .. } => {
                (RunState::Completed, None, *final_knn_top1)
            }
            RunOutcome::Failed { reason, .. } => (RunState::Failed, Some(reason.clone()), None),
            RunOutcome::Cancelled { .. } => (RunState::Cancelled, None, None),
            RunOutcome::Interrupted { .. } => (RunState::Interrupted, None, None),
        };
        if !args.json {
            let said = match (&state, &error) {
                (RunState::Failed, Some(reason)) => format!("failed: {reason}"),
                _ => format!("{state}"),
            };
            eprintln!("[{}/{count}] {label}: {said}", member.position + 1);
        }
        results.push(MemberResult {
            position: member.position,
            values: member.values.clone(),
            // The CLI has no run ids: the table names members by their number.
            run_id: member.position as i64 + 1,
            state,
            error,
            negatives: member.config.negatives(),
            best_knn: record.best_knn,
            last_knn,
            linear_top1: None,
        });
        if state == RunState::Interrupted {
            break;
        }
    }
    let rows = table::rows(&results, expanded.recipe);
    let markdown = table::markdown(&rows, &expanded.fields, expanded.recipe);
    std::fs::write(out.join("table.md"), &markdown)?;
    std::fs::write(
        out.join("table.csv"),
        table::csv(&rows, &expanded.fields, expanded.recipe),
    )?;
    if args.json {
        println!("{}", serde_json::json!({"type": "table", "rows": rows}));
    } else {
        println!("{markdown}");
        eprintln!("the table is in {}/table.md and table.csv", out.display());
    }
    Ok(if results.len() < count {
        ExitCode::from(130)
    } else {
        ExitCode::SUCCESS
    })
}

/// Trains one member on its own thread (tch tensors are not Sync) and keeps its best kNN.
fn train_member(
    request: TrainRequest,
    position: usize,
    json: bool,
) -> anyhow::Result<MemberRecord> {
    let worker = std::thread::spawn(move || {
        let mut observer = BestKnn {
            best: None,
            inner: if json {
                Box::new(TaggedJson { position })
            } else {
                Box::new(ProgressObserver::new())
            },
        };
        let outcome = run_training(&request, &mut observer);
        outcome.map(|outcome| MemberRecord {
            outcome,
            best_knn: observer.best,
        })
    });
    worker.join().map_err(|panic| {
        anyhow!(
            "the training thread panicked: {}",
            crate::jobs::worker::panic_message(panic.as_ref())
        )
    })?
}

/// Passes events on and keeps the best kNN of the trained encoder (epoch 0 is the untrained
/// baseline).
struct BestKnn {
    best: Option<f64>,
    inner: Box<dyn Observer>,
}

impl Observer for BestKnn {
    fn on_event(&mut self, event: TrainEvent) {
        if let TrainEvent::Evaluation {
            epoch, knn_top1, ..
        } = &event
        {
            if *epoch > 0 {
                self.best = Some(self.best.map_or(*knn_top1, |b: f64| b.max(*knn_top1)));
            }
        }
        self.inner.on_event(event);
    }
}

/// `train --json`'s lines with the member's position added.
struct TaggedJson {
    position: usize,
}

impl Observer for TaggedJson {
    fn on_event(&mut self, event: TrainEvent) {
        if let Ok(mut value) = serde_json::to_value(&event) {
            if let Some(object) = value.as_object_mut() {
                object.insert("member".into(), self.position.into());
            }
            println!("{value}");
        }
    }
}

fn read_record(dir: &Path) -> Option<MemberRecord> {
    let text = std::fs::read_to_string(dir.join(RECORD_FILE)).ok()?;
    serde_json::from_str(&text).ok()
}

/// Written to a temporary name and renamed, so a crash never leaves half a record.
fn write_record(dir: &Path, record: &MemberRecord) -> anyhow::Result<()> {
    let tmp = dir.join(format!("{RECORD_FILE}.tmp"));
    std::fs::write(&tmp, serde_json::to_string_pretty(record)?)?;
    std::fs::rename(&tmp, dir.join(RECORD_FILE))?;
    Ok(())
}

/// The newest full checkpoint in a member's folder (their names sort by epoch and step).
fn latest_checkpoint(dir: &Path) -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("checkpoint-") && n.ends_with(".ckpt.safetensors"))
        })
        .collect();
    found.sort();
    found.pop()
}
