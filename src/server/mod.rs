//! The HTTP server: shared state, the router, start-up and graceful shutdown.
//!
//! `/api/…` is the JSON API (api.rs, described by /api/openapi.json), `/api/runs/{id}/events` the
//! live event stream (events.rs), checkpoint downloads (downloads.rs), dataset downloads and
//! statistics (datasets_api.rs, fetch_jobs.rs, dataset_stats.rs), `/metrics` for Prometheus,
//! and the HTML dashboard (pages). Requests that change something need the access token when
//! the server listens beyond loopback (auth.rs).
use crate::jobs::hub::EventHub;
use crate::jobs::{Scheduler, SchedulerOptions};
use anyhow::Context;
use axum::extract::DefaultBodyLimit;
use axum::routing::get;
use axum::Router;
use sqlx::SqlitePool;
use std::future::IntoFuture;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower_http::limit::RequestBodyLimitLayer;

pub mod api;
pub mod auth;
pub mod dataset_stats;
pub mod datasets;
pub mod datasets_api;
pub mod downloads;
pub mod encoders;
pub mod error;
pub mod estimate;
pub mod evals_api;
pub mod events;
pub mod fetch_jobs;
pub mod openapi;
pub mod pages;
pub mod prometheus;
pub mod sweeps_api;

/// Largest request body accepted (configs and forms are a few KiB).
pub const BODY_LIMIT: usize = 1024 * 1024;
/// How long a shutdown waits for running runs to checkpoint and stop.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(7);
/// How long it then waits for open connections to finish.
pub const CONNECTION_GRACE: Duration = Duration::from_secs(2);
/// How long a dataset scan is reused.
const DATASET_CACHE: Duration = Duration::from_secs(5);

/// How the server was asked to run.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub host: String,
    pub port: u16,
    pub data_dir: PathBuf,
    /// The access token for changes (generated when None and the host is not loopback).
    pub token: Option<String>,
    /// Queue runs left interrupted again at start.
    pub auto_resume: bool,
    /// Runs trained at once on one device.
    pub runs_per_device: usize,
    /// Where dataset downloads may come from.
    pub fetch: fetch_jobs::FetchPolicy,
}

impl ServerConfig {
    /// Loopback-style defaults: no token, no auto-resume, one run per device.
    pub fn new(host: impl Into<String>, port: u16, data_dir: impl Into<PathBuf>) -> Self {
        ServerConfig {
            host: host.into(),
            port,
            data_dir: data_dir.into(),
            token: None,
            auto_resume: false,
            runs_per_device: 1,
            fetch: fetch_jobs::FetchPolicy::default(),
        }
    }
}

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub inner: Arc<AppInner>,
}

pub struct AppInner {
    pub db: SqlitePool,
    /// Canonical; every file the server reads or writes lies inside it.
    pub data_dir: PathBuf,
    pub scheduler: Scheduler,
    pub hub: Arc<EventHub>,
    pub auth: auth::Auth,
    /// Devices found at start (`crate::doctor::devices()`).
    pub devices: Vec<crate::doctor::DeviceInfo>,
    pub started: Instant,
    /// Dataset downloads started from the dashboard or the API.
    pub fetch_jobs: fetch_jobs::FetchJobs,
    /// Mean/std of listed datasets, computed on demand.
    pub dataset_stats: dataset_stats::StatsCache,
    shutdown: watch::Sender<bool>,
    dataset_cache: tokio::sync::Mutex<Option<(Instant, Vec<datasets::DatasetEntry>)>>,
    /// The data directory changed (a download finished): the next listing scans again.
    datasets_changed: std::sync::atomic::AtomicBool,
}

impl std::ops::Deref for AppState {
    type Target = AppInner;
    fn deref(&self) -> &AppInner {
        &self.inner
    }
}

impl AppState {
    /// Becomes true when the server begins to shut down (live streams end on it).
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    pub fn is_shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// The datasets under the data directory (rescanned at most every few seconds).
    pub async fn datasets(&self) -> anyhow::Result<Vec<datasets::DatasetEntry>> {
        let mut cache = self.dataset_cache.lock().await;
        let changed = self
            .datasets_changed
            .swap(false, std::sync::atomic::Ordering::SeqCst);
        if let Some((at, list)) = cache.as_ref() {
            if !changed && at.elapsed() < DATASET_CACHE {
                return Ok(list.clone());
            }
        }
        let dir = self.data_dir.clone();
        let list = tokio::task::spawn_blocking(move || datasets::scan(&dir))
            .await
            .context("the dataset scan failed")?;
        *cache = Some((Instant::now(), list.clone()));
        Ok(list)
    }

