//! MV-FractalDB's render stages: a unit is one class (folders) or one model (shards); the stage
//! replays the model stream from the class's start or checkpoint (10,000 draws a model), computes each
//! model once and draws every wanted view of it, taking one view draw (`random.uniform(-pi, pi)`) per
//! view of every valid model in file order, as the original does. The CPU stage computes and draws a
//! model at a time; the GL stage computes batches of models on the device and draws each model's views
//! in one instanced draw ([`super::gl`]).

use super::gl::{Done, ModelIn, MvGl};
use super::view::{Mat4, draw_points, perspective, view_matrix};
use super::{Map3, instance, weighted_maps};
use crate::error::{Error, Result};
use crate::render::{Backend, Canvas, Feed, Stage, StageStats, Stages, Unit};
use crate::rng::{NumpyRandom, PyRandom};
use std::sync::atomic::Ordering;
use std::time::Instant;

/// What the stages of a render need, per class.
pub struct ClassStart {
    pub maps: Vec<Map3>,
    /// Which of the rows drawn give a valid model (the model pass's finding).
    pub valid: Vec<bool>,
    /// numpy's model stream at the class's first model.
    pub models: NumpyRandom,
    /// The model stream before row positions 0, [`CHECKPOINT`], 2 x [`CHECKPOINT`], ...
    pub marks: Vec<NumpyRandom>,
    /// CPython's view stream at the class's first view.
    pub views: PyRandom,
}

/// Render settings shared by every unit.
pub struct RenderSettings {
    pub size: usize,
    /// Point side in pixels (`--point_size`).
    pub point: u32,
    pub views: u32,
    /// `Some(seed)`: random views ([`super::view::random_view`]) instead of the original's ring.
    pub random: Option<u64>,
    /// The multiplier rows drawn, in order.
    pub mults: Vec<[f64; 12]>,
}

/// A valid model as a unit of shard work: its class, its position among the multiplier rows drawn,
/// and its file index (valid models before it in its class).
#[derive(Clone, Copy, Debug)]
pub struct ModelRef {
    pub class: u32,
    pub pos: u32,
    pub file: u32,
}

/// Model-stream checkpoints every this many rows of a class (a unit replays at most this many models).
pub const CHECKPOINT: u32 = 16;

/// Shard units: one per valid model (the layout's "classes"); each replays its class's model
/// stream from the nearest of the class's [`ClassStart::marks`].
pub struct ModelUnits {
    pub models: std::sync::Arc<Vec<ModelRef>>,
}

pub struct MvStages {
    pub settings: RenderSettings,
    pub starts: Vec<ClassStart>,
    /// The first class of `starts`.
    pub first: u32,
    /// `Some`: units are single models (shards), else whole classes (folders).
    pub units: Option<ModelUnits>,
    pub backend: Backend,
    pub quiet: bool,
}

impl Stages for MvStages {
    fn backend(&self) -> &Backend {
        &self.backend
    }
    fn open_on<'s>(
        &'s self,
        backend: &Backend,
        worker: usize,
        stats: &'s StageStats,
    ) -> Result<Box<dyn Stage + 's>> {
        match backend {
            Backend::Cpu => Ok(Box::new(CpuStage { s: self, stats })),
            Backend::Gl(d, _) => {
                let gl = MvGl::new(d.get(worker).copied().unwrap_or_default())?;
                if !self.quiet {
                    let c = &gl.ctx;
                    crate::say!(
                        "mvfdb backend gl: {} -> {} ({})",
                        c.device,
                        c.renderer,
                        c.version
                    );
                }
                Ok(Box::new(GlStage { s: self, stats, gl }))
            }
        }
    }
    fn cursor(&self, unit: Unit) -> Option<Result<Box<dyn crate::render::Cursor + Send + '_>>> {
        // Folder units only (a shard unit is one model: the stages draw it whole).
        if self.units.is_some() {
            return None;
        }
        let start = self
            .starts
            .get(unit.class.checked_sub(self.first)? as usize)?;
        let mut wanted: Vec<(u32, usize)> = unit
            .instances
            .iter()
            .enumerate()
            .map(|(slot, &j)| (j, slot))
            .collect();
        wanted.sort_unstable();
        Some(Ok(Box::new(MvCursor {
            s: self,
            start,
            class: unit.class,
            models: start.models.clone(),
            views: start.views.clone(),
            pos: 0,
            file: 0,
            wanted,
            at: 0,
            current: None,
        })))
    }
}

