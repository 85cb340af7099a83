//! `loss.png` at the end of a run: metrics.jsonl drawn with plotters as a grid of panels, each
//! series as its raw curve (faint) plus a TensorBoard-style smoothed curve, log y where values
//! span decades. The font is embedded so the plot looks the same on any machine.

use anyhow::{Context, Result, bail};
use plotters::coord::Shift;
use plotters::coord::ranged1d::{AsRangedCoord, Ranged, ValueFormatter};
use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};
use sftok_pipeline::transform::{RgbImage, encode_png};
use std::collections::BTreeMap;
use std::io::BufRead;
use std::ops::Range;
use std::path::Path;

/// One panel of the figure: a title and the metric keys it shows. A key ending in `/*` is a prefix
/// (`grad_norm_group/*` = every key starting with `grad_norm_group/`).
pub struct Panel {
    pub title: String,
    pub keys: Vec<String>,
}

impl Panel {
    pub fn new(title: &str, keys: &[&str]) -> Self {
        Panel { title: title.to_string(), keys: keys.iter().map(|k| k.to_string()).collect() }
    }
}

/// DejaVu Sans (Bitstream Vera licence, `model/assets/fonts/LICENSE-DejaVu.txt`).
static FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");
const FAMILY: &str = "sans-serif";
/// Size of the PNG.
const WIDTH: u32 = 1400;
const PANEL_HEIGHT: u32 = 450;
/// The figure is drawn S× larger and averaged down: plotters' bitmap lines are not anti-aliased,
/// and its ab_glyph text snaps each glyph to whole pixels (uneven letter spacing at 1×). Every
/// length below is in output pixels times S.
const S: i32 = 2;
const COLUMNS: usize = 2;
/// TensorBoard's default smoothing weight.
const SMOOTHING: f64 = 0.9;
/// Series with fewer points (evaluations) are drawn unsmoothed, with a marker per point: smoothing
/// a handful of points only hides them.
const MIN_SMOOTHED_POINTS: usize = 20;
/// A series is noisy (worth smoothing) when its second differences are at least this fraction of
/// its first differences: about 1.4 for noise, about 0 for a schedule such as the learning rate.
const NOISE_RATIO: f64 = 0.5;
/// Log y once the values span this factor (two decades); below it a log axis has too few ticks.
const LOG_SPAN: f64 = 100.0;
/// matplotlib's tab10.
#[rustfmt::skip]
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180), RGBColor(255, 127, 14), RGBColor(44, 160, 44), RGBColor(214, 39, 40), RGBColor(148, 103, 189),
    RGBColor(140, 86, 75), RGBColor(227, 119, 194), RGBColor(127, 127, 127), RGBColor(188, 189, 34), RGBColor(23, 190, 207),
];
const TEXT: RGBColor = RGBColor(40, 40, 40);
const NOTE: RGBColor = RGBColor(120, 120, 120);
const GRID: RGBColor = RGBColor(215, 215, 215);
const GRID_MINOR: RGBColor = RGBColor(240, 240, 240);
/// Between the panel's left edge and the plotting area (room for the y tick labels); the legend
/// starts there too so that it lines up with the plot.
const Y_LABEL_AREA: i32 = 72 * S;
const PAD: i32 = 12 * S;
const TITLE_SIZE: i32 = 21 * S;
const LEGEND_SIZE: i32 = 15 * S;
const NOTE_SIZE: i32 = 14 * S;
const TICK_SIZE: i32 = 14 * S;
const AXIS_DESC_SIZE: i32 = 16 * S;
/// plotters' ab_glyph text sits about 0.22 em above its layout box (it puts the baseline half the
/// font size below the text position), so text that must line up with a line is moved by this.
fn glyph_rise(size: i32) -> i32 {
    (size as f64 * 0.22).round() as i32
}

/// (step, value) points in step order.
type Points = Vec<(f64, f64)>;

