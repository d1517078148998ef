//! Progress: a bar on a terminal, plain log lines otherwise, nothing with `--quiet`.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Auto,
    Quiet,
}

/// Reports `done` against `total` until dropped; `extra` adds a suffix (e.g. shards done).
pub struct Reporter {
    stop: std::sync::Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Reporter {
    pub fn start(
        mode: Mode,
        what: &'static str,
        total: u64,
        done: Box<dyn Fn() -> u64 + Send>,
        extra: Box<dyn Fn() -> String + Send>,
    ) -> Reporter {
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        if mode == Mode::Quiet {
            return Reporter { stop, handle: None };
        }
        let stop2 = stop.clone();
        let interval = interval();
        let handle = std::thread::spawn(move || {
            let t0 = Instant::now();
            if std::io::stderr().is_terminal() {
                let bar = indicatif::ProgressBar::new(total);
                bar.set_style(
                    indicatif::ProgressStyle::with_template(
                        // The bar takes what the terminal's width leaves, so the line never wraps.
                        "{elapsed_precise} [{wide_bar}] {pos}/{len} {msg} ETA {eta}",
                    )
                    .unwrap()
                    .progress_chars("=> "),
                );
                let mut estimated = false;
                while !stop2.load(Ordering::Relaxed) {
                    bar.set_position(done());
                    let rate = done() as f64 / t0.elapsed().as_secs_f64().max(1e-9);
                    bar.set_message(format!("{what}, {rate:.0}/s {}", extra()));
                    if !estimated && t0.elapsed() >= interval {
                        // A line that stays when the bar is gone.
                        estimated = true;
                        bar.println(estimate(what, done(), total, t0.elapsed()));
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                bar.set_position(done());
                bar.finish_and_clear();
            } else {
                let mut last = Instant::now();
                let mut estimated = false;
                while !stop2.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(20));
                    if last.elapsed() >= interval {
                        last = Instant::now();
                        if !estimated {
                            estimated = true;
                            crate::say!("{}", estimate(what, done(), total, t0.elapsed()));
                        }
                        let d = done();
                        let secs = t0.elapsed().as_secs_f64();
                        let rate = d as f64 / secs.max(1e-9);
                        let eta = if rate > 0.0 {
                            (total.saturating_sub(d)) as f64 / rate
                        } else {
                            f64::NAN
                        };
                        crate::say!(
                            "[{secs:7.1}s] {d}/{total} {what} ({rate:.1}/s, ETA {eta:.0}s) {}",
                            extra()
                        );
                    }
                }
            }
        });
        Reporter {
            stop,
            handle: Some(handle),
        }
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// The progress display of a render: images written by this run (`stats`) plus those kept from
/// before (`kept`, resume) against `total`, with `extra` appended (e.g. shards done).
pub fn images(
    mode: Mode,
    total: u64,
    stats: &std::sync::Arc<crate::pipeline::Stats>,
    kept: &std::sync::Arc<std::sync::atomic::AtomicU64>,
    extra: Box<dyn Fn() -> String + Send>,
) -> Reporter {
    use std::sync::atomic::Ordering;
    let (s, kept) = (stats.clone(), kept.clone());
    Reporter::start(
        mode,
        "images",
        total,
        Box::new(move || s.images.load(Ordering::Relaxed) + kept.load(Ordering::Relaxed)),
        extra,
    )
}

/// Seconds between progress lines when stderr is not a terminal, and before the first estimate
/// (`FRACTALDB_PROGRESS_INTERVAL`, default 5).
fn interval() -> Duration {
    std::env::var("FRACTALDB_PROGRESS_INTERVAL")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|v| v.is_finite() && *v > 0.0)
        .map(Duration::from_secs_f64)
        .unwrap_or(Duration::from_secs(5))
}

/// "estimate: 1,234 images/s here: the 1,000,000 images take about 13m 30s (13m 25s left)".
fn estimate(what: &str, done: u64, total: u64, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64().max(1e-9);
    let rate = done as f64 / secs;
    if rate <= 0.0 {
        return format!(
            "estimate: no {what} finished after {}, none yet",
            human(secs)
        );
    }
    format!(
        "estimate: {rate:.0} {what}/s here: the {total} {what} take about {} ({} left)",
        human(total as f64 / rate),
        human(total.saturating_sub(done) as f64 / rate)
    )
}

/// A duration as a person reads it: 45s, 12m 30s, 3h 05m, 2d 04h.
pub fn human(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h {:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {:02}h", s / 86400, s % 86400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn durations_read_like_a_person_says_them() {
        assert_eq!(super::human(45.2), "45s");
        assert_eq!(super::human(750.0), "12m 30s");
        assert_eq!(super::human(3.0 * 3600.0 + 300.0), "3h 05m");
        assert_eq!(super::human(2.0 * 86400.0 + 4.0 * 3600.0), "2d 04h");
    }
}
