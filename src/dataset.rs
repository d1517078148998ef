//! A dataset as a type. [`Dataset`] is what the bytes are: a family's settings as one recorded
//! fingerprint, its classes, image format and encoding, its folder work (this rank's units and
//! their files) and its shard work (the layout, a sample's `.json`, the render stages of any set of
//! the layout's clouds). [`Run`] is how one run goes: output and format, shard settings, ranks,
//! threads, writers, backend, resume, progress. [`run`] is the one folder driver and the one shard
//! driver of every family (lock, settings record, resume, pipeline, manifest parts, indexes), and
//! `serve` serves any dataset's [`ShardWork`].
//!
//! A family implements [`Dataset`] in its own module (FractalDB: `generate`, RCDB: `rcdb::run`,
//! MV-FractalDB: `mvfdb::run`); `tests/toy.rs` shows the whole of a family outside the crate.

use crate::cluster::Rank;
use crate::encode::Encoding;
use crate::error::{Error, Result};
use crate::fsutil;
use crate::memory::Estimate;
use crate::pipeline::{
    self, Abort, Context, InOrder, IndexedJobs, Job, Stats, Summary, Target, Threads,
};
use crate::plan::{Layout, Sample};
use crate::progress;
use crate::render::{Backend, ImageFormat, PngConfig, Stages};
use crate::sink::Format;
use crate::sink::wds::{self, SampleMeta, WdsJobs, WdsOptions, WdsSink};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Shard settings: the most samples per shard, the order's seed, the file names' prefix, DALI index
/// files. The seed and the prefix are part of the shard bytes (the shard fingerprint holds them).
#[derive(Clone, Debug)]
pub struct ShardSettings {
    pub per_shard: u64,
    pub seed: u64,
    pub prefix: String,
    pub dali_index: bool,
}

/// How one run goes: nothing here changes the bytes of an image or a shard.
#[derive(Clone, Debug)]
pub struct Run {
    pub out: PathBuf,
    pub format: Format,
    pub shards: ShardSettings,
    pub resume: bool,
    pub threads: Threads,
    pub writers: usize,
    pub rank: Rank,
    pub progress: progress::Mode,
    pub backend: Backend,
    /// The images' encoding: the one setting here that changes bytes, so the drivers add it to
    /// every fingerprint (see [`crate::encode`]).
    pub encoding: Encoding,
}

impl Default for Run {
    /// Folders in the current directory, one thread, the CPU engine, PNG, one process, quiet.
    fn default() -> Self {
        Run {
            out: PathBuf::from("."),
            format: Format::Folder,
            shards: ShardSettings {
                per_shard: 10_000,
                seed: 0,
                prefix: "fractaldb".into(),
                dali_index: false,
            },
            resume: false,
            threads: Threads {
                render: 1,
                encode: 1,
                queue: 2,
            },
            writers: 1,
            rank: Rank::default(),
            progress: progress::Mode::Quiet,
            backend: Backend::Cpu,
            encoding: Encoding::Png,
        }
    }
}

impl Run {
    /// What a dataset's preparation and stages get of this run; `write`: side files (parameter
    /// files, models) go into the output.
    pub fn env(&self, write: bool) -> Env {
        Env {
            out: write.then(|| self.out.clone()),
            writer: self.rank.rank == 0,
            threads: self.threads.render,
            backend: self.backend.clone(),
            quiet: self.progress == progress::Mode::Quiet,
        }
    }
}

/// What a dataset's preparation and render stages need of a run.
#[derive(Clone, Debug)]
pub struct Env {
    /// Where side files go (RCDB's and MV-FractalDB's parameter files, models); `None` writes
    /// nothing (the service).
    pub out: Option<PathBuf>,
    /// This run writes the side files every rank shares (rank 0); the others leave them alone,
    /// since ranks run at once into one output.
    pub writer: bool,
    /// CPU threads for preparation and the CPU engine.
    pub threads: usize,
    pub backend: Backend,
    /// No device line or warnings from the stages.
    pub quiet: bool,
}

/// One unit of folder work: a (class, row) unit and its images, each (instance, flip, sample,
/// position): the position orders the images (and spreads them over the writers).
pub struct FolderUnit {
    pub class: u32,
    pub row: u32,
    pub images: Vec<(u32, u8, Sample, u64)>,
}