/// Reads `metrics.jsonl` (one JSON object per line: `"step"` plus metric name → number; some rows hold only
/// evaluation keys such as `ema_eval/PSNR`, logged rarely) and writes one PNG with one panel per entry of
/// `panels` that has data (panels without data are left out).
pub fn plot_metrics(jsonl: &Path, panels: &[Panel], out: &Path) -> Result<()> {
    let all = read_series(jsonl, panels)?;
    let drawn: Vec<(&str, Vec<(&str, &Points)>)> = panels
        .iter()
        .map(|p| (p.title.as_str(), panel_series(p, &all)))
        .filter(|(_, series)| !series.is_empty())
        .collect();
    if drawn.is_empty() {
        let keys: Vec<&str> = panels.iter().flat_map(|p| p.keys.iter().map(String::as_str)).collect();
        bail!("none of the metrics to plot ({}) in {}", keys.join(", "), jsonl.display());
    }
    // Registering is cheap (the font is parsed lazily) and idempotent, so no global once-flag.
    register_font(FAMILY, FontStyle::Normal, FONT).map_err(|_| anyhow::anyhow!("embedded font is not a valid TTF"))?;
    // One step range for every panel, so that a step is at the same x in each column.
    let (x_lo, x_hi) = min_max(drawn.iter().flat_map(|(_, s)| s.iter().flat_map(|(_, p)| p.iter().map(|q| q.0))));
    let x_range = if x_hi > x_lo { x_lo..x_hi } else { x_lo - 1.0..x_hi + 1.0 };
    let cols = drawn.len().min(COLUMNS);
    let rows = drawn.len().div_ceil(cols);
    let (width, height) = (WIDTH, rows as u32 * PANEL_HEIGHT);
    let mut big = vec![255u8; (width * height) as usize * 3 * (S * S) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut big, (width * S as u32, height * S as u32)).into_drawing_area();
        for (area, (title, series)) in root.split_evenly((rows, cols)).iter().zip(&drawn) {
            draw_panel(&area.margin(PAD, PAD, PAD, PAD), title, series, x_range.clone())?;
        }
        root.present()?;
    }
    let png = encode_png(&RgbImage { width, height, data: downsample(&big, width as usize, height as usize) })?;
    sftok_pipeline::fsutil::write_atomic(out, &png)
}

/// Averages each S×S block of the big RGB image (`width` × `height` is the small size).
fn downsample(big: &[u8], width: usize, height: usize) -> Vec<u8> {
    let s = S as usize;
    let mut out = Vec::with_capacity(width * height * 3);
    for y in 0..height {
        for x in 0..width {
            for c in 0..3 {
                let sum: usize = (0..s * s).map(|k| big[((y * s + k / s) * width * s + x * s + k % s) * 3 + c] as usize).sum();
                out.push(((sum + s * s / 2) / (s * s)) as u8);
            }
        }
    }
    out
}

/// `key` is a metric name or a `prefix/*` pattern.
fn key_matches(key: &str, name: &str) -> bool {
    match key.strip_suffix("/*") {
        Some(prefix) => name.strip_prefix(prefix).is_some_and(|rest| rest.starts_with('/')),
        None => key == name,
    }
}

