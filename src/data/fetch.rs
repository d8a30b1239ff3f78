//! Downloads CIFAR-10/100 and STL-10 from their canonical address (or a mirror), checked against
//! the archive's MD5, into the data directory.
//!
//! Nothing half-done is ever left in place: the archive is written to a temporary file, verified,
//! extracted into a temporary directory next to the destination, checked, and only then renamed
//! into place. A checksum mismatch or a broken archive leaves the data directory as it was.
//!
//! Progress goes to a [`Progress`]: the command line draws a terminal bar with it, the server's
//! download jobs publish it to the dashboard.
use super::{cifar, stl10};
use anyhow::Context;
use md5::{Digest, Md5};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The archives `moco-server data fetch` knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Archive {
    Cifar10,
    Cifar100,
    Stl10,
}

impl Archive {
    pub const ALL: [Archive; 3] = [Archive::Cifar10, Archive::Cifar100, Archive::Stl10];

    pub fn parse(name: &str) -> anyhow::Result<Archive> {
        match name {
            "cifar10" | "cifar-10" => Ok(Archive::Cifar10),
            "cifar100" | "cifar-100" => Ok(Archive::Cifar100),
            "stl10" | "stl-10" => Ok(Archive::Stl10),
            other => {
                anyhow::bail!("unknown dataset {other:?}: expected cifar10, cifar100 or stl10")
            }
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Archive::Cifar10 => "cifar10",
            Archive::Cifar100 => "cifar100",
            Archive::Stl10 => "stl10",
        }
    }

    /// The dataset's usual name, for people.
    pub fn title(self) -> &'static str {
        match self {
            Archive::Cifar10 => "CIFAR-10",
            Archive::Cifar100 => "CIFAR-100",
            Archive::Stl10 => "STL-10",
        }
    }

    /// Size of the canonical archive in bytes (shown before a download starts; the transfer
    /// itself goes by the server's Content-Length).
    pub fn approx_bytes(self) -> u64 {
        match self {
            Archive::Cifar10 => 170_052_171,
            Archive::Cifar100 => 168_513_733,
            Archive::Stl10 => 2_640_397_119,
        }
    }

    /// The canonical address.
    pub fn url(self) -> &'static str {
        match self {
            Archive::Cifar10 => "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
            Archive::Cifar100 => "https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz",
            Archive::Stl10 => "http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz",
        }
    }

    /// MD5 of the canonical archive (lowercase hex).
    pub fn md5(self) -> &'static str {
        match self {
            Archive::Cifar10 => "c32a1d4ab5d03f1284b67883e8d87530",
            Archive::Cifar100 => "03b5dce01913d631647c71ecec9e9cb8",
            Archive::Stl10 => "91f7769df0f17e558f3565bffb0c7dfb",
        }
    }

    /// The directory the archive unpacks to, also its name inside the data directory.
    pub fn dir_name(self) -> &'static str {
        match self {
            Archive::Cifar10 => cifar::dir_name(false),
            Archive::Cifar100 => cifar::dir_name(true),
            Archive::Stl10 => stl10::DIR_NAME,
        }
    }

    /// The dataset is in `dest` (its files directly there or one level down, as the readers
    /// accept it).
    pub fn is_in(self, dest: &Path) -> bool {
        match self {
            Archive::Cifar10 => cifar::find_dir(dest, false).is_some(),
            Archive::Cifar100 => cifar::find_dir(dest, true).is_some(),
            Archive::Stl10 => stl10::find_dir(dest).is_some(),
        }
    }

    /// Already downloaded into `data_dir` (under [`Archive::dir_name`]).
    pub fn is_present(self, data_dir: &Path) -> bool {
        self.is_in(&data_dir.join(self.dir_name()))
    }
}

/// Where a fetch is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Downloading,
    /// Received in full; unpacking and checking the files.
    Extracting,
}

impl Stage {
    pub fn name(self) -> &'static str {
        match self {
            Stage::Downloading => "downloading",
            Stage::Extracting => "extracting",
        }
    }
}

/// What a fetch reports while it runs (called on the fetching thread).
pub trait Progress: Send + Sync {
    fn stage(&self, _stage: Stage) {}
    /// `done` bytes received; `total` is the server's Content-Length when it sent one.
    fn bytes(&self, _done: u64, _total: Option<u64>) {}
    /// Asked between chunks: true stops the download (the partial file is removed).
    fn cancelled(&self) -> bool {
        false
    }
}

