//! `render`: the whole job from class CSVs to folders or shards, for this rank's part of the plan.

use crate::cluster::Rank;
use crate::error::{Error, Result};
use crate::fsutil;
use crate::pipeline::{self, Abort, Backend, CloudJob, Context, Stats, Target, Threads};
use crate::plan::{self, Permutation, Plan};
use crate::progress::{self, Reporter};
use crate::render::{PngConfig, RenderConfig};
use crate::rng::NumpyRandom;
use crate::sink::Format;
use crate::sink::folder::{self, FolderSink};
use crate::sink::wds::{self, Manifest, WdsOptions, WdsSink};
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
    /// Shards rendered together (each cloud is computed once per window).
    pub window: usize,
    pub rank: Rank,
    pub progress: progress::Mode,
    pub backend: Backend,
}

#[derive(Clone, Debug, Default)]
pub struct Summary {
    pub images: u64,
    pub skipped: u64,
    pub shards: u64,
    pub bytes: u64,
    pub seconds: f64,
    pub clouds: u64,
    /// Thread-seconds spent per stage (summed over the threads of that stage).
    pub chaos_s: f64,
    pub raster_s: f64,
    pub encode_s: f64,
    pub write_s: f64,
    /// GL only: seconds of device-to-host copies.
    pub readback_s: f64,
    /// CPU-seconds of the process during the run (filled in by the benchmark).
    pub cpu_s: f64,
}

impl Summary {
    pub fn images_per_second(&self) -> f64 {
        self.images as f64 / self.seconds.max(1e-9)
    }
}

/// The shared chaos-game sequence: `np.random.seed(100); np.random.random(iterations)`.
pub fn chaos_sequence(iterations: usize) -> Vec<f64> {
    NumpyRandom::seed(100).random_vec(iterations)
}

pub fn run(opts: &RenderOptions) -> Result<Summary> {
    opts.cfg.validate()?;
    if opts.instances == 0 {
        return Err(Error::flag("--instance", "must be at least 1"));
    }
    let classes = plan::load_classes(&opts.load_root)?;
    let instances = opts.cfg.instances(opts.instances);
    let plan = Plan::new(classes, &opts.weights, instances)?;
    let u = chaos_sequence(opts.cfg.iterations);
    let ctx = Context {
        backend: opts.backend.clone(),
        quiet: opts.progress == progress::Mode::Quiet,
        plan: &plan,
        cfg: &opts.cfg,
        png: opts.png,
        u: &u,
    };
    let stats = Arc::new(Stats::default());
    let t0 = Instant::now();
    let mut summary = match opts.format {
        Format::Folder => run_folder(opts, &ctx, &stats)?,
        Format::Wds => run_wds(opts, &ctx, &stats)?,
    };
    summary.seconds = t0.elapsed().as_secs_f64();
    summary.images = stats.images.load(Ordering::Relaxed);
    summary.clouds = stats.clouds.load(Ordering::Relaxed);
    let secs = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed) as f64 / 1e9;
    summary.chaos_s = secs(&stats.chaos_ns);
    summary.raster_s = secs(&stats.raster_ns);
    summary.encode_s = secs(&stats.encode_ns);
    summary.write_s = secs(&stats.write_ns);
    summary.readback_s = secs(&stats.readback_ns);
    if summary.bytes == 0 {
        summary.bytes = stats.png_bytes.load(Ordering::Relaxed);
    }
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
    let (s, kept) = (stats.clone(), kept.clone());
    Reporter::start(
        opts.progress,
        "images",
        total,
        Box::new(move || s.images.load(Ordering::Relaxed) + kept.load(Ordering::Relaxed)),
        extra,
    )
}

