//! How much memory a run needs, against how much this process may use: runs that cannot fit are
//! refused (or given fewer threads) before they start, instead of aborting half-way.

use crate::error::{Error, Result};

/// The memory this process can still use, and which limit says so.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Available {
    pub bytes: u64,
    pub source: String,
}

fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

fn meminfo_available() -> Option<u64> {
    read("/proc/meminfo")?
        .lines()
        .find(|l| l.starts_with("MemAvailable:"))?
        .split_whitespace()
        .nth(1)?
        .parse::<u64>()
        .ok()
        .map(|kib| kib * 1024)
}

/// cgroup v2 (memory.max - memory.current) or v1 (limit - usage) of this process's cgroup.
fn cgroup_available() -> Option<u64> {
    let num = |p: &str| read(p).and_then(|t| t.trim().parse::<u64>().ok());
    if let (Some(max), Some(cur)) = (
        num("/sys/fs/cgroup/memory.max"),
        num("/sys/fs/cgroup/memory.current"),
    ) {
        return Some(max.saturating_sub(cur));
    }
    let (limit, usage) = (
        num("/sys/fs/cgroup/memory/memory.limit_in_bytes")?,
        num("/sys/fs/cgroup/memory/memory.usage_in_bytes")?,
    );
    // v1 reports "no limit" as a huge number.
    (limit < 1 << 60).then(|| limit.saturating_sub(usage))
}

/// RLIMIT_AS (soft) minus the address space already mapped, from /proc/self.
fn rlimit_as_available() -> Option<u64> {
    let limits = read("/proc/self/limits")?;
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max address space"))?;
    let soft = line
        .trim_start_matches("Max address space")
        .split_whitespace()
        .next()?;
    let soft: u64 = soft.parse().ok()?; // "unlimited" does not parse: no limit
    let vm = read("/proc/self/status")?
        .lines()
        .find(|l| l.starts_with("VmSize:"))?
        .split_whitespace()
        .nth(1)?
        .parse::<u64>()
        .ok()?
        * 1024;
    Some(soft.saturating_sub(vm))
}

/// The smallest of MemAvailable, the cgroup's room and RLIMIT_AS's room.
pub fn available() -> Available {
    let mut best = Available {
        bytes: u64::MAX,
        source: "no limit found".into(),
    };
    for (v, src) in [
        (meminfo_available(), "MemAvailable"),
        (cgroup_available(), "the cgroup memory limit"),
        (rlimit_as_available(), "RLIMIT_AS (ulimit -v)"),
    ] {
        if let Some(v) = v
            && v < best.bytes
        {
            best = Available {
                bytes: v,
                source: src.into(),
            };
        }
    }
    best
}

/// A render's memory: what every run holds, and what each render thread (with its encoder) adds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Estimate {
    pub fixed: u64,
    pub per_thread: u64,
}

impl Estimate {
    pub fn total(&self, threads: usize) -> u64 {
        self.fixed
            .saturating_add(self.per_thread.saturating_mul(threads as u64))
    }
}

/// What a render's memory depends on.
#[derive(Clone, Copy, Debug)]
pub struct RenderShape {
    pub iterations: u64,
    pub width: u64,
    pub height: u64,
    /// 1 (gray PNGs) or 3.
    pub channels: u64,
    pub png_level: u8,
    pub images_per_cloud: u64,
    pub python_masks: bool,
    /// Writing shards (a chunk of clouds' PNGs waits at the writers).
    pub shards: bool,
}

/// Estimates a render (see design.md, "Memory"): the shared chaos sequence; per render thread the
/// fp64 points and clouds of its four lanes and their rescaled pairs (84 bytes a point, plus
/// CPython masks), its patch cover (4 bytes a pixel), a canvas in flight and two in the
/// channel, an RGB image and the PNGs of its encoder and channels, the targets of a job (images of a
/// cloud); and, writing shards, two chunks of clouds' PNGs waiting at the writers.
pub fn render_estimate(r: RenderShape) -> Estimate {
    let RenderShape {
        iterations,
        width,
        height,
        channels,
        png_level,
        images_per_cloud,
        python_masks,
        shards,
    } = r;
    let px = width.saturating_mul(height);
    let png = px.saturating_mul(channels) / if png_level == 0 { 1 } else { 4 };
    let per_point = 84 + if python_masks { 4 } else { 0 };
    let per_thread = iterations
        .saturating_mul(per_point)
        .saturating_add(px.saturating_mul(3 + 4))
        .saturating_add(px.saturating_mul(channels).saturating_mul(2))
        .saturating_add(png.saturating_mul(4))
        .saturating_add(images_per_cloud.saturating_mul(64));
    let mut fixed = iterations.saturating_mul(8).saturating_add(64 << 20);
    if shards {
        fixed = fixed.saturating_add(
            (crate::plan::CHUNK * 2)
                .saturating_mul(images_per_cloud)
                .saturating_mul(png.saturating_add(64)),
        );
    }
    Estimate { fixed, per_thread }
}

fn gib(b: u64) -> String {
    format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64)
}

/// Threads that fit in `avail`: `threads` when all fit, fewer (at least 1) when some do, or an error
/// with the figures when not even one does. `what` names the flags that drive the size.
pub fn fit_threads(
    est: Estimate,
    threads: usize,
    avail: &Available,
    what: &'static str,
) -> Result<usize> {
    if est.total(threads) <= avail.bytes {
        return Ok(threads);
    }
    let room = avail.bytes.saturating_sub(est.fixed);
    let fit = (room / est.per_thread.max(1)) as usize;
    if fit >= 1 {
        return Ok(fit.min(threads));
    }
    Err(Error::flag(
        what,
        format!(
            "this run needs about {} ({} plus {} per thread) but {} is available ({}): lower the \
             setting, or run where more memory is available",
            gib(est.total(1)),
            gib(est.fixed),
            gib(est.per_thread),
            gib(avail.bytes),
            avail.source
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_shrink_to_fit_and_impossible_runs_are_refused() {
        let est = Estimate {
            fixed: 100,
            per_thread: 10,
        };
        let avail = |b| Available {
            bytes: b,
            source: "test".into(),
        };
        assert_eq!(fit_threads(est, 8, &avail(1000), "x").unwrap(), 8);
        assert_eq!(fit_threads(est, 8, &avail(135), "x").unwrap(), 3);
        let e = fit_threads(est, 8, &avail(105), "--iteration").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("--iteration: this run needs about")
        );
        // Sizes that overflow saturate instead of wrapping.
        let huge = render_estimate(RenderShape {
            iterations: u64::MAX,
            width: 16384,
            height: 16384,
            channels: 3,
            png_level: 1,
            images_per_cloud: 40,
            python_masks: false,
            shards: true,
        });
        assert_eq!(huge.per_thread, u64::MAX);
        assert!(fit_threads(huge, 1, &avail(1 << 40), "x").is_err());
    }

    #[test]
    fn this_machine_reports_some_available_memory() {
        let a = available();
        assert!(a.bytes > 1 << 20, "{a:?}");
    }
}
