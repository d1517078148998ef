//! `fractaldb rcdb`: this rank's classes of an RCDB dataset, in the original's folder layout
//! (`param/%05d.csv`, `image/%05d/%05d_%04d.png`), through the shared pipeline and sinks.
//!
//! Before drawing, each generator process's stream is replayed (draws only, no pixels) up to the
//! first class this run makes, so a class never needs the images before it: ranks and
//! `--thread_num` take any classes, and a resume draws only what is missing.

use super::stage::{ClassStarts, RcdbStages};
use super::{Settings, param_csv};
use crate::cluster::Rank;
use crate::error::{Error, Result};
use crate::fsutil;
use crate::generate::Summary;
use crate::pipeline::{self, Abort, Context, InOrder, IndexedJobs, Job, Sink, Stats, Target};
use crate::plan::Sample;
use crate::progress::{self, Reporter};
use crate::render::PngConfig;
use crate::rng::PyRandom;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

#[derive(Clone, Debug)]
pub struct RcdbOptions {
    pub settings: Settings,
    /// `--save_root`.
    pub out: PathBuf,
    /// `--thread_num t`: only process t's classes.
    pub thread_num: Option<u32>,
    pub png: PngConfig,
    pub resume: bool,
    pub threads: pipeline::Threads,
    pub writers: usize,
    pub rank: Rank,
    pub progress: progress::Mode,
}

impl RcdbOptions {
    pub fn save_root_display(&self) -> String {
        self.out.display().to_string()
    }
}

/// The classes a run of these settings makes: process `thread_num`'s, or every process's.
pub fn run_classes(s: &Settings, thread_num: Option<u32>) -> Result<std::ops::Range<u32>> {
    let q = s.per_process();
    match thread_num {
        None => Ok(0..s.made_classes()),
        Some(t) if t < s.processes => Ok(t * q..t * q + q),
        Some(t) => Err(Error::flag(
            "--thread_num",
            format!(
                "{t} is not a process of --numof_thread {} (0 to {})",
                s.processes,
                s.processes - 1
            ),
        )),
    }
}

/// Rank `rank` of `world` takes a contiguous stretch of the classes (sizes differ by at most one),
/// so it replays only the streams up to its own classes.
pub fn rank_classes(all: std::ops::Range<u32>, rank: u64, world: u64) -> std::ops::Range<u32> {
    let n = (all.end - all.start) as u64;
    let at = |r: u64| all.start + (n * r / world) as u32;
    at(rank)..at(rank + 1)
}

pub fn image_path(root: &Path, class: u32, instance: u32) -> PathBuf {
    root.join("image")
        .join(format!("{class:05}"))
        .join(format!("{class:05}_{instance:04}.png"))
}

pub fn param_path(root: &Path, class: u32) -> PathBuf {
    root.join("param").join(format!("{class:05}.csv"))
}

/// Replays the streams of the processes that make `classes` (in parallel, one process per thread
/// at a time) and returns the stream at the start of each class; `at_class` sees each class's
/// parameter file as it is reached.
pub fn class_starts(
    s: &Settings,
    classes: std::ops::Range<u32>,
    threads: usize,
    at_class: &(dyn Fn(u32, &str) -> Result<()> + Sync),
) -> Result<ClassStarts> {
    if classes.is_empty() {
        return Ok(ClassStarts::new());
    }
    let q = s.per_process();
    let procs: Vec<u32> = (s.process_of(classes.start)..=s.process_of(classes.end - 1)).collect();
    let next = AtomicUsize::new(0);
    let out = Mutex::new(ClassStarts::new());
    let failed: Mutex<Option<Error>> = Mutex::new(None);
    std::thread::scope(|sc| {
        for _ in 0..threads.clamp(1, procs.len()) {
            sc.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&t) = procs.get(i) else { break };
                    let mut rng: PyRandom = s.process_stream(t);
                    let first = t * q;
                    let from = classes.start.max(first);
                    let to = classes.end.min(first + q);
                    for _ in first..from {
                        s.skip_class(&mut rng);
                    }
                    for c in from..to {
                        out.lock().unwrap().insert(c, rng.clone());
                        let mut probe = rng.clone();
                        let p = s.draw_class(&mut probe);
                        if let Err(e) = at_class(c, &param_csv(&p)) {
                            failed.lock().unwrap().get_or_insert(e);
                            return;
                        }
                        if c + 1 < to {
                            s.skip_class(&mut rng);
                        }
                    }
                }
            });
        }
    });
    if let Some(e) = failed.into_inner().unwrap() {
        return Err(e);
    }
    Ok(out.into_inner().unwrap())
}

/// Writes `text` to `path` unless it is already there with these bytes.
fn write_if_changed(path: &Path, text: &str) -> Result<()> {
    match std::fs::read(path) {
        Ok(old) if old == text.as_bytes() => Ok(()),
        _ => fsutil::write_atomic(path, text.as_bytes(), false),
    }
}

/// The settings that determine the images, recorded in `{save_root}/rcdb.json` and compared on
/// every later run into the same folder.
pub fn fingerprint(s: &Settings, png: PngConfig) -> serde_json::Value {
    serde_json::json!({
        "kind": "rcdb-folder-v1",
        "image_size": s.image_size, "vertex_num": s.vertex_num,
        "perlin_min": s.perlin_min, "line_width": s.line_width,
        "radius_min": s.radius_min, "line_num_min": s.line_num_min,
        "oval_rate": s.oval_rate, "start_pos": s.start_pos,
        "numof_classes": s.classes, "numof_instances": s.instances,
        "numof_thread": s.processes,
        "png_level": png.level,
    })
}

pub const RECORD: &str = "rcdb.json";