/// A dataset family: what the bytes are. Everything here follows from the settings the family was
/// made with; nothing depends on how a run goes.
pub trait Dataset: Sync {
    /// Lower-case name in records, locks and the settings record's file name (`{kind}.json`).
    fn kind(&self) -> &'static str;
    /// The family's name in messages.
    fn title(&self) -> &'static str;
    /// Label names, by label index (`classes.txt`, the `.cls` of a sample).
    fn class_names(&self) -> Vec<String>;
    /// Canvas size and the colour of each canvas value.
    fn image(&self) -> ImageFormat;
    fn png(&self) -> PngConfig;
    /// Every setting that decides a folder dataset's files (derived from the family's settings by
    /// an exhaustive destructuring; input files by the digest of their content), with the family's
    /// version of its bytes.
    fn folder_fingerprint(&self) -> serde_json::Value;
    /// The same for shards, with the order, the encoder and the shard settings that decide bytes.
    fn shard_fingerprint(&self, sh: &ShardSettings) -> serde_json::Value;
    /// Checks the folder's settings record against `config` (the folder fingerprint with the
    /// run's encoding) before anything is written; the `writer` rank writes it when absent, and
    /// the label list (`classes.txt`). Default: `{out}/{kind}.json` holds `config`.
    fn check_folder_record(
        &self,
        out: &Path,
        config: &serde_json::Value,
        writer: bool,
    ) -> Result<()> {
        crate::sink::folder::check_or_write_settings(
            &out.join(format!("{}.json", self.kind())),
            &format!("{} folder", self.title()),
            "--save_root",
            config,
            writer,
        )?;
        // Slices started together are each a writer: one at a time (a writer's clean-up of a
        // killed run's temporary must not take another's live one).
        let _lock = crate::sink::folder::short_lock(out);
        crate::sink::write_names(out, &self.class_names(), writer)
    }
    /// What its last preparation found that another process may be handed instead of preparing
    /// again (MV-FractalDB's search and model pass, RCDB's class starts), as JSON; `None`: nothing
    /// worth handing over.
    fn prepared(&self) -> Option<serde_json::Value> {
        None
    }
    /// Which slice of the work this run is beyond its rank, in the lock's name (RCDB's
    /// `--thread_num`): two runs of one slice never run at once, other slices do.
    fn slice(&self) -> String {
        String::new()
    }
    /// Why epoch `epoch` (the service, `set_epoch`) cannot be made, if it cannot.
    fn epoch_refusal(&self, epoch: u64) -> Option<String> {
        (epoch != 0).then(|| {
            format!(
                "{} has no instance key: its images come from fixed streams, so every epoch would \
                 hold the same images; use epoch 0",
                self.title()
            )
        })
    }
    /// What a run needs of memory (what every run holds, and what each render thread adds) and
    /// the flags that drive it. Default: from the image size alone (canvases, pixels and encoded
    /// images in flight per thread).
    fn memory(&self, format: Format) -> (Estimate, &'static str) {
        (image_memory(self, format), "the image size")
    }
    /// This rank's part of a folder dataset, prepared (side files written into `env.out`).
    fn folder<'a>(&'a self, rank: &Rank, env: &Env) -> Result<Box<dyn FolderWork + 'a>>;
    /// The shard work of the whole dataset, prepared up to what every set of clouds shares.
    fn shards<'a>(&'a self, sh: &ShardSettings, env: &Env) -> Result<Box<dyn ShardWork + 'a>>;
}

/// A rank's part of a folder dataset.
pub trait FolderWork: Sync {
    /// The folders its images go into, relative to the output (made, and cleared of a killed run's
    /// temporary files, before drawing): this run's alone, since other slices and ranks may be
    /// writing beside it.
    fn dirs(&self) -> Vec<PathBuf>;
    /// Its units, by index in order.
    fn units(&self) -> u64;
    fn unit(&self, i: u64) -> FolderUnit;
    /// Where a sample's image goes, relative to the output, without the encoding's extension.
    fn path(&self, s: Sample) -> PathBuf;
    /// Images in all its units.
    fn images(&self) -> u64;
    /// The render stages of its units (any preparation left, e.g. RCDB's replays, done here).
    fn stages(&self) -> Result<Box<dyn Stages + Send + '_>>;
}

/// A dataset's shards: the layout, the samples' metadata, the render stages of any clouds.
pub trait ShardWork: Sync {
    fn layout(&self) -> &Layout;
    /// The `.json` of each sample in epoch `epoch`.
    fn meta(&self, epoch: u64) -> Arc<dyn SampleMeta>;
    /// The render stages for the layout's clouds `clouds` (ascending; `None`: all of them), after
    /// what they need of preparation.
    fn stages(&self, clouds: Option<&[u64]>) -> Result<Box<dyn Stages + Send + '_>>;
}

/// The default estimate of [`Dataset::memory`]: canvases, pixels and encoded images in flight per
/// render thread, from the image size alone.
pub fn image_memory(ds: &(impl Dataset + ?Sized), format: Format) -> Estimate {
    let image = ds.image();
    crate::memory::render_estimate(crate::memory::RenderShape {
        iterations: 0,
        width: image.width as u64,
        height: image.height as u64,
        channels: 3,
        png_level: ds.png().level,
        images_per_cloud: 1,
        python_masks: false,
        shards: format == Format::Wds,
    })
}