fn run_folder(opts: &RenderOptions, ctx: &Context, stats: &Arc<Stats>) -> Result<Summary> {
    let plan = ctx.plan;
    let mine: Vec<u32> = (0..plan.classes.len() as u32)
        .filter(|c| *c as u64 % opts.rank.world == opts.rank.rank)
        .collect();
    let sink = FolderSink::new(&opts.out, plan, &mine, opts.writers)?;
    let per_class = plan.weights.len() as u64 * plan.instances as u64 * plan::FLIPS;
    let mut summary = Summary::default();
    let kept = Arc::new(AtomicU64::new(0));
    let _rep = reporter(
        opts,
        per_class * mine.len() as u64,
        stats,
        &kept,
        Box::new(String::new),
    );
    let abort = Abort::default();
    // Classes in chunks, so the job list stays small for any number of classes.
    for chunk in mine.chunks(64) {
        let mut targets = Vec::new();
        for &c in chunk {
            let first = c as u64 * per_class;
            for id in first..first + per_class {
                let sample = plan.sample(id);
                if opts.resume && folder::image_path(&opts.out, plan, sample).is_file() {
                    kept.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                targets.push(Target {
                    sample,
                    pos: id,
                    shard: 0,
                });
            }
        }
        let jobs = pipeline::group_jobs(targets);
        pipeline::run(ctx, &jobs, &sink, opts.threads, stats, &abort)?;
    }
    summary.skipped = kept.load(Ordering::Relaxed);
    Ok(summary)
}

/// Everything that determines the shard bytes.
fn fingerprint(opts: &RenderOptions, plan: &Plan) -> serde_json::Value {
    let mut h = Sha256::new();
    for c in &plan.classes {
        h.update(c.name.as_bytes());
        h.update([0]);
        h.update(c.ifs.to_csv().as_bytes());
    }
    let classes: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    serde_json::json!({
        "format": "fractaldb-wds-v1",
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
    })
}

fn run_wds(opts: &RenderOptions, ctx: &Context, stats: &Arc<Stats>) -> Result<Summary> {
    let plan = ctx.plan;
    if opts.samples_per_shard == 0 {
        return Err(Error::flag("--samples-per-shard", "must be at least 1"));
    }
    if opts.prefix.is_empty() || opts.prefix.contains(['/', '.']) {
        return Err(Error::flag(
            "--prefix",
            "must be non-empty, without '/' or '.'",
        ));
    }
    fsutil::create_dir(&opts.out)?;
    fsutil::check_writable(&opts.out)?;
    let total = plan.total();
    let per = opts.samples_per_shard;
    let nshards = plan::shard_count(total, per);
    let (rank, world) = (opts.rank.rank, opts.rank.world);
    let config = fingerprint(opts, plan);
    let part = wds::part_path(&opts.out, &opts.prefix, rank, world);
    let mut manifest = Manifest {
        kind: "fractaldb-manifest-part-v1".into(),
        config: config.clone(),
        total_samples: total,
        samples_per_shard: per,
        shard_count: nshards,
        rank,
        world_size: world,
        shards: vec![],
    };
    let mine: Vec<u64> = (0..nshards).filter(|s| s % world == rank).collect();
    {
        // Only this rank's leftovers: other ranks may be writing into the same directory right now.
        let names: std::collections::HashSet<String> = mine
            .iter()
            .flat_map(|&s| {
                let tar = wds::shard_name(&opts.prefix, s);
                let idx = tar.replace(".tar", ".idx");
                [tar, idx]
            })
            .chain([part.file_name().unwrap().to_string_lossy().into_owned()])
            .collect();
        fsutil::remove_stale_tmp_of(&opts.out, |n| names.contains(n));
    }
    if opts.resume && part.exists() {
        let old = wds::read_manifest(&part)?;
        if old.config != config || old.total_samples != total || old.samples_per_shard != per {
            return Err(Error::input(
                &part,
                None,
                "--resume: this dataset was started with other settings (classes, weights, size, seed, ...); \
                 use the same flags or another --out",
            ));
        }
        manifest.shards = wds::verified_shards(&opts.out, &old);
    } else if !opts.resume {
        let existing = part.exists()
            || mine
                .iter()
                .any(|&s| opts.out.join(wds::shard_name(&opts.prefix, s)).exists());
        if existing {
            return Err(Error::input(
                &opts.out,
                None,
                "already holds shards of this prefix: pass --resume to complete them, or choose another --out/--prefix",
            ));
        }
    }
    let done: std::collections::HashSet<u64> = manifest.shards.iter().map(|e| e.shard).collect();
    let todo: Vec<u64> = mine.iter().copied().filter(|s| !done.contains(s)).collect();
    let skipped: u64 = mine
        .iter()
        .filter(|s| done.contains(s))
        .map(|&s| plan::shard_range(s, total, per).count() as u64)
        .sum();
    let sink = WdsSink::new(
        WdsOptions {
            out: opts.out.clone(),
            prefix: opts.prefix.clone(),
            dali_index: opts.dali_index,
            writers: opts.writers,
        },
        plan,
        manifest,
        opts.cfg.mode.name(),
        &opts.cfg.masks.to_string(),
    )?;
    // Record the part even before the first shard, so `finalize` can see this rank started.
    wds::write_json(&part, &sink.manifest())?;
    let perm = Permutation::new(total, opts.seed);
    let todo_images: u64 = todo
        .iter()
        .map(|&s| plan::shard_range(s, total, per).count() as u64)
        .sum();
    let shards_done = Arc::new(AtomicU64::new(0));
    let sd = shards_done.clone();
    let ntodo = todo.len();
    // The total counts only what is left, so nothing kept is added to the count.
    let none_kept = Arc::new(AtomicU64::new(0));
    let _rep = reporter(
        opts,
        todo_images,
        stats,
        &none_kept,
        Box::new(move || format!("shards {}/{ntodo}", sd.load(Ordering::Relaxed))),
    );
    let abort = Abort::default();
    for window in todo.chunks(opts.window.max(1)) {
        let mut targets = Vec::new();
        for &s in window {
            let range = plan::shard_range(s, total, per);
            sink.expect_shard(s, range.clone());
            for pos in range {
                targets.push(Target {
                    sample: plan.sample(perm.apply(pos)),
                    pos,
                    shard: s,
                });
            }
        }
        let jobs: Vec<CloudJob> = pipeline::group_jobs(targets);
        pipeline::run(ctx, &jobs, &sink, opts.threads, stats, &abort)?;
        shards_done.fetch_add(window.len() as u64, Ordering::Relaxed);
    }
    drop(_rep);
    let m = sink.manifest();
    let bytes = m.shards.iter().map(|e| e.filesize).sum();
    if world == 1 {
        match wds::finalize(&opts.out, &opts.prefix)? {
            Ok(_) => {}
            Err(missing) => {
                return Err(Error::Other(format!(
                    "internal: shards missing after a complete run: {missing:?}"
                )));
            }
        }
    }
    Ok(Summary {
        skipped,
        shards: m.shards.len() as u64,
        bytes,
        ..Summary::default()
    })
}
