//! `sftok-prep synth`: a deterministic, ImageNet-shaped tree of synthetic JPEGs for tests, the demo
//! and benchmarks. Same layout as Kaggle's ImageNet CLS-LOC (and ../shared/bench/make_fake_imagenet.py):
//!
//! ```text
//! OUT/train/n00000001/n00000001_<id>.JPEG     C classes × N images (ids non-contiguous, like ImageNet)
//! OUT/val/ILSVRC2012_val_00000001.JPEG        V images
//! OUT/LOC_val_solution.csv                    ImageId,PredictionString (unsorted rows, 1–3 boxes each)
//! OUT/LOC_synset_mapping.txt                  "<synset> <name>" per line
//! ```
//!
//! Every image comes from its own keyed random stream, so the output is byte-identical for the
//! same seed whatever the thread count. Content: colour gradient, soft-edged shapes, and 1/f-like
//! luminance texture whose strength varies over the image (smooth "sky" next to detailed
//! "foliage"), so JPEG sizes (quality 90, 4:2:0) land near ImageNet's ~110 KB average.

use crate::fsutil;
use crate::rng::Rng;
use anyhow::{Context, Result, bail};
use rayon::prelude::*;
use std::fs;
use std::path::PathBuf;

/// JPEG quality of the synthetic images (ImageNet's photos are mostly q≈90, 4:2:0).
const QUALITY: u8 = 90;
/// Typical luminance texture amplitude (in 8-bit levels): calibrated for ~110 KB mean file size.
const TEXTURE: f64 = 60.0;

#[derive(Clone, Debug)]
pub struct SynthOptions {
    pub out: PathBuf,
    pub classes: usize,
    pub per_class: usize,
    pub val: usize,
    pub seed: u64,
}

#[derive(Clone, Debug, Default)]
pub struct SynthSummary {
    pub train_images: usize,
    pub val_images: usize,
    pub total_bytes: u64,
    pub mean_width: f64,
    pub mean_height: f64,
}

impl SynthSummary {
    pub fn mean_kb(&self) -> f64 {
        self.total_bytes as f64 / 1024.0 / (self.train_images + self.val_images).max(1) as f64
    }
}

/// Synset-like class name, 1-based: n00000001, n00000002, …
pub fn synset(class: usize) -> String {
    format!("n{:08}", class + 1)
}

struct Task {
    path: PathBuf,
    key: Vec<u64>,
}

/// Writes the whole tree. Files are written under a temporary name and renamed, so an interrupted
/// run never leaves a truncated JPEG that looks complete.
pub fn synth_imagenet(opts: &SynthOptions, on_image: &(dyn Fn() + Sync)) -> Result<SynthSummary> {
    if opts.classes == 0 {
        bail!("--classes must be at least 1");
    }
    if opts.per_class >= 20_000 {
        bail!("--per-class must be below 20000 (file ids are drawn from 1..20000 like ImageNet's)");
    }
    let seed = opts.seed;
    let mut tasks = Vec::new();
    for c in 0..opts.classes {
        let dir = opts.out.join("train").join(synset(c));
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        for (k, id) in file_ids(seed, c, opts.per_class).into_iter().enumerate() {
            let path = dir.join(format!("{}_{}.JPEG", synset(c), id));
            tasks.push(Task { path, key: vec![seed, 2, c as u64, k as u64] });
        }
    }
    let val_dir = opts.out.join("val");
    fs::create_dir_all(&val_dir).with_context(|| format!("creating {}", val_dir.display()))?;
    let mut val_class: Vec<usize> = (0..opts.val).map(|i| i % opts.classes).collect();
    Rng::keyed(&[seed, 3]).shuffle(&mut val_class);
    let mut val_names = Vec::new();
    for i in 0..opts.val {
        let name = format!("ILSVRC2012_val_{:08}", i + 1);
        tasks.push(Task { path: val_dir.join(format!("{name}.JPEG")), key: vec![seed, 4, i as u64] });
        val_names.push(name);
    }

    let results: Vec<(u64, u32, u32)> = tasks
        .par_iter()
        .map(|t| {
            let mut rng = Rng::keyed(&t.key);
            let (w, h) = pick_size(&mut rng);
            let rgb = render(&mut rng, w, h);
            let jpeg = encode_jpeg(&rgb, w, h)?;
            // Not fsynced: a fake tree is cheap to write again; the rename keeps half-written
            // images out of it.
            fsutil::write_replace(&t.path, &jpeg)?;
            on_image();
            Ok((jpeg.len() as u64, w, h))
        })
        .collect::<Result<_>>()?;

    write_labels(opts, &val_names, &val_class, &results[results.len() - opts.val..])?;

    let n = results.len().max(1) as f64;
    Ok(SynthSummary {
        train_images: results.len() - opts.val,
        val_images: opts.val,
        total_bytes: results.iter().map(|r| r.0).sum(),
        mean_width: results.iter().map(|r| r.1 as f64).sum::<f64>() / n,
        mean_height: results.iter().map(|r| r.2 as f64).sum::<f64>() / n,
    })
}

