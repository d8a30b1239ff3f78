//! Dataset downloads started from the dashboard or the API: each one a background job (a blocking
//! thread running [`fetch::fetch_with_progress`]), at most one per archive at a time, its
//! progress kept here for the Datasets page to poll.
//!
//! Where an archive comes from is the operator's choice, never the client's by default: the
//! canonical address, or a mirror set with `MOCO_FETCH_MIRROR_<NAME>` (and its checksum with
//! `MOCO_FETCH_MD5_<NAME>`), NAME one of CIFAR10, CIFAR100, STL10. A request may name its own
//! address and checksum only when the server runs with `--allow-fetch-source`: otherwise any
//! client could make the server fetch whatever it can reach, internal addresses included.
use super::error::without_data_dir;
use crate::data::fetch::{self, Archive, FetchOptions, FetchOutcome, Progress, Stage};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::watch;

/// Why a download did not start: one of the same archive runs, or the archive is already there
/// (the API answers 409 with the sentence).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct StartRefused(pub String);

/// A download address and the MD5 of what it serves (None: the canonical archive's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub url: String,
    pub md5: Option<String>,
}

/// Where downloads may come from (part of the server's configuration).
#[derive(Debug, Clone, Default)]
pub struct FetchPolicy {
    /// Mirrors replacing the canonical addresses.
    pub mirrors: BTreeMap<Archive, Source>,
    /// Requests may carry their own `url` and `md5`.
    pub allow_request_source: bool,
}

impl FetchPolicy {
    /// The environment variable naming the mirror of `archive` (`MOCO_FETCH_MIRROR_CIFAR10`).
    pub fn mirror_var(archive: Archive) -> String {
        format!("MOCO_FETCH_MIRROR_{}", archive.name().to_ascii_uppercase())
    }

    pub fn md5_var(archive: Archive) -> String {
        format!("MOCO_FETCH_MD5_{}", archive.name().to_ascii_uppercase())
    }

    /// Reads the mirrors from the process environment.
    pub fn from_env(allow_request_source: bool) -> anyhow::Result<FetchPolicy> {
        FetchPolicy::from_vars(|k| std::env::var(k).ok(), allow_request_source)
    }

