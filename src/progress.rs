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
                while !stop2.load(Ordering::Relaxed) {
                    bar.set_position(done());
                    let rate = done() as f64 / t0.elapsed().as_secs_f64().max(1e-9);
                    bar.set_message(format!("{what}, {rate:.0}/s {}", extra()));
                    std::thread::sleep(Duration::from_millis(100));
                }
                bar.set_position(done());
                bar.finish_and_clear();
            } else {
                let mut last = Instant::now();
                while !stop2.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(100));
                    if last.elapsed() >= Duration::from_secs(5) {
                        last = Instant::now();
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
