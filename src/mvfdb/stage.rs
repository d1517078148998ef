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

pub struct MvStages<'a> {
    pub settings: &'a RenderSettings,
    pub starts: &'a [ClassStart],
    /// The first class of `starts`.
    pub first: u32,
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

impl Stage for CpuStage<'_> {
    fn run(&mut self, feed: &mut dyn Feed) -> Result<()> {
        let st = self.s.settings;
        let proj = perspective(45f64.to_radians() as f32, 1.0, 1.0, 100.0);
        let v = st.views as usize;
        while let Some(units) = feed.claim(1) {
            for (id, unit) in units {
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
                    let t0 = Instant::now();
                    let u = models.random_vec(super::POINTS);
                    let Some(pts) = instance(&start.maps, mult, &u) else {
                        continue;
                    };
                    let pts: Vec<[f32; 3]> = (0..pts[0].len())
                        .map(|n| [pts[0][n] as f32, pts[1][n] as f32, pts[2][n] as f32])
                        .collect();
                    if let Some(gl) = self.gl.as_mut() {
                        gl.set_points(&pts);
                    }
                    StageStats::add(&self.stats.chaos_ns, t0);
                    self.stats.clouds.fetch_add(1, Ordering::Relaxed);
                    for k in 0..v as u32 {
                        let r = views.uniform(-std::f64::consts::PI, std::f64::consts::PI);
                        let Some(slot) = wanted.remove(&(i * st.views + k)) else {
                            continue;
                        };
                        let t1 = Instant::now();
                        let view = match st.random {
                            Some(seed) => super::view::random_view(seed, unit.class, i, k),
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
                                draw_points(&pts, &mvp, st.size, &mut pixels);
                                pixels
                            }
                        };
                        StageStats::add(&self.stats.raster_ns, t1);
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
