//! Downloads CIFAR-10/100 from their canonical address (or a mirror), checked against the
//! archive's MD5, into the data directory.
//!
//! Nothing half-done is ever left in place: the archive is written to a temporary file, verified,
//! extracted into a temporary directory next to the destination, checked, and only then renamed
//! into place. A checksum mismatch or a broken archive leaves the data directory as it was.
use super::cifar;
use anyhow::Context;
use md5::{Digest, Md5};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The archives `moco-server data fetch` knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Archive {
    Cifar10,
    Cifar100,
}

impl Archive {
    pub fn parse(name: &str) -> anyhow::Result<Archive> {
        match name {
            "cifar10" | "cifar-10" => Ok(Archive::Cifar10),
            "cifar100" | "cifar-100" => Ok(Archive::Cifar100),
            other => anyhow::bail!("unknown dataset {other:?}: expected cifar10 or cifar100"),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Archive::Cifar10 => "cifar10",
            Archive::Cifar100 => "cifar100",
        }
    }

    /// The canonical address.
    pub fn url(self) -> &'static str {
        match self {
            Archive::Cifar10 => "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
            Archive::Cifar100 => "https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz",
        }
    }

    /// MD5 of the canonical archive (lowercase hex).
    pub fn md5(self) -> &'static str {
        match self {
            Archive::Cifar10 => "c32a1d4ab5d03f1284b67883e8d87530",
            Archive::Cifar100 => "03b5dce01913d631647c71ecec9e9cb8",
        }
    }

    fn is_cifar100(self) -> bool {
        self == Archive::Cifar100
    }

    /// The directory the archive unpacks to, also its name inside the data directory.
    pub fn dir_name(self) -> &'static str {
        cifar::dir_name(self.is_cifar100())
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
    /// Show a terminal progress bar.
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

/// Downloads `archive` into `data_dir/<dir_name>` (see the module docs).
pub fn fetch(
    archive: Archive,
    data_dir: &Path,
    opts: &FetchOptions,
) -> anyhow::Result<FetchOutcome> {
    let url = opts.url.as_deref().unwrap_or(archive.url());
    anyhow::ensure!(
        url.starts_with("http://") || url.starts_with("https://"),
        "--url must be an http:// or https:// address, got {url:?}"
    );
    let expected = opts
        .md5
        .as_deref()
        .unwrap_or(archive.md5())
        .trim()
        .to_ascii_lowercase();
    anyhow::ensure!(
        expected.len() == 32 && expected.chars().all(|c| c.is_ascii_hexdigit()),
        "--md5 must be 32 hexadecimal digits, got {expected:?}"
    );
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create the data directory {}", data_dir.display()))?;
    let dest = data_dir.join(archive.dir_name());
    if !opts.force && cifar::find_dir(&dest, archive.is_cifar100()).is_some() {
        return Ok(FetchOutcome::AlreadyPresent(dest));
    }

    let mut download = tempfile::Builder::new()
        .prefix(".fetch-")
        .suffix(".tar.gz")
        .tempfile_in(data_dir)
        .with_context(|| format!("cannot create a temporary file in {}", data_dir.display()))?;
    let actual = download_to(url, download.as_file_mut(), opts.progress)?;
    anyhow::ensure!(
        actual == expected,
        "checksum mismatch for {url}: expected MD5 {expected}, got {actual}; the download was \
         discarded and nothing was written to {}",
        data_dir.display()
    );

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
    validate(&unpacked, archive.is_cifar100())
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
fn download_to(url: &str, out: &mut std::fs::File, progress: bool) -> anyhow::Result<String> {
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
    let bar = if progress {
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
    } else {
        indicatif::ProgressBar::hidden()
    };
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
        bar.set_position(received);
    }
    bar.finish_and_clear();
    if let Some(total) = total {
        anyhow::ensure!(
            received == total,
            "download from {url} ended after {received} of {total} bytes"
        );
    }
    out.flush().context("cannot write the download to disk")?;
    Ok(hex::encode(hasher.finalize()))
}

/// Every expected file is there and is a whole number of records.
pub fn validate(dir: &Path, cifar100: bool) -> anyhow::Result<()> {
    let found = cifar::find_dir(dir, cifar100)
        .with_context(|| format!("{} lacks the expected files", dir.display()))?;
    anyhow::ensure!(found == dir, "{} lacks the expected files", dir.display());
    cifar::check_files(dir, cifar100)
}
