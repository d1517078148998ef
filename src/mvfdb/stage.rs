//! MV-FractalDB's render stage on the CPU engine: a unit is one class; the stage replays its model
//! stream from the class's start (10,000 draws a model), computes each model once and draws every
//! wanted view of it, taking one view draw (`random.uniform(-pi, pi)`) per view of every valid model
//! in file order, as the original does.

use super::view::{IDENTITY, draw_points, mul, perspective, view_matrix};
use super::{Map3, instance};
use crate::error::Result;
use crate::render::{Canvas, Feed, Stage, StageStats, Stages};
use crate::rng::{NumpyRandom, PyRandom};
use std::sync::atomic::Ordering;
use std::time::Instant;

/// What the stages of a render need, per class.
pub struct ClassStart {
    pub maps: Vec<Map3>,
    /// numpy's model stream at the class's first model.
    pub models: NumpyRandom,
    /// CPython's view stream at the class's first view.
    pub views: PyRandom,
}

/// Render settings shared by every unit.
pub struct RenderSettings {
    pub size: usize,
    pub views: u32,
    /// `Some(seed)`: random views ([`super::view::random_view`]) instead of the original's ring.
    pub random: Option<u64>,
    /// The multiplier rows drawn, in order.
    pub mults: Vec<[f64; 12]>,
}

/// Which engine draws the views.
#[derive(Clone, Debug)]
pub enum MvBackend {
    Cpu,
    /// GL_POINTS through EGL, one stage per listed device.
    Gl(Vec<crate::render::gl::egl::Choice>),
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

/// Shard units: one per valid model (the layout's "classes"), with the model stream's checkpoints
/// per class (`checkpoints[c][r / CHECKPOINT]`: the stream before row position r's draws).
pub struct ModelUnits<'a> {
    pub models: &'a [ModelRef],
    pub checkpoints: &'a [Vec<NumpyRandom>],
}

pub struct MvStages<'a> {
    pub settings: &'a RenderSettings,
    pub starts: &'a [ClassStart],
    /// The first class of `starts`.
    pub first: u32,
    /// `Some`: units are single models (shards), else whole classes (folders).
    pub units: Option<ModelUnits<'a>>,
    pub backend: MvBackend,
    pub quiet: bool,
}

impl Stages for MvStages<'_> {
    fn workers(&self, threads: usize) -> usize {
        match &self.backend {
            MvBackend::Cpu => threads.max(1),
            MvBackend::Gl(d) => d.len().max(1),
        }
    }
    fn open<'s>(&'s self, worker: usize, stats: &'s StageStats) -> Result<Box<dyn Stage + 's>> {
        let engine = match &self.backend {
            MvBackend::Cpu => None,
            MvBackend::Gl(d) => {
                let gl = super::gl::MvGl::new(d.get(worker).copied().unwrap_or_default())?;
                if !self.quiet {
                    let c = &gl.ctx;
                    crate::say!(
                        "mvfdb backend gl: {} -> {} ({})",
                        c.device,
                        c.renderer,
                        c.version
                    );
                }
                Some(gl)
            }
        };
        Ok(Box::new(CpuStage {
            s: self,
            stats,
            gl: engine,
        }))
    }
}

/// The render stage: the CPU twin of the original's draw, or the GL engine when `gl` is set.
struct CpuStage<'a> {
    s: &'a MvStages<'a>,
    stats: &'a StageStats,
    gl: Option<super::gl::MvGl>,
}