/// The finite points of every metric some panel asks for, by name. Streams the file: a long run's
/// metrics.jsonl holds far more keys and rows than the plot needs.
fn read_series(jsonl: &Path, panels: &[Panel]) -> Result<BTreeMap<String, Points>> {
    let file = std::fs::File::open(jsonl).with_context(|| format!("opening {}", jsonl.display()))?;
    let wanted = |name: &str| panels.iter().flat_map(|p| &p.keys).any(|key| key_matches(key, name));
    let mut rows = 0usize;
    let mut series = BTreeMap::<String, Points>::new();
    for line in std::io::BufReader::new(file).lines() {
        let line = line.with_context(|| format!("reading {}", jsonl.display()))?;
        // A run killed mid-write leaves a partial last line; the other rows are still worth plotting.
        let Ok(serde_json::Value::Object(row)) = serde_json::from_str(&line) else { continue };
        let Some(step) = row.get("step").and_then(serde_json::Value::as_f64) else { continue };
        rows += 1;
        for (name, value) in &row {
            // serde_json numbers are finite: NaN/inf are logged as null (serde_json) or strings, for
            // which as_f64 is None, and a NaN or 1e999 literal makes the line unparseable (skipped).
            if let Some(v) = value.as_f64().filter(|_| name != "step" && wanted(name)) {
                series.entry(name.clone()).or_default().push((step, v));
            }
        }
    }
    if rows == 0 {
        bail!("no metric rows (JSON objects with a \"step\") in {}", jsonl.display());
    }
    series.values_mut().for_each(|points| points.sort_by(|a, b| a.0.total_cmp(&b.0)));
    Ok(series)
}

/// The panel's series in the order of its keys (a prefix's matches sorted by name), each once.
fn panel_series<'a>(panel: &Panel, all: &'a BTreeMap<String, Points>) -> Vec<(&'a str, &'a Points)> {
    let mut out: Vec<(&str, &Points)> = Vec::new();
    for key in &panel.keys {
        for (name, points) in all.iter().filter(|(name, _)| key_matches(key, name)) {
            if !out.iter().any(|(n, _)| n == name) {
                out.push((name, points));
            }
        }
    }
    out
}

/// Smoothing helps noisy series only: a clean curve (the learning-rate schedule) would just lag.
fn needs_smoothing(points: &[(f64, f64)]) -> bool {
    let first: f64 = points.windows(2).map(|w| (w[1].1 - w[0].1).abs()).sum();
    let second: f64 = points.windows(3).map(|w| (w[2].1 - 2.0 * w[1].1 + w[0].1).abs()).sum();
    points.len() >= MIN_SMOOTHED_POINTS && second >= NOISE_RATIO * first && first > 0.0
}

/// TensorBoard's smoothing: an exponential moving average divided by `1 - weight^n`, so that the
/// first values are not pulled towards the EMA's zero start.
fn ema_smooth(values: &[f64], weight: f64) -> Vec<f64> {
    let mut last = 0.0;
    (1..).zip(values).map(|(n, &v)| {
        last = last * weight + (1.0 - weight) * v;
        last / (1.0 - weight.powi(n))
    }).collect()
}

/// Log y when every value is positive and they span at least two decades (losses falling from
/// their initial value); a linear axis would flatten everything after the first steps.
fn use_log_y(values: impl Iterator<Item = f64>) -> bool {
    let (lo, hi) = min_max(values);
    lo > 0.0 && hi / lo >= LOG_SPAN // false for no values: INFINITY > 0 but -inf / inf is NaN
}

fn min_max(values: impl Iterator<Item = f64>) -> (f64, f64) {
    values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)))
}

/// Tick label: a decade on a log axis as 10ⁿ, small values in scientific notation (learning
/// rates), large round ones with k/M (steps), everything without trailing zeros.
fn tick_label(v: f64, log: bool) -> String {
    fn trim(s: String) -> String {
        if s.contains('.') { s.trim_end_matches('0').trim_end_matches('.').to_string() } else { s }
    }
    let exponent = v.log10().round();
    if log && (v / 10f64.powf(exponent) - 1.0).abs() < 1e-9 {
        const SUPERSCRIPT: [char; 10] = ['⁰', '¹', '²', '³', '⁴', '⁵', '⁶', '⁷', '⁸', '⁹'];
        let digits: String = (exponent as i64).to_string().chars().map(|c| c.to_digit(10).map_or('⁻', |d| SUPERSCRIPT[d as usize])).collect();
        return format!("10{digits}");
    }
    // k/M only where they lose nothing: ticks around a single step are 249999.5, 250000, …
    let round = |x: f64| ((x * 100.0).round() - x * 100.0).abs() < 1e-6;
    match v.abs() {
        // Ticks stepping through 0 land on round-off (-3.39e-21 on a learning-rate axis).
        a if a < 1e-12 => "0".to_string(),
        a if a < 1e-2 => {
            let s = format!("{v:.2e}");
            let (mantissa, exp) = s.split_once('e').unwrap_or((&s, "0"));
            format!("{}e{exp}", trim(mantissa.to_string()))
        }
        a if a >= 1e6 && round(v / 1e6) => trim(format!("{:.2}", v / 1e6)) + "M",
        a if a >= 1e4 && round(v / 1e3) => trim(format!("{:.2}", v / 1e3)) + "k",
        _ => trim(format!("{v:.4}")),
    }
}

