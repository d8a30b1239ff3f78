//! A PNG grid of augmented views: one row per image, columns original | view 1 | view 2.
//!
//! The views come from the same batched [`Augmenter`] the trainer uses (on the CPU), undone from
//! the normalisation. Cells are upscaled with nearest neighbour to at least ~128 px so 32-px images
//! stay visible. `moco-server augment-preview` writes it to a file; the dashboard serves it.
use super::augment::Augmenter;
use super::loader::make_batch;
use super::Dataset;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tch::{Device, Kind, Tensor};

/// Most rows a preview draws.
pub const MAX_IMAGES: usize = 64;
/// Space between cells, in pixels.
const GAP: usize = 4;
const BACKGROUND: [u8; 3] = [245, 245, 245];

/// Renders the preview grid of `images` images of `dataset` (picked from `seed`, as are the
/// views) augmented by `augmenter` (a run's recipe, crop size and crop minimum), its
/// normalisation undone again.
pub fn render_preview_png(
    dataset: &dyn Dataset,
    augmenter: &Augmenter,
    images: usize,
    seed: u64,
) -> anyhow::Result<Vec<u8>> {
    let image_size = augmenter.out_size();
    let (mean, std) = augmenter.normalisation();
    anyhow::ensure!(
        (1..=MAX_IMAGES).contains(&images),
        "images must be between 1 and {MAX_IMAGES}, got {images}"
    );
    anyhow::ensure!(
        (8..=1024).contains(&image_size),
        "size must be between 8 and 1024, got {image_size}"
    );
    anyhow::ensure!(!dataset.is_empty(), "the dataset has no images");
    anyhow::ensure!(
        std.iter().all(|s| s.is_finite() && *s > 0.0),
        "std must be positive, got {std:?}"
    );
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let count = images.min(dataset.len());
    let indices = rand::seq::index::sample(&mut rng, dataset.len(), count).into_vec();
    let batch = make_batch(dataset, indices, Device::Cpu)?;
    let (v1, v2) = augmenter.two_views(&batch.images, &mut rng);
    let original = resize_to(&batch.images, image_size);
    let undo = |x: &Tensor| {
        let m = Tensor::from_slice(&mean)
            .to_kind(Kind::Float)
            .view([1, 3, 1, 1]);
        let s = Tensor::from_slice(&std)
            .to_kind(Kind::Float)
            .view([1, 3, 1, 1]);
        to_u8(&(x * s + m))
    };
    let columns = [to_u8(&original), undo(&v1), undo(&v2)];
    grid_png(&columns, count, image_size as usize)
}

/// The source images at S × S (antialiased bilinear when the size differs), in [0, 1].
fn resize_to(images_u8: &Tensor, size: i64) -> Tensor {
    let _guard = tch::no_grad_guard();
    let x = images_u8.to_kind(Kind::Float) / 255.0;
    let s = x.size();
    if s[2] == size && s[3] == size {
        x
    } else {
        x.internal_upsample_bilinear2d_aa([size, size], false, None, None)
    }
}

/// Float [N, 3, S, S] in [0, 1] → HWC uint8 bytes per image, back to back.
fn to_u8(x: &Tensor) -> Vec<u8> {
    let hwc = (x.clamp(0.0, 1.0) * 255.0)
        .round()
        .to_kind(Kind::Uint8)
        .permute([0, 2, 3, 1])
        .contiguous();
    let n = hwc.numel();
    let mut out = vec![0u8; n];
    hwc.copy_data_u8(&mut out, n);
    out
}

/// Lays out `columns` (each `rows` HWC images of side `side`) as a PNG grid.
fn grid_png(columns: &[Vec<u8>], rows: usize, side: usize) -> anyhow::Result<Vec<u8>> {
    let scale = (128 / side).max(1);
    let cell = side * scale;
    let width = columns.len() * cell + (columns.len() + 1) * GAP;
    let height = rows * cell + (rows + 1) * GAP;
    let mut canvas =
        image::RgbImage::from_pixel(width as u32, height as u32, image::Rgb(BACKGROUND));
    for (col, pixels) in columns.iter().enumerate() {
        for row in 0..rows {
            let img = &pixels[row * side * side * 3..(row + 1) * side * side * 3];
            let x0 = GAP + col * (cell + GAP);
            let y0 = GAP + row * (cell + GAP);
            for y in 0..cell {
                for x in 0..cell {
                    let o = ((y / scale) * side + x / scale) * 3;
                    canvas.put_pixel(
                        (x0 + x) as u32,
                        (y0 + y) as u32,
                        image::Rgb([img[o], img[o + 1], img[o + 2]]),
                    );
                }
            }
        }
    }
    let mut png = Vec::new();
    canvas
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .map_err(|e| anyhow::anyhow!("cannot encode the preview as PNG: {e}"))?;
    Ok(png)
}
