//! `render`: the whole job from class CSVs to folders or shards, for this rank's part of the plan.

use crate::cluster::Rank;
use crate::error::{Error, Result};
use crate::pipeline::{
    self, Abort, Context, InOrder, IndexedJobs, Job, Stats, Summary, Target, Threads,
};
use crate::plan::{self, Layout, Plan};
use crate::progress::{self, Reporter};
use crate::render::{Backend, FractalStages, PngConfig, RenderConfig};
use crate::rng::NumpyRandom;
use crate::sink::Format;
use crate::sink::folder::{self, FolderSink};
use crate::sink::wds::{self, WdsJobs, WdsOptions, WdsSink};
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

#[derive(Clone, Debug)]
pub struct RenderOptions {
    pub load_root: PathBuf,
    pub out: PathBuf,
    /// A weights CSV path, or `builtin:S`.
    pub weights: String,
    pub cfg: RenderConfig,
    pub instances: u32,
    pub png: PngConfig,
    pub format: Format,
    /// Seed of the sample order (WebDataset shards).
    pub seed: u64,
    pub samples_per_shard: u64,
    pub prefix: String,
    pub dali_index: bool,
    pub resume: bool,
    pub threads: Threads,
    pub writers: usize,
    /// `--weight-rows` and `--flips` selections (all when `None`).
    pub weight_rows: Option<String>,
    pub flips: Option<String>,
    pub rank: Rank,
    pub progress: progress::Mode,
    pub backend: Backend,
}

/// The shared chaos-game sequence: `np.random.seed(100); np.random.random(iterations)`.
pub fn chaos_sequence(iterations: usize) -> Vec<f64> {
    NumpyRandom::seed(100).random_vec(iterations)
}

/// The plan of a render (or a service): checked geometry, the classes, weights and selections.
pub fn load_plan(opts: &RenderOptions) -> Result<Plan> {
    opts.cfg.validate()?;
    if opts.instances == 0 {
        return Err(Error::flag("--instance", "must be at least 1"));
    }
    let classes = plan::load_classes(&opts.load_root)?;
    let mut plan = Plan::new(classes, &opts.weights, opts.cfg.instances(opts.instances))?;
    plan.select(opts.weight_rows.as_deref(), opts.flips.as_deref())?;
    Ok(plan)
}

pub fn run(opts: &RenderOptions) -> Result<Summary> {
    let plan = load_plan(opts)?;
    let u = chaos_sequence(opts.cfg.iterations);
    let stages = FractalStages {
        backend: opts.backend.clone(),
        quiet: opts.progress == progress::Mode::Quiet,
        plan: &plan,
        cfg: &opts.cfg,
        u: &u,
    };
    let ctx = Context {
        stages: &stages,
        image: stages.image(),
        png: opts.png,
    };
    let stats = Arc::new(Stats::default());
    let t0 = Instant::now();
    let mut summary = match opts.format {
        Format::Folder => run_folder(opts, &plan, &ctx, &stats)?,
        Format::Wds => run_wds(opts, &plan, &ctx, &stats)?,
    };
    summary.seconds = t0.elapsed().as_secs_f64();
    summary.add_stats(&stats);
    Ok(summary)
}

/// The progress display: `kept` counts images that were already there (resume) against the total.
fn reporter(
    opts: &RenderOptions,
    total: u64,
    stats: &Arc<Stats>,
    kept: &Arc<AtomicU64>,
    extra: Box<dyn Fn() -> String + Send>,
) -> Reporter {
    progress::images(opts.progress, total, stats, kept, extra)
}

/// Folder output: this rank's classes, one job per (class, row), skipping images already there
/// on `--resume`.
struct FolderJobs<'a> {
    plan: &'a Plan,
    classes: Vec<u32>,
    /// With `--resume`, the root to look for existing images in; kept images must be whole PNGs of
    /// this (width, height, gray) geometry, the others are drawn again.
    resume: Option<&'a std::path::Path>,
    geometry: (u32, u32, bool),
    kept: &'a AtomicU64,
}