    /// Reads the mirrors through `var`; a bad address or checksum is an error naming its variable.
    pub fn from_vars(
        var: impl Fn(&str) -> Option<String>,
        allow_request_source: bool,
    ) -> anyhow::Result<FetchPolicy> {
        let mut mirrors = BTreeMap::new();
        for archive in Archive::ALL {
            let (url_var, md5_var) = (Self::mirror_var(archive), Self::md5_var(archive));
            let url = var(&url_var).filter(|v| !v.trim().is_empty());
            let md5 = var(&md5_var).filter(|v| !v.trim().is_empty());
            let Some(url) = url else {
                anyhow::ensure!(md5.is_none(), "{md5_var} is set but {url_var} is not");
                continue;
            };
            let url = url.trim().to_string();
            fetch::check_url(&url).map_err(|e| anyhow::anyhow!("{url_var} {e}"))?;
            let md5 = md5
                .map(|m| fetch::normalize_md5(&m))
                .transpose()
                .map_err(|e| anyhow::anyhow!("{md5_var} {e}"))?;
            mirrors.insert(archive, Source { url, md5 });
        }
        Ok(FetchPolicy {
            mirrors,
            allow_request_source,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Nothing started since the server started.
    Idle,
    Running,
    Done,
    Failed,
}

/// One archive's download as the API reports it.
#[derive(Debug, Clone, Serialize)]
pub struct DownloadStatus {
    /// cifar10 | cifar100 | stl10 (what POST takes).
    pub dataset: &'static str,
    pub title: &'static str,
    /// The directory it unpacks to, relative to the data directory.
    pub dir: &'static str,
    /// Already in the data directory.
    pub present: bool,
    pub state: JobState,
    /// While running: downloading, then extracting.
    pub stage: Option<&'static str>,
    /// Bytes received.
    pub bytes: u64,
    /// The transfer's size when the server sent it.
    pub total: Option<u64>,
    /// Size of the canonical archive, for a first impression before anything started.
    pub approx_bytes: u64,
    pub bytes_per_sec: Option<f64>,
    pub eta_seconds: Option<f64>,
    /// Why it failed.
    pub error: Option<String>,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    /// From a configured mirror or the request rather than the canonical address.
    pub mirror: bool,
}

#[derive(Debug, Clone)]
struct Job {
    state: JobState,
    stage: Stage,
    bytes: u64,
    total: Option<u64>,
    error: Option<String>,
    started_at: String,
    finished_at: Option<String>,
    /// When the first byte was asked for (the rate leaves connection set-up out).
    download_started: Instant,
    mirror: bool,
}

type Jobs = Arc<Mutex<BTreeMap<Archive, Job>>>;

/// The downloads of one server.
pub struct FetchJobs {
    policy: FetchPolicy,
    jobs: Jobs,
}

impl FetchJobs {
    pub fn new(policy: FetchPolicy) -> FetchJobs {
        FetchJobs {
            policy,
            jobs: Arc::default(),
        }
    }

    pub fn policy(&self) -> &FetchPolicy {
        &self.policy
    }

    /// Every archive, in [`Archive::ALL`] order. Blocking-cheap: a few `stat` calls.
    pub fn statuses(&self, data_dir: &Path) -> Vec<DownloadStatus> {
        Archive::ALL
            .iter()
            .map(|&a| self.status(a, data_dir))
            .collect()
    }

    pub fn status(&self, archive: Archive, data_dir: &Path) -> DownloadStatus {
        let job = self.jobs.lock().expect("fetch jobs").get(&archive).cloned();
        let mut out = DownloadStatus {
            dataset: archive.name(),
            title: archive.title(),
            dir: archive.dir_name(),
            present: archive.is_present(data_dir),
            state: JobState::Idle,
            stage: None,
            bytes: 0,
            total: None,
            approx_bytes: archive.approx_bytes(),
            bytes_per_sec: None,
            eta_seconds: None,
            error: None,
            started_at: None,
            finished_at: None,
            mirror: self.policy.mirrors.contains_key(&archive),
        };
        let Some(job) = job else { return out };
        out.state = job.state;
        out.bytes = job.bytes;
        out.total = job.total;
        out.error = job.error;
        out.started_at = Some(job.started_at);
        out.finished_at = job.finished_at;
        out.mirror = job.mirror;
        if job.state == JobState::Running {
            out.stage = Some(job.stage.name());
            let secs = job.download_started.elapsed().as_secs_f64();
            // Half a second of data gives a rate worth showing; before that it is noise.
            if secs > 0.5 && job.bytes > 0 {
                let rate = job.bytes as f64 / secs;
                out.bytes_per_sec = Some(rate);
                out.eta_seconds = job.total.map(|t| t.saturating_sub(job.bytes) as f64 / rate);
            }
        }
        out
    }

    /// Starts downloading `archive` into `data_dir` in the background (from `requested` when the
    /// policy allows a request to choose, checked by the caller). `on_done` runs once it ended,
    /// either way. `stop` becoming true cancels it (the partial download is removed).
    ///
    /// Refused (409) while one of the same archive runs, or when it is already there.
    pub fn start(
        &self,
        archive: Archive,
        data_dir: PathBuf,
        requested: Option<Source>,
        stop: watch::Receiver<bool>,
        on_done: impl FnOnce() + Send + 'static,
    ) -> Result<DownloadStatus, StartRefused> {
        let source = requested.or_else(|| self.policy.mirrors.get(&archive).cloned());
        {
            let mut jobs = self.jobs.lock().expect("fetch jobs");
            if jobs
                .get(&archive)
                .is_some_and(|j| j.state == JobState::Running)
            {
                return Err(StartRefused(format!(
                    "a download of {} is already running",
                    archive.title()
                )));
            }
            if archive.is_present(&data_dir) {
                return Err(StartRefused(format!(
                    "{} is already in the data directory ({})",
                    archive.title(),
                    archive.dir_name()
                )));
            }
            jobs.insert(
                archive,
                Job {
                    state: JobState::Running,
                    stage: Stage::Downloading,
                    bytes: 0,
                    total: None,
                    error: None,
                    started_at: crate::db::now(),
                    finished_at: None,
                    download_started: Instant::now(),
                    mirror: source.is_some(),
                },
            );
        }
        let status = self.status(archive, &data_dir);
        let jobs = self.jobs.clone();
        tokio::spawn(async move {
            let progress = JobProgress {
                jobs: jobs.clone(),
                archive,
                stop,
            };
            let dir = data_dir.clone();
            let result = tokio::task::spawn_blocking(move || {
                let opts = FetchOptions {
                    url: source.as_ref().map(|s| s.url.clone()),
                    md5: source.and_then(|s| s.md5),
                    force: false,
                    progress: false,
                };
                fetch::fetch_with_progress(archive, &dir, &opts, &progress)
            })
            .await;
            let error = match result {
                Ok(Ok(FetchOutcome::Downloaded(_) | FetchOutcome::AlreadyPresent(_))) => None,
                Ok(Err(e)) => {
                    tracing::warn!("download of {} failed: {e:#}", archive.name());
                    Some(without_data_dir(&format!("{e:#}"), &data_dir))
                }
                Err(e) => {
                    tracing::error!("the download of {} panicked: {e}", archive.name());
                    Some("the download stopped unexpectedly (see the server log)".to_string())
                }
            };
            if let Some(job) = jobs.lock().expect("fetch jobs").get_mut(&archive) {
                job.state = if error.is_some() {
                    JobState::Failed
                } else {
                    JobState::Done
                };
                job.error = error;
                job.finished_at = Some(crate::db::now());
            }
            on_done();
        });
        Ok(status)
    }
}

/// Writes a job's progress into the shared table.
struct JobProgress {
    jobs: Jobs,
    archive: Archive,
    stop: watch::Receiver<bool>,
}

impl JobProgress {
    fn update(&self, f: impl FnOnce(&mut Job)) {
        if let Some(job) = self.jobs.lock().expect("fetch jobs").get_mut(&self.archive) {
            f(job);
        }
    }
}

impl Progress for JobProgress {
    fn stage(&self, stage: Stage) {
        self.update(|j| {
            j.stage = stage;
            if stage == Stage::Downloading {
                j.download_started = Instant::now();
            }
        });
    }

    fn bytes(&self, done: u64, total: Option<u64>) {
        self.update(|j| {
            j.bytes = done;
            j.total = total;
        });
    }

    fn cancelled(&self) -> bool {
        *self.stop.borrow()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirrors_come_from_their_variables_and_bad_ones_are_named() {
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        let p = FetchPolicy::from_vars(
            vars(&[
                ("MOCO_FETCH_MIRROR_CIFAR10", "http://mirror/c10.tgz"),
                ("MOCO_FETCH_MD5_CIFAR10", "C32A1D4AB5D03F1284B67883E8D87530"),
                ("MOCO_FETCH_MIRROR_STL10", "https://mirror/stl.tgz"),
            ]),
            false,
        )
        .unwrap();
        assert_eq!(
            p.mirrors.get(&Archive::Cifar10),
            Some(&Source {
                url: "http://mirror/c10.tgz".into(),
                md5: Some("c32a1d4ab5d03f1284b67883e8d87530".into())
            })
        );
        assert_eq!(p.mirrors.get(&Archive::Stl10).unwrap().md5, None);
        assert!(!p.mirrors.contains_key(&Archive::Cifar100));

        let err =
            FetchPolicy::from_vars(vars(&[("MOCO_FETCH_MIRROR_CIFAR100", "ftp://x/y")]), false)
                .unwrap_err();
        assert!(
            err.to_string().contains("MOCO_FETCH_MIRROR_CIFAR100"),
            "{err}"
        );
        let err = FetchPolicy::from_vars(
            vars(&[
                ("MOCO_FETCH_MIRROR_CIFAR10", "http://m/x"),
                ("MOCO_FETCH_MD5_CIFAR10", "abc"),
            ]),
            false,
        )
        .unwrap_err();
        assert!(err.to_string().contains("MOCO_FETCH_MD5_CIFAR10"), "{err}");
        let err =
            FetchPolicy::from_vars(vars(&[("MOCO_FETCH_MD5_STL10", "abc")]), false).unwrap_err();
        assert!(err.to_string().contains("MOCO_FETCH_MIRROR_STL10"), "{err}");
    }

    #[test]
    fn error_messages_leave_the_data_directory_out() {
        let dir = Path::new("/srv/moco/data");
        assert_eq!(
            without_data_dir(
                "checksum mismatch for http://m/x: nothing was written to /srv/moco/data",
                dir
            ),
            "checksum mismatch for http://m/x: nothing was written to the data directory"
        );
        assert_eq!(
            without_data_dir(
                "/srv/moco/data/.extract-1/cifar-10-batches-bin lacks files",
                dir
            ),
            ".extract-1/cifar-10-batches-bin lacks files"
        );
    }
}
