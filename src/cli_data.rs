//! Dataset commands: `data fetch`, `data inspect` and `augment-preview`.
use crate::config::AugRecipe;
use crate::config::Choice;
use crate::data::{self, fetch};
use anyhow::Context;
use clap::{Args, Subcommand};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Args, Debug)]
pub struct DataArgs {
    #[command(subcommand)]
    pub command: DataCommand,
}

#[derive(Subcommand, Debug)]
pub enum DataCommand {
    /// Download CIFAR-10, CIFAR-100 or STL-10 (binary versions) into the data directory,
    /// MD5-checked.
    Fetch(FetchArgs),
    /// Print image count, classes, image size and mean/std of a dataset.
    Inspect(InspectArgs),
}

#[derive(Args, Debug)]
pub struct FetchArgs {
    /// cifar10, cifar100 or stl10.
    pub dataset: String,
    /// The archive is extracted here (as cifar-10-batches-bin / cifar-100-binary /
    /// stl10_binary).
    #[arg(long, env = "MOCO_DATA_DIR", default_value = "./moco-data")]
    pub data_dir: PathBuf,
    /// A mirror of the archive instead of the canonical address.
    #[arg(long)]
    pub url: Option<String>,
    /// Expected MD5 of the archive (default: the canonical archive's).
    #[arg(long)]
    pub md5: Option<String>,
    /// Download again even if the dataset is already there.
    #[arg(long)]
    pub force: bool,
}

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// `synthetic`, `cifar10:PATH`, `cifar100:PATH`, `stl10:PATH`, `folder:PATH`, or a path whose
    /// format is detected. Relative paths are inside the data directory.
    pub spec: String,
    #[arg(long, env = "MOCO_DATA_DIR", default_value = "./moco-data")]
    pub data_dir: PathBuf,
    /// Print the result as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Leave unreadable image files out (counted) instead of failing.
    #[arg(long)]
    pub skip_corrupt: bool,
}

#[derive(Args, Debug)]
pub struct AugmentPreviewArgs {
    /// Augmentation recipe: v1, v2, cifar or v3.
    #[arg(long, default_value = "v2")]
    pub preset: String,
    /// Dataset spec (see `data inspect`).
    #[arg(long, default_value = "synthetic")]
    pub data: String,
    /// The PNG file to write.
    #[arg(long)]
    pub out: PathBuf,
    /// Rows (images) in the grid, 1–64.
    #[arg(long, default_value_t = 8)]
    pub images: usize,
    /// Picks the images and the views.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Side of the views (default: the image side, or 7/8 of it above 96 px).
    #[arg(long)]
    pub size: Option<i64>,
    /// Smallest area fraction of the random resized crop, as the setting crop_min_scale
    /// (0 = the recipe's own).
    #[arg(long, default_value_t = 0.0)]
    pub crop_min_scale: f64,
    #[arg(long, env = "MOCO_DATA_DIR", default_value = "./moco-data")]
    pub data_dir: PathBuf,
}

/// `moco-server data …`
pub fn data(args: DataArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        DataCommand::Fetch(a) => fetch_command(a),
        DataCommand::Inspect(a) => inspect_command(a),
    }
}

fn fetch_command(args: FetchArgs) -> anyhow::Result<ExitCode> {
    let archive = fetch::Archive::parse(&args.dataset)?;
    let opts = fetch::FetchOptions {
        url: args.url,
        md5: args.md5,
        force: args.force,
        progress: true,
    };
    match fetch::fetch(archive, &args.data_dir, &opts)? {
        fetch::FetchOutcome::Downloaded(p) => println!(
            "{} is ready in {} (use it as {}:{})",
            archive.name(),
            p.display(),
            archive.name(),
            archive.dir_name()
        ),
        fetch::FetchOutcome::AlreadyPresent(p) => println!(
            "{} is already in {} (pass --force to download it again)",
            archive.name(),
            p.display()
        ),
    }
    Ok(ExitCode::SUCCESS)
}