impl IndexedJobs for FolderJobs<'_> {
    fn count(&self) -> u64 {
        self.classes.len() as u64 * self.plan.rows.len() as u64
    }
    fn job(&self, i: u64) -> Job {
        let rows = self.plan.rows.len() as u64;
        let class = self.classes[(i / rows) as usize];
        let (w, h, gray) = self.geometry;
        let row = self.plan.rows[(i % rows) as usize];
        let per_cloud = self.plan.per_cloud();
        let first = self.plan.id(plan::Sample {
            class,
            row,
            instance: 0,
            flip: self.plan.flips[0],
        });
        let plan = self.plan;
        pipeline::job_of(
            class,
            row,
            (first..first + per_cloud).filter_map(|id| {
                let sample = plan.sample(id);
                if let Some(root) = self.resume
                    && folder::image_is_whole(&folder::image_path(root, plan, sample), w, h, gray)
                {
                    self.kept.fetch_add(1, Ordering::Relaxed);
                    return None;
                }
                Some((
                    sample.instance,
                    sample.flip,
                    Target {
                        sample,
                        pos: id,
                        shard: 0,
                    },
                ))
            }),
        )
    }
}

fn run_folder(
    opts: &RenderOptions,
    plan: &Plan,
    ctx: &Context,
    stats: &Arc<Stats>,
) -> Result<Summary> {
    let mine: Vec<u32> = (0..plan.classes.len() as u32)
        .filter(|c| *c as u64 % opts.rank.world == opts.rank.rank)
        .collect();
    let record = folder::Record {
        kind: "fractaldb-folder-v1".into(),
        config: fingerprint(opts, plan, false),
        classes: plan.classes.iter().map(|c| c.name.clone()).collect(),
        rows: plan.rows.clone(),
        flips: plan.flips.clone(),
        instances: plan.instances,
        width: opts.cfg.width,
        height: opts.cfg.height,
        gray: opts.png.gray,
    };
    crate::fsutil::create_dir(&opts.out)?;
    let _lock = crate::fsutil::OutputLock::acquire(
        &opts.out,
        &format!(
            "folder-rank-{:05}-of-{:05}",
            opts.rank.rank, opts.rank.world
        ),
    )?;
    let writer = opts.rank.rank == 0;
    folder::check_or_write_record(&opts.out, &record, writer)?;
    crate::sink::write_class_list(&opts.out, plan, writer)?;
    let sink = FolderSink::new(&opts.out, plan, &mine, opts.writers)?;
    let per_class = plan.rows.len() as u64 * plan.per_cloud();
    let kept = Arc::new(AtomicU64::new(0));
    let _rep = reporter(
        opts,
        per_class * mine.len() as u64,
        stats,
        &kept,
        Box::new(String::new),
    );
    let jobs = FolderJobs {
        plan,
        classes: mine,
        resume: opts.resume.then_some(opts.out.as_path()),
        geometry: (opts.cfg.width, opts.cfg.height, opts.png.gray),
        kept: &kept,
    };
    pipeline::run(
        ctx,
        &InOrder::new(&jobs),
        &sink,
        opts.threads,
        stats,
        &Abort::default(),
    )?;
    Ok(Summary {
        skipped: kept.load(Ordering::Relaxed),
        ..Summary::default()
    })
}

/// The identity of the PNG encoder: the shard bytes depend on it.
pub use crate::render::ENCODER;

/// Everything that determines the shard bytes (`shards`), or a folder dataset's images.
/// The version of FractalDB's bytes (its images; tar members with the order version). 1, and then
/// not recorded, so that the records of releases before it still resume; a rule that changes the
/// bytes bumps it, and from 2 on it is recorded (`tests/render.rs` pins a tiny dataset's digest
/// beside it).
pub const VERSION: u32 = 1;

