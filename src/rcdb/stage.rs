//! RCDB's render stage on the CPU engine: a unit is one class of one process's stream and the
//! instances to draw from it. The stream is taken at the class's start (found once by replaying,
//! see [`super::run`]); instances not wanted (kept on resume, or another unit's) are replayed
//! without drawing, so any subset costs only its own drawing.

use super::{ClassParams, Scratch, Settings, Shape, draw_instance, unit_circle};
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

/// One instance to draw, handed to a stage by [`walk_unit`]: the stream right at its first draw.
pub struct Instance<'a> {
    pub rng: &'a mut PyRandom,
    pub params: &'a ClassParams,
    pub shape: &'a Shape,
    pub circle: &'a [(f64, f64)],
    /// Its slot in the unit.
    pub slot: usize,
}

/// Walks a unit's class stream from the class's start: the wanted instances (instance `i` of row
/// `r` is the class's `r * group + i`) in stream order, the others before them replayed as draws.
/// `draw` must consume the instance's draws (draw it, or trace it); it returns `false` to stop.
/// Returns the nanoseconds spent replaying, and `false` when `draw` stopped.
pub fn walk_unit(
    s: &Settings,
    starts: &ClassStarts,
    group: u32,
    unit: &crate::render::Unit,
    stats: &StageStats,
    mut draw: impl FnMut(Instance) -> Result<bool>,
) -> Result<(u64, bool)> {
    let t0 = Instant::now();
    let mut rng = starts.get(&unit.class).cloned().ok_or_else(|| {
        crate::Error::Other(format!(
            "internal: no stream start for class {}",
            unit.class
        ))
    })?;
    let p: ClassParams = s.draw_class(&mut rng);
    let circle = unit_circle(p.vertices);
    stats.clouds.fetch_add(1, Ordering::Relaxed);
    let mut order: Vec<(u32, usize)> = unit
        .instances
        .iter()
        .enumerate()
        .map(|(slot, &i)| (unit.row * group + i, slot))
        .collect();
    order.sort_unstable();
    let mut shape = p.first;
    let mut next = 0u32;
    let mut replay_ns = t0.elapsed().as_nanos() as u64;
    for (k, slot) in order {
        let t1 = Instant::now();
        while next < k {
            // A long replay (a resume deep into a large unit) stops on an interrupt too.
            if next.is_multiple_of(1024) {
                crate::check_interrupt()?;
            }
            s.skip_instance(&mut rng, &p);
            shape = s.draw_next_shape(&mut rng);
            next += 1;
        }
        replay_ns += t1.elapsed().as_nanos() as u64;
        // Between instances: the GL stage hands canvases over only per batch.
        crate::check_interrupt()?;
        let go = draw(Instance {
            rng: &mut rng,
            params: &p,
            shape: &shape,
            circle: &circle,
            slot,
        })?;
        shape = s.draw_next_shape(&mut rng);
        next += 1;
        if !go {
            return Ok((replay_ns, false));
        }
    }
    Ok((replay_ns, true))
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
                let (stats, scratch) = (self.stats, &mut self.scratch);
                let (replay_ns, go) = walk_unit(s, self.starts, self.group, &unit, stats, |i| {
                    let t0 = Instant::now();
                    let mut pixels = Vec::new();
                    draw_instance(s, i.rng, i.params, i.shape, i.circle, scratch, &mut pixels);
                    StageStats::add(&stats.raster_ns, t0);
                    Ok(feed.emit(Canvas {
                        unit: id,
                        slot: i.slot,
                        pixels,
                    }))
                })?;
                stats.chaos_ns.fetch_add(replay_ns, Ordering::Relaxed);
                if !go {
                    return Ok(());
                }
            }
        }
        Ok(())
    }
}