fn inspect_command(args: InspectArgs) -> anyhow::Result<ExitCode> {
    let mut cfg = data::parse_dataset_spec_in(&args.spec, &args.data_dir)?;
    cfg.skip_corrupt = args.skip_corrupt;
    let splits = data::open_splits(&cfg, &args.data_dir)?;
    let info = data::inspect(&splits);
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", serde_json::to_string(&info)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    let names = if info.class_names.len() > 12 {
        format!("{}, …", info.class_names[..12].join(", "))
    } else {
        info.class_names.join(", ")
    };
    let three = |v: [f64; 3]| format!("{:.4} {:.4} {:.4}", v[0], v[1], v[2]);
    writeln!(out, "dataset      {}", cfg.label())?;
    writeln!(out, "train        {} images", info.images)?;
    writeln!(out, "test         {} images", info.test_images)?;
    writeln!(out, "classes      {} ({names})", info.classes)?;
    writeln!(out, "image size   {}×{}", info.image_size, info.image_size)?;
    writeln!(out, "mean         {}", three(info.mean))?;
    writeln!(out, "std          {}", three(info.std))?;
    writeln!(out, "skipped      {}", info.skipped)?;
    for s in &info.skipped_examples {
        writeln!(out, "  {s}")?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Parses an augmentation recipe name.
pub fn parse_recipe(name: &str) -> anyhow::Result<AugRecipe> {
    match name {
        "v1" => Ok(AugRecipe::V1),
        "v2" => Ok(AugRecipe::V2),
        "cifar" => Ok(AugRecipe::Cifar),
        "v3" => Ok(AugRecipe::V3),
        other => anyhow::bail!("--preset: unknown recipe {other:?}; expected v1, v2, cifar or v3"),
    }
}

/// The view side previews use by default for images of side `side`.
pub fn default_view_size(side: usize) -> i64 {
    if side <= 96 {
        side as i64
    } else {
        ((side as f64) * 7.0 / 8.0).round() as i64
    }
}

/// `moco-server augment-preview …`
pub fn augment_preview(args: AugmentPreviewArgs) -> anyhow::Result<ExitCode> {
    let recipe = parse_recipe(&args.preset)?;
    anyhow::ensure!(
        (1..=data::preview::MAX_IMAGES).contains(&args.images),
        "--images must be between 1 and {}, got {}",
        data::preview::MAX_IMAGES,
        args.images
    );
    if let Some(size) = args.size {
        anyhow::ensure!(
            (8..=1024).contains(&size),
            "--size must be between 8 and 1024, got {size}"
        );
    }
    anyhow::ensure!(
        (0.0..=1.0).contains(&args.crop_min_scale),
        "--crop-min-scale must be between 0 and 1, got {}",
        args.crop_min_scale
    );
    let cfg = data::parse_dataset_spec_in(&args.data, &args.data_dir)?;
    let splits = data::open_splits(&cfg, &args.data_dir)?;
    let size = args
        .size
        .unwrap_or_else(|| default_view_size(splits.train.image_size().0));
    let augmenter = data::Augmenter::new(recipe, size, splits.mean, splits.std)
        .with_crop_min(args.crop_min_scale);
    let png = data::preview::render_preview_png(
        splits.train.as_ref(),
        &augmenter,
        args.images,
        args.seed,
    )?;
    write_atomically(&args.out, &png)?;
    println!(
        "wrote {} ({} images; columns: original | view 1 | view 2; recipe {}, {size}×{size})",
        args.out.display(),
        args.images.min(splits.train.len()),
        recipe.name()
    );
    Ok(ExitCode::SUCCESS)
}

/// Writes the file in place of `path` atomically; its directory must exist.
fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    anyhow::ensure!(
        dir.is_dir(),
        "--out: the directory {} does not exist",
        dir.display()
    );
    crate::train::checkpoint::write_atomically(path, bytes).context("--out")
}
