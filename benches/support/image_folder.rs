//! The image folders the PyTorch-comparison benches read on both sides: the engine's built-in
//! synthetic set written as PNG files (so torchvision's ImageFolder and the engine see the same
//! pixels), and smoke-run subsets of a folder made of symbolic links.
use moco_server::config::DatasetConfig;
use moco_server::data::synthetic::{Split, Synthetic, SYNTHETIC_SEED};
use moco_server::data::Dataset;
use std::path::{Path, PathBuf};

/// Image extensions both sides read.
const EXTENSIONS: [&str; 3] = ["jpg", "jpeg", "png"];

/// `dir` has the train/ and test/ splits of an image folder.
pub fn has_splits(dir: &Path) -> bool {
    dir.join("train").is_dir() && dir.join("test").is_dir()
}

/// Writes the engine's built-in synthetic set (the default sizes) as `dir/{train,test}/<class>/
/// NNNNN.png`. Skipped when a finished export is already there.
pub fn export_synthetic(dir: &Path) -> anyhow::Result<()> {
    let done = dir.join(".complete");
    if done.exists() {
        return Ok(());
    }
    let cfg = DatasetConfig::synthetic();
    let partial = dir.with_extension("partial");
    let _ = std::fs::remove_dir_all(&partial);
    for (split, name, len) in [
        (Split::Train, "train", cfg.synthetic_train),
        (Split::Test, "test", cfg.synthetic_test),
    ] {
        let set = Synthetic::new(SYNTHETIC_SEED, split, len, cfg.synthetic_image_size);
        let side = cfg.synthetic_image_size;
        let mut pixels = vec![0u8; side * side * 3];
        for index in 0..set.len() {
            set.read_into(index, &mut pixels)?;
            let class = &set.class_names()[set.label(index) as usize];
            let folder = partial.join(name).join(class);
            std::fs::create_dir_all(&folder)?;
            image::save_buffer(
                folder.join(format!("{index:05}.png")),
                &pixels,
                side as u32,
                side as u32,
                image::ExtendedColorType::Rgb8,
            )?;
        }
    }
    let _ = std::fs::remove_dir_all(dir);
    std::fs::rename(&partial, dir)?;
    std::fs::write(&done, b"")?;
    Ok(())
}

fn hidden(p: &Path) -> bool {
    p.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.'))
}

/// Image files of every class folder of `split` (both sorted by name, as ImageFolder and the
/// engine list them).
fn class_files(split: &Path) -> anyhow::Result<Vec<(String, Vec<PathBuf>)>> {
    let mut classes: Vec<PathBuf> = std::fs::read_dir(split)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir() && !hidden(p))
        .collect();
    classes.sort();
    let mut out = Vec::new();
    for class in classes {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&class)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                !hidden(p)
                    && p.extension()
                        .and_then(|e| e.to_str())
                        .is_some_and(|e| EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)))
            })
            .collect();
        files.sort();
        let name = class.file_name().unwrap().to_string_lossy().into_owned();
        out.push((name, files));
    }
    Ok(out)
}

/// A copy of `source` (symbolic links) with at most `limit_train` / `limit_test` images per
/// split, spread evenly over the classes: in class order, class i keeps its first limit / C (+1
/// for the first limit % C classes) files, so every class is represented in a small subset. A
/// limit of 0 links the whole split.
pub fn limited_copy(
    source: &Path,
    limit_train: usize,
    limit_test: usize,
    dest: &Path,
) -> anyhow::Result<()> {
    let _ = std::fs::remove_dir_all(dest);
    std::fs::create_dir_all(dest)?;
    for (split, limit) in [("train", limit_train), ("test", limit_test)] {
        let from = std::fs::canonicalize(source.join(split))?;
        if limit == 0 {
            std::os::unix::fs::symlink(&from, dest.join(split))?;
            continue;
        }
        let classes = class_files(&from)?;
        let c = classes.len().max(1);
        for (i, (name, files)) in classes.iter().enumerate() {
            let quota = limit / c + usize::from(i < limit % c);
            let folder = dest.join(split).join(name);
            std::fs::create_dir_all(&folder)?;
            for file in files.iter().take(quota) {
                std::os::unix::fs::symlink(file, folder.join(file.file_name().unwrap()))?;
            }
        }
    }
    Ok(())
}

/// The image folder a bench runs both sides on, and a label for its header: `data` (a folder, or
/// "synthetic"), else `../shared/data/cifar10` next to the checkout when it exists, else the
/// synthetic set exported under `work_dir`; cut to the limits (0 = all) in `work_dir/subset`.
pub fn prepare(
    data: Option<&str>,
    limit_train: usize,
    limit_test: usize,
    work_dir: &Path,
) -> anyhow::Result<(PathBuf, String)> {
    let default = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/cifar10");
    let (source, label) = match data {
        Some("synthetic") => (None, "synthetic shapes".to_string()),
        Some(dir) => {
            let dir = PathBuf::from(dir);
            anyhow::ensure!(
                has_splits(&dir),
                "{} has no train/ and test/ image folders",
                dir.display()
            );
            let label = dir.display().to_string();
            (Some(dir), label)
        }
        None if has_splits(&default) => {
            let dir = std::fs::canonicalize(&default)?;
            let label = dir.display().to_string();
            (Some(dir), label)
        }
        None => (
            None,
            format!("synthetic shapes ({} not found)", default.display()),
        ),
    };
    let source = match source {
        Some(dir) => dir,
        None => {
            let dir = work_dir.join("synthetic");
            export_synthetic(&dir)?;
            dir
        }
    };
    if limit_train == 0 && limit_test == 0 {
        return Ok((std::fs::canonicalize(source)?, label));
    }
    let dest = work_dir.join("subset");
    limited_copy(&source, limit_train, limit_test, &dest)?;
    Ok((std::fs::canonicalize(dest)?, label))
}
