//! `fractaldb rcdb`: this rank's classes of an RCDB dataset, in the original's folder layout
//! (`param/%05d.csv`, `image/%05d/%05d_%04d.png`), through the shared pipeline and sinks.
//!
//! Before drawing, each generator process's stream is replayed (draws only, no pixels) up to the
//! first class this run makes, so a class never needs the images before it: ranks and
//! `--thread_num` take any classes, and a resume draws only what is missing.

use super::stage::RcdbStages;
use super::unit::ClassStarts;
use super::{Settings, param_csv};
use crate::cluster::Rank;
use crate::error::{Error, Result};
use crate::fsutil;
use crate::pipeline::Summary;
use crate::pipeline::{self, Abort, Context, InOrder, IndexedJobs, Job, Sink, Stats, Target};
use crate::plan::Layout;
use crate::plan::Sample;
use crate::progress;
use crate::render::PngConfig;
use crate::rng::PyRandom;
use crate::sink::Format;
use crate::sink::wds::{SampleMeta, WdsOptions, WdsSink};
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
    pub format: Format,
    /// Shard settings (`--format wds`): the most samples per shard, name prefix, order seed, DALI
    /// index files.
    pub samples_per_shard: u64,
    pub prefix: String,
    pub seed: u64,
    pub dali_index: bool,
    pub png: PngConfig,
    pub resume: bool,
    pub threads: pipeline::Threads,
    pub writers: usize,
    pub rank: Rank,
    pub progress: progress::Mode,
    pub backend: crate::render::Backend,
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