impl CpuStage<'_> {
    /// Draws view `k` of a model (its points already in `pts` and, for GL, uploaded).
    fn view(&mut self, pts: &[[f32; 3]], class: u32, i: u32, k: u32, r: f64) -> Result<Vec<u8>> {
        let st = self.s.settings;
        let proj = perspective(45f64.to_radians() as f32, 1.0, 1.0, 100.0);
        let t1 = Instant::now();
        let view = match st.random {
            Some(seed) => super::view::random_view(seed, class, i, k),
            None => view_matrix(k, st.views, r),
        };
        let pixels = match self.gl.as_mut() {
            // The original's three uniforms; the shader multiplies them.
            Some(gl) => {
                let (px, ns) = gl.draw(&proj, &view, &IDENTITY, st.size)?;
                self.stats.readback_ns.fetch_add(ns, Ordering::Relaxed);
                self.stats
                    .readback_bytes
                    .fetch_add(px.len() as u64, Ordering::Relaxed);
                px
            }
            None => {
                // proj * view * model (the identity), multiplied as glm does.
                let mvp = mul(&mul(&proj, &view), &IDENTITY);
                let mut pixels = vec![0u8; st.size * st.size];
                draw_points(pts, &mvp, st.size, &mut pixels);
                pixels
            }
        };
        StageStats::add(&self.stats.raster_ns, t1);
        Ok(pixels)
    }

    /// A model's points as f32 (uploaded for GL), or `None` for a NaN model.
    fn model(
        &mut self,
        maps: &[Map3],
        mult: &[f64; 12],
        rng: &mut NumpyRandom,
    ) -> Option<Vec<[f32; 3]>> {
        let t0 = Instant::now();
        let u = rng.random_vec(super::POINTS);
        let pts = instance(maps, mult, &u)?;
        let pts: Vec<[f32; 3]> = (0..pts[0].len())
            .map(|n| [pts[0][n] as f32, pts[1][n] as f32, pts[2][n] as f32])
            .collect();
        if let Some(gl) = self.gl.as_mut() {
            gl.set_points(&pts);
        }
        StageStats::add(&self.stats.chaos_ns, t0);
        self.stats.clouds.fetch_add(1, Ordering::Relaxed);
        Some(pts)
    }
}

impl Stage for CpuStage<'_> {
    fn run(&mut self, feed: &mut dyn Feed) -> Result<()> {
        let st = self.s.settings;
        let pi = std::f64::consts::PI;
        while let Some(units) = feed.claim(1) {
            for (id, unit) in units {
                if let Some(mu) = &self.s.units {
                    // One model: its stream from the class's nearest checkpoint, its view draws
                    // after those of the class's earlier valid models.
                    let m = mu.models[unit.class as usize];
                    let start = &self.s.starts[(m.class - self.s.first) as usize];
                    let mut rng =
                        mu.checkpoints[m.class as usize][(m.pos / CHECKPOINT) as usize].clone();
                    rng.skip_doubles((m.pos % CHECKPOINT) as usize * super::POINTS);
                    let Some(pts) = self.model(&start.maps, &st.mults[m.pos as usize], &mut rng)
                    else {
                        return Err(crate::Error::Other(format!(
                            "internal: model {} of class {} is not valid",
                            m.pos, m.class
                        )));
                    };
                    let mut views = start.views.clone();
                    views.skip_doubles(m.file as u64 * st.views as u64);
                    let wanted: std::collections::HashMap<u32, usize> = unit
                        .instances
                        .iter()
                        .enumerate()
                        .map(|(slot, &k)| (k, slot))
                        .collect();
                    for k in 0..st.views {
                        let r = views.uniform(-pi, pi);
                        let Some(&slot) = wanted.get(&k) else {
                            continue;
                        };
                        let pixels = self.view(&pts, m.class, m.file, k, r)?;
                        if !feed.emit(Canvas {
                            unit: id,
                            slot,
                            pixels,
                        }) {
                            return Ok(());
                        }
                    }
                    continue;
                }
                let start = &self.s.starts[(unit.class - self.s.first) as usize];
                // Wanted images (file index i, view k) by slot: instance = i * views + k.
                let mut wanted: std::collections::HashMap<u32, usize> = unit
                    .instances
                    .iter()
                    .enumerate()
                    .map(|(slot, &j)| (j, slot))
                    .collect();
                let (mut models, mut views) = (start.models.clone(), start.views.clone());
                let mut i = 0u32;
                for mult in &st.mults {
                    if wanted.is_empty() {
                        break;
                    }
                    let Some(pts) = self.model(&start.maps, mult, &mut models) else {
                        continue;
                    };
                    for k in 0..st.views {
                        let r = views.uniform(-pi, pi);
                        let Some(slot) = wanted.remove(&(i * st.views + k)) else {
                            continue;
                        };
                        let pixels = self.view(&pts, unit.class, i, k, r)?;
                        if !feed.emit(Canvas {
                            unit: id,
                            slot,
                            pixels,
                        }) {
                            return Ok(());
                        }
                    }
                    i += 1;
                }
            }
        }
        Ok(())
    }
}
