//! `fractaldb mvfdb`: MV-FractalDB in the original's layout: the search (`params/%06d.csv`), the 3D
//! models (`models/{class}/{class}_{row:04d}.ply`, with `--write-models`) and the views
//! (`images/{class}/{class}_{i:05d}_{k:03d}.png`), the last through the shared pipeline and encoder.

use super::stage::{ClassStart, ModelRef, MvStages, RenderSettings};
use super::{Map3, instance, params_csv, ply, read_multipliers, search};
use crate::error::{Error, Result};
use crate::fsutil;
use crate::pipeline::{self, Abort, Context, InOrder, IndexedJobs, Job, Stats, Target};
use crate::plan::Sample;
use crate::render::PngConfig;
use crate::rng::{NumpyRandom, PyRandom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Clone, Debug)]
pub struct MvfdbOptions {
    pub out: PathBuf,
    pub classes: usize,
    pub seed: u32,
    pub variance: f64,
    /// The 12-multiplier rows (`weights_ins145.csv`), and the rows drawn ("as if the file held only
    /// these rows").
    pub weights: Option<PathBuf>,
    pub rows: Option<String>,
    pub model_seed: u32,
    pub write_models: bool,
    /// Views per model (0: no images), their seed and the image side.
    pub views: u32,
    /// Random (ExFractalDB-style) views instead of the original's ring, keyed by `view_seed`.
    pub random_views: bool,
    /// `--format wds`: shards (same order v2, manifest and indexes as `render`) instead of folders.
    pub shards: Option<ShardOptions>,
    pub view_seed: i64,
    pub size: u32,
    /// `--point_size`: each point a square of this many pixels a side (GL's legacy points).
    pub point_size: u32,
    pub png: PngConfig,
    pub resume: bool,
    pub threads: pipeline::Threads,
    pub rank: crate::cluster::Rank,
    pub progress: crate::progress::Mode,
    pub backend: crate::render::Backend,
}

/// The version of MV-FractalDB's bytes, in every settings record and shard fingerprint: 2 since
/// the CPU engine follows llvmpipe's vertex and point arithmetic (1, unrecorded: the spec's rule).
/// A change of the views', models' or parameter files' bytes bumps it (the guard test pins a tiny
/// dataset's digest beside it).
pub const VERSION: u32 = 2;

/// Every setting that decides the bytes (parameter files, models, views), as recorded: derived
/// from [`MvfdbOptions`] by an exhaustive destructuring, so a new option does not compile until it
/// is placed here or named as one that only changes how a run goes. The multipliers count by the
/// values drawn, not the file's path: an edited file is another dataset, the builtin table and the
/// original's file are one.
pub(crate) fn spec(o: &MvfdbOptions, rows: &[u32], mults: &[[f64; 12]]) -> serde_json::Value {
    let MvfdbOptions {
        out: _,
        classes,
        seed,
        variance,
        weights: _,
        rows: _,
        model_seed,
        write_models: _,
        views,
        random_views,
        shards: _,
        view_seed,
        size,
        point_size,
        png,
        resume: _,
        threads: _,
        rank: _,
        progress: _,
        backend: _,
    } = o;
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for v in mults.iter().flatten() {
        h.update(v.to_le_bytes());
    }
    let digest: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    serde_json::json!({
        "version": VERSION,
        "encoder": crate::render::ENCODER,
        "classes": classes, "seed": seed, "variance": variance,
        "weight_rows": rows, "multipliers_sha256": digest,
        "model_seed": model_seed, "views": views, "random_views": random_views,
        "view_seed": view_seed, "img_size": size, "point_size": point_size,
        "png_level": png.level, "png_gray": png.gray,
    })
}

/// A folder dataset's settings record (`{save_root}/mvfdb.json`).
pub const RECORD: &str = "mvfdb.json";

/// Shard settings of `mvfdb --format wds`.
#[derive(Clone, Debug)]
pub struct ShardOptions {
    pub samples_per_shard: u64,
    pub prefix: String,
    pub seed: u64,
    pub dali_index: bool,
    pub writers: usize,
}