/// ImageNet-like non-contiguous image ids, sorted numerically.
fn file_ids(seed: u64, class: usize, n: usize) -> Vec<u32> {
    let mut pool: Vec<u32> = (1..20_000).collect();
    let mut rng = Rng::keyed(&[seed, 1, class as u64]);
    // Partial Fisher–Yates: the first n entries become a uniform sample without replacement.
    for i in 0..n {
        let j = i + rng.below((pool.len() - i) as u64) as usize;
        pool.swap(i, j);
    }
    let mut ids = pool[..n].to_vec();
    ids.sort_unstable();
    ids
}

/// (width, height) drawn roughly like ImageNet: ~74 % the common 500×375-style shapes, 20 % other
/// sizes up to 500 px, 3.5 % large photos up to ~2000 px, 2.5 % small ~100 px images.
fn pick_size(rng: &mut Rng) -> (u32, u32) {
    const COMMON: [((u32, u32), f64); 6] = [
        ((500, 375), 0.36),
        ((500, 333), 0.14),
        ((375, 500), 0.12),
        ((333, 500), 0.05),
        ((500, 500), 0.04),
        ((500, 334), 0.03),
    ];
    let mut u = rng.f64();
    for (wh, p) in COMMON {
        if u < p {
            return wh;
        }
        u -= p;
    }
    let mut aspect = rng.uniform(0.5, 1.0);
    let long = if u < 0.20 {
        if rng.f64() < 0.6 { 500.0 } else { rng.uniform(200.0, 500.0).floor() }
    } else if u < 0.235 {
        aspect = [0.75, 0.667, 0.5625, aspect][rng.below(4) as usize];
        rng.uniform(600f64.ln(), 2000f64.ln()).exp().floor()
    } else {
        rng.uniform(80.0, 150.0).floor()
    };
    let short = (long * aspect).round().max(1.0);
    if rng.f64() < 0.7 { (long as u32, short as u32) } else { (short as u32, long as u32) }
}

/// Smooth random field: normals on a grid of `cell` pixels, bilinearly interpolated.
struct ValueNoise {
    gw: usize,
    cell: f32,
    grid: Vec<f32>,
}

impl ValueNoise {
    fn new(rng: &mut Rng, w: usize, h: usize, cell: usize) -> Self {
        let gw = w / cell + 2;
        let gh = h / cell + 2;
        let grid = (0..gw * gh).map(|_| rng.normal() as f32).collect();
        ValueNoise { gw, cell: cell as f32, grid }
    }

    #[inline]
    fn at(&self, x: usize, y: usize) -> f32 {
        let fx = x as f32 / self.cell;
        let fy = y as f32 / self.cell;
        let (ix, iy) = (fx as usize, fy as usize);
        let (tx, ty) = (fx - ix as f32, fy - iy as f32);
        let g = |xx: usize, yy: usize| self.grid[yy * self.gw + xx];
        let top = g(ix, iy) * (1.0 - tx) + g(ix + 1, iy) * tx;
        let bot = g(ix, iy + 1) * (1.0 - tx) + g(ix + 1, iy + 1) * tx;
        top * (1.0 - ty) + bot * ty
    }
}