/// A model a unit needs: where it is, its draws, and its wanted views (view k, the unit's slot, the
/// view's draw r).
struct Visit<'a> {
    class: u32,
    /// The model's file index (valid models before it in its class).
    file: u32,
    maps: &'a [Map3],
    mult: &'a [f64; 12],
    u: Vec<f64>,
    views: Vec<(u32, usize, f64)>,
}

impl MvStages {
    /// The models of `unit` with a wanted view, in order, each with its draws (the stream replayed
    /// from the class's start or the nearest checkpoint; models without a wanted view skip theirs).
    fn visits(&self, unit: &Unit) -> Result<Vec<Visit<'_>>> {
        let st = &self.settings;
        let pi = std::f64::consts::PI;
        let mut out = Vec::new();
        if let Some(mu) = &self.units {
            // One model: its stream from the class's nearest checkpoint, its view draws after
            // those of the class's earlier valid models.
            let m = mu.models[unit.class as usize];
            let start = &self.starts[(m.class - self.first) as usize];
            if !start.valid.get(m.pos as usize).copied().unwrap_or(false) {
                return Err(Error::Other(format!(
                    "internal: model {} of class {} is not valid",
                    m.pos, m.class
                )));
            }
            let mut rng = start.marks[(m.pos / CHECKPOINT) as usize].clone();
            rng.skip_doubles((m.pos % CHECKPOINT) as usize * super::POINTS);
            let mut views = start.views.clone();
            views.skip_doubles(m.file as u64 * st.views as u64);
            let slots: std::collections::HashMap<u32, usize> = unit
                .instances
                .iter()
                .enumerate()
                .map(|(slot, &k)| (k, slot))
                .collect();
            let wanted = (0..st.views)
                .map(|k| (k, views.uniform(-pi, pi)))
                .filter_map(|(k, r)| slots.get(&k).map(|&slot| (k, slot, r)))
                .collect();
            out.push(Visit {
                class: m.class,
                file: m.file,
                maps: &start.maps,
                mult: &st.mults[m.pos as usize],
                u: rng.random_vec(super::POINTS),
                views: wanted,
            });
            return Ok(out);
        }
        let start = &self.starts[(unit.class - self.first) as usize];
        // Wanted images (file index i, view k) by slot: instance = i * views + k.
        let mut slots: std::collections::HashMap<u32, usize> = unit
            .instances
            .iter()
            .enumerate()
            .map(|(slot, &j)| (j, slot))
            .collect();
        let (mut models, mut views) = (start.models.clone(), start.views.clone());
        let mut i = 0u32;
        for (pos, mult) in st.mults.iter().enumerate() {
            if slots.is_empty() {
                break;
            }
            if !start.valid[pos] {
                models.skip_doubles(super::POINTS);
                continue;
            }
            let wanted: Vec<(u32, usize, f64)> = (0..st.views)
                .map(|k| (k, views.uniform(-pi, pi)))
                .filter_map(|(k, r)| slots.remove(&(i * st.views + k)).map(|slot| (k, slot, r)))
                .collect();
            if wanted.is_empty() {
                models.skip_doubles(super::POINTS);
            } else {
                out.push(Visit {
                    class: unit.class,
                    file: i,
                    maps: &start.maps,
                    mult,
                    u: models.random_vec(super::POINTS),
                    views: wanted,
                });
            }
            i += 1;
        }
        Ok(out)
    }

    /// The view matrix of view `k` of model `i` of `class` (its draw `r` for the original's ring).
    fn view(&self, class: u32, i: u32, k: u32, r: f64) -> Mat4 {
        match self.settings.random {
            Some(seed) => super::view::random_view(seed, class, i, k),
            None => view_matrix(k, self.settings.views, r),
        }
    }
}

/// The original's projection.
fn projection() -> Mat4 {
    perspective(45f64.to_radians() as f32, 1.0, 1.0, 100.0)
}

fn invalid_model(v: &Visit) -> Error {
    Error::Other(format!(
        "internal: model {} of class {} has a NaN, but the model pass found it valid",
        v.file, v.class
    ))
}

/// The CPU twin of the original's draw: a model at a time, its views one by one.
struct CpuStage<'a> {
    s: &'a MvStages,
    stats: &'a StageStats,
}

