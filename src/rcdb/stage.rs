//! RCDB's render stage on the CPU engine: a unit is one class of one process's stream and the
//! instances to draw from it. The stream is taken at the class's start (found once by replaying,
//! see [`super::run`]); instances not wanted (kept on resume, or another unit's) are replayed
//! without drawing, so any subset costs only its own drawing.

use super::{ClassParams, Scratch, Settings, draw_instance, unit_circle};
use crate::error::Result;
use crate::render::{Canvas, Feed, Stage, StageStats, Stages};
use crate::rng::PyRandom;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Instant;

/// The stream of each class to draw, at the class's first draw (its parameters).
pub type ClassStarts = HashMap<u32, PyRandom>;

/// Which engine draws RCDB images.
#[derive(Clone, Debug)]
pub enum RcdbBackend {
    Cpu,
    /// The GL engine: one stage per listed EGL device.
    Gl(Vec<crate::render::gl::egl::Choice>),
}

/// RCDB's stages for the shared pipeline: one CPU stage per thread, or one GL stage per GPU.
pub struct RcdbStages<'a> {
    pub settings: &'a Settings,
    pub starts: &'a ClassStarts,
    /// Instances per row of a unit: instance `i` of row `r` is the class's instance `r * group + i`
    /// (shards: a row is a group of instances; folders: one row of all instances).
    pub group: u32,
    pub backend: RcdbBackend,
    /// No device line.
    pub quiet: bool,
}

impl Stages for RcdbStages<'_> {
    fn workers(&self, threads: usize) -> usize {
        match &self.backend {
            RcdbBackend::Cpu => threads.max(1),
            RcdbBackend::Gl(devices) => devices.len().max(1),
        }
    }
    fn open<'s>(&'s self, worker: usize, stats: &'s StageStats) -> Result<Box<dyn Stage + 's>> {
        Ok(match &self.backend {
            RcdbBackend::Cpu => Box::new(CpuStage {
                settings: self.settings,
                starts: self.starts,
                group: self.group,
                stats,
                scratch: Scratch::default(),
            }),
            RcdbBackend::Gl(devices) => {
                let gl = super::gl::RcdbGl::new(devices.get(worker).copied().unwrap_or_default())?;
                if !self.quiet {
                    let c = &gl.ctx;
                    crate::say!(
                        "rcdb backend gl: {} -> {} ({})",
                        c.device,
                        c.renderer,
                        c.version
                    );
                    if c.software {
                        crate::say!(
                            "WARNING: the GL backend is running on a SOFTWARE renderer ({}): --backend cpu is faster on this machine",
                            c.renderer
                        );
                    }
                }
                Box::new(super::gl::GlStage {
                    settings: self.settings,
                    starts: self.starts,
                    group: self.group,
                    stats,
                    gl,
                    scratch: Scratch::default(),
                })
            }
        })
    }
}

pub struct CpuStage<'a> {
    settings: &'a Settings,
    starts: &'a ClassStarts,
    group: u32,
    stats: &'a StageStats,
    scratch: Scratch,
}

impl Stage for CpuStage<'_> {
    fn run(&mut self, feed: &mut dyn Feed) -> Result<()> {
        let s = self.settings;
        while let Some(units) = feed.claim(1) {
            for (id, unit) in units {
                let t0 = Instant::now();
                let mut rng = self.starts.get(&unit.class).cloned().ok_or_else(|| {
                    crate::Error::Other(format!(
                        "internal: no stream start for class {}",
                        unit.class
                    ))
                })?;
                let p: ClassParams = s.draw_class(&mut rng);
                let circle = unit_circle(p.vertices);
                self.stats.clouds.fetch_add(1, Ordering::Relaxed);
                // Instances in stream order, each with its slot in the unit.
                let mut order: Vec<(u32, usize)> = unit
                    .instances
                    .iter()
                    .enumerate()
                    .map(|(slot, &i)| (unit.row * self.group + i, slot))
                    .collect();
                order.sort_unstable();
                let mut shape = p.first;
                let mut next = 0u32;
                let mut replay_ns = t0.elapsed().as_nanos() as u64;
                for (k, slot) in order {
                    let t1 = Instant::now();
                    while next < k {
                        s.skip_instance(&mut rng, &p);
                        shape = s.draw_next_shape(&mut rng);
                        next += 1;
                    }
                    replay_ns += t1.elapsed().as_nanos() as u64;
                    let t2 = Instant::now();
                    let mut pixels = Vec::new();
                    draw_instance(
                        s,
                        &mut rng,
                        &p,
                        &shape,
                        &circle,
                        &mut self.scratch,
                        &mut pixels,
                    );
                    shape = s.draw_next_shape(&mut rng);
                    next += 1;
                    StageStats::add(&self.stats.raster_ns, t2);
                    if !feed.emit(Canvas {
                        unit: id,
                        slot,
                        pixels,
                    }) {
                        return Ok(());
                    }
                }
                self.stats.chaos_ns.fetch_add(replay_ns, Ordering::Relaxed);
            }
        }
        Ok(())
    }
}
