//! RCDB's render stage on the CPU engine: a unit is one class of one process's stream and the
//! instances to draw from it. The stream is taken at the class's start (found once by replaying,
//! see [`super::run`]); instances not wanted (kept on resume, or another unit's) are replayed
//! without drawing, so any subset costs only its own drawing.

use super::unit::{ClassStarts, walk_unit};
use super::{Scratch, Settings, draw_instance};
use crate::error::Result;
use crate::render::{Backend, Canvas, Cursor, Feed, Stage, StageStats, Stages, Unit};
use std::sync::atomic::Ordering;
use std::time::Instant;

/// RCDB's stages for the shared pipeline: one CPU stage per thread, or one GL stage per GPU.
pub struct RcdbStages {
    pub settings: Settings,
    pub starts: ClassStarts,
    /// Instances per row of a unit: instance `i` of row `r` is the class's instance `r * group + i`
    /// (shards: a row is a group of instances; folders: one row of all instances).
    pub group: u32,
    pub backend: Backend,
    /// No device line.
    pub quiet: bool,
}

impl Stages for RcdbStages {
    fn backend(&self) -> &Backend {
        &self.backend
    }
    fn open_on<'s>(
        &'s self,
        backend: &Backend,
        worker: usize,
        stats: &'s StageStats,
    ) -> Result<Box<dyn Stage + 's>> {
        Ok(match backend {
            Backend::Cpu => Box::new(CpuStage {
                settings: &self.settings,
                starts: &self.starts,
                group: self.group,
                stats,
                scratch: Scratch::default(),
            }),
            Backend::Gl(devices, _) => {
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
                    settings: &self.settings,
                    starts: &self.starts,
                    group: self.group,
                    stats,
                    gl,
                    scratch: Scratch::default(),
                })
            }
        })
    }
    fn cursor(&self, unit: Unit) -> Option<Result<Box<dyn Cursor + Send + '_>>> {
        let walk = match super::unit::Walk::new(&self.settings, &self.starts, self.group, &unit) {
            Ok(w) => w,
            Err(e) => return Some(Err(e)),
        };
        Some(Ok(Box::new(super::unit::RcdbCursor {
            walk,
            scratch: Scratch::default(),
        })))
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