/// Roughly unit-variance 1/f^alpha texture: octaves of value noise whose amplitude grows with the
/// cell size as cell^alpha, plus a white "sensor grain" floor.
fn fractal(rng: &mut Rng, w: usize, h: usize, alpha: f64, floor: f64, finest: usize) -> Vec<f32> {
    let mut octaves = Vec::new();
    let mut cell = finest;
    while cell <= w.max(h) {
        octaves.push((ValueNoise::new(rng, w, h, cell), (cell as f64).powf(alpha)));
        cell *= 2;
    }
    let norm = octaves.iter().map(|o| o.1 * o.1).sum::<f64>().sqrt();
    let amps: Vec<f32> = octaves.iter().map(|o| (o.1 / norm) as f32).collect();
    let floor = floor as f32;
    let mut out = vec![0f32; w * h];
    for y in 0..h {
        for x in 0..w {
            let mut v = 0f32;
            for (o, a) in octaves.iter().zip(&amps) {
                v += o.0.at(x, y) * a;
            }
            out[y * w + x] = v;
        }
    }
    if floor > 0.0 {
        for v in &mut out {
            *v += floor * rng.normal() as f32;
        }
    }
    out
}

/// One natural-looking RGB image (row-major, 3 bytes per pixel).
fn render(rng: &mut Rng, w: u32, h: u32) -> Vec<u8> {
    let (w, h) = (w as usize, h as usize);
    // 1. colour gradient along a random direction + low-frequency colour variation.
    let c0: [f64; 3] = std::array::from_fn(|_| rng.uniform(20.0, 235.0));
    let c1: [f64; 3] = std::array::from_fn(|_| rng.uniform(20.0, 235.0));
    let angle = rng.uniform(0.0, std::f64::consts::TAU);
    let (ca, sa) = (angle.cos() as f32, angle.sin() as f32);
    let low_amp = rng.uniform(5.0, 25.0) as f32;
    let low_cell = (w.max(h) / 4).max(1);
    let low: Vec<ValueNoise> = (0..3).map(|_| ValueNoise::new(rng, w, h, low_cell)).collect();

    // 2. soft-edged shapes (ellipses and rectangles).
    struct Shape {
        col: [f32; 3],
        cx: f32,
        cy: f32,
        rx: f32,
        ry: f32,
        ellipse: bool,
    }
    let n_shapes = 2 + rng.below(7) as usize;
    let m = w.min(h) as f64;
    let shapes: Vec<Shape> = (0..n_shapes)
        .map(|_| {
            let col = std::array::from_fn(|_| rng.below(256) as f32);
            let r = rng.uniform(0.05, 0.45) * m;
            Shape {
                col,
                cx: rng.uniform(0.0, w as f64) as f32,
                cy: rng.uniform(0.0, h as f64) as f32,
                rx: (r * rng.uniform(0.4, 1.4)) as f32,
                ry: (r * rng.uniform(0.4, 1.4)) as f32,
                ellipse: rng.below(2) == 0,
            }
        })
        .collect();
    let edge = rng.uniform(0.6, 6.0) as f32; // edge softness in pixels (the Python version blurs)

    // 3. luminance texture with a spatially varying envelope; 4. weaker chroma texture.
    let alpha = rng.uniform(0.8, 1.2);
    let floor = rng.uniform(0.0, 1.0);
    let strength = (TEXTURE * (rng.normal() * 0.35).exp()) as f32;
    let env_field = ValueNoise::new(rng, w, h, (w.max(h) / 6).max(1));
    let lum = fractal(rng, w, h, alpha, floor, 1);
    let cb_tex = fractal(rng, w, h, alpha, 0.0, 2);
    let cr_tex = fractal(rng, w, h, alpha, 0.0, 2);

    let mut out = vec![0u8; w * h * 3];
    let (wf, hf) = ((w - 1).max(1) as f32, (h - 1).max(1) as f32);
    for y in 0..h {
        for x in 0..w {
            let g = (ca * x as f32 / wf + sa * y as f32 / hf) * 0.5 + 0.5 * (ca.abs() + sa.abs()).recip();
            let g = g.clamp(0.0, 1.0);
            let mut rgb: [f32; 3] = std::array::from_fn(|c| {
                c0[c] as f32 * (1.0 - g) + c1[c] as f32 * g + low_amp * low[c].at(x, y)
            });
            for s in &shapes {
                let dx = (x as f32 - s.cx) / s.rx;
                let dy = (y as f32 - s.cy) / s.ry;
                // Approximate signed distance to the boundary, in pixels.
                let d = if s.ellipse {
                    ((dx * dx + dy * dy).sqrt() - 1.0) * s.rx.min(s.ry)
                } else {
                    (dx.abs().max(dy.abs()) - 1.0) * s.rx.min(s.ry)
                };
                let a = (0.5 - d / edge).clamp(0.0, 1.0);
                for c in 0..3 {
                    rgb[c] += a * (s.col[c] - rgb[c]);
                }
            }
            let i = y * w + x;
            let env = (0.8 * env_field.at(x, y) - 0.3).exp() * strength;
            let [r, g2, b] = rgb;
            let yy = 0.299 * r + 0.587 * g2 + 0.114 * b + env * lum[i];
            let cb = -0.168_736 * r - 0.331_264 * g2 + 0.5 * b + 0.5 * env * cb_tex[i];
            let cr = 0.5 * r - 0.418_688 * g2 - 0.081_312 * b + 0.5 * env * cr_tex[i];
            let px = [yy + 1.402 * cr, yy - 0.344_136 * cb - 0.714_136 * cr, yy + 1.772 * cb];
            for c in 0..3 {
                out[i * 3 + c] = px[c].round().clamp(0.0, 255.0) as u8;
            }
        }
    }
    out
}