#[derive(Default)]
pub struct Summary {
    pub classes: usize,
    pub models: usize,
    pub skipped: usize,
    pub images: u64,
    pub kept: u64,
    /// The views' pipeline counters and times (for `bench`).
    pub render: crate::pipeline::Summary,
}

pub fn image_path(out: &Path, s: Sample) -> PathBuf {
    let c = format!("{:06}", s.class);
    out.join("images")
        .join(&c)
        .join(format!("{c}_{:05}_{:03}.png", s.row, s.instance))
}

/// What the search and the model pass leave for the views.
struct Front {
    s: Summary,
    maps: Vec<Vec<Map3>>,
    rows: Vec<u32>,
    mults: Vec<[f64; 12]>,
    /// numpy's model stream at each class's first model.
    starts: Vec<NumpyRandom>,
    valid: Vec<Vec<bool>>,
    checkpoints: Vec<Vec<NumpyRandom>>,
}

/// The multiplier rows drawn (their ids in the file) and their values.
type Weights = (Vec<u32>, Vec<[f64; 12]>);

/// `--weight-csv` and `--weight-rows`, read and checked before anything is written.
fn load_weights(o: &MvfdbOptions) -> Result<Option<Weights>> {
    let Some(path) = &o.weights else {
        return Ok(None);
    };
    let all = read_multipliers(path)?;
    let rows = match &o.rows {
        Some(sel) => crate::plan::parse_selection("--weight-rows", sel, all.len() as u32)?,
        None => (0..all.len() as u32).collect(),
    };
    let mults = rows.iter().map(|&r| all[r as usize]).collect();
    Ok(Some((rows, mults)))
}

fn validate(o: &MvfdbOptions) -> Result<()> {
    if o.classes == 0 {
        return Err(Error::flag("--classes", "must be at least 1"));
    }
    if !(o.variance.is_finite() && o.variance >= 0.0) {
        return Err(Error::flag("--variance", "must be a finite number >= 0"));
    }
    if !(1..=super::view::MAX_POINT_SIZE).contains(&o.point_size) {
        return Err(Error::flag(
            "--point_size",
            format!(
                "must be 1..={} pixels (got {})",
                super::view::MAX_POINT_SIZE,
                o.point_size
            ),
        ));
    }
    if o.views > 0 && o.size == 0 {
        return Err(Error::flag("--img_size", "must be at least 1"));
    }
    if o.weights.is_none() && (o.write_models || o.views > 0) {
        return Err(Error::flag(
            "--weight-csv",
            "the models and views need the instance multipliers (the original's weights_ins145.csv); \
             pass --views 0 to run the search alone",
        ));
    }
    Ok(())
}