/// Makes this rank's part of `ds` as `job` says: folders or shards.
pub fn run(ds: &dyn Dataset, job: &Run) -> Result<Summary> {
    let job = &fit_memory(ds, job)?;
    let t0 = Instant::now();
    let stats = Arc::new(Stats::default());
    let mut summary = fsutil::tidy_on_error(&job.out, || match job.format {
        Format::Folder => run_folder(ds, job, &stats),
        Format::Wds => run_shards(ds, job, &stats),
    })?;
    summary.seconds = t0.elapsed().as_secs_f64();
    summary.add_stats(&stats);
    Ok(summary)
}

/// The job with as many render threads as the memory this process may use holds (fewer when that
/// fits, a refusal naming the flags when not even one does), before anything is written or
/// allocated.
pub fn fit_memory(ds: &dyn Dataset, job: &Run) -> Result<Run> {
    let (est, flags) = ds.memory(job.format);
    let avail = crate::memory::available();
    let threads = job.threads.render;
    let fit = crate::memory::fit_threads(est, threads, &avail, flags)?;
    let mut job = job.clone();
    if fit < threads {
        crate::say!(
            "note: {threads} threads would need about {:.1} GiB, {:.1} GiB is available ({}): using {fit}",
            est.total(threads) as f64 / (1u64 << 30) as f64,
            avail.bytes as f64 / (1u64 << 30) as f64,
            avail.source
        );
        job.threads = Threads {
            render: fit,
            encode: fit.min(job.threads.encode),
            queue: 2 * fit,
        };
    }
    Ok(job)
}

/// The lock of this rank's slice of a dataset in `out`.
fn slice_lock(ds: &dyn Dataset, out: &Path, rank: &Rank) -> Result<fsutil::OutputLock> {
    fsutil::OutputLock::acquire(out, &slice_name(ds, rank))
}

/// The name of a run's slice of a folder (its lock, its `SHA256SUMS` part).
fn slice_name(ds: &dyn Dataset, rank: &Rank) -> String {
    format!(
        "{}-{}rank-{:05}-of-{:05}",
        ds.kind(),
        ds.slice(),
        rank.rank,
        rank.world.max(1)
    )
}

/// A file name with the encoding's extension.
pub(crate) fn with_extension(rel: PathBuf, encoding: Encoding) -> PathBuf {
    let mut s = rel.into_os_string();
    s.push(".");
    s.push(encoding.extension());
    PathBuf::from(s)
}

/// The folder driver: lock, settings record, folders, resume, pipeline.
fn run_folder(ds: &dyn Dataset, job: &Run, stats: &Arc<Stats>) -> Result<Summary> {
    let out = job.out.as_path();
    fsutil::create_dir(out)?;
    let _lock = slice_lock(ds, out, &job.rank)?;
    let mut config = ds.folder_fingerprint();
    job.encoding.record(&mut config);
    ds.check_folder_record(out, &config, job.rank.rank == 0)?;
    fsutil::remove_stale_tmp_of(out, |_| false); // a killed run's writability probe
    fsutil::check_writable(out)?;
    let work = ds.folder(&job.rank, &job.env(true))?;
    for d in work.dirs() {
        let dir = out.join(d);
        fsutil::create_dir(&dir)?;
        fsutil::remove_stale_tmp(&dir);
    }
    let t0 = Instant::now();
    let stages = work.stages()?;
    let prepare_s = t0.elapsed().as_secs_f64();
    let kept = Arc::new(AtomicU64::new(0));
    let _rep = progress::images(
        job.progress,
        work.images(),
        stats,
        &kept,
        Box::new(String::new),
    );
    let jobs = FolderJobs {
        work: &*work,
        out,
        resume: job.resume,
        image: ds.image(),
        png: ds.png(),
        encoding: job.encoding,
        kept: &kept,
    };
    let sums = crate::sink::sums::SumsPart::open(out, &slice_name(ds, &job.rank))?;
    let sink = crate::sink::folder::FileSink {
        writers: job.writers,
        out,
        rel: |s: Sample| with_extension(work.path(s), job.encoding),
        sums: &sums,
    };
    let ctx = Context {
        stages: &*stages,
        image: ds.image(),
        png: ds.png(),
        encoding: job.encoding,
    };
    let jobs = InOrder::new(&jobs);
    let done = pipeline::run(&ctx, &jobs, &sink, job.threads, stats, &Abort::default());
    // The lines of the images written are kept also when the run failed.
    sums.flush()?;
    done?;
    // A one-rank run (a whole dataset, an RCDB slice, a class subset) adds its images to
    // SHA256SUMS itself, as a one-rank shard run finalizes; other ranks' wait for `finalize`.
    if job.rank.world <= 1 {
        let files: Vec<PathBuf> = (0..work.units())
            .flat_map(|k| work.unit(k).images)
            .map(|im| with_extension(work.path(im.2), job.encoding))
            .collect();
        let _lock = crate::sink::folder::short_lock(out);
        crate::sink::sums::merge_folder(out, &files, Some(sums.path()))?;
    }
    Ok(Summary {
        skipped: kept.load(Ordering::Relaxed),
        chaos_s: prepare_s,
        ..Summary::default()
    })
}