pub(crate) fn fingerprint(opts: &RenderOptions, plan: &Plan, shards: bool) -> serde_json::Value {
    let mut h = Sha256::new();
    for c in &plan.classes {
        h.update(c.name.as_bytes());
        h.update([0]);
        h.update(c.ifs.to_csv().as_bytes());
    }
    let classes: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    let mut v = serde_json::json!({
        "format": "fractaldb-wds-v1",
        "order": plan::ORDER_VERSION,
        "encoder": ENCODER,
        "classes": plan.classes.len(),
        "classes_sha256": classes,
        "weights": plan.weights.iter().map(|r| r.to_vec()).collect::<Vec<_>>(),
        "width": opts.cfg.width, "height": opts.cfg.height,
        "pad_x": opts.cfg.pad_x, "pad_y": opts.cfg.pad_y,
        "iterations": opts.cfg.iterations,
        "draw_type": opts.cfg.mode.name(),
        "masks": opts.cfg.masks.to_string(),
        "instances": plan.instances,
        "seed": opts.seed,
        "png_level": opts.png.level, "png_gray": opts.png.gray,
        "prefix": opts.prefix,
    });
    let m = v.as_object_mut().unwrap();
    #[allow(clippy::absurd_extreme_comparisons)]
    if VERSION > 1 {
        m.insert("version".into(), VERSION.into());
    }
    // Selections and splits only when not the default, so default runs keep their fingerprint.
    if plan.rows.len() != plan.weights.len() {
        m.insert("weight_rows".into(), serde_json::json!(plan.rows));
    }
    if plan.flips.len() as u64 != plan::FLIPS {
        m.insert("flips".into(), serde_json::json!(plan.flips));
    }
    if !shards {
        // Folder images do not depend on the shard order, the seed's order part or the prefix.
        let m = v.as_object_mut().unwrap();
        for k in ["format", "order", "prefix", "seed"] {
            m.remove(k);
        }
        m.insert("format".into(), "fractaldb-folder-v1".into());
    }
    v
}

fn run_wds(
    opts: &RenderOptions,
    plan: &Plan,
    ctx: &Context,
    stats: &Arc<Stats>,
) -> Result<Summary> {
    if opts.samples_per_shard == 0 {
        return Err(Error::flag("--samples-per-shard", "must be at least 1"));
    }
    let layout = Layout::new(plan, opts.samples_per_shard, opts.seed);
    let (rank, world) = (opts.rank.rank, opts.rank.world);
    let (sink, todo) = WdsSink::open(
        WdsOptions {
            out: opts.out.clone(),
            prefix: opts.prefix.clone(),
            dali_index: opts.dali_index,
            writers: opts.writers,
            resume: opts.resume,
            meta: Arc::new(wds::FractalMeta {
                draw_type: opts.cfg.mode.name().to_string(),
                masks: opts.cfg.masks.to_string(),
            }),
        },
        plan.classes.iter().map(|c| c.name.clone()).collect(),
        &layout,
        fingerprint(opts, plan, true),
        (rank, world),
    )?;
    crate::sink::write_class_list(&opts.out, plan, rank == 0)?;
    let todo_images: u64 = todo
        .shards
        .iter()
        .map(|&s| layout.shard_range(s).count() as u64)
        .sum();
    let ntodo = todo.shards.len();
    let written = sink.written.clone();
    // The total counts only what is left, so nothing kept is added to the count.
    let none_kept = Arc::new(AtomicU64::new(0));
    let _rep = reporter(
        opts,
        todo_images,
        stats,
        &none_kept,
        Box::new(move || format!("shards {}/{ntodo}", written.load(Ordering::Relaxed))),
    );
    let jobs = WdsJobs::new(&layout, &todo);
    pipeline::run(
        ctx,
        &InOrder::new(&jobs),
        &sink,
        opts.threads,
        stats,
        &Abort::default(),
    )?;
    drop(_rep);
    let m = sink.complete(&todo, world)?;
    let bytes = m.shards.iter().map(|e| e.filesize).sum();
    Ok(Summary {
        skipped: todo.kept,
        shards: m.shards.len() as u64,
        bytes,
        ..Summary::default()
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn encoder_identity_names_the_deflate_crate_in_cargo_lock() {
        let lock = include_str!("../Cargo.lock");
        let key = "name = \"zlib-rs\"\nversion = \"";
        let i = lock.find(key).expect("zlib-rs in Cargo.lock");
        let v = &lock[i + key.len()..];
        let v = &v[..v.find('"').unwrap()];
        let minor: String = v.split('.').take(2).collect::<Vec<_>>().join(".");
        assert!(
            super::ENCODER.starts_with(&format!("zlib-rs-{minor} ")),
            "ENCODER {} but Cargo.lock has zlib-rs {v}: update ENCODER (shard bytes may change)",
            super::ENCODER
        );
    }
}
