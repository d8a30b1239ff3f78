//! Where a run's files live, and keeping user-given paths inside the data directory.
use crate::config::{Choice, DatasetConfig, DatasetKind, FieldError};
use std::path::{Component, Path, PathBuf};

/// Resolves `rel` (a dataset path from a request or a stored config) against `data_dir` and
/// checks that the result lies inside it. Absolute paths and `..` are refused outright; symlinks
/// are followed by canonicalising, so one that points outside is refused too. `data_dir` must be
/// canonical. The error is a sentence for the user.
pub fn resolve_inside(data_dir: &Path, rel: &str) -> Result<PathBuf, String> {
    let trimmed = rel.trim();
    if trimmed.is_empty() {
        return Err("must not be empty".into());
    }
    if trimmed.contains('\0') {
        return Err("must not contain NUL characters".into());
    }
    let path = Path::new(trimmed);
    if path.is_absolute() || path.has_root() {
        return Err(format!(
            "must be relative to the data directory, got the absolute path {trimmed:?}"
        ));
    }
    for c in path.components() {
        match c {
            Component::ParentDir => {
                return Err(format!(
                    "must stay inside the data directory: {trimmed:?} contains '..'"
                ))
            }
            Component::Prefix(_) | Component::RootDir => {
                return Err(format!(
                    "must be relative to the data directory, got {trimmed:?}"
                ))
            }
            Component::CurDir | Component::Normal(_) => {}
        }
    }
    let joined = data_dir.join(path);
    let canonical = joined.canonicalize().map_err(|_| {
        format!(
            "{trimmed:?} does not exist in the data directory {}",
            data_dir.display()
        )
    })?;
    if !canonical.starts_with(data_dir) {
        return Err(format!(
            "{trimmed:?} leads outside the data directory (through a symbolic link)"
        ));
    }
    Ok(canonical)
}

/// Checks that a stored file path (relative to `data_dir`, from the database) still lies inside
/// the data directory and is a regular file; returns its canonical path.
pub fn registered_file(data_dir: &Path, rel: &str) -> Option<PathBuf> {
    let path = resolve_inside(data_dir, rel).ok()?;
    path.is_file().then_some(path)
}

/// `path` relative to `data_dir` (both canonical), as stored in the database; None when it is
/// outside.
pub fn relative_to(data_dir: &Path, path: &Path) -> Option<String> {
    let canonical = path.canonicalize().ok()?;
    let rel = canonical.strip_prefix(data_dir).ok()?;
    rel.to_str().map(str::to_string)
}

/// A message about files for clients: paths inside the data directory become relative to it and
/// the directory itself "the data directory", so the server's own layout stays its own.
pub fn without_data_dir(message: &str, data_dir: &Path) -> String {
    let dir = data_dir.display().to_string();
    message
        .replace(&format!("{dir}/"), "")
        .replace(&dir, "the data directory")
}

/// Where run `id` keeps its files.
pub fn run_dir(data_dir: &Path, id: i64) -> PathBuf {
    data_dir.join("runs").join(id.to_string())
}

/// The server's own checks of a dataset: its path must resolve inside the data directory and hold
/// a dataset of the kind the config names.
pub fn check_dataset(data_dir: &Path, ds: &DatasetConfig) -> Result<(), FieldError> {
    if ds.kind == DatasetKind::Synthetic {
        return Ok(());
    }
    let Some(rel) = ds.path.as_deref() else {
        return Err(FieldError::new(
            "dataset.path",
            format!("is required for a {} dataset", ds.kind.name()),
        ));
    };
    let path = resolve_inside(data_dir, rel)
        .map_err(|message| FieldError::new("dataset.path", message))?;
    match crate::data::detect_kind(&path) {
        Some(kind) if kind == ds.kind => Ok(()),
        Some(kind) => Err(FieldError::new(
            "dataset.kind",
            format!(
                "{rel:?} holds a {} dataset, not {}",
                kind.name(),
                ds.kind.name()
            ),
        )),
        None => Err(FieldError::new(
            "dataset.path",
            format!(
                "{rel:?} is not a recognised dataset (CIFAR-10/100 binary, STL-10 binary, or a \
                 folder of class subfolders holding JPEG/PNG images)"
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_escapes_and_accepts_inside() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        std::fs::create_dir_all(data.join("sets/cifar")).unwrap();
        let data = data.canonicalize().unwrap();
        assert_eq!(
            resolve_inside(&data, "sets/cifar").unwrap(),
            data.join("sets/cifar")
        );
        assert!(resolve_inside(&data, "../x").unwrap_err().contains(".."));
        assert!(resolve_inside(&data, "sets/../../x")
            .unwrap_err()
            .contains(".."));
        assert!(resolve_inside(&data, "/etc")
            .unwrap_err()
            .contains("absolute"));
        assert!(resolve_inside(&data, "missing")
            .unwrap_err()
            .contains("does not exist"));
        std::os::unix::fs::symlink(tmp.path(), data.join("escape")).unwrap();
        assert!(resolve_inside(&data, "escape")
            .unwrap_err()
            .contains("outside"));
        std::os::unix::fs::symlink(data.join("sets"), data.join("inner")).unwrap();
        assert_eq!(
            resolve_inside(&data, "inner/cifar").unwrap(),
            data.join("sets/cifar")
        );
    }
}