/// Replays the streams of the processes that make `classes` (ascending; in parallel, one process
/// per thread at a time) and returns the stream at the start of each class; `at_class` gets each
/// class's parameter file as it is reached.
pub fn class_starts(
    s: &Settings,
    classes: &[u32],
    threads: usize,
    at_class: &(dyn Fn(u32, &str) -> Result<()> + Sync),
) -> Result<ClassStarts> {
    let mut by_process: Vec<(u32, Vec<u32>)> = Vec::new();
    for &c in classes {
        let t = s.process_of(c);
        match by_process.last_mut() {
            Some((p, v)) if *p == t => v.push(c),
            _ => by_process.push((t, vec![c])),
        }
    }
    let next = AtomicUsize::new(0);
    let out = Mutex::new(ClassStarts::new());
    let failed: Mutex<Option<Error>> = Mutex::new(None);
    std::thread::scope(|sc| {
        for _ in 0..threads.clamp(1, by_process.len().max(1)) {
            sc.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some((t, wanted)) = by_process.get(i) else {
                        break;
                    };
                    let mut rng: PyRandom = s.process_stream(*t);
                    let mut at = t * s.per_process();
                    for &c in wanted {
                        while at < c {
                            s.skip_class(&mut rng);
                            at += 1;
                        }
                        out.lock().unwrap().insert(c, rng.clone());
                        let mut probe = rng.clone();
                        let p = s.draw_class(&mut probe);
                        if let Err(e) = at_class(c, &param_csv(&p)) {
                            failed.lock().unwrap().get_or_insert(e);
                            return;
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

/// The version of RCDB's bytes (images and parameter files). 1, and then not recorded, so that the
/// records of releases before it still resume; a rule that changes the bytes bumps it, and from 2 on
/// it is recorded (`tests/rcdb.rs` pins a tiny dataset's digest beside it).
pub const VERSION: u32 = 1;

/// The settings that determine the images, recorded in `{save_root}/rcdb.json` and compared on
/// every later run into the same folder.
pub fn fingerprint(s: &Settings, png: PngConfig) -> serde_json::Value {
    let mut v = fingerprint_v1(s, png);
    #[allow(clippy::absurd_extreme_comparisons)]
    if VERSION > 1 {
        v.as_object_mut()
            .unwrap()
            .insert("version".into(), VERSION.into());
    }
    v
}

fn fingerprint_v1(s: &Settings, png: PngConfig) -> serde_json::Value {
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

/// Everything that determines the shard bytes of an RCDB run.
pub(crate) fn shard_fingerprint(opts: &RcdbOptions, layout: &Layout) -> serde_json::Value {
    let mut v = fingerprint(&opts.settings, opts.png);
    let m = v.as_object_mut().unwrap();
    m.insert("kind".into(), "rcdb-wds-v1".into());
    m.insert("order".into(), crate::plan::ORDER_VERSION.into());
    m.insert("encoder".into(), crate::render::ENCODER.into());
    m.insert("group".into(), layout.instances.into());
    m.insert("seed".into(), opts.seed.into());
    m.insert("prefix".into(), opts.prefix.clone().into());
    v
}

pub const RECORD: &str = "rcdb.json";

/// One job per (class, group of `group` instances): the instances still to draw, in stream order.
struct FolderJobs<'a> {
    s: &'a Settings,
    classes: std::ops::Range<u32>,
    group: u32,
    resume: Option<&'a Path>,
    kept: &'a AtomicU64,
}

impl IndexedJobs for FolderJobs<'_> {
    fn count(&self) -> u64 {
        (self.classes.end - self.classes.start) as u64 * (self.s.instances / self.group) as u64
    }
    fn job(&self, i: u64) -> Job {
        let groups = (self.s.instances / self.group) as u64;
        let class = self.classes.start + (i / groups) as u32;
        let row = (i % groups) as u32;
        let size = self.s.image_size;
        let images = (0..self.group).filter_map(|k| {
            let instance = row * self.group + k;
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
                row,
                instance,
                flip: super::FLIP,
            };
            let pos = class as u64 * self.s.instances as u64 + instance as u64;
            Some((
                k,
                super::FLIP,
                Target {
                    sample,
                    pos,
                    shard: 0,
                },
            ))
        });
        pipeline::job_of(class, row, images)
    }
}

/// Instances per unit of shard work: the largest divisor of the instance count up to
/// [`GROUP_MAX`]. A shard layout "cloud" is one such stretch of a class's stream (the layout's rows
/// are the groups), so shards mix classes while a unit replays at most one class's draws.
pub const GROUP_MAX: u32 = 100;

pub fn group_size(instances: u32) -> u32 {
    (1..=instances.min(GROUP_MAX))
        .rev()
        .find(|g| instances.is_multiple_of(*g))
        .unwrap_or(1)
}

/// RCDB's `.json` of a shard sample: the class, the instance (its file name in the original's
/// layout), the process that draws it.
pub(crate) struct RcdbMeta {
    pub(crate) group: u32,
    pub(crate) per_process: u32,
}

impl SampleMeta for RcdbMeta {
    fn json(&self, class: &str, s: Sample, id: u64) -> serde_json::Result<Vec<u8>> {
        let instance = s.row * self.group + s.instance;
        serde_json::to_vec(&serde_json::json!({
            "class": class,
            "class_index": s.class,
            "instance": instance,
            "file": format!("image/{0:05}/{0:05}_{instance:04}.png", s.class),
            "process": s.class / self.per_process,
            "sample": id,
        }))
    }
}

pub fn run(opts: &RcdbOptions) -> Result<Summary> {
    let s = &opts.settings;
    s.validate()?;
    let t0 = Instant::now();
    let stats = Arc::new(Stats::default());
    let mut summary = match opts.format {
        Format::Folder => run_folder(opts, &stats)?,
        Format::Wds => run_wds(opts, &stats)?,
    };
    summary.seconds = t0.elapsed().as_secs_f64();
    summary.add_stats(&stats);
    Ok(summary)
}

/// Runs `jobs` through RCDB's stages (the run's backend) and the shared pipeline into `sink`.
fn render(
    opts: &RcdbOptions,
    starts: &ClassStarts,
    group: u32,
    jobs: &dyn IndexedJobs,
    sink: &dyn Sink,
    stats: &Stats,
) -> Result<()> {
    let s = &opts.settings;
    let stages = RcdbStages {
        settings: s,
        starts,
        group,
        backend: opts.backend.clone(),
        quiet: opts.progress == progress::Mode::Quiet,
    };
    let ctx = Context {
        stages: &stages,
        image: super::image_format(s),
        png: opts.png,
    };
    pipeline::run(
        &ctx,
        &InOrder::new(jobs),
        sink,
        opts.threads,
        stats,
        &Abort::default(),
    )
}

fn run_folder(opts: &RcdbOptions, stats: &Arc<Stats>) -> Result<Summary> {
    let s = &opts.settings;
    let all = run_classes(s, opts.thread_num)?;
    let mine = rank_classes(all.clone(), opts.rank.rank, opts.rank.world);
    let out = &opts.out;
    fsutil::create_dir(out)?;
    // The slice of work that must not run twice: the original starts its --numof_thread processes
    // at once into one --save_root, each with its --thread_num; ranks split further.
    let slice = match opts.thread_num {
        Some(t) => format!("thread-{t:05}-of-{:05}-", s.processes),
        None => String::new(),
    };
    let _lock = fsutil::OutputLock::acquire(
        out,
        &format!(
            "rcdb-{slice}rank-{:05}-of-{:05}",
            opts.rank.rank, opts.rank.world
        ),
    )?;
    crate::sink::folder::check_or_write_settings(
        &out.join(RECORD),
        "RCDB folder",
        "--save_root",
        &fingerprint(s, opts.png),
        opts.rank.rank == 0,
    )?;
    fsutil::create_dir(&out.join("param"))?;
    fsutil::create_dir(&out.join("image"))?;
    fsutil::check_writable(out)?;
    for c in mine.clone() {
        let dir = out.join("image").join(format!("{c:05}"));
        fsutil::create_dir(&dir)?;
        fsutil::remove_stale_tmp(&dir);
    }
    let t0 = Instant::now();
    let classes: Vec<u32> = mine.clone().collect();
    let starts = class_starts(s, &classes, opts.threads.render, &|c, text| {
        write_if_changed(&param_path(out, c), text)
    })?;
    let replay_s = t0.elapsed().as_secs_f64();
    // Whole classes when there are enough to keep every thread busy (no replay inside a class);
    // else groups of instances, each replayed from its class's start.
    let group = if (mine.end - mine.start) as usize >= 4 * opts.threads.render {
        s.instances
    } else {
        group_size(s.instances)
    };
    let kept = Arc::new(AtomicU64::new(0));
    let total = (mine.end - mine.start) as u64 * s.instances as u64;
    let rep = progress::images(opts.progress, total, stats, &kept, Box::new(String::new));
    let jobs = FolderJobs {
        s,
        classes: mine,
        group,
        resume: opts.resume.then_some(out.as_path()),
        kept: &kept,
    };
    let sink = crate::sink::folder::FileSink {
        writers: opts.writers,
        path: |s: Sample| image_path(out, s.class, s.instance),
    };
    render(opts, &starts, group, &jobs, &sink, stats)?;
    drop(rep);
    Ok(Summary {
        skipped: kept.load(Ordering::Relaxed),
        chaos_s: replay_s,
        ..Summary::default()
    })
}

/// The shard layout of an RCDB dataset (order v2 over (class, group of instances) units) and its
/// group size.
pub fn shard_layout(opts: &RcdbOptions) -> (Layout, u32) {
    let s = &opts.settings;
    let group = group_size(s.instances);
    let layout = Layout::with_shape(
        s.made_classes() as u64,
        (0..s.instances / group).collect(),
        group,
        vec![super::FLIP],
        opts.samples_per_shard,
        opts.seed,
    );
    (layout, group)
}

/// The label names: the original's class folder names (`00000`, ...).
pub fn class_names(s: &Settings) -> Vec<String> {
    (0..s.made_classes()).map(|c| format!("{c:05}")).collect()
}

fn run_wds(opts: &RcdbOptions, stats: &Arc<Stats>) -> Result<Summary> {
    let s = &opts.settings;
    if opts.thread_num.is_some() {
        return Err(Error::flag(
            "--thread_num",
            "shards hold the whole dataset (every process's classes): split the work with ranks \
             (--rank/--world-size or the launcher's environment), or use --format folder",
        ));
    }
    if opts.samples_per_shard == 0 {
        return Err(Error::flag("--samples-per-shard", "must be at least 1"));
    }
    let (layout, group) = shard_layout(opts);
    let (rank, world) = (opts.rank.rank, opts.rank.world);
    let names = class_names(s);
    let (sink, todo) = WdsSink::open(
        WdsOptions {
            out: opts.out.clone(),
            prefix: opts.prefix.clone(),
            dali_index: opts.dali_index,
            writers: opts.writers,
            resume: opts.resume,
            meta: Arc::new(RcdbMeta {
                group,
                per_process: s.per_process(),
            }),
        },
        names.clone(),
        &layout,
        shard_fingerprint(opts, &layout),
        (rank, world),
    )?;
    write_class_list(&opts.out, &names, rank == 0)?;
    // The classes of this rank's blocks, and their streams' starts (with their parameter files).
    let mut classes: Vec<u32> = todo
        .blocks
        .iter()
        .flat_map(|&g| layout.block_clouds(g))
        .map(|q| layout.cloud(q).0)
        .collect();
    classes.sort_unstable();
    classes.dedup();
    let t0 = Instant::now();
    fsutil::create_dir(&opts.out.join("param"))?;
    let starts = class_starts(s, &classes, opts.threads.render, &|c, text| {
        write_if_changed(&param_path(&opts.out, c), text)
    })?;
    let replay_s = t0.elapsed().as_secs_f64();
    let todo_images: u64 = todo
        .shards
        .iter()
        .map(|&s| layout.shard_range(s).count() as u64)
        .sum();
    let ntodo = todo.shards.len();
    let written = sink.written.clone();
    let rep = progress::images(
        opts.progress,
        todo_images,
        stats,
        &Arc::new(AtomicU64::new(0)),
        Box::new(move || format!("shards {}/{ntodo}", written.load(Ordering::Relaxed))),
    );
    let jobs = crate::sink::wds::WdsJobs::new(&layout, &todo);
    render(opts, &starts, group, &jobs, &sink, stats)?;
    drop(rep);
    let m = sink.complete(&todo, world)?;
    Ok(Summary {
        skipped: todo.kept,
        shards: m.shards.len() as u64,
        bytes: m.shards.iter().map(|e| e.filesize).sum(),
        chaos_s: replay_s,
        ..Summary::default()
    })
}

/// `{out}/classes.txt`: the label names (`00000`, ...), as a FractalDB dataset lists its classes.
fn write_class_list(out: &Path, names: &[String], writer: bool) -> Result<()> {
    crate::sink::write_names(out, names, writer)
}