/// A title line, then the legend (wrapped over as many lines as it needs), then the chart.
fn draw_panel(area: &DrawingArea<BitMapBackend<'_>, Shift>, title: &str, series: &[(&str, &Points)], x_range: Range<f64>) -> Result<()> {
    let (width, _) = area.dim_in_pixel();
    let title_font = (FAMILY, TITLE_SIZE).into_font().color(&TEXT);
    let legend_font = (FAMILY, LEGEND_SIZE).into_font().color(&TEXT);
    let note_font = (FAMILY, NOTE_SIZE).into_font().color(&NOTE);
    let smoothed = series.iter().any(|(_, p)| needs_smoothing(p));

    // Legend entries: (x, line, colour or None for the note, text). Laid out before drawing
    // because the chart gets whatever height the legend leaves.
    const SAMPLE: i32 = 26 * S;
    const GAP: i32 = 6 * S;
    const TITLE_H: i32 = 34 * S;
    const LINE_H: i32 = 22 * S;
    let mut entries: Vec<(i32, i32, Option<RGBColor>, String)> = Vec::new();
    let (mut x, mut line) = (Y_LABEL_AREA, 0);
    let note = format!("faint: raw, solid: smoothed (EMA {SMOOTHING})");
    let items = series.iter().enumerate().map(|(i, (name, _))| (Some(PALETTE[i % PALETTE.len()]), name.to_string()));
    for (colour, text) in items.chain(smoothed.then_some((None, note))) {
        let font = if colour.is_some() { &legend_font } else { &note_font };
        let text_w = font.font.box_size(&text)?.0 as i32;
        let w = if colour.is_some() { SAMPLE + GAP } else { 0 } + text_w;
        if x + w > width as i32 && x > Y_LABEL_AREA {
            (x, line) = (Y_LABEL_AREA, line + 1);
        }
        entries.push((x, line, colour, text));
        x += w + 4 * GAP;
    }
    let header_h = TITLE_H + (line + 1) * LINE_H + GAP;
    let (header, body) = area.split_vertically(header_h);

    let title_w = title_font.font.box_size(title)?.0 as i32;
    let plot_centre = (Y_LABEL_AREA + width as i32) / 2;
    header.draw(&Text::new(title.to_string(), (plot_centre - title_w / 2, 10 * S), title_font))?;
    for (x, line, colour, text) in entries {
        let y = TITLE_H + line * LINE_H;
        match colour {
            Some(c) => {
                let mid = y + LEGEND_SIZE / 2 - glyph_rise(LEGEND_SIZE); // through the x-height
                header.draw(&PathElement::new(vec![(x, mid), (x + SAMPLE, mid)], c.stroke_width(3 * S as u32)))?;
                header.draw(&Text::new(text, (x + SAMPLE + GAP, y), legend_font.clone()))?;
            }
            None => header.draw(&Text::new(text, (x, y + S), note_font.clone()))?,
        }
    }

    let values = || series.iter().flat_map(|(_, p)| p.iter().map(|q| q.1));
    let (lo, hi) = min_max(values());
    if use_log_y(values()) {
        let f = (hi / lo).powf(0.04); // the same 4% margin in log space as the linear case
        draw_chart(&body, series, x_range, (lo / f..hi * f).log_scale(), true)
    } else {
        let pad = if hi > lo { (hi - lo) * 0.04 } else if hi != 0.0 { hi.abs() * 0.1 } else { 1.0 };
        draw_chart(&body, series, x_range, lo - pad..hi + pad, false)
    }
}