    /// The next [`AppState::datasets`] scans again instead of reusing its last listing.
    pub fn forget_datasets(&self) {
        self.datasets_changed
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Creates the data directory, opens its database and starts the scheduler (runs a previous
/// process left running become interrupted).
pub async fn prepare(config: &ServerConfig) -> anyhow::Result<AppState> {
    let data_dir = &config.data_dir;
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create the data directory {}", data_dir.display()))?;
    let data_dir = data_dir
        .canonicalize()
        .with_context(|| format!("cannot resolve the data directory {}", data_dir.display()))?;
    std::fs::create_dir_all(data_dir.join("runs"))
        .with_context(|| format!("cannot create {}", data_dir.join("runs").display()))?;
    let db = crate::db::open(&data_dir.join("moco.sqlite")).await?;
    let hub = Arc::new(EventHub::new());
    let scheduler = Scheduler::start(
        db.clone(),
        data_dir.clone(),
        hub.clone(),
        SchedulerOptions {
            runs_per_device: config.runs_per_device.max(1),
            auto_resume: config.auto_resume,
        },
    )
    .await?;
    let devices = tokio::task::spawn_blocking(crate::doctor::devices)
        .await
        .context("cannot list devices")?;
    let (shutdown, _) = watch::channel(false);
    Ok(AppState {
        inner: Arc::new(AppInner {
            db,
            data_dir,
            scheduler,
            hub,
            auth: auth::Auth::for_host(&config.host, config.token.clone()),
            devices,
            started: Instant::now(),
            fetch_jobs: fetch_jobs::FetchJobs::new(config.fetch.clone()),
            dataset_stats: dataset_stats::StatsCache::default(),
            shutdown,
            dataset_cache: tokio::sync::Mutex::new(None),
            datasets_changed: std::sync::atomic::AtomicBool::new(false),
        }),
    })
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(prometheus::metrics))
        .nest("/api", api::routes())
        .merge(pages::routes())
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(RequestBodyLimitLayer::new(BODY_LIMIT))
        // Encoder uploads are the only large bodies.
        .merge(
            encoders::upload_routes()
                .merge(pages::upload_routes())
                .layer(DefaultBodyLimit::max(encoders::UPLOAD_BODY_LIMIT))
                .layer(RequestBodyLimitLayer::new(encoders::UPLOAD_BODY_LIMIT)),
        )
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}

async fn healthz(axum::extract::State(state): axum::extract::State<AppState>) -> &'static str {
    if crate::db::ping(&state.db).await {
        "ok"
    } else {
        "database unavailable"
    }
}

/// A server bound to its address, ready to serve.
pub struct BoundServer {
    pub listener: TcpListener,
    pub state: AppState,
}

impl BoundServer {
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("bound listener has an address")
    }

    /// Serves until `shutdown` resolves. Then it stops accepting connections, interrupts running
    /// runs (each writes a full checkpoint and is marked interrupted), joins the training threads
    /// and stores their last events — which open event streams still deliver — and finally ends
    /// the streams and waits for the remaining connections. Bounded by `SHUTDOWN_GRACE` plus
    /// `CONNECTION_GRACE`.
    pub async fn serve(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let state = self.state.clone();
        let app = router(state.clone());
        let (stop_accepting, mut accepting) = watch::channel(false);
        let http = axum::serve(self.listener, app)
            .with_graceful_shutdown(async move {
                let _ = accepting.wait_for(|stop| *stop).await;
            })
            .into_future();
        let mut http = tokio::spawn(http);
        let early = tokio::select! {
            _ = shutdown => None,
            result = &mut http => Some(result),
        };
        tracing::info!("shutting down");
        stop_accepting.send_replace(true);
        state.scheduler.shutdown(SHUTDOWN_GRACE).await;
        state.shutdown.send_replace(true);
        tracing::debug!("runs stopped; closing connections");
        let served = match early {
            Some(result) => Some(result),
            None => tokio::time::timeout(CONNECTION_GRACE, &mut http).await.ok(),
        };
        // Every write is done: close the database cleanly (this also checkpoints the WAL).
        if tokio::time::timeout(CONNECTION_GRACE, state.db.close())
            .await
            .is_err()
        {
            tracing::warn!("the database did not close in time");
        }
        match served {
            Some(Ok(Ok(()))) => Ok(()),
            Some(Ok(Err(e))) => Err(anyhow::Error::from(e).context("server error")),
            Some(Err(e)) => Err(anyhow::Error::from(e).context("the server task failed")),
            None => {
                tracing::warn!("connections still open after the grace period were dropped");
                http.abort();
                Ok(())
            }
        }
    }
}

/// Binds the listener (port 0 picks a free port), then opens the data directory and starts the
/// scheduler.
pub async fn bind(config: &ServerConfig) -> anyhow::Result<BoundServer> {
    let addr = format!("{}:{}", config.host, config.port);
    let listener = TcpListener::bind(&addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let state = prepare(config).await?;
    Ok(BoundServer { listener, state })
}
