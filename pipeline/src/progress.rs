//! One place for progress reporting: an indicatif bar on a terminal, plain periodic lines when
//! stderr is not a terminal (CI logs, `nohup`, pipes), so logs stay readable.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

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
                eprintln!("{}: {}/{} ({rate:.1}/s)", self.label, p.done, self.total);
            }
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