/// Axes, grid and curves; generic over the y coordinate (linear or log).
fn draw_chart<Y>(area: &DrawingArea<BitMapBackend<'_>, Shift>, series: &[(&str, &Points)], x: Range<f64>, y: Y, log: bool) -> Result<()>
where
    Y: AsRangedCoord<Value = f64>,
    Y::CoordDescType: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    let mut chart = ChartBuilder::on(area)
        .margin_right(24 * S)
        .x_label_area_size(46 * S)
        .y_label_area_size(Y_LABEL_AREA)
        .build_cartesian_2d(x, y)?;
    chart
        .configure_mesh()
        .x_desc("step")
        .x_labels(8)
        .y_labels(7)
        .x_label_formatter(&|v| tick_label(*v, false))
        .y_label_formatter(&|v| tick_label(*v, log))
        .y_label_offset(glyph_rise(TICK_SIZE))
        .label_style((FAMILY, TICK_SIZE).into_font().color(&TEXT))
        .axis_desc_style((FAMILY, AXIS_DESC_SIZE).into_font().color(&TEXT))
        .bold_line_style(GRID)
        .light_line_style(GRID_MINOR)
        .axis_style(NOTE)
        .draw()?;
    for (i, (_, points)) in series.iter().enumerate() {
        let colour = PALETTE[i % PALETTE.len()];
        let (thin, thick) = (S as u32, 2 * S as u32);
        if !needs_smoothing(points) {
            chart.draw_series(LineSeries::new(points.iter().copied(), colour.stroke_width(thick)))?;
            if points.len() < MIN_SMOOTHED_POINTS {
                chart.draw_series(points.iter().map(|&p| Circle::new(p, 4 * S, colour.filled())))?;
            }
        } else {
            let values: Vec<f64> = points.iter().map(|p| p.1).collect();
            let smooth = points.iter().map(|p| p.0).zip(ema_smooth(&values, SMOOTHING));
            chart.draw_series(LineSeries::new(points.iter().copied(), colour.mix(0.3).stroke_width(thin)))?;
            chart.draw_series(LineSeries::new(smooth, colour.stroke_width(thick)))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// 300 training steps (losses falling over three decades, warm-up + cosine lr, grad norms,
    /// two parameter groups) and 3 evaluation-only rows.
    fn synthetic_metrics(path: &Path) {
        let mut f = std::fs::File::create(path).unwrap();
        let mut seed = 12345u64;
        let mut noise = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 11) as f64 / (1u64 << 53) as f64 - 0.5
        };
        for step in 1..=300u32 {
            let s = step as f64;
            let total = (5.0 * (-s / 30.0).exp() + 0.004) * (1.0 + 0.5 * noise());
            let lr = if step <= 30 { 3e-4 * s / 30.0 } else { 3e-5 + 2.7e-4 * 0.5 * (1.0 + (std::f64::consts::PI * (s - 30.0) / 270.0).cos()) };
            let row = serde_json::json!({
                "step": step, "train/total_loss": total, "train/reconstruction_loss": 0.8 * total,
                "train/quantizer_loss": 0.05 + 0.01 * noise(), "lr": lr, "grad_norm": 1.5 + noise() + if step % 50 == 0 { 3.0 } else { 0.0 },
                "grad_norm_group/decay": 1.2 + 0.5 * noise(), "grad_norm_group/no_decay": 0.3 + 0.1 * noise(),
            });
            writeln!(f, "{row}").unwrap();
            if step % 100 == 0 {
                writeln!(f, "{}", serde_json::json!({"step": step, "ema_eval/PSNR": 16.0 + s / 50.0})).unwrap();
            }
        }
    }

    fn png_size(path: &Path) -> (u32, u32) {
        let bytes = std::fs::read(path).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
        let be = |i: usize| u32::from_be_bytes(bytes[i..i + 4].try_into().unwrap());
        (be(16), be(20)) // IHDR is the first chunk
    }

    fn report_panels() -> Vec<Panel> {
        vec![
            Panel::new("losses", &["train/total_loss", "train/reconstruction_loss", "train/quantizer_loss"]),
            Panel::new("learning rate", &["lr"]),
            Panel::new("gradient norm", &["grad_norm"]),
            Panel::new("EMA reconstruction PSNR", &["ema_eval/PSNR"]),
        ]
    }

    #[test]
    fn figure_has_one_cell_per_panel_with_data() {
        let dir = tempfile::tempdir().unwrap();
        let jsonl = dir.path().join("metrics.jsonl");
        synthetic_metrics(&jsonl);

        // 4 panels with data + 1 without: 2 rows of 2.
        let mut panels = report_panels();
        panels.push(Panel::new("nothing logged", &["train/missing", "missing_group/*"]));
        let four = dir.path().join("four.png");
        plot_metrics(&jsonl, &panels, &four).unwrap();
        assert_eq!(png_size(&four), (WIDTH, 2 * PANEL_HEIGHT));

        // A fifth panel with data (a prefix key) starts a third row.
        panels.push(Panel::new("gradient norm per group", &["grad_norm_group/*"]));
        let five = dir.path().join("five.png");
        plot_metrics(&jsonl, &panels, &five).unwrap();
        assert_eq!(png_size(&five), (WIDTH, 3 * PANEL_HEIGHT));
        assert!(!dir.path().join("five.png.tmp").exists(), "written through a temporary file");
        // To look at it: SFTOK_PLOT_SAMPLE=/tmp/plot-check.png cargo test -p sftok-model --lib plot
        std::env::var_os("SFTOK_PLOT_SAMPLE").map(|sample| std::fs::copy(&five, sample).unwrap());
    }

    #[test]
    fn prefix_keys_match_whole_path_components() {
        assert!(key_matches("grad_norm_group/*", "grad_norm_group/decay"));
        assert!(!key_matches("grad_norm_group/*", "grad_norm_groups/decay"));
        assert!(!key_matches("grad_norm_group/*", "grad_norm_group"));
        assert!(key_matches("lr", "lr"));
        assert!(!key_matches("lr", "lr_scale"));
    }

    fn synthetic_series() -> BTreeMap<String, Points> {
        let dir = tempfile::tempdir().unwrap();
        synthetic_metrics(&dir.path().join("metrics.jsonl"));
        read_series(&dir.path().join("metrics.jsonl"), &report_panels()).unwrap()
    }

    #[test]
    fn log_y_for_decades_of_positive_values_only() {
        let all = synthetic_series();
        let values = |k: &str| all[k].iter().map(|p| p.1);
        assert!(use_log_y(values("train/total_loss")));
        assert!(!use_log_y(values("lr")), "lr (1e-5 to 3e-4) spans 1.5 decades");
        assert!(!use_log_y(values("grad_norm")));
        assert!(use_log_y([1e-3, 1.0, 0.1].into_iter()));
        assert!(!use_log_y([1e-3, 1.0, 0.0].into_iter()), "zero cannot be on a log axis");
        assert!(!use_log_y([-1.0, 1000.0].into_iter()));
        assert!(!use_log_y(std::iter::empty()));
    }

    #[test]
    fn only_noisy_dense_series_are_smoothed() {
        let all = synthetic_series();
        assert!(needs_smoothing(&all["train/total_loss"]));
        assert!(needs_smoothing(&all["grad_norm"]));
        assert!(!needs_smoothing(&all["lr"]), "a schedule has no noise to smooth away");
        assert!(!needs_smoothing(&all["ema_eval/PSNR"]), "3 points");
        assert!(!needs_smoothing(&[(0.0, 1.0); 50]), "constant");
    }

    #[test]
    fn smoothing_is_a_debiased_ema() {
        // weight 0.9 over [1, 2, 4]: EMA (from 0) 0.1, 0.29, 0.661; debias by 1 - 0.9^n = 0.1, 0.19, 0.271.
        let expected = [0.1 / 0.1, 0.29 / 0.19, 0.661 / 0.271];
        let got = ema_smooth(&[1.0, 2.0, 4.0], 0.9);
        assert!(got.len() == 3 && got.iter().zip(expected).all(|(g, e)| (g - e).abs() < 1e-12), "{got:?} vs {expected:?}");
        // A constant series stays constant (no pull towards 0 at the start).
        assert!(ema_smooth(&[5.0; 4], 0.9).iter().all(|v| (v - 5.0).abs() < 1e-12));
    }

    #[test]
    fn non_finite_values_and_broken_lines_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let jsonl = dir.path().join("metrics.jsonl");
        let lines = [
            r#"{"step": 1, "train/total_loss": 2.0, "lr": 1e-4}"#,
            r#"{"step": 2, "train/total_loss": null, "lr": 1e-4}"#,
            r#"{"step": 3, "train/total_loss": "NaN", "lr": "inf"}"#,
            r#"{"step": 4, "train/total_loss": NaN}"#,
            r#"{"step": 5, "train/total_loss": 1.0e999}"#,
            r#"{"step": null, "train/total_loss": 7.0}"#,
            r#"{"step": 6, "train/total_loss": 1.0, "lr": 2e-4}"#,
            r#"{"step": 7, "train/tot"#,
        ];
        std::fs::write(&jsonl, lines.join("\n")).unwrap();
        let panels = report_panels();
        let all = read_series(&jsonl, &panels).unwrap();
        assert_eq!(all["train/total_loss"], vec![(1.0, 2.0), (6.0, 1.0)]);
        assert_eq!(all["lr"], vec![(1.0, 1e-4), (2.0, 1e-4), (6.0, 2e-4)]);
        let out = dir.path().join("loss.png");
        plot_metrics(&jsonl, &panels, &out).unwrap();
        assert_eq!(png_size(&out), (WIDTH, PANEL_HEIGHT), "losses + lr: one row");
    }

    #[test]
    fn no_usable_rows_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let jsonl = dir.path().join("empty-metrics.jsonl");
        std::fs::write(&jsonl, "not json\n{\"loss\": 1.0}\n\n").unwrap();
        let out = dir.path().join("loss.png");
        let err = plot_metrics(&jsonl, &report_panels(), &out).unwrap_err().to_string();
        assert!(err.contains("empty-metrics.jsonl"), "{err}");
        // Rows, but none of the panels' metrics.
        std::fs::write(&jsonl, "{\"step\": 1, \"other\": 1.0}\n").unwrap();
        let err = plot_metrics(&jsonl, &report_panels(), &out).unwrap_err().to_string();
        assert!(err.contains("empty-metrics.jsonl") && err.contains("train/total_loss"), "{err}");
        assert!(!out.exists());
    }

    #[test]
    fn tick_labels() {
        let (log, lin) = (true, false);
        for (v, axis, want) in [
            (0.001, log, "10⁻³"), (1.0, log, "10⁰"), (100.0, log, "10²"), (0.002, log, "2e-3"), (0.001, lin, "1e-3"),
            (0.0, lin, "0"), (-3.39e-21, lin, "0"), (1.5e-4, lin, "1.5e-4"), (0.30000000000000004, lin, "0.3"), (250.0, lin, "250"),
            (12500.0, lin, "12.5k"), (249999.5, lin, "249999.5"), (2e6, lin, "2M"), (-20000.0, lin, "-20k"),
        ] {
            assert_eq!(tick_label(v, axis), want, "{v} (log: {axis})");
        }
    }
}