/// Reports nothing.
pub struct NoProgress;

impl Progress for NoProgress {}

/// A progress bar on the terminal (stderr), drawn once the size is known.
#[derive(Default)]
pub struct TerminalBar {
    bar: std::sync::OnceLock<indicatif::ProgressBar>,
}

impl TerminalBar {
    fn bar(&self, total: Option<u64>) -> &indicatif::ProgressBar {
        self.bar.get_or_init(|| {
            let bar = indicatif::ProgressBar::new(total.unwrap_or(0));
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                )
                .expect("valid progress template")
                .progress_chars("=> "),
            );
            bar.set_message("downloading");
            bar
        })
    }
}

impl Progress for TerminalBar {
    fn stage(&self, stage: Stage) {
        if stage == Stage::Extracting {
            if let Some(bar) = self.bar.get() {
                bar.finish_and_clear();
            }
        }
    }

    fn bytes(&self, done: u64, total: Option<u64>) {
        self.bar(total).set_position(done);
    }
}

impl Drop for TerminalBar {
    fn drop(&mut self) {
        // A failed download must not leave a half-drawn bar above the error message.
        if let Some(bar) = self.bar.get() {
            bar.finish_and_clear();
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct FetchOptions {
    /// A mirror instead of the canonical address.
    pub url: Option<String>,
    /// Expected MD5 (lowercase or uppercase hex) instead of the canonical archive's.
    pub md5: Option<String>,
    /// Download again even when the dataset is already in place.
    pub force: bool,
    /// Show a terminal progress bar ([`fetch`] only; [`fetch_with_progress`] takes its own).
    pub progress: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchOutcome {
    Downloaded(PathBuf),
    AlreadyPresent(PathBuf),
}

impl FetchOutcome {
    pub fn path(&self) -> &Path {
        match self {
            FetchOutcome::Downloaded(p) | FetchOutcome::AlreadyPresent(p) => p,
        }
    }
}

/// A download address must be http:// or https:// (the message follows the option's name).
pub fn check_url(url: &str) -> Result<(), String> {
    if url.starts_with("http://") || url.starts_with("https://") {
        Ok(())
    } else {
        Err(format!(
            "must be an http:// or https:// address, got {url:?}"
        ))
    }
}

/// An MD5 as 32 hex digits in either case, returned in lowercase (the message follows the
/// option's name).
pub fn normalize_md5(md5: &str) -> Result<String, String> {
    let md5 = md5.trim().to_ascii_lowercase();
    if md5.len() == 32 && md5.chars().all(|c| c.is_ascii_hexdigit()) {
        Ok(md5)
    } else {
        Err(format!("must be 32 hexadecimal digits, got {md5:?}"))
    }
}

/// Downloads `archive` into `data_dir/<dir_name>` (see the module docs), with a terminal bar when
/// `opts.progress` is set.
pub fn fetch(
    archive: Archive,
    data_dir: &Path,
    opts: &FetchOptions,
) -> anyhow::Result<FetchOutcome> {
    if opts.progress {
        fetch_with_progress(archive, data_dir, opts, &TerminalBar::default())
    } else {
        fetch_with_progress(archive, data_dir, opts, &NoProgress)
    }
}

/// [`fetch`], reporting to `progress`.
pub fn fetch_with_progress(
    archive: Archive,
    data_dir: &Path,
    opts: &FetchOptions,
    progress: &dyn Progress,
) -> anyhow::Result<FetchOutcome> {
    let url = opts.url.as_deref().unwrap_or(archive.url());
    check_url(url).map_err(|e| anyhow::anyhow!("--url {e}"))?;
    let expected = normalize_md5(opts.md5.as_deref().unwrap_or(archive.md5()))
        .map_err(|e| anyhow::anyhow!("--md5 {e}"))?;
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create the data directory {}", data_dir.display()))?;
    let dest = data_dir.join(archive.dir_name());
    if !opts.force && archive.is_in(&dest) {
        return Ok(FetchOutcome::AlreadyPresent(dest));
    }

    let mut download = tempfile::Builder::new()
        .prefix(".fetch-")
        .suffix(".tar.gz")
        .tempfile_in(data_dir)
        .with_context(|| format!("cannot create a temporary file in {}", data_dir.display()))?;
    progress.stage(Stage::Downloading);
    let actual = download_to(url, download.as_file_mut(), progress)?;
    anyhow::ensure!(
        actual == expected,
        "checksum mismatch for {url}: expected MD5 {expected}, got {actual}; the download was \
         discarded and nothing was written to {}",
        data_dir.display()
    );

    progress.stage(Stage::Extracting);
    let staging = tempfile::Builder::new()
        .prefix(".extract-")
        .tempdir_in(data_dir)
        .with_context(|| {
            format!(
                "cannot create a temporary directory in {}",
                data_dir.display()
            )
        })?;
    let file = std::fs::File::open(download.path())
        .with_context(|| format!("cannot reopen {}", download.path().display()))?;
    tar::Archive::new(flate2::read::GzDecoder::new(std::io::BufReader::new(file)))
        .unpack(staging.path())
        .with_context(|| format!("cannot extract the archive downloaded from {url}"))?;
    let unpacked = staging.path().join(archive.dir_name());
    validate_archive(archive, &unpacked)
        .with_context(|| format!("the archive from {url} is not a {} archive", archive.name()))?;

    if dest.exists() {
        // --force: move the old copy aside first so a failed rename leaves it recoverable.
        let old = staging.path().join(".previous");
        std::fs::rename(&dest, &old)
            .with_context(|| format!("cannot move the old {} aside", dest.display()))?;
    }
    std::fs::rename(&unpacked, &dest)
        .with_context(|| format!("cannot move the extracted files to {}", dest.display()))?;
    Ok(FetchOutcome::Downloaded(dest))
}

/// Streams `url` into `out`, returning the MD5 of what was received.
fn download_to(
    url: &str,
    out: &mut std::fs::File,
    progress: &dyn Progress,
) -> anyhow::Result<String> {
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(30))
        .timeout_read(Duration::from_secs(60))
        .build();
    let response = agent.get(url).call().map_err(|e| match e {
        ureq::Error::Status(code, r) => {
            anyhow::anyhow!(
                "download from {url} failed: HTTP {code} {}",
                r.status_text()
            )
        }
        ureq::Error::Transport(t) => anyhow::anyhow!("download from {url} failed: {t}"),
    })?;
    let total: Option<u64> = response
        .header("Content-Length")
        .and_then(|v| v.parse().ok());
    progress.bytes(0, total);
    let mut reader = response.into_reader();
    let mut hasher = Md5::new();
    let mut buffer = vec![0u8; 1 << 16];
    let mut received = 0u64;
    loop {
        let n = reader
            .read(&mut buffer)
            .with_context(|| format!("download from {url} was interrupted"))?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
        out.write_all(&buffer[..n])
            .context("cannot write the download to disk")?;
        received += n as u64;
        progress.bytes(received, total);
        anyhow::ensure!(
            !progress.cancelled(),
            "the download from {url} was stopped after {received} bytes"
        );
    }
    if let Some(total) = total {
        anyhow::ensure!(
            received == total,
            "download from {url} ended after {received} of {total} bytes"
        );
    }
    out.flush().context("cannot write the download to disk")?;
    Ok(hex::encode(hasher.finalize()))
}

/// The files of `archive` are all in `dir` itself and whole (see [`validate`] and
/// [`stl10::check_files`]).
pub fn validate_archive(archive: Archive, dir: &Path) -> anyhow::Result<()> {
    match archive {
        Archive::Cifar10 => validate(dir, false),
        Archive::Cifar100 => validate(dir, true),
        Archive::Stl10 => {
            let found = stl10::find_dir(dir)
                .with_context(|| format!("{} lacks the expected files", dir.display()))?;
            anyhow::ensure!(found == dir, "{} lacks the expected files", dir.display());
            stl10::check_files(dir)
        }
    }
}

/// Every expected CIFAR file is there and is a whole number of records.
pub fn validate(dir: &Path, cifar100: bool) -> anyhow::Result<()> {
    let found = cifar::find_dir(dir, cifar100)
        .with_context(|| format!("{} lacks the expected files", dir.display()))?;
    anyhow::ensure!(found == dir, "{} lacks the expected files", dir.display());
    cifar::check_files(dir, cifar100)
}
