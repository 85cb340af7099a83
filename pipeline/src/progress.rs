//! One place for progress reporting: an indicatif bar on a terminal, plain periodic lines when
//! stderr is not a terminal (CI logs, `nohup`, pipes), so logs stay readable.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Writes `line` and a newline to stderr in one `write(2)`: `eprintln!` writes its pieces one by one,
/// so the lines of processes sharing a terminal or pipe (torchrun's ranks) interleave mid-line.
pub fn status_line(line: &str) {
    use std::io::Write;
    let _ = std::io::stderr().lock().write_all(format!("{line}\n").as_bytes());
}

/// `1h05m` / `3m07s`: the remaining time in progress lines and the trainer's console.
pub fn format_eta(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    if s >= 3600 { format!("{}h{:02}m", s / 3600, (s % 3600) / 60) } else { format!("{}m{:02}s", s / 60, s % 60) }
}

pub struct Progress {
    bar: Option<ProgressBar>,
    plain: Option<Mutex<Plain>>,
    label: String,
    total: u64,
}

struct Plain {
    done: u64,
    start: Instant,
    last: Instant,
}

/// Seconds between two plain (non-terminal) progress lines.
const PLAIN_EVERY: Duration = Duration::from_secs(10);

impl Progress {
    pub fn new(label: &str, total: u64, unit: &str) -> Progress {
        if std::io::stderr().is_terminal() {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template(&format!(
                    "{{msg}} [{{bar:40}}] {{pos}}/{{len}} {unit} ({{per_sec}}, ETA {{eta}})"
                ))
                .expect("valid template")
                .progress_chars("=> "),
            );
            bar.set_message(label.to_string());
            Progress { bar: Some(bar), plain: None, label: label.into(), total }
        } else {
            let now = Instant::now();
            Progress {
                bar: None,
                plain: Some(Mutex::new(Plain { done: 0, start: now, last: now })),
                label: label.into(),
                total,
            }
        }
    }

    pub fn inc(&self, n: u64) {
        if let Some(bar) = &self.bar {
            bar.inc(n);
        } else if let Some(plain) = &self.plain {
            let mut p = plain.lock().expect("progress lock");
            p.done += n;
            if p.last.elapsed() >= PLAIN_EVERY {
                p.last = Instant::now();
                let rate = p.done as f64 / p.start.elapsed().as_secs_f64().max(1e-9);
                let left = self.total.saturating_sub(p.done) as f64 / rate.max(1e-9);
                status_line(&format!("{}: {}/{} ({rate:.1}/s, ETA {})", self.label, p.done, self.total, format_eta(left)));
            }
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
