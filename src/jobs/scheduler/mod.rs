//! The scheduler: starts queued runs in order on their device, cancels, resumes and deletes runs,
//! and stops everything on shutdown. The database is the truth for run state; this keeps only what
//! cannot live there (the stop flags and threads of running runs).
use crate::config::{FieldError, RunConfig};
use crate::db::{self, runs::RunState, runs::RunSummary};
use crate::jobs::hub::{state_data, EventHub};
use crate::jobs::paths::{check_dataset, run_dir};
use crate::jobs::recorder::{self, Recorder, RecorderMsg};
use crate::jobs::worker::{ChannelObserver, DeviceWorkers, Job, JobKey, TrainJob};
use crate::train::stop::StopFlag;
use crate::train::TrainRequest;
use anyhow::Context;
use serde::Serialize;
use sqlx::SqlitePool;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;

mod actions;
mod evals;
mod sweeps;

pub use evals::{CreatedEval, EvalRequest, EvalSource};

/// How the scheduler runs.
#[derive(Debug, Clone)]
pub struct SchedulerOptions {
    /// Runs trained at once on one device.
    pub runs_per_device: usize,
    /// Queue runs left interrupted (by a shutdown or a crash) again at start.
    pub auto_resume: bool,
}

impl Default for SchedulerOptions {
    fn default() -> Self {
        SchedulerOptions {
            runs_per_device: 1,
            auto_resume: false,
        }
    }
}

/// Why the scheduler did not do what it was asked: the web layer answers 404, 409, 422 or 500.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    #[error("there is no run {0}")]
    NotFound(i64),
    #[error("there is no evaluation {0}")]
    NoEval(i64),
    #[error("there is no sweep {0}")]
    NoSweep(i64),
    /// The run's state does not allow it (the sentence says why).
    #[error("{0}")]
    Conflict(String),
    /// The config is invalid: every bad field named, nothing stored.
    #[error("the config is invalid")]
    Invalid(Vec<FieldError>),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

/// A stored, queued run.
#[derive(Debug, Clone, Serialize)]
pub struct CreatedRun {
    pub run: RunSummary,
    pub config: RunConfig,
}

/// A run or an evaluation on a device thread, or a run on several processes.
struct Active {
    /// The devices it holds: one, or one per process ("cuda:0,cuda:1"; "cpu,cpu" holds the CPU).
    devices: Vec<String>,
    stop: StopFlag,
}

impl Active {
    /// A run on several processes has its devices to itself: its ranks step together, so one
    /// slowed down by another job slows all of them.
    fn exclusive(&self) -> bool {
        self.devices.len() > 1
    }
}

#[derive(Default)]
struct Slots {
    active: HashMap<JobKey, Active>,
    workers: HashMap<String, DeviceWorkers>,
    /// The threads following runs on several processes (joined at shutdown).
    ranked: Vec<std::thread::JoinHandle<()>>,
    shutting_down: bool,
}

impl Slots {
    /// Whether a job on `devices` (as stored: one name, or one per process) can start now, with
    /// `per_device` jobs allowed on a device at once.
    fn can_start(&self, devices: &[String], per_device: usize) -> bool {
        let exclusive = devices.len() > 1;
        devices.iter().all(|device| {
            let holders = self.active.values().filter(|a| a.devices.contains(device));
            let (mut count, mut held_alone) = (0, false);
            for a in holders {
                count += 1;
                held_alone |= a.exclusive();
            }
            !held_alone
                && if exclusive {
                    count == 0
                } else {
                    count < per_device
                }
        })
    }
}

/// The devices a run or evaluation stored as one text holds.
fn stored_devices(stored: &str) -> Vec<String> {
    stored.split(',').map(|d| d.trim().to_string()).collect()
}

struct Inner {
    pool: SqlitePool,
    data_dir: PathBuf,
    hub: Arc<EventHub>,
    options: SchedulerOptions,
    slots: Mutex<Slots>,
    wake: Notify,
    recorder_tx: Mutex<Option<mpsc::Sender<RecorderMsg>>>,
    recorder_task: tokio::sync::Mutex<Option<JoinHandle<()>>>,
    dispatcher_task: Mutex<Option<JoinHandle<()>>>,
    stopped: AtomicBool,
}

