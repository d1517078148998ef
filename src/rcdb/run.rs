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
use crate::dataset::{self, Dataset, Env, FolderUnit, FolderWork, Run, ShardSettings, ShardWork};
use crate::error::{Error, Result};
use crate::fsutil;
use crate::pipeline::Summary;
use crate::plan::{Layout, Sample};
use crate::render::{ImageFormat, PngConfig, Stages};
use crate::rng::PyRandom;
use crate::sink::Format;
use crate::sink::wds::SampleMeta;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Clone, Debug)]
pub struct RcdbOptions {
    pub settings: Settings,
    /// `--thread_num t`: only process t's classes.
    pub thread_num: Option<u32>,
    pub png: PngConfig,
    pub job: Run,
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

/// An image's file, relative to the output, without its extension.
pub fn image_stem(class: u32, instance: u32) -> PathBuf {
    Path::new("image")
        .join(format!("{class:05}"))
        .join(format!("{class:05}_{instance:04}"))
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

/// Every setting, by an exhaustive destructuring (a new one does not compile until placed); RCDB's
/// images are RGB whatever `gray` says, so only the level is recorded.
fn fingerprint_v1(s: &Settings, png: PngConfig) -> serde_json::Value {
    let Settings {
        image_size,
        vertex_num,
        perlin_min,
        line_width,
        radius_min,
        line_num_min,
        oval_rate,
        start_pos,
        classes,
        instances,
        processes,
    } = s;
    let PngConfig { level, gray: _ } = png;
    serde_json::json!({
        "kind": "rcdb-folder-v1",
        "image_size": image_size, "vertex_num": vertex_num,
        "perlin_min": perlin_min, "line_width": line_width,
        "radius_min": radius_min, "line_num_min": line_num_min,
        "oval_rate": oval_rate, "start_pos": start_pos,
        "numof_classes": classes, "numof_instances": instances,
        "numof_thread": processes,
        "png_level": level,
    })
}

pub const RECORD: &str = "rcdb.json";

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

/// The shard layout of an RCDB dataset (order v2 over (class, group of instances) units) and its
/// group size.
pub fn shard_layout(s: &Settings, sh: &ShardSettings) -> (Layout, u32) {
    let group = group_size(s.instances);
    let layout = Layout::with_shape(
        s.made_classes() as u64,
        (0..s.instances / group).collect(),
        group,
        vec![super::FLIP],
        sh.per_shard,
        sh.seed,
    );
    (layout, group)
}

/// The label names: the original's class folder names (`00000`, ...).
pub fn class_names(s: &Settings) -> Vec<String> {
    (0..s.made_classes()).map(|c| format!("{c:05}")).collect()
}

/// RCDB as a dataset: its settings and PNG level; `thread_num` (`--thread_num`) is the slice of the
/// original's processes this run makes (how a run goes, but it names the run's lock).
pub struct Rcdb {
    pub settings: Settings,
    pub png: PngConfig,
    pub thread_num: Option<u32>,
    /// Class starts another process found for these settings ([`Dataset::prepared`]), used
    /// instead of replaying the streams when no parameter files are to be written.
    pub given: Option<Arc<ClassStarts>>,
    /// The class starts the last preparation found.
    pub last: Mutex<Option<Arc<ClassStarts>>>,
}

impl Rcdb {
    pub fn new(settings: Settings, png: PngConfig, thread_num: Option<u32>) -> Self {
        Rcdb {
            settings,
            png,
            thread_num,
            given: None,
            last: Mutex::default(),
        }
    }

    /// `given` from [`Dataset::prepared`]'s JSON; an error when it is not one of these settings.
    pub fn with_prepared(mut self, v: &serde_json::Value) -> Result<Self> {
        let bad =
            || Error::Other("internal: a preparation of other settings was handed over".into());
        if v.get("settings").and_then(|s| s.as_str()) != Some(&format!("{:?}", self.settings)) {
            return Err(bad());
        }
        let mut starts = ClassStarts::new();
        for entry in v
            .get("class_starts")
            .and_then(|a| a.as_array())
            .ok_or_else(bad)?
        {
            let (class, words, idx): (u32, Vec<u32>, usize) =
                serde_json::from_value(entry.clone()).map_err(|_| bad())?;
            starts.insert(class, PyRandom::from_state(&words, idx).ok_or_else(bad)?);
        }
        self.given = Some(Arc::new(starts));
        Ok(self)
    }
}

impl RcdbOptions {
    /// What the bytes are ([`Rcdb`]) and how this run goes ([`Run`]), every option on one side;
    /// settings and flag combinations are checked here, before anything is written.
    pub fn split(&self) -> Result<(Rcdb, Run)> {
        let RcdbOptions {
            settings,
            thread_num,
            png,
            job,
        } = self;
        settings.validate()?;
        run_classes(settings, *thread_num)?;
        if thread_num.is_some() && job.format == Format::Wds {
            return Err(Error::flag(
                "--thread_num",
                "shards hold the whole dataset (every process's classes): split the work with ranks \
                 (--rank/--world-size or the launcher's environment), or use --format folder",
            ));
        }
        let ds = Rcdb::new(settings.clone(), *png, *thread_num);
        Ok((ds, job.clone()))
    }
}

pub fn run(opts: &RcdbOptions) -> Result<Summary> {
    let (ds, job) = opts.split()?;
    dataset::run(&ds, &job)
}

impl Rcdb {
    /// The stages for `classes` (ascending): each class's stream start, found by replaying its
    /// process's stream, its parameter file written into `env.out` on the way.
    fn stages(&self, classes: &[u32], group: u32, env: &Env) -> Result<RcdbStages> {
        let s = &self.settings;
        if let Some(out) = &env.out {
            fsutil::create_dir(&out.join("param"))?;
        }
        let starts = match &self.given {
            // Handed over (a spawned DataLoader worker's dataset): no replay, nothing to write.
            Some(g) if env.out.is_none() && classes.iter().all(|c| g.contains_key(c)) => {
                classes.iter().map(|c| (*c, g[c].clone())).collect()
            }
            _ => class_starts(s, classes, env.threads, &|c, text| match &env.out {
                Some(out) => write_if_changed(&param_path(out, c), text),
                None => Ok(()),
            })?,
        };
        *self.last.lock().unwrap() = Some(Arc::new(starts.clone()));
        Ok(RcdbStages {
            settings: s.clone(),
            starts,
            group,
            backend: env.backend.clone(),
            quiet: env.quiet,
        })
    }
}

impl Dataset for Rcdb {
    fn kind(&self) -> &'static str {
        "rcdb"
    }
    /// The class starts (each a stream's state: 2.5 KB), so that another process's dataset of the
    /// same settings does not replay the streams again (RCDB-1k: ~9 s on one thread).
    fn prepared(&self) -> Option<serde_json::Value> {
        let last = self.last.lock().unwrap();
        let mut starts: Vec<_> = last.as_ref()?.iter().collect();
        starts.sort_by_key(|(c, _)| **c);
        let starts: Vec<_> = starts
            .into_iter()
            .map(|(c, r)| {
                let (words, idx) = r.state();
                serde_json::json!([c, words, idx])
            })
            .collect();
        Some(serde_json::json!({
            "settings": format!("{:?}", self.settings),
            "class_starts": starts,
        }))
    }
    fn title(&self) -> &'static str {
        "RCDB"
    }
    /// The original's class folder names (`00000`, ...).
    fn class_names(&self) -> Vec<String> {
        class_names(&self.settings)
    }
    fn image(&self) -> ImageFormat {
        super::image_format(&self.settings)
    }
    fn png(&self) -> PngConfig {
        self.png
    }
    fn folder_fingerprint(&self) -> serde_json::Value {
        fingerprint(&self.settings, self.png)
    }
    fn memory(&self, format: Format) -> (crate::memory::Estimate, &'static str) {
        (dataset::image_memory(self, format), "--image_size")
    }
    fn shard_fingerprint(&self, sh: &ShardSettings) -> serde_json::Value {
        let ShardSettings {
            per_shard: _,
            seed,
            prefix,
            dali_index: _,
        } = sh;
        let mut v = fingerprint(&self.settings, self.png);
        let m = v.as_object_mut().unwrap();
        m.insert("kind".into(), "rcdb-wds-v1".into());
        m.insert("order".into(), crate::plan::ORDER_VERSION.into());
        m.insert("encoder".into(), crate::render::ENCODER.into());
        m.insert("group".into(), group_size(self.settings.instances).into());
        m.insert("seed".into(), (*seed).into());
        m.insert("prefix".into(), prefix.clone().into());
        v
    }
    /// The original starts its --numof_thread processes at once into one --save_root, each with
    /// its --thread_num: a slice each.
    fn slice(&self) -> String {
        match self.thread_num {
            Some(t) => format!("thread-{t:05}-of-{:05}-", self.settings.processes),
            None => String::new(),
        }
    }
    fn folder<'a>(&'a self, rank: &Rank, env: &Env) -> Result<Box<dyn FolderWork + 'a>> {
        let s = &self.settings;
        let all = run_classes(s, self.thread_num)?;
        let classes = rank_classes(all, rank.rank, rank.world.max(1));
        // Whole classes when there are enough to keep every thread busy (no replay inside a
        // class); else groups of instances, each replayed from its class's start.
        let group = if (classes.end - classes.start) as usize >= 4 * env.threads {
            s.instances
        } else {
            group_size(s.instances)
        };
        Ok(Box::new(RcdbFolder {
            ds: self,
            classes,
            group,
            env: env.clone(),
        }))
    }
    fn shards<'a>(&'a self, sh: &ShardSettings, env: &Env) -> Result<Box<dyn ShardWork + 'a>> {
        let (layout, group) = shard_layout(&self.settings, sh);
        Ok(Box::new(RcdbShards {
            ds: self,
            layout,
            group,
            env: env.clone(),
        }))
    }
}