/// A folder work's units as pipeline jobs; on `--resume`, images already whole are left out.
struct FolderJobs<'a> {
    work: &'a dyn FolderWork,
    out: &'a Path,
    resume: bool,
    image: ImageFormat,
    png: PngConfig,
    encoding: Encoding,
    kept: &'a AtomicU64,
}

impl IndexedJobs for FolderJobs<'_> {
    fn count(&self) -> u64 {
        self.work.units()
    }
    fn job(&self, i: u64) -> Job {
        let u = self.work.unit(i);
        let images = u
            .images
            .into_iter()
            .filter_map(|(instance, flip, sample, pos)| {
                if self.resume {
                    let rel = with_extension(self.work.path(sample), self.encoding);
                    if self
                        .encoding
                        .is_whole(&self.out.join(rel), &self.image, self.png)
                    {
                        self.kept.fetch_add(1, Ordering::Relaxed);
                        return None;
                    }
                }
                let t = Target {
                    sample,
                    pos,
                    shard: 0,
                    epoch: 0,
                };
                Some((instance, flip, t))
            });
        pipeline::job_of(u.class, u.row, images)
    }
}

/// The shard driver: lock, settings check, preparation, this rank's shards, manifest and indexes.
fn run_shards(ds: &dyn Dataset, job: &Run, stats: &Arc<Stats>) -> Result<Summary> {
    let sh = &job.shards;
    if sh.per_shard == 0 {
        return Err(Error::flag("--samples-per-shard", "must be at least 1"));
    }
    wds::check_prefix(&sh.prefix)?;
    let out = job.out.as_path();
    let (rank, world) = (job.rank.rank, job.rank.world.max(1));
    fsutil::create_dir(out)?;
    // One run per rank and prefix, taken before anything is read, removed or written; the settings
    // of other parts are checked before any side file (parameter files, models) is written.
    let lock =
        fsutil::OutputLock::acquire(out, &format!("{}-rank-{rank:05}-of-{world:05}", sh.prefix))?;
    let mut fingerprint = ds.shard_fingerprint(sh);
    job.encoding.record(&mut fingerprint);
    wds::check_parts_config(out, &sh.prefix, &fingerprint)?;
    let work = ds.shards(sh, &job.env(true))?;
    let layout = work.layout();
    let names = ds.class_names();
    let (sink, todo) = WdsSink::open(
        WdsOptions {
            out: out.to_path_buf(),
            prefix: sh.prefix.clone(),
            dali_index: sh.dali_index,
            writers: job.writers,
            resume: job.resume,
            meta: work.meta(0),
            encoding: job.encoding,
        },
        names.clone(),
        layout,
        fingerprint,
        (rank, world),
        lock,
    )?;
    crate::sink::write_names(out, &names, rank == 0)?;
    let clouds: Vec<u64> = todo
        .blocks
        .iter()
        .flat_map(|&g| layout.block_clouds(g))
        .collect();
    let t0 = Instant::now();
    let stages = work.stages(Some(&clouds))?;
    let prepare_s = t0.elapsed().as_secs_f64();
    let todo_images: u64 = todo
        .shards
        .iter()
        .map(|&s| layout.shard_range(s).count() as u64)
        .sum();
    let ntodo = todo.shards.len();
    let written = sink.written.clone();
    // The total counts only what is left, so nothing kept is added to the count.
    let rep = progress::images(
        job.progress,
        todo_images,
        stats,
        &Arc::new(AtomicU64::new(0)),
        Box::new(move || format!("shards {}/{ntodo}", written.load(Ordering::Relaxed))),
    );
    let ctx = Context {
        stages: &*stages,
        image: ds.image(),
        png: ds.png(),
        encoding: job.encoding,
    };
    let jobs = WdsJobs::new(layout, &todo);
    let jobs = InOrder::new(&jobs);
    pipeline::run(&ctx, &jobs, &sink, job.threads, stats, &Abort::default())?;
    drop(rep);
    let m = sink.complete(&todo, world)?;
    Ok(Summary {
        skipped: todo.kept,
        shards: m.shards.len() as u64,
        bytes: m.shards.iter().map(|e| e.filesize).sum(),
        chaos_s: prepare_s,
        ..Summary::default()
    })
}
