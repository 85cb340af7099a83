//! `loss.png` at the end of a run: the loss curves from metrics.jsonl, drawn without a plotting
//! library (axes, grid, one colour per curve, a legend and min/max labels in a 3×5 pixel font).

use anyhow::{Context, Result, bail};
use sftok_pipeline::transform::{RgbImage, encode_png};
use std::path::Path;

const SERIES: &[(&str, [u8; 3])] = &[
    ("train/total_loss", [31, 119, 180]),
    ("train/reconstruction_loss", [255, 127, 14]),
    ("train/quantizer_loss", [44, 160, 44]),
];

/// 3×5 glyphs, rows top to bottom, 3 bits each (MSB = left).
fn glyph(c: char) -> [u8; 5] {
    match c.to_ascii_uppercase() {
        '0' => [7, 5, 5, 5, 7],
        '1' => [2, 6, 2, 2, 7],
        '2' => [7, 1, 7, 4, 7],
        '3' => [7, 1, 7, 1, 7],
        '4' => [5, 5, 7, 1, 1],
        '5' => [7, 4, 7, 1, 7],
        '6' => [7, 4, 7, 5, 7],
        '7' => [7, 1, 1, 1, 1],
        '8' => [7, 5, 7, 5, 7],
        '9' => [7, 5, 7, 1, 7],
        '.' => [0, 0, 0, 0, 2],
        '-' => [0, 0, 7, 0, 0],
        '_' => [0, 0, 0, 0, 7],
        '/' => [1, 1, 2, 4, 4],
        ':' => [0, 2, 0, 2, 0],
        'A' => [2, 5, 7, 5, 5],
        'B' => [6, 5, 6, 5, 6],
        'C' => [7, 4, 4, 4, 7],
        'D' => [6, 5, 5, 5, 6],
        'E' => [7, 4, 6, 4, 7],
        'F' => [7, 4, 6, 4, 4],
        'G' => [7, 4, 5, 5, 7],
        'H' => [5, 5, 7, 5, 5],
        'I' => [7, 2, 2, 2, 7],
        'K' => [5, 5, 6, 5, 5],
        'L' => [4, 4, 4, 4, 7],
        'M' => [5, 7, 7, 5, 5],
        'N' => [6, 5, 5, 5, 5],
        'O' => [7, 5, 5, 5, 7],
        'P' => [7, 5, 7, 4, 4],
        'Q' => [7, 5, 5, 7, 1],
        'R' => [6, 5, 6, 5, 5],
        'S' => [7, 4, 7, 1, 7],
        'T' => [7, 2, 2, 2, 2],
        'U' => [5, 5, 5, 5, 7],
        'V' => [5, 5, 5, 5, 2],
        'W' => [5, 5, 7, 7, 5],
        'Z' => [7, 1, 2, 4, 7],
        _ => [0, 0, 0, 0, 0],
    }
}

struct Canvas {
    img: RgbImage,
}

impl Canvas {
    fn put(&mut self, x: i64, y: i64, c: [u8; 3]) {
        if x >= 0 && y >= 0 && (x as u32) < self.img.width && (y as u32) < self.img.height {
            let i = (y as usize * self.img.width as usize + x as usize) * 3;
            self.img.data[i..i + 3].copy_from_slice(&c);
        }
    }
    fn line(&mut self, (x0, y0): (f64, f64), (x1, y1): (f64, f64), c: [u8; 3]) {
        let n = ((x1 - x0).abs().max((y1 - y0).abs()).ceil() as i64).max(1);
        for i in 0..=n {
            let t = i as f64 / n as f64;
            let (x, y) = (x0 + (x1 - x0) * t, y0 + (y1 - y0) * t);
            self.put(x.round() as i64, y.round() as i64, c);
            self.put(x.round() as i64, y.round() as i64 + 1, c);
        }
    }
    /// Text at (x, y) (top-left), each pixel scaled ×2.
    fn text(&mut self, x: i64, y: i64, s: &str, c: [u8; 3]) {
        for (k, ch) in s.chars().enumerate() {
            let g = glyph(ch);
            for (row, bits) in g.iter().enumerate() {
                for col in 0..3 {
                    if bits & (4 >> col) != 0 {
                        for (dx, dy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
                            self.put(x + k as i64 * 8 + col * 2 + dx, y + row as i64 * 2 + dy, c);
                        }
                    }
                }
            }
        }
    }
}