/// Cheap to clone; every clone is the same scheduler.
#[derive(Clone)]
pub struct Scheduler {
    inner: Arc<Inner>,
}

impl Scheduler {
    /// Marks runs a dead process left running as interrupted (queuing them again with
    /// `auto_resume`), starts the recorder and the dispatcher. Needs a tokio runtime.
    pub async fn start(
        pool: SqlitePool,
        data_dir: PathBuf,
        hub: Arc<EventHub>,
        options: SchedulerOptions,
    ) -> anyhow::Result<Scheduler> {
        let (tx, rx) = mpsc::channel(recorder::CHANNEL_CAPACITY);
        let (finished_tx, mut finished_rx) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            pool: pool.clone(),
            data_dir: data_dir.clone(),
            hub: hub.clone(),
            options,
            slots: Mutex::new(Slots::default()),
            wake: Notify::new(),
            recorder_tx: Mutex::new(Some(tx)),
            recorder_task: tokio::sync::Mutex::new(None),
            dispatcher_task: Mutex::new(None),
            stopped: AtomicBool::new(false),
        });
        let scheduler = Scheduler { inner };
        scheduler.recover().await?;

        let recorder = Recorder {
            pool,
            data_dir,
            hub,
            finished: finished_tx,
        };
        *scheduler.inner.recorder_task.lock().await = Some(tokio::spawn(recorder.run(rx)));

        let me = scheduler.clone();
        let dispatcher = tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = me.inner.wake.notified() => {}
                    Some(id) = finished_rx.recv() => me.release(id),
                }
                if let Err(e) = me.dispatch().await {
                    tracing::error!("cannot start queued runs, retrying in a second: {e:#}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    me.inner.wake.notify_one();
                }
            }
        });
        *scheduler.inner.dispatcher_task.lock().unwrap() = Some(dispatcher);
        scheduler.inner.wake.notify_one();
        Ok(scheduler)
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.inner.pool
    }

    pub fn data_dir(&self) -> &Path {
        &self.inner.data_dir
    }

    pub fn hub(&self) -> &Arc<EventHub> {
        &self.inner.hub
    }

    /// Ids of the runs on training threads now.
    pub fn active_runs(&self) -> Vec<i64> {
        let mut ids: Vec<i64> = self
            .inner
            .slots
            .lock()
            .unwrap()
            .active
            .keys()
            .filter_map(|key| match key {
                JobKey::Run(id) => Some(*id),
                JobKey::Eval(_) => None,
            })
            .collect();
        ids.sort_unstable();
        ids
    }

    /// Runs left 'running' by a process that died become 'interrupted'.
    async fn recover(&self) -> anyhow::Result<()> {
        let inner = &self.inner;
        let ids = interrupt_runs_left_running(
            inner,
            "the server stopped while the run was training; resume it to continue from its last \
             checkpoint",
        )
        .await?;
        if !ids.is_empty() {
            tracing::warn!(
                ?ids,
                "runs left running by a previous process are now interrupted"
            );
        }
        let evals = interrupt_evals_left_running(
            inner,
            "the server stopped while the evaluation was running; restart it to run it again",
        )
        .await?;
        if !evals.is_empty() {
            tracing::warn!(
                ?evals,
                "evaluations left running by a previous process are now interrupted"
            );
        }
        if inner.options.auto_resume {
            for id in db::runs::ids_in_state(&inner.pool, RunState::Interrupted).await? {
                match self.resume(id).await {
                    Ok(_) => {
                        tracing::info!(run = id, "interrupted run queued again (--auto-resume)")
                    }
                    Err(SchedulerError::Internal(e)) => return Err(e),
                    Err(refused) => tracing::warn!(run = id, "cannot resume: {refused}"),
                }
            }
            for id in db::evals::ids_in_state(&inner.pool, RunState::Interrupted).await? {
                match self.restart_eval(id).await {
                    Ok(_) => tracing::info!(eval = id, "interrupted evaluation queued again"),
                    Err(SchedulerError::Internal(e)) => return Err(e),
                    Err(refused) => tracing::warn!(eval = id, "cannot restart: {refused}"),
                }
            }
        }
        Ok(())
    }

    /// A device thread is free again (its job's end is stored).
    fn release(&self, key: JobKey) {
        self.inner.slots.lock().unwrap().active.remove(&key);
    }

    /// Starts queued runs and evaluations, oldest first, while their devices have free slots.
    async fn dispatch(&self) -> anyhow::Result<()> {
        let pool = &self.inner.pool;
        // By creation time as a time: the stored text's fraction of a second has no fixed
        // number of digits, so the strings do not sort as the times do.
        let created = |text: &str| {
            time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()
        };
        let mut queue: Vec<(Option<time::OffsetDateTime>, JobKey, String)> = db::runs::queued(pool)
            .await?
            .into_iter()
            .map(|(id, device, at)| (created(&at), JobKey::Run(id), device))
            .chain(
                db::evals::queued(pool)
                    .await?
                    .into_iter()
                    .map(|(id, device, at)| (created(&at), JobKey::Eval(id), device)),
            )
            .collect();
        queue.sort();
        // Devices an older job waits for: a younger one does not overtake it there, so a run on
        // several devices is not starved by single-device jobs that keep one of them busy.
        let mut awaited: std::collections::HashSet<String> = std::collections::HashSet::new();
        for (_, key, device) in queue {
            {
                let slots = self.inner.slots.lock().unwrap();
                if slots.shutting_down {
                    return Ok(());
                }
                let devices = stored_devices(&device);
                if devices.iter().any(|d| awaited.contains(d))
                    || !slots.can_start(&devices, self.inner.options.runs_per_device.max(1))
                {
                    awaited.extend(devices);
                    continue;
                }
            }
            match key {
                JobKey::Run(id) => {
                    if let Err(e) = self.start_run(id, &device).await {
                        tracing::error!(run = id, "cannot start the run: {e:#}");
                        self.fail_queued(id, &format!("{e:#}")).await?;
                    }
                }
                JobKey::Eval(id) => {
                    if let Err(e) = self.start_eval(id, &device).await {
                        tracing::error!(eval = id, "cannot start the evaluation: {e:#}");
                        self.fail_queued_eval(id, &format!("{e:#}")).await?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Hands a job to a thread of `device` (started on first use); false when the threads are
    /// closing for a shutdown.
    fn submit(&self, device_name: &str, job: Job) -> anyhow::Result<bool> {
        let mut slots = self.inner.slots.lock().unwrap();
        if slots.shutting_down {
            return Ok(false);
        }
        let workers = match slots.workers.entry(device_name.to_string()) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => v.insert(
                DeviceWorkers::start(device_name, self.inner.options.runs_per_device)
                    .context("cannot start a device thread")?,
            ),
        };
        Ok(workers.submit(job))
    }

    /// Registers a job's stop flag before it is marked running, so a cancel always finds it;
    /// false when the server is shutting down.
    fn reserve(&self, key: JobKey, device_name: &str, stop: &StopFlag) -> bool {
        let mut slots = self.inner.slots.lock().unwrap();
        if slots.shutting_down {
            return false;
        }
        slots.active.insert(
            key,
            Active {
                devices: stored_devices(device_name),
                stop: stop.clone(),
            },
        );
        true
    }

    /// The stop flag of a job on a device thread now.
    fn stop_flag(&self, key: JobKey) -> Option<StopFlag> {
        self.inner
            .slots
            .lock()
            .unwrap()
            .active
            .get(&key)
            .map(|a| a.stop.clone())
    }

    /// The recorder's sender, while the scheduler is not shutting down.
    fn recorder(&self) -> Option<mpsc::Sender<RecorderMsg>> {
        self.inner.recorder_tx.lock().unwrap().clone()
    }

    async fn start_run(&self, id: i64, device_name: &str) -> anyhow::Result<()> {
        let inner = &self.inner;
        let Some(row) = db::runs::get_row(&inner.pool, id).await? else {
            return Ok(());
        };
        let mut config = row.config()?;
        let rank_devices =
            crate::config::devices::resolve_rank_devices(device_name, config.devices)
                .map_err(|e| anyhow::anyhow!("{}: {}", e.field, e.message))?;
        check_dataset(&inner.data_dir, &config.dataset).map_err(|e| anyhow::anyhow!("{e}"))?;
        // The newest full checkpoint whose file is still there.
        let mut resume_from = None;
        for ckpt in db::checkpoints::full_newest_first(&inner.pool, id).await? {
            if let Some(path) = crate::jobs::paths::registered_file(&inner.data_dir, &ckpt.path) {
                resume_from = Some((path, ckpt.step));
                break;
            }
            tracing::warn!(run = id, path = %ckpt.path, "a registered checkpoint is missing; trying an older one");
        }
        let dir = run_dir(&inner.data_dir, id);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create the run directory {}", dir.display()))?;

        let stop = StopFlag::new();
        let key = JobKey::Run(id);
        if !self.reserve(key, device_name, &stop) {
            return Ok(());
        }
        let start_step = resume_from.as_ref().map_or(0, |(_, step)| *step);
        let marked = {
            let _guard = inner.hub.lock().await;
            let result: anyhow::Result<Option<db::events::EventRow>> = async {
                let mut tx = inner.pool.begin().await?;
                if !db::runs::mark_running(&mut tx, id).await? {
                    return Ok(None);
                }
                db::runs::rewind(&mut tx, id, start_step).await?;
                db::checkpoints::delete_after(&mut tx, id, start_step).await?;
                let event = db::events::insert(
                    &mut tx,
                    id,
                    "state",
                    &state_data(RunState::Running, None, start_step),
                )
                .await?;
                tx.commit().await?;
                Ok(Some(event))
            }
            .await;
            match result {
                Ok(Some(event)) => {
                    inner.hub.broadcast([event]);
                    true
                }
                Ok(None) => false,
                Err(e) => {
                    self.release(key);
                    return Err(e);
                }
            }
        };
        if !marked {
            // Cancelled or deleted while we prepared it.
            self.release(key);
            return Ok(());
        }
        let Some(tx) = self.recorder() else {
            return self.requeue(id).await;
        };
        if rank_devices.len() > 1 {
            // The ranks train on the devices reserved for the run.
            config.device = device_name.to_string();
            let job = crate::jobs::ranked::RankedJob {
                run_id: id,
                config,
                data_dir: inner.data_dir.clone(),
                run_dir: dir,
                stop,
                resume_from: resume_from.map(|(path, _)| path),
                observer: ChannelObserver::new(id, tx),
            };
            if !self.spawn_ranked(id, job)? {
                return self.requeue(id).await;
            }
            tracing::info!(run = id, devices = device_name, start_step, "run started");
            return Ok(());
        }
        let device = rank_devices[0];
        let job = Job::Train(Box::new(TrainJob {
            run_id: id,
            request: TrainRequest {
                config,
                data_dir: inner.data_dir.clone(),
                run_dir: dir,
                device,
                stop,
                resume_from: resume_from.map(|(path, _)| path),
                // A run resumes with the config it was stored with.
                allow_config_change: false,
                parallel: None,
            },
            observer: ChannelObserver::new(id, tx),
        }));
        if !self.submit(device_name, job)? {
            return self.requeue(id).await;
        }
        tracing::info!(run = id, device = device_name, start_step, "run started");
        Ok(())
    }

    /// Starts the thread that follows a run on several processes; false when the server is
    /// shutting down.
    fn spawn_ranked(&self, id: i64, job: crate::jobs::ranked::RankedJob) -> anyhow::Result<bool> {
        let mut slots = self.inner.slots.lock().unwrap();
        if slots.shutting_down {
            return Ok(false);
        }
        let handle = std::thread::Builder::new()
            .name(format!("ranks-run-{id}"))
            .spawn(move || crate::jobs::ranked::run(job))
            .context("cannot start the thread of a run on several processes")?;
        slots.ranked.retain(|t| !t.is_finished());
        slots.ranked.push(handle);
        Ok(true)
    }

    /// A run marked running that never reached a thread (the server began to shut down).
    async fn requeue(&self, id: i64) -> anyhow::Result<()> {
        self.release(JobKey::Run(id));
        self.change_state(id, &[RunState::Running], RunState::Queued)
            .await?;
        Ok(())
    }

    /// A queued run that cannot start (device gone, dataset moved) fails with the reason.
    async fn fail_queued(&self, id: i64, message: &str) -> anyhow::Result<()> {
        let inner = &self.inner;
        self.release(JobKey::Run(id));
        let _guard = inner.hub.lock().await;
        let mut tx = inner.pool.begin().await?;
        if db::runs::fail_if_queued(&mut tx, id, message).await? {
            let step = db::runs::step_of(&mut tx, id).await?;
            let event = db::events::insert(
                &mut tx,
                id,
                "state",
                &state_data(RunState::Failed, Some(message), step),
            )
            .await?;
            tx.commit().await?;
            inner.hub.broadcast([event]);
        }
        Ok(())
    }

    /// Stops dispatching, interrupts every running run (each writes a full checkpoint and ends
    /// 'interrupted'), joins the training threads and drains the recorder, all within `timeout`.
    /// A run whose thread did not stop in time is marked interrupted anyway.
    pub async fn shutdown(&self, timeout: Duration) {
        if self.inner.stopped.swap(true, Ordering::SeqCst) {
            return;
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let (workers, ranked) = {
            let mut slots = self.inner.slots.lock().unwrap();
            slots.shutting_down = true;
            for (key, active) in &slots.active {
                tracing::info!(job = ?key, "interrupting for shutdown");
                active.stop.interrupt();
            }
            (
                std::mem::take(&mut slots.workers),
                std::mem::take(&mut slots.ranked),
            )
        };
        let threads: Vec<_> = workers
            .into_values()
            .flat_map(DeviceWorkers::close)
            .chain(ranked)
            .collect();
        let joined = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        });
        if tokio::time::timeout_at(deadline, joined).await.is_err() {
            tracing::warn!("a training thread did not stop in time");
        }
        // Every finished job dropped its sender; dropping ours lets the recorder drain and end.
        self.inner.recorder_tx.lock().unwrap().take();
        if let Some(task) = self.inner.recorder_task.lock().await.take() {
            if tokio::time::timeout_at(deadline, task).await.is_err() {
                tracing::warn!("the recorder did not finish writing in time");
            }
        }
        if let Some(task) = self.inner.dispatcher_task.lock().unwrap().take() {
            task.abort();
        }
        // Whatever is still marked running did not get to store its end.
        let leftover = interrupt_runs_left_running(
            &self.inner,
            "the server stopped before the run could save its state; resume it to continue from \
             its last checkpoint",
        )
        .await;
        if let Err(e) = leftover {
            tracing::error!("cannot mark runs interrupted at shutdown: {e:#}");
        }
        let leftover = interrupt_evals_left_running(
            &self.inner,
            "the server stopped before the evaluation could record its end; restart it to run it \
             again",
        )
        .await;
        if let Err(e) = leftover {
            tracing::error!("cannot mark evaluations interrupted at shutdown: {e:#}");
        }
    }
}

/// Marks every evaluation still 'running' in the database as interrupted; returns their ids.
async fn interrupt_evals_left_running(inner: &Inner, reason: &str) -> anyhow::Result<Vec<i64>> {
    let mut conn = inner.pool.acquire().await?;
    db::evals::interrupt_stale(&mut conn, reason).await
}

/// Marks every run still 'running' in the database as interrupted with `reason`, stores and
/// broadcasts their state events; returns their ids.
async fn interrupt_runs_left_running(inner: &Inner, reason: &str) -> anyhow::Result<Vec<i64>> {
    let _guard = inner.hub.lock().await;
    let mut tx = inner.pool.begin().await?;
    let ids = db::runs::interrupt_stale(&mut tx, reason).await?;
    let mut events = Vec::new();
    for &id in &ids {
        let step = db::runs::step_of(&mut tx, id).await?;
        let data = state_data(RunState::Interrupted, Some(reason), step);
        events.push(db::events::insert(&mut tx, id, "state", &data).await?);
    }
    tx.commit().await?;
    inner.hub.broadcast(events);
    Ok(ids)
}