/// A valid model's points, as the CPU draw takes them.
fn model_points(v: &Visit) -> Result<Vec<[f32; 3]>> {
    let pts = instance(v.maps, v.mult, &v.u).ok_or_else(|| invalid_model(v))?;
    Ok((0..pts[0].len())
        .map(|n| [pts[0][n] as f32, pts[1][n] as f32, pts[2][n] as f32])
        .collect())
}

impl Stage for CpuStage<'_> {
    fn run(&mut self, feed: &mut dyn Feed) -> Result<()> {
        let size = self.s.settings.size;
        let proj = projection();
        while let Some(units) = feed.claim(1) {
            for (id, unit) in units {
                for v in self.s.visits(&unit)? {
                    crate::check_interrupt()?;
                    let t0 = Instant::now();
                    let pts = model_points(&v)?;
                    StageStats::add(&self.stats.chaos_ns, t0);
                    self.stats.clouds.fetch_add(1, Ordering::Relaxed);
                    for &(k, slot, r) in &v.views {
                        let t1 = Instant::now();
                        let view = self.s.view(v.class, v.file, k, r);
                        let mut pixels = vec![0u8; size * size];
                        draw_points(&pts, &proj, &view, size, self.s.settings.point, &mut pixels);
                        StageStats::add(&self.stats.raster_ns, t1);
                        if !feed.emit(Canvas {
                            unit: id,
                            slot,
                            pixels,
                        }) {
                            return Ok(());
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// A folder unit (a class) drawn a view at a time on the CPU engine: the model and view streams
/// walked as [`MvStages::visits`] walks them, only the current model's points held (120 KB).
pub struct MvCursor<'a> {
    s: &'a MvStages,
    start: &'a ClassStart,
    class: u32,
    models: NumpyRandom,
    views: PyRandom,
    /// The next multiplier row, and the valid models passed so far.
    pos: usize,
    file: u32,
    /// Wanted (instance = file * views + view, slot), ascending; `at` is the next.
    wanted: Vec<(u32, usize)>,
    at: usize,
    /// The current model: its file index, points and view draws.
    current: Option<(u32, Vec<[f32; 3]>, Vec<f64>)>,
}

impl MvCursor<'_> {
    /// Starts the streams at the valid model with file index `i`, from the nearest mark.
    fn seek(&mut self, i: u32) {
        let st = &self.s.settings;
        let valid = &self.start.valid;
        let Some(pos) = valid
            .iter()
            .enumerate()
            .filter(|v| *v.1)
            .nth(i as usize)
            .map(|v| v.0)
        else {
            return; // none: `model` says so
        };
        let Some(mark) = self.start.marks.get(pos / CHECKPOINT as usize) else {
            return;
        };
        self.models = mark.clone();
        self.models
            .skip_doubles(pos % CHECKPOINT as usize * super::POINTS);
        self.views = self.start.views.clone();
        self.views.skip_doubles(i as u64 * st.views as u64);
        self.pos = pos;
        self.file = i;
    }

    /// Walks the streams to the valid model with file index `i` and computes it.
    fn model(&mut self, i: u32) -> Result<()> {
        if self.current.is_none() && self.file == 0 {
            self.seek(i);
        }
        let st = &self.s.settings;
        let pi = std::f64::consts::PI;
        loop {
            let pos = self.pos;
            if pos >= st.mults.len() {
                return Err(Error::Other(format!(
                    "internal: class {} has no model {i}",
                    self.class
                )));
            }
            self.pos += 1;
            if !self.start.valid[pos] {
                self.models.skip_doubles(super::POINTS);
                continue;
            }
            let file = self.file;
            self.file += 1;
            if file < i {
                self.models.skip_doubles(super::POINTS);
                self.views.skip_doubles(st.views as u64);
                continue;
            }
            let rs: Vec<f64> = (0..st.views).map(|_| self.views.uniform(-pi, pi)).collect();
            let v = Visit {
                class: self.class,
                file,
                maps: &self.start.maps,
                mult: &st.mults[pos],
                u: self.models.random_vec(super::POINTS),
                views: vec![],
            };
            self.current = Some((file, model_points(&v)?, rs));
            return Ok(());
        }
    }
}

impl crate::render::Cursor for MvCursor<'_> {
    fn next(&mut self, canvas: &mut Vec<u8>) -> Result<Option<usize>> {
        let Some(&(instance, slot)) = self.wanted.get(self.at) else {
            return Ok(None);
        };
        self.at += 1;
        let st = &self.s.settings;
        let (i, k) = (instance / st.views, instance % st.views);
        if self.current.as_ref().map(|c| c.0) != Some(i) {
            self.model(i)?;
        }
        let (_, pts, rs) = self.current.as_ref().unwrap();
        let view = self.s.view(self.class, i, k, rs[k as usize]);
        canvas.clear();
        canvas.resize(st.size * st.size, 0);
        draw_points(pts, &projection(), &view, st.size, st.point, canvas);
        Ok(Some(slot))
    }
}

/// Models per device batch at most (a class's 145 rows fit in one).
const GL_BATCH: usize = 160;

/// The GL engine's stage: each claim's models computed on the device in batches, each model's views
/// drawn in one instanced draw, canvases handed on as their readbacks finish.
struct GlStage<'a> {
    s: &'a MvStages,
    stats: &'a StageStats,
    gl: MvGl<(u64, usize)>,
}

impl GlStage<'_> {
    /// Hands finished readbacks on; false when the run is stopping.
    fn forward(&mut self, wait: bool, feed: &mut dyn Feed) -> Result<bool> {
        for (done, data) in self.gl.collect(wait)? {
            match done {
                Done::View((unit, slot)) => {
                    if !feed.emit(Canvas {
                        unit,
                        slot,
                        pixels: data,
                    }) {
                        return Ok(false);
                    }
                }
                // Only models the model pass found valid are computed: a NaN here is the device's
                // fp64 arithmetic differing from the CPU's.
                Done::Flags(batch) => {
                    if data.iter().any(|&b| b != 0) {
                        return Err(Error::Other(format!(
                            "GL: the device's fp64 models of batch {batch} differ from the CPU's \
                             (a NaN where the model pass found none); use --backend cpu"
                        )));
                    }
                }
            }
        }
        Ok(true)
    }
}

impl Stage for GlStage<'_> {
    fn run(&mut self, feed: &mut dyn Feed) -> Result<()> {
        let size = self.s.settings.size;
        let proj = projection();
        // Folders: a class (its rows) per claim; shards: single models, so several.
        let claim = if self.s.units.is_some() { 32 } else { 1 };
        loop {
            // Claim without waiting while readbacks are in flight; hand them all on before waiting.
            let units = match feed.try_claim(claim) {
                Some(u) => u,
                None => {
                    if !self.forward(true, feed)? {
                        return Ok(());
                    }
                    match feed.claim(claim) {
                        Some(u) => u,
                        None => break,
                    }
                }
            };
            let mut visits = Vec::new();
            for (id, unit) in &units {
                visits.extend(self.s.visits(unit)?.into_iter().map(|v| (*id, v)));
            }
            for batch in visits.chunks(GL_BATCH) {
                let t0 = Instant::now();
                let maps: Vec<Vec<[f64; 13]>> = batch
                    .iter()
                    .map(|(_, v)| weighted_maps(v.maps, v.mult))
                    .collect();
                let models: Vec<ModelIn> = batch
                    .iter()
                    .zip(&maps)
                    .map(|((_, v), maps)| ModelIn { maps, u: &v.u })
                    .collect();
                let views: Vec<Mat4> = batch
                    .iter()
                    .flat_map(|(_, v)| {
                        v.views
                            .iter()
                            .map(|&(k, _, r)| self.s.view(v.class, v.file, k, r))
                    })
                    .collect();
                self.gl.models(&models, &views)?;
                StageStats::add(&self.stats.chaos_ns, t0);
                self.stats
                    .clouds
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                let t1 = Instant::now();
                let mut first = 0;
                for (m, (id, v)) in batch.iter().enumerate() {
                    let tags: Vec<(u64, usize)> =
                        v.views.iter().map(|&(_, slot, _)| (*id, slot)).collect();
                    self.gl
                        .draw(m, first, &proj, size, self.s.settings.point, &tags)?;
                    first += tags.len();
                    // No readback may have finished yet: the interrupt is looked at here too.
                    crate::check_interrupt()?;
                    if !self.forward(false, feed)? {
                        return Ok(());
                    }
                }
                StageStats::add(&self.stats.raster_ns, t1);
            }
        }
        let t1 = Instant::now();
        self.forward(true, feed)?;
        StageStats::add(&self.stats.raster_ns, t1);
        let (ns, bytes) = self.gl.take_readback();
        self.stats.readback_ns.fetch_add(ns, Ordering::Relaxed);
        self.stats
            .readback_bytes
            .fetch_add(bytes, Ordering::Relaxed);
        Ok(())
    }
}