/// The search and the model pass. With `write`, the parameter files are written, and the PLY files
/// with `--write-models`; without (the service), nothing is written.
fn front(o: &MvfdbOptions, write: bool, weights: Option<Weights>) -> Result<Front> {
    let pdir = o.out.join("params");
    // 1. The search (its CSVs are what the model step reads back).
    let found = search(o.seed, o.classes, o.variance)?;
    if write {
        fsutil::create_dir(&pdir)?;
        fsutil::remove_stale_tmp(&pdir);
        for (c, maps) in found.iter().enumerate() {
            let text = params_csv(maps);
            let path = pdir.join(format!("{c:06}.csv"));
            if std::fs::read(&path).ok().as_deref() != Some(text.as_bytes()) {
                fsutil::write_atomic(&path, text.as_bytes(), false)?;
            }
        }
    }
    let mut s = Summary {
        classes: found.len(),
        ..Summary::default()
    };
    let Some((rows, mults)) = weights else {
        return Ok(Front {
            s,
            maps: vec![],
            rows: vec![],
            mults: vec![],
            starts: vec![],
            valid: vec![],
            checkpoints: vec![],
        });
    };
    // The original reads the CSVs back; `%.18e` round-trips every double, so the search's own
    // values are the same numbers (the goldens' models confirm it).
    let maps: Vec<Vec<Map3>> = found;
    // 2. The models: each class's model stream starts 10,000 draws x rows after the previous one's,
    // so classes run in parallel; which models are valid (no NaN) fixes the view stream and the
    // image file indices.
    let mut starts = Vec::with_capacity(maps.len());
    let mut rng = NumpyRandom::seed(o.model_seed);
    for _ in 0..maps.len() {
        starts.push(rng.clone());
        rng.skip_doubles(super::POINTS * mults.len());
    }
    let slots: Vec<Mutex<(Vec<bool>, Vec<NumpyRandom>)>> = (0..maps.len())
        .map(|_| Mutex::new((vec![], vec![])))
        .collect();
    let next = AtomicUsize::new(0);
    let failed: Mutex<Option<Error>> = Mutex::new(None);
    std::thread::scope(|sc| {
        for _ in 0..o.threads.render.clamp(1, maps.len()) {
            sc.spawn(|| {
                loop {
                    let c = next.fetch_add(1, Ordering::Relaxed);
                    if c >= maps.len() {
                        break;
                    }
                    let r = model_class(o, write, c, &maps[c], &rows, &mults, starts[c].clone());
                    match r {
                        Ok(v) => *slots[c].lock().unwrap() = v,
                        Err(e) => {
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
    let (valid, checkpoints): (Vec<Vec<bool>>, Vec<Vec<NumpyRandom>>) =
        slots.into_iter().map(|m| m.into_inner().unwrap()).unzip();
    s.models = valid.iter().flatten().filter(|v| **v).count();
    s.skipped = valid.iter().flatten().filter(|v| !**v).count();
    Ok(Front {
        s,
        maps,
        rows,
        mults,
        starts,
        valid,
        checkpoints,
    })
}

/// The view stream's state at each class of `range` (one draw per view of every valid model of the
/// classes before), with the class's maps and model stream.
fn class_starts(o: &MvfdbOptions, f: &Front, range: std::ops::Range<u32>) -> Vec<ClassStart> {
    let mut view_rng = PyRandom::seed(o.view_seed as i128);
    let mut out = Vec::new();
    for c in 0..range.end {
        if c >= range.start {
            out.push(ClassStart {
                maps: f.maps[c as usize].clone(),
                valid: f.valid[c as usize].clone(),
                models: f.starts[c as usize].clone(),
                views: view_rng.clone(),
            });
        }
        let valid = f.valid[c as usize].iter().filter(|x| **x).count() as u64;
        view_rng.skip_doubles(valid * o.views as u64);
    }
    out
}

fn render_settings(o: &MvfdbOptions, f: &Front) -> RenderSettings {
    RenderSettings {
        size: o.size as usize,
        point: o.point_size,
        views: o.views,
        random: o.random_views.then_some(o.view_seed as u64),
        mults: f.mults.clone(),
    }
}

pub fn run(o: &MvfdbOptions) -> Result<Summary> {
    validate(o)?;
    // Bad multipliers or rows are refused before the output directory exists.
    let weights = load_weights(o)?;
    fsutil::create_dir(&o.out)?;
    // Ranks run at once into one --save_root: the lock is this rank's (two runs of one rank are not).
    let _lock = fsutil::OutputLock::acquire(
        &o.out,
        &format!(
            "mvfdb-run-rank-{:05}-of-{:05}",
            o.rank.rank,
            o.rank.world.max(1)
        ),
    )?;
    if o.shards.is_none()
        && o.views > 0
        && let Some((rows, mults)) = &weights
    {
        // A folder dataset made with other settings is refused before anything is written.
        crate::sink::folder::check_or_write_settings(
            &o.out.join(RECORD),
            "MV-FractalDB folder",
            "--save_root",
            &spec(o, rows, mults),
            o.rank.rank == 0,
        )?;
    }
    let f = front(o, true, weights)?;
    let mut s = Summary {
        classes: f.s.classes,
        models: f.s.models,
        skipped: f.s.skipped,
        ..Summary::default()
    };
    if o.views == 0 || o.weights.is_none() {
        return Ok(s);
    }
    let found_len = f.maps.len();
    let valid = &f.valid;
    let checkpoints = &f.checkpoints;
    let rows = &f.rows;
    // 3. The views: one draw per view of every valid model, in class, file and view order.
    let counts: Vec<u32> = valid
        .iter()
        .map(|v| v.iter().filter(|x| **x).count() as u32)
        .collect();
    let world = o.rank.world.max(1);
    let n = found_len as u64;
    // Folders: a contiguous stretch of classes per rank; shards: every class (blocks mix them).
    let mine = if o.shards.is_some() {
        0..found_len as u32
    } else {
        (n * o.rank.rank / world) as u32..(n * (o.rank.rank + 1) / world) as u32
    };
    let class_starts = class_starts(o, &f, mine.clone());
    let settings = render_settings(o, &f);
    if let Some(sh) = &o.shards {
        return run_wds(o, sh, s, valid, checkpoints, &class_starts, &settings, rows);
    }
    let stages = MvStages {
        settings: &settings,
        starts: &class_starts,
        first: mine.start,
        units: None,
        backend: o.backend.clone(),
        quiet: o.progress == crate::progress::Mode::Quiet,
    };
    let ctx = Context {
        stages: &stages,
        image: image_format(o.size),
        png: o.png,
    };
    for c in mine.clone() {
        let dir = o.out.join("images").join(format!("{c:06}"));
        fsutil::create_dir(&dir)?;
        fsutil::remove_stale_tmp(&dir);
    }
    let kept = Arc::new(AtomicU64::new(0));
    let stats = Arc::new(Stats::default());
    let total: u64 = mine
        .clone()
        .map(|c| counts[c as usize] as u64 * o.views as u64)
        .sum();
    let rep = crate::progress::images(o.progress, total, &stats, &kept, Box::new(String::new));
    let jobs = ViewJobs {
        o,
        classes: mine,
        counts: &counts,
        kept: &kept,
    };
    let sink = crate::sink::folder::FileSink {
        writers: 2,
        path: |smp: Sample| image_path(&o.out, smp),
    };
    let t0 = std::time::Instant::now();
    pipeline::run(
        &ctx,
        &InOrder::new(&jobs),
        &sink,
        o.threads,
        &stats,
        &Abort::default(),
    )?;
    drop(rep);
    s.render.seconds = t0.elapsed().as_secs_f64();
    s.render.add_stats(&stats);
    s.images = stats.images.load(Ordering::Relaxed);
    s.kept = kept.load(Ordering::Relaxed);
    Ok(s)
}

/// One class's models: which are valid, and their PLY files with `--write-models`.
fn model_class(
    o: &MvfdbOptions,
    write: bool,
    c: usize,
    maps: &[Map3],
    rows: &[u32],
    mults: &[[f64; 12]],
    mut rng: NumpyRandom,
) -> Result<(Vec<bool>, Vec<NumpyRandom>)> {
    let dir = o.out.join("models").join(format!("{c:06}"));
    let write_models = write && o.write_models;
    if write_models {
        fsutil::create_dir(&dir)?;
        fsutil::remove_stale_tmp(&dir);
    }
    let mut valid = Vec::with_capacity(mults.len());
    let mut checkpoints = Vec::new();
    for (pos, (mult, &r)) in mults.iter().zip(rows).enumerate() {
        if (pos as u32).is_multiple_of(super::stage::CHECKPOINT) {
            checkpoints.push(rng.clone());
        }
        crate::check_interrupt()?;
        let u = rng.random_vec(super::POINTS);
        let m = instance(maps, mult, &u);
        if let (Some(pts), true) = (&m, write_models) {
            fsutil::write_atomic(&dir.join(format!("{c:06}_{r:04}.ply")), &ply(pts), false)?;
        }
        valid.push(m.is_some());
    }
    Ok((valid, checkpoints))
}

/// One job per class: its images still to draw (instance `i * views + k`).
struct ViewJobs<'a> {
    o: &'a MvfdbOptions,
    classes: std::ops::Range<u32>,
    counts: &'a [u32],
    kept: &'a AtomicU64,
}

impl IndexedJobs for ViewJobs<'_> {
    fn count(&self) -> u64 {
        (self.classes.end - self.classes.start) as u64
    }
    fn job(&self, j: u64) -> Job {
        let c = self.classes.start + j as u32;
        let v = self.o.views;
        let images = (0..self.counts[c as usize]).flat_map(|i| (0..v).map(move |k| (i, k)));
        let images = images.filter_map(|(i, k)| {
            let sample = Sample {
                class: c,
                row: i,
                instance: k,
                flip: 1,
            };
            if self.o.resume
                && crate::sink::folder::image_is_whole(
                    &image_path(&self.o.out, sample),
                    self.o.size,
                    self.o.size,
                    false,
                )
            {
                self.kept.fetch_add(1, Ordering::Relaxed);
                return None;
            }
            let pos = (c as u64) << 32 | (i * v + k) as u64;
            Some((
                i * v + k,
                1u8,
                Target {
                    sample,
                    pos,
                    shard: 0,
                },
            ))
        });
        pipeline::job_of(c, 0, images)
    }
}

/// Canvases hold 0 or 255; the PNGs are RGB.
fn image_format(size: u32) -> crate::render::ImageFormat {
    crate::render::ImageFormat::gray(size, size)
}

/// A shard sample's `.json` and label: the layout's "classes" are the valid models.
struct MvMeta {
    models: Arc<Vec<ModelRef>>,
    rows: Arc<Vec<u32>>,
}

impl crate::sink::wds::SampleMeta for MvMeta {
    fn json(&self, class: &str, s: Sample, id: u64) -> serde_json::Result<Vec<u8>> {
        let m = self.models[s.class as usize];
        serde_json::to_vec(&serde_json::json!({
            "class": class,
            "class_index": m.class,
            "model": m.file,
            "weight_row": self.rows[m.pos as usize],
            "view": s.instance,
            "file": format!("images/{class}/{class}_{:05}_{:03}.png", m.file, s.instance),
            "sample": id,
        }))
    }
    fn label(&self, s: Sample) -> u32 {
        self.models[s.class as usize].class
    }
}

/// The shard plan of a run: the valid models (the layout's "classes"), the layout, the class names
/// and the settings fingerprint.
fn shard_plan(
    o: &MvfdbOptions,
    sh: &ShardOptions,
    valid: &[Vec<bool>],
    rows: &[u32],
    mults: &[[f64; 12]],
) -> (
    Vec<ModelRef>,
    crate::plan::Layout,
    Vec<String>,
    serde_json::Value,
) {
    let mut models = Vec::new();
    for (c, v) in valid.iter().enumerate() {
        let mut file = 0;
        for (pos, ok) in v.iter().enumerate() {
            if *ok {
                models.push(ModelRef {
                    class: c as u32,
                    pos: pos as u32,
                    file,
                });
                file += 1;
            }
        }
    }
    let layout = crate::plan::Layout::with_shape(
        models.len() as u64,
        vec![0],
        o.views,
        vec![1],
        sh.samples_per_shard,
        sh.seed,
    );
    let names: Vec<String> = (0..valid.len()).map(|c| format!("{c:06}")).collect();
    let mut fingerprint = spec(o, rows, mults);
    let ShardOptions {
        samples_per_shard: _,
        prefix,
        seed,
        dali_index: _,
        writers: _,
    } = sh;
    let m = fingerprint.as_object_mut().expect("an object");
    m.insert("kind".into(), "mvfdb-wds-v1".into());
    m.insert("order".into(), crate::plan::ORDER_VERSION.into());
    m.insert("shard_seed".into(), (*seed).into());
    m.insert("prefix".into(), prefix.clone().into());
    (models, layout, names, fingerprint)
}

/// Everything `mvfdb --serve` keeps for its life: the models, their views' streams, the layout.
pub struct Prepared {
    pub settings: RenderSettings,
    pub class_starts: Vec<ClassStart>,
    pub models: Arc<Vec<ModelRef>>,
    pub checkpoints: Vec<Vec<NumpyRandom>>,
    pub rows: Arc<Vec<u32>>,
    pub layout: crate::plan::Layout,
    pub names: Vec<String>,
    pub fingerprint: serde_json::Value,
    pub size: u32,
}

impl Prepared {
    pub fn meta(&self) -> Box<dyn crate::sink::wds::SampleMeta> {
        Box::new(MvMeta {
            models: self.models.clone(),
            rows: self.rows.clone(),
        })
    }
    pub fn image_format(&self) -> crate::render::ImageFormat {
        image_format(self.size)
    }
}

/// The search and the models in memory (nothing written), and the shard plan, for the service.
pub fn prepare_service(o: &MvfdbOptions, sh: &ShardOptions) -> Result<Prepared> {
    validate(o)?;
    if o.views == 0 {
        return Err(Error::flag(
            "--views",
            "the service serves views: at least 1",
        ));
    }
    let f = front(o, false, load_weights(o)?)?;
    let (models, layout, names, fingerprint) = shard_plan(o, sh, &f.valid, &f.rows, &f.mults);
    Ok(Prepared {
        settings: render_settings(o, &f),
        class_starts: class_starts(o, &f, 0..f.maps.len() as u32),
        models: Arc::new(models),
        rows: Arc::new(f.rows.clone()),
        checkpoints: f.checkpoints,
        layout,
        names,
        fingerprint,
        size: o.size,
    })
}

/// `--format wds`: one layout "class" per valid model (its views the images), so shards mix models
/// of every class; each unit replays its class's model stream from the nearest checkpoint.
#[allow(clippy::too_many_arguments)]
fn run_wds(
    o: &MvfdbOptions,
    sh: &ShardOptions,
    mut s: Summary,
    valid: &[Vec<bool>],
    checkpoints: &[Vec<NumpyRandom>],
    class_starts: &[ClassStart],
    settings: &RenderSettings,
    rows: &[u32],
) -> Result<Summary> {
    use crate::sink::wds::{WdsOptions, WdsSink};
    if sh.samples_per_shard == 0 {
        return Err(Error::flag("--samples-per-shard", "must be at least 1"));
    }
    let (models, layout, names, fingerprint) = shard_plan(o, sh, valid, rows, &settings.mults);
    let (rank, world) = (o.rank.rank, o.rank.world.max(1));
    let (sink, todo) = WdsSink::open(
        WdsOptions {
            out: o.out.clone(),
            prefix: sh.prefix.clone(),
            dali_index: sh.dali_index,
            writers: sh.writers,
            resume: o.resume,
            meta: Arc::new(MvMeta {
                models: Arc::new(models.clone()),
                rows: Arc::new(rows.to_vec()),
            }),
        },
        names.clone(),
        &layout,
        fingerprint,
        (rank, world),
    )?;
    crate::sink::write_names(&o.out, &names, rank == 0)?;
    let stages = MvStages {
        settings,
        starts: class_starts,
        first: 0,
        units: Some(super::stage::ModelUnits {
            models: &models,
            checkpoints,
        }),
        backend: o.backend.clone(),
        quiet: o.progress == crate::progress::Mode::Quiet,
    };
    let ctx = Context {
        stages: &stages,
        image: image_format(o.size),
        png: o.png,
    };
    let stats = Arc::new(Stats::default());
    let todo_images: u64 = todo
        .shards
        .iter()
        .map(|&x| layout.shard_range(x).count() as u64)
        .sum();
    let rep = crate::progress::images(
        o.progress,
        todo_images,
        &stats,
        &Arc::new(AtomicU64::new(0)),
        Box::new(String::new),
    );
    let jobs = crate::sink::wds::WdsJobs::new(&layout, &todo);
    let t0 = std::time::Instant::now();
    pipeline::run(
        &ctx,
        &InOrder::new(&jobs),
        &sink,
        o.threads,
        &stats,
        &Abort::default(),
    )?;
    drop(rep);
    s.render.seconds = t0.elapsed().as_secs_f64();
    s.render.add_stats(&stats);
    s.images = stats.images.load(Ordering::Relaxed);
    s.kept = todo.kept;
    sink.complete(&todo, world)?;
    Ok(s)
}
