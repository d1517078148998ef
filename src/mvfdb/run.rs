//! `fractaldb mvfdb`: MV-FractalDB in the original's layout: the search (`params/%06d.csv`), the 3D
//! models (`models/{class}/{class}_{row:04d}.ply`, with `--write-models`) and the views
//! (`images/{class}/{class}_{i:05d}_{k:03d}.png`), the last through the shared pipeline and encoder.

use super::stage::{ClassStart, ModelRef, MvStages, RenderSettings};
use super::{Map3, instance, params_csv, ply, read_multipliers, search_with};
use crate::cluster::Rank;
use crate::dataset::{Dataset, Env, FolderUnit, FolderWork, Run, ShardSettings, ShardWork};
use crate::error::{Error, Result};
use crate::fsutil;
use crate::plan::{Layout, Sample};
use crate::render::{ImageFormat, PngConfig, Stages};
use crate::rng::{NumpyRandom, PyRandom};
use crate::sink::Format;
use crate::sink::wds::SampleMeta;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Clone, Debug)]
pub struct MvfdbOptions {
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
    pub view_seed: i64,
    pub size: u32,
    /// `--point_size`: each point a square of this many pixels a side (GL's legacy points).
    pub point_size: u32,
    pub png: PngConfig,
    /// How the run goes: output, folders or shards (same order v2, manifest and indexes as
    /// `render`), threads, ranks, engine.
    pub job: Run,
    /// What an earlier preparation with the same settings found (the search's maps, which models
    /// are valid): a worker process given it skips the search and the model pass. Only a run that
    /// writes nothing takes it.
    pub prepared: Option<std::sync::Arc<Prepared>>,
}

/// The outcome of the search and the model pass that the views need, to hand to another process.
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, PartialEq)]
pub struct Prepared {
    pub maps: Vec<Vec<Map3>>,
    pub valid: Vec<Vec<bool>>,
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
        classes,
        seed,
        variance,
        weights: _,
        rows: _,
        model_seed,
        write_models: _,
        views,
        random_views,
        view_seed,
        size,
        point_size,
        png,
        job: _,
        prepared: _,
    } = o;
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for v in mults.iter().flatten() {
        h.update(v.to_le_bytes());
    }
    let digest = crate::sink::wds::hex(&h.finalize());
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

/// A folder dataset's settings record (`{save_root}/mvfdb.json`: `{kind}.json`).
pub const RECORD: &str = "mvfdb.json";

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