pub fn plot_losses(jsonl: &Path, out: &Path) -> Result<()> {
    let text = std::fs::read_to_string(jsonl).with_context(|| format!("reading {}", jsonl.display()))?;
    let rows: Vec<serde_json::Value> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let series: Vec<(&str, [u8; 3], Vec<(f64, f64)>)> = SERIES
        .iter()
        .map(|(name, colour)| {
            let pts = rows.iter().filter_map(|r| Some((r["step"].as_f64()?, r[*name].as_f64()?))).filter(|p| p.1.is_finite()).collect();
            (*name, *colour, pts)
        })
        .filter(|s: &(&str, [u8; 3], Vec<(f64, f64)>)| !s.2.is_empty())
        .collect();
    if series.is_empty() {
        bail!("no loss values in {}", jsonl.display());
    }
    let (w, h) = (800u32, 480u32);
    let (left, right, top, bottom) = (80.0, 780.0, 60.0, 440.0);
    let mut c = Canvas { img: RgbImage { width: w, height: h, data: vec![255; (w * h * 3) as usize] } };
    let all = series.iter().flat_map(|s| s.2.iter());
    let (mut x_max, mut y_min, mut y_max) = (1.0f64, f64::INFINITY, f64::NEG_INFINITY);
    for &(x, y) in all {
        x_max = x_max.max(x);
        y_min = y_min.min(y);
        y_max = y_max.max(y);
    }
    if y_max - y_min < 1e-12 {
        y_max = y_min + 1.0;
    }
    let px = |x: f64| left + (right - left) * x / x_max;
    let py = |y: f64| bottom - (bottom - top) * (y - y_min) / (y_max - y_min);
    let grey = [220, 220, 220];
    for i in 0..=4 {
        let y = top + (bottom - top) * i as f64 / 4.0;
        c.line((left, y), (right, y), grey);
    }
    c.line((left, top), (left, bottom), [0, 0, 0]);
    c.line((left, bottom), (right, bottom), [0, 0, 0]);
    for (_, colour, pts) in &series {
        for pair in pts.windows(2) {
            c.line((px(pair[0].0), py(pair[0].1)), (px(pair[1].0), py(pair[1].1)), *colour);
        }
    }
    let black = [0, 0, 0];
    c.text(4, top as i64 - 4, &format!("{y_max:.3}"), black);
    c.text(4, bottom as i64 - 8, &format!("{y_min:.3}"), black);
    c.text(left as i64, bottom as i64 + 12, "0", black);
    c.text(right as i64 - 60, bottom as i64 + 12, &format!("{}", x_max as u64), black);
    c.text((left + right) as i64 / 2 - 16, bottom as i64 + 12, "STEP", black);
    for (i, (name, colour, _)) in series.iter().enumerate() {
        let y = 12 + i as i64 * 14;
        c.line((left + 10.0, y as f64 + 4.0), (left + 40.0, y as f64 + 4.0), *colour);
        c.text(left as i64 + 50, y, name, black);
    }
    let png = encode_png(&c.img)?;
    sftok_pipeline::fsutil::write_atomic(out, &png)
}

/// One panel of the figure (temporary shim until the plotters figure lands).
pub struct Panel {
    pub title: String,
    pub keys: Vec<String>,
}

pub fn plot_metrics(jsonl: &Path, _panels: &[Panel], out: &Path) -> Result<()> {
    plot_losses(jsonl, out)
}