/// This rank's stretch of the run's classes, one unit per (class, group of instances).
struct RcdbFolder<'a> {
    ds: &'a Rcdb,
    classes: std::ops::Range<u32>,
    group: u32,
    env: Env,
}

impl FolderWork for RcdbFolder<'_> {
    fn dirs(&self) -> Vec<PathBuf> {
        let class_dir = |c| Path::new("image").join(format!("{c:05}"));
        self.classes.clone().map(class_dir).collect()
    }
    fn units(&self) -> u64 {
        let groups = self.ds.settings.instances / self.group;
        (self.classes.end - self.classes.start) as u64 * groups as u64
    }
    fn unit(&self, i: u64) -> FolderUnit {
        let instances = self.ds.settings.instances;
        let groups = (instances / self.group) as u64;
        let class = self.classes.start + (i / groups) as u32;
        let row = (i % groups) as u32;
        let images = (0..self.group)
            .map(|k| {
                let instance = row * self.group + k;
                let sample = Sample {
                    class,
                    row,
                    instance,
                    flip: super::FLIP,
                };
                let pos = class as u64 * instances as u64 + instance as u64;
                (k, super::FLIP, sample, pos)
            })
            .collect();
        FolderUnit { class, row, images }
    }
    fn path(&self, s: Sample) -> PathBuf {
        image_stem(s.class, s.instance)
    }
    fn images(&self) -> u64 {
        (self.classes.end - self.classes.start) as u64 * self.ds.settings.instances as u64
    }
    fn stages(&self) -> Result<Box<dyn Stages + Send + '_>> {
        let classes: Vec<u32> = self.classes.clone().collect();
        Ok(Box::new(self.ds.stages(&classes, self.group, &self.env)?))
    }
}

/// The shards: order v2 over (class, group of instances) units.
struct RcdbShards<'a> {
    ds: &'a Rcdb,
    layout: Layout,
    group: u32,
    env: Env,
}

impl ShardWork for RcdbShards<'_> {
    fn layout(&self) -> &Layout {
        &self.layout
    }
    fn meta(&self, _epoch: u64) -> Arc<dyn SampleMeta> {
        Arc::new(RcdbMeta {
            group: self.group,
            per_process: self.ds.settings.per_process(),
        })
    }
    fn stages(&self, clouds: Option<&[u64]>) -> Result<Box<dyn Stages + Send + '_>> {
        let mut classes: Vec<u32> = match clouds {
            Some(q) => q.iter().map(|&q| self.layout.cloud(q).0).collect(),
            None => (0..self.ds.settings.made_classes()).collect(),
        };
        classes.sort_unstable();
        classes.dedup();
        Ok(Box::new(self.ds.stages(&classes, self.group, &self.env)?))
    }
}