/// A view's file, relative to the output, without its extension.
pub fn image_stem(s: Sample) -> PathBuf {
    let c = format!("{:06}", s.class);
    Path::new("images")
        .join(&c)
        .join(format!("{c}_{:05}_{:03}", s.row, s.instance))
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
    if o.variance >= 1.0 {
        return Err(Error::flag(
            "--variance",
            format!(
                "{} can never be reached: the search's normalised, centred coordinates lie in [-1, 1], \
                 so every axis's variance is below 1 (the original uses 0.05)",
                o.variance
            ),
        ));
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

/// The search and the model pass. With `out`, the parameter files are written there, and the PLY
/// files with `--write-models`; without (the service, ranks other than 0), nothing is written.
fn front(o: &MvfdbOptions, out: Option<&Path>, weights: Option<Weights>) -> Result<Front> {
    let write = out.is_some();
    let out = out.unwrap_or(Path::new(""));
    let pdir = out.join("params");
    // What an earlier preparation found, for a run that writes nothing.
    let given = o.prepared.as_deref().filter(|_| !write);
    // 1. The search (its CSVs are what the model step reads back).
    let found = match given {
        Some(p) => p.maps.clone(),
        None => search_with(
            o.seed,
            o.classes,
            o.variance,
            o.job.progress != crate::progress::Mode::Quiet,
            super::GIVE_UP,
        )?,
    };
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
    if let Some(p) = given {
        return prepared_front(s, p, (maps, rows, mults), starts);
    }
    let slots: Vec<Mutex<(Vec<bool>, Vec<NumpyRandom>)>> = (0..maps.len())
        .map(|_| Mutex::new((vec![], vec![])))
        .collect();
    let next = AtomicUsize::new(0);
    let failed: Mutex<Option<Error>> = Mutex::new(None);
    std::thread::scope(|sc| {
        for _ in 0..o.job.threads.render.clamp(1, maps.len()) {
            sc.spawn(|| {
                loop {
                    let c = next.fetch_add(1, Ordering::Relaxed);
                    if c >= maps.len() {
                        break;
                    }
                    let r = model_class(
                        o,
                        write.then_some(out),
                        c,
                        &maps[c],
                        &rows,
                        &mults,
                        starts[c].clone(),
                    );
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

/// The front of a given preparation: its validity flags, and the model stream's checkpoints found
/// by skipping (no model computed).
fn prepared_front(
    mut s: Summary,
    p: &Prepared,
    (maps, rows, mults): (Vec<Vec<Map3>>, Vec<u32>, Vec<[f64; 12]>),
    starts: Vec<NumpyRandom>,
) -> Result<Front> {
    if p.valid.len() != maps.len() || p.valid.iter().any(|v| v.len() != mults.len()) {
        return Err(Error::Other(
            "internal: a preparation of other settings was handed over".into(),
        ));
    }
    let checkpoints = starts
        .iter()
        .map(|start| {
            let mut rng = start.clone();
            (0..mults.len())
                .filter_map(|pos| {
                    let mark = (pos as u32)
                        .is_multiple_of(super::stage::CHECKPOINT)
                        .then(|| rng.clone());
                    rng.skip_doubles(super::POINTS);
                    mark
                })
                .collect()
        })
        .collect();
    s.models = p.valid.iter().flatten().filter(|v| **v).count();
    s.skipped = p.valid.iter().flatten().filter(|v| !**v).count();
    Ok(Front {
        s,
        maps,
        rows,
        mults,
        starts,
        valid: p.valid.clone(),
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
                marks: f.checkpoints[c as usize].clone(),
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

/// One class's models: which are valid, and their PLY files with `--write-models`.
fn model_class(
    o: &MvfdbOptions,
    out: Option<&Path>,
    c: usize,
    maps: &[Map3],
    rows: &[u32],
    mults: &[[f64; 12]],
    mut rng: NumpyRandom,
) -> Result<(Vec<bool>, Vec<NumpyRandom>)> {
    let dir = out
        .unwrap_or(Path::new(""))
        .join("models")
        .join(format!("{c:06}"));
    let write_models = out.is_some() && o.write_models;
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

/// Canvases hold 0 or 255; the PNGs are RGB.
fn image_format(size: u32) -> crate::render::ImageFormat {
    crate::render::ImageFormat::gray(size, size)
}

/// A shard sample's `.json` and label: the layout's "classes" are the valid models.
struct MvMeta {
    models: Arc<Vec<ModelRef>>,
    rows: Arc<Vec<u32>>,
}

impl SampleMeta for MvMeta {
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

/// The valid models of every class, in class and file order: the shard layout's "classes".
fn model_refs(valid: &[Vec<bool>]) -> Vec<ModelRef> {
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
    models
}

/// MV-FractalDB as a dataset: its options (the run's own fields are not read), the multiplier rows
/// drawn, and what its last preparation found (for the command's summary).
pub struct Mvfdb {
    o: MvfdbOptions,
    rows: Vec<u32>,
    mults: Vec<[f64; 12]>,
    found: Mutex<Summary>,
    /// What the last preparation found ([`Dataset::prepared`]).
    last: Mutex<Option<Prepared>>,
}

impl MvfdbOptions {
    /// What the bytes are ([`Mvfdb`]) and how this run goes ([`Run`]), with the weights read and
    /// every setting checked; `None` when there are no views to make (the search alone).
    pub fn split(&self) -> Result<Option<(Mvfdb, Run)>> {
        validate(self)?;
        let Some((rows, mults)) = load_weights(self)? else {
            return Ok(None);
        };
        if self.views == 0 {
            return Ok(None);
        }
        let ds = Mvfdb {
            o: self.clone(),
            rows,
            mults,
            found: Mutex::default(),
            last: Mutex::default(),
        };
        Ok(Some((ds, self.job.clone())))
    }
}

/// `--views 0`: the search (and the models with `--write-models`), without a dataset.
fn search_alone(o: &MvfdbOptions) -> Result<Summary> {
    fsutil::create_dir(&o.job.out)?;
    let lock = format!(
        "mvfdb-rank-{:05}-of-{:05}",
        o.job.rank.rank,
        o.job.rank.world.max(1)
    );
    let _lock = fsutil::OutputLock::acquire(&o.job.out, &lock)?;
    // Every rank would write the same files: rank 0 writes them.
    let out = (o.job.rank.rank == 0).then_some(o.job.out.as_path());
    Ok(front(o, out, load_weights(o)?)?.s)
}

pub fn run(o: &MvfdbOptions) -> Result<Summary> {
    let Some((ds, job)) = o.split()? else {
        // The search alone (and the models with --write-models).
        return fsutil::tidy_on_error(&o.job.out, || search_alone(o));
    };
    let render = crate::dataset::run(&ds, &job)?;
    let found = std::mem::take(&mut *ds.found.lock().unwrap());
    Ok(Summary {
        images: render.images,
        kept: render.skipped,
        render,
        ..found
    })
}

impl Mvfdb {
    /// The search and the model pass (side files into `env.out`, by rank 0: every rank computes
    /// them), remembered for the summary.
    fn front(&self, env: &Env) -> Result<Front> {
        let w = (self.rows.clone(), self.mults.clone());
        let out = env.out.as_deref().filter(|_| env.writer);
        let f = front(&self.o, out, Some(w))?;
        *self.last.lock().unwrap() = Some(Prepared {
            maps: f.maps.clone(),
            valid: f.valid.clone(),
        });
        *self.found.lock().unwrap() = Summary {
            classes: f.s.classes,
            models: f.s.models,
            skipped: f.s.skipped,
            ..Summary::default()
        };
        Ok(f)
    }
}

impl Dataset for Mvfdb {
    fn kind(&self) -> &'static str {
        "mvfdb"
    }
    fn prepared(&self) -> Option<serde_json::Value> {
        serde_json::to_value(self.last.lock().unwrap().as_ref()?).ok()
    }
    fn title(&self) -> &'static str {
        "MV-FractalDB"
    }
    fn class_names(&self) -> Vec<String> {
        (0..self.o.classes).map(|c| format!("{c:06}")).collect()
    }
    fn image(&self) -> ImageFormat {
        image_format(self.o.size)
    }
    fn png(&self) -> PngConfig {
        self.o.png
    }
    fn folder_fingerprint(&self) -> serde_json::Value {
        spec(&self.o, &self.rows, &self.mults)
    }
    fn memory(&self, format: Format) -> (crate::memory::Estimate, &'static str) {
        (crate::dataset::image_memory(self, format), "--img_size")
    }
    fn shard_fingerprint(&self, sh: &ShardSettings) -> serde_json::Value {
        let ShardSettings {
            per_shard: _,
            seed,
            prefix,
            dali_index: _,
        } = sh;
        let mut v = spec(&self.o, &self.rows, &self.mults);
        let m = v.as_object_mut().expect("an object");
        m.insert("kind".into(), "mvfdb-wds-v1".into());
        m.insert("order".into(), crate::plan::ORDER_VERSION.into());
        m.insert("shard_seed".into(), (*seed).into());
        m.insert("prefix".into(), prefix.clone().into());
        v
    }
    fn epoch_refusal(&self, epoch: u64) -> Option<String> {
        (epoch != 0).then(|| {
            "MV-FractalDB's views come from fixed streams (or fixed random views): every epoch \
             would hold the same images; use epoch 0"
                .into()
        })
    }
    /// A contiguous stretch of classes per rank, one unit per class.
    fn folder<'a>(&'a self, rank: &Rank, env: &Env) -> Result<Box<dyn FolderWork + 'a>> {
        let f = self.front(env)?;
        let n = f.maps.len() as u64;
        let world = rank.world.max(1);
        let classes = (n * rank.rank / world) as u32..(n * (rank.rank + 1) / world) as u32;
        let counts = f
            .valid
            .iter()
            .map(|v| v.iter().filter(|x| **x).count() as u32)
            .collect();
        let stages = MvStages {
            settings: render_settings(&self.o, &f),
            starts: class_starts(&self.o, &f, classes.clone()),
            first: classes.start,
            units: None,
            backend: env.backend.clone(),
            quiet: env.quiet,
        };
        Ok(Box::new(MvFolder {
            views: self.o.views,
            classes,
            counts,
            stages,
        }))
    }
    /// One layout "class" per valid model (its views the images), so shards mix models of every
    /// class; each unit replays its class's model stream from the nearest checkpoint.
    fn shards<'a>(&'a self, sh: &ShardSettings, env: &Env) -> Result<Box<dyn ShardWork + 'a>> {
        let f = self.front(env)?;
        let models = Arc::new(model_refs(&f.valid));
        let layout = Layout::with_shape(
            models.len() as u64,
            vec![0],
            self.o.views,
            vec![1],
            sh.per_shard,
            sh.seed,
        );
        let stages = MvStages {
            settings: render_settings(&self.o, &f),
            starts: class_starts(&self.o, &f, 0..f.maps.len() as u32),
            first: 0,
            units: None,
            backend: env.backend.clone(),
            quiet: env.quiet,
        };
        let stages = MvStages {
            units: Some(super::stage::ModelUnits {
                models: models.clone(),
            }),
            ..stages
        };
        Ok(Box::new(MvShards {
            layout,
            meta: Arc::new(MvMeta {
                models,
                rows: Arc::new(f.rows),
            }),
            stages,
        }))
    }
}

/// This rank's classes: a unit each, its images the views of its valid models.
struct MvFolder {
    views: u32,
    classes: std::ops::Range<u32>,
    /// Valid models per class (all classes).
    counts: Vec<u32>,
    stages: MvStages,
}

impl FolderWork for MvFolder {
    fn dirs(&self) -> Vec<PathBuf> {
        let dir = |c| Path::new("images").join(format!("{c:06}"));
        self.classes.clone().map(dir).collect()
    }
    fn units(&self) -> u64 {
        (self.classes.end - self.classes.start) as u64
    }
    /// Instance `i * views + k` of the class's unit is view k of its model file i.
    fn unit(&self, j: u64) -> FolderUnit {
        let c = self.classes.start + j as u32;
        let v = self.views;
        let images = (0..self.counts[c as usize])
            .flat_map(|i| (0..v).map(move |k| (i, k)))
            .map(|(i, k)| {
                let sample = Sample {
                    class: c,
                    row: i,
                    instance: k,
                    flip: 1,
                };
                let pos = (c as u64) << 32 | (i * v + k) as u64;
                (i * v + k, 1u8, sample, pos)
            })
            .collect();
        FolderUnit {
            class: c,
            row: 0,
            images,
        }
    }
    fn path(&self, s: Sample) -> PathBuf {
        image_stem(s)
    }
    fn images(&self) -> u64 {
        let n = |c: u32| self.counts[c as usize] as u64 * self.views as u64;
        self.classes.clone().map(n).sum()
    }
    fn stages(&self) -> Result<Box<dyn Stages + Send + '_>> {
        Ok(Box::new(&self.stages))
    }
}

/// The shards: the layout over valid models, their metadata and stages.
pub struct MvShards {
    layout: Layout,
    meta: Arc<MvMeta>,
    stages: MvStages,
}

impl ShardWork for MvShards {
    fn layout(&self) -> &Layout {
        &self.layout
    }
    fn meta(&self, _epoch: u64) -> Arc<dyn SampleMeta> {
        self.meta.clone()
    }
    fn stages(&self, _clouds: Option<&[u64]>) -> Result<Box<dyn Stages + Send + '_>> {
        Ok(Box::new(&self.stages))
    }
}
