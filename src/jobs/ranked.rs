//! A run on several processes: the server starts `moco-server train --json` with the run's config,
//! whose launcher spawns and supervises the ranks (`dist::launch`), and carries rank 0's JSON
//! lines to the recorder as a run on a training thread would.
//!
//! The ranks live in their own processes, not on the server's threads: a rank that dies (killed,
//! out of memory, a crash in a collective) takes only itself and its launcher down, and the
//! launcher's verdict ("rank 1 (pid N) was killed by signal 9") becomes the run's error. A cancel
//! or a shutdown reaches the launcher as Ctrl-C: every rank stops at the same step and rank 0
//! writes the checkpoint the run resumes from.
use super::recorder::Finished;
use super::worker::ChannelObserver;
use crate::config::RunConfig;
use crate::train::events::{LogLevel, Observer, RunOutcome, TrainEvent};
use crate::train::stop::{StopFlag, StopRequest};
use anyhow::Context;
use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Lines of the launcher's stderr kept to explain a failure that produced no outcome.
const STDERR_TAIL: usize = 20;

/// A multi-process run handed to its own thread.
pub struct RankedJob {
    pub run_id: i64,
    pub config: RunConfig,
    /// The server's data directory: the ranks' working directory, so the config's dataset paths
    /// resolve as the server checked them.
    pub data_dir: PathBuf,
    pub run_dir: PathBuf,
    pub stop: StopFlag,
    pub resume_from: Option<PathBuf>,
    pub observer: ChannelObserver,
}

/// What the launcher's stdout carries: rank 0's events, then the run's outcome.
enum Line {
    Event(TrainEvent),
    Outcome(RunOutcome),
}

fn parse_line(line: &str) -> Option<Line> {
    let value: serde_json::Value = serde_json::from_str(line).ok()?;
    if value.get("type").is_some() {
        serde_json::from_value(value).ok().map(Line::Event)
    } else if value.get("state").is_some() {
        serde_json::from_value(value).ok().map(Line::Outcome)
    } else {
        None
    }
}

/// Trains the run on its processes and reports how it ended, like `worker::run_job`.
pub fn run(job: RankedJob) {
    let RankedJob {
        run_id,
        config,
        data_dir,
        run_dir,
        stop,
        resume_from,
        mut observer,
    } = job;
    tracing::info!(run = run_id, devices = %config.device, processes = config.devices, "training on several processes starts");
    let finished = match launch_and_follow(
        &config,
        &data_dir,
        &run_dir,
        &stop,
        resume_from,
        &mut observer,
    ) {
        Ok(outcome) => Finished::Outcome(outcome),
        Err(e) => Finished::Error(format!("{e:#}")),
    };
    // The launcher knows Ctrl-C only, which ends a run interrupted: a user's cancel makes it
    // cancelled. A run stopped by a shutdown stays resumable even when the stop surfaced as an
    // error.
    let finished = match (finished, stop.get()) {
        (Finished::Outcome(RunOutcome::Interrupted { step }), StopRequest::Cancel) => {
            Finished::Outcome(RunOutcome::Cancelled { step })
        }
        (Finished::Error(message), StopRequest::Interrupt) => {
            Finished::InterruptedWithError(message)
        }
        (f, _) => f,
    };
    tracing::info!(run = run_id, "training on several processes ended");
    observer.finish(finished);
}

/// Writes the config, starts the launcher, passes its events on and a stop request to it, and
/// returns the outcome it reported (or an error naming why there was none).
fn launch_and_follow(
    config: &RunConfig,
    data_dir: &std::path::Path,
    run_dir: &std::path::Path,
    stop: &StopFlag,
    resume_from: Option<PathBuf>,
    observer: &mut ChannelObserver,
) -> anyhow::Result<RunOutcome> {
    let config_path = run_dir.join("launch.toml");
    crate::train::checkpoint::write_atomically(&config_path, config.to_toml().as_bytes())?;
    let exe = std::env::current_exe().context("cannot find this program to start the ranks")?;
    let mut command = Command::new(exe);
    command
        .arg("train")
        .arg("--preset")
        .arg(crate::config::Choice::name(config.preset))
        .arg("--config")
        .arg(&config_path)
        .arg("--out")
        .arg(run_dir)
        .arg("--json");
    if let Some(path) = &resume_from {
        command.arg("--resume").arg(path);
    }
    command
        .current_dir(data_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group: a Ctrl-C at the server's terminal reaches the server, whose
        // shutdown passes it on once.
        .process_group(0);
    // A server killed without stopping the run: the launcher stops its ranks after a checkpoint.
    crate::dist::launch::terminate_with_parent(&mut command);
    let mut child = command
        .spawn()
        .context("cannot start the processes of the run")?;
    let pid = child.id() as i32;

    let stderr = child.stderr.take().expect("piped");
    let tail = std::thread::spawn(move || stderr_tail(stderr));
    let stdout = child.stdout.take().expect("piped");
    let (tx, rx) = crossbeam_channel::unbounded::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });

    let mut outcome = None;
    let mut stop_sent = false;
    loop {
        if stop.is_set() && !stop_sent {
            // SAFETY: kill(2) with the pid of the child we spawned and have not reaped.
            unsafe { libc::kill(pid, libc::SIGINT) };
            stop_sent = true;
        }
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(line) => match parse_line(&line) {
                Some(Line::Event(event)) => observer.on_event(event),
                Some(Line::Outcome(o)) => outcome = Some(o),
                None => tracing::debug!(line, "a line from the ranks that is not an event"),
            },
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
        }
    }
    let _ = reader.join();
    let status = child
        .wait()
        .context("cannot wait for the processes of the run")?;
    let tail = tail.join().unwrap_or_default();
    if let Some(outcome) = outcome {
        return Ok(outcome);
    }
    // No outcome: the launcher refused to start (its message is its last line) or died.
    let last = tail
        .iter()
        .rev()
        .find(|l| !l.trim().is_empty())
        .cloned()
        .unwrap_or_default();
    let last = last.strip_prefix("error: ").unwrap_or(&last).to_string();
    for line in &tail {
        observer.on_event(TrainEvent::Log {
            level: LogLevel::Info,
            message: format!("launcher: {line}"),
        });
    }
    if last.is_empty() {
        anyhow::bail!("the processes of the run ended ({status}) without reporting an outcome");
    }
    anyhow::bail!("{last}")
}

/// Copies the launcher's stderr (the ranks' messages, prefixed with their rank) to the log and
/// keeps its last lines.
fn stderr_tail(stderr: impl Read) -> Vec<String> {
    let mut tail = VecDeque::with_capacity(STDERR_TAIL);
    for line in BufReader::new(stderr).lines().map_while(Result::ok) {
        tracing::debug!(target: "moco_server::ranks", "{line}");
        if tail.len() == STDERR_TAIL {
            tail.pop_front();
        }
        tail.push_back(line);
    }
    tail.into()
}