fn encode_jpeg(rgb: &[u8], w: u32, h: u32) -> Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(rgb.len() / 4);
    let mut enc = jpeg_encoder::Encoder::new(&mut buf, QUALITY);
    enc.set_sampling_factor(jpeg_encoder::SamplingFactor::F_2_2); // 4:2:0
    enc.encode(rgb, w as u16, h as u16, jpeg_encoder::ColorType::Rgb)?;
    Ok(buf)
}

/// `LOC_synset_mapping.txt` and `LOC_val_solution.csv` (header `ImageId,PredictionString`; each
/// prediction string is 1–3 `<synset> xmin ymin xmax ymax` groups; rows in shuffled order).
fn write_labels(opts: &SynthOptions, names: &[String], classes: &[usize], sizes: &[(u64, u32, u32)]) -> Result<()> {
    let mut mapping = String::new();
    for c in 0..opts.classes {
        mapping.push_str(&format!("{} fake class {}\n", synset(c), c));
    }
    let path = opts.out.join("LOC_synset_mapping.txt");
    fs::write(&path, mapping).with_context(|| format!("writing {}", path.display()))?;

    let mut rng = Rng::keyed(&[opts.seed, 5]);
    let mut rows: Vec<String> = names
        .iter()
        .zip(classes)
        .zip(sizes)
        .map(|((name, &c), &(_, w, h))| {
            let n_boxes = [1, 1, 1, 1, 2, 2, 3][rng.below(7) as usize];
            let boxes: Vec<String> = (0..n_boxes)
                .map(|_| {
                    let bw = (w / 5).max(1) as u64 + rng.below((w - (w / 5).max(1) + 1) as u64);
                    let bh = (h / 5).max(1) as u64 + rng.below((h - (h / 5).max(1) + 1) as u64);
                    let x0 = rng.below(w as u64 - bw + 1);
                    let y0 = rng.below(h as u64 - bh + 1);
                    format!("{} {} {} {} {}", synset(c), x0, y0, x0 + bw - 1, y0 + bh - 1)
                })
                .collect();
            format!("{name},{}\n", boxes.join(" "))
        })
        .collect();
    rng.shuffle(&mut rows);
    let path = opts.out.join("LOC_val_solution.csv");
    fs::write(&path, format!("ImageId,PredictionString\n{}", rows.concat()))
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_follow_imagenet_shape_mix() {
        let mut rng = Rng::keyed(&[0]);
        let sizes: Vec<_> = (0..4000).map(|_| pick_size(&mut rng)).collect();
        let common = sizes.iter().filter(|s| **s == (500, 375)).count() as f64 / 4000.0;
        assert!((0.32..0.40).contains(&common), "{common}");
        assert!(sizes.iter().any(|s| s.0.max(s.1) > 1000));
        assert!(sizes.iter().any(|s| s.0.max(s.1) < 160));
        assert!(sizes.iter().all(|s| s.0 >= 1 && s.1 >= 1));
    }

    #[test]
    fn file_ids_are_distinct_sorted_and_in_range() {
        let ids = file_ids(0, 3, 500);
        assert_eq!(ids.len(), 500);
        assert!(ids.windows(2).all(|p| p[0] < p[1]));
        assert!(ids.iter().all(|&i| (1..20_000).contains(&i)));
    }
}
