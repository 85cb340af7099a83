//! This process's resource figures for the benchmarks' `RESULT` lines (Linux `/proc`). Each
//! reads as NaN where `/proc` is missing or unreadable: a benchmark still prints its timings.

/// User + system CPU seconds of this process, all threads (`/proc/self/stat`, in clock ticks
/// that Linux reports at USER_HZ = 100 on every mainstream architecture).
pub fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The command name is parenthesised and may hold spaces: count fields after its `)`.
    // utime and stime, fields 14 and 15 of the line, are the 12th and 13th after it.
    let fields: Vec<&str> = stat.rsplit_once(')').map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect());
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(f64::NAN);
    (ticks(11) + ticks(12)) / 100.0
}

/// Peak resident memory of this process (VmHWM), in MB (10⁶ bytes, like the other MB figures
/// of the `RESULT` lines).
pub fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb * 1024.0 / 1e6)
}

/// The 1-minute load average of the machine, to spot runs disturbed by other work.
pub fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg").ok().and_then(|s| s.split_whitespace().next()?.parse().ok()).unwrap_or(f64::NAN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_are_plausible_on_linux() {
        let c0 = cpu_seconds();
        let mut x = 0u64;
        for i in 0..30_000_000u64 {
            x = x.wrapping_add(std::hint::black_box(i));
        }
        std::hint::black_box(x);
        assert!(cpu_seconds() >= c0 && c0 >= 0.0, "{c0}");
        assert!(peak_rss_mb() > 0.1, "{}", peak_rss_mb());
        assert!(load_average() >= 0.0, "{}", load_average());
    }
}