fn check_or_write_record(out: &Path, rec: &serde_json::Value, writer: bool) -> Result<()> {
    let path = out.join(RECORD);
    match std::fs::read_to_string(&path) {
        Ok(t) => {
            let old: serde_json::Value = serde_json::from_str(&t).map_err(|e| {
                Error::input(&path, Some(e.line()), format!("not an RCDB record: {e}"))
            })?;
            if &old != rec {
                return Err(Error::input(
                    &path,
                    None,
                    format!(
                        "this RCDB folder was made with other settings ({}); nothing was written: use the \
                         same flags, or another --save_root",
                        crate::sink::wds::config_difference(&old, rec)
                    ),
                ));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if writer {
                fsutil::remove_stale_tmp_of(out, |n| n == RECORD);
                let text = serde_json::to_string_pretty(rec).unwrap() + "\n";
                fsutil::write_atomic(&path, text.as_bytes(), true)?;
            }
            Ok(())
        }
        Err(e) => Err(Error::io(&path, "cannot read", e)),
    }
}

/// The original's image files.
struct FolderSink {
    root: PathBuf,
    writers: usize,
}

impl Sink for FolderSink {
    fn writers(&self) -> usize {
        self.writers
    }
    fn route(&self, t: &Target) -> usize {
        (t.pos % self.writers as u64) as usize
    }
    fn accept(&self, _writer: usize, t: Target, png: Vec<u8>) -> Result<()> {
        let path = image_path(&self.root, t.sample.class, t.sample.instance);
        fsutil::write_atomic(&path, &png, false)
    }
}

/// One job per class: the instances still to draw, in stream order.
struct FolderJobs<'a> {
    s: &'a Settings,
    classes: std::ops::Range<u32>,
    resume: Option<&'a Path>,
    kept: &'a AtomicU64,
}

impl IndexedJobs for FolderJobs<'_> {
    fn count(&self) -> u64 {
        (self.classes.end - self.classes.start) as u64
    }
    fn job(&self, i: u64) -> Job {
        let class = self.classes.start + i as u32;
        let size = self.s.image_size;
        let images = (0..self.s.instances).filter_map(|instance| {
            if let Some(root) = self.resume
                && crate::sink::folder::image_is_whole(
                    &image_path(root, class, instance),
                    size,
                    size,
                    false,
                )
            {
                self.kept.fetch_add(1, Ordering::Relaxed);
                return None;
            }
            let sample = Sample {
                class,
                row: 0,
                instance,
                flip: super::FLIP,
            };
            let pos = class as u64 * self.s.instances as u64 + instance as u64;
            Some((
                instance,
                super::FLIP,
                Target {
                    sample,
                    pos,
                    shard: 0,
                },
            ))
        });
        pipeline::job_of(class, 0, images)
    }
}

pub fn run(opts: &RcdbOptions) -> Result<Summary> {
    let s = &opts.settings;
    s.validate()?;
    let all = run_classes(s, opts.thread_num)?;
    let mine = rank_classes(all.clone(), opts.rank.rank, opts.rank.world);
    let out = &opts.out;
    fsutil::create_dir(out)?;
    let _lock = fsutil::OutputLock::acquire(
        out,
        &format!("rcdb-rank-{:05}-of-{:05}", opts.rank.rank, opts.rank.world),
    )?;
    check_or_write_record(out, &fingerprint(s, opts.png), opts.rank.rank == 0)?;
    fsutil::create_dir(&out.join("param"))?;
    fsutil::create_dir(&out.join("image"))?;
    fsutil::remove_stale_tmp(&out.join("param"));
    fsutil::check_writable(out)?;
    for c in mine.clone() {
        let dir = out.join("image").join(format!("{c:05}"));
        fsutil::create_dir(&dir)?;
        fsutil::remove_stale_tmp(&dir);
    }
    let t0 = Instant::now();
    let starts = class_starts(s, mine.clone(), opts.threads.render, &|c, text| {
        write_if_changed(&param_path(out, c), text)
    })?;
    let replay_s = t0.elapsed().as_secs_f64();
    let stages = RcdbStages {
        settings: s,
        starts: &starts,
    };
    let ctx = Context {
        stages: &stages,
        image: super::image_format(s),
        png: opts.png,
    };
    let stats = Arc::new(Stats::default());
    let kept = Arc::new(AtomicU64::new(0));
    let total = (mine.end - mine.start) as u64 * s.instances as u64;
    let rep = {
        let (st, kp) = (stats.clone(), kept.clone());
        Reporter::start(
            opts.progress,
            "images",
            total,
            Box::new(move || st.images.load(Ordering::Relaxed) + kp.load(Ordering::Relaxed)),
            Box::new(String::new),
        )
    };
    let jobs = FolderJobs {
        s,
        classes: mine,
        resume: opts.resume.then_some(out.as_path()),
        kept: &kept,
    };
    let sink = FolderSink {
        root: out.clone(),
        writers: opts.writers,
    };
    pipeline::run(
        &ctx,
        &InOrder::new(&jobs),
        &sink,
        opts.threads,
        &stats,
        &Abort::default(),
    )?;
    drop(rep);
    let secs = |c: &AtomicU64| c.load(Ordering::Relaxed) as f64 / 1e9;
    Ok(Summary {
        images: stats.images.load(Ordering::Relaxed),
        skipped: kept.load(Ordering::Relaxed),
        seconds: t0.elapsed().as_secs_f64(),
        clouds: stats.render.clouds.load(Ordering::Relaxed),
        chaos_s: secs(&stats.render.chaos_ns) + replay_s,
        raster_s: secs(&stats.render.raster_ns),
        encode_s: secs(&stats.encode_ns),
        write_s: secs(&stats.write_ns),
        bytes: stats.png_bytes.load(Ordering::Relaxed),
        ..Summary::default()
    })
}
