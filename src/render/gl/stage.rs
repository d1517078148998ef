//! The GL engine as a render stage: one per GPU and run, owning its context for the whole run.

use super::{Draw, GlEngine, GlOptions};
use crate::error::Result;
use crate::render::{Canvas, Feed, Stage, StageContext, StageStats, cpu};
use std::sync::atomic::Ordering;
use std::time::Instant;

pub struct GlStage<'a> {
    ctx: StageContext<'a>,
    engine: GlEngine,
}

impl<'a> GlStage<'a> {
    /// Opens the device, compiles the shaders and uploads the chaos sequence: once per run.
    pub fn new(ctx: StageContext<'a>, choice: super::egl::Choice, opts: GlOptions) -> Result<Self> {
        let engine = GlEngine::new(choice, ctx.u, opts.raster)?;
        let c = &engine.ctx;
        if !ctx.quiet {
            eprintln!(
                "backend gl: {} -> {} ({}), raster {:?}",
                c.device, c.renderer, c.version, opts.raster
            );
            if c.software {
                eprintln!(
                    "WARNING: the GL backend is running on a SOFTWARE renderer ({}): about 100x slower than a GPU; \
                     --backend cpu is faster on this machine",
                    c.renderer
                );
            }
        }
        Ok(GlStage { ctx, engine })
    }
}

/// Clouds per chaos-game dispatch: a GPU wants many invocations in flight; a software renderer wants
/// short dispatches.
const GL_BATCH: usize = 128;
const GL_BATCH_SOFTWARE: usize = 32;

impl Stage for GlStage<'_> {
    fn run(&mut self, feed: &mut dyn Feed) -> Result<()> {
        let ctx = self.ctx;
        let engine = &mut self.engine;
        // Canvases come back asynchronously (a ring of fenced readbacks), tagged with (unit, slot).
        let mut tags: Vec<(u64, usize)> = Vec::new();
        let forward = |done: Vec<(usize, Vec<u8>)>, tags: &[(u64, usize)], feed: &mut dyn Feed| {
            for (tag, pixels) in done {
                let (unit, slot) = tags[tag];
                if !feed.emit(Canvas { unit, slot, pixels }) {
                    return false;
                }
            }
            true
        };
        let size = if engine.ctx.software {
            GL_BATCH_SOFTWARE
        } else {
            GL_BATCH
        };
        while let Some(batch) = feed.claim(size) {
            let t0 = Instant::now();
            let ifss: Vec<_> = batch
                .iter()
                .map(|(_, u)| {
                    ctx.plan.classes[u.class as usize]
                        .ifs
                        .weighted(&ctx.plan.weights[u.row as usize])
                })
                .collect();
            let clouds = engine.clouds(&ifss, ctx.cfg)?;
            StageStats::add(&ctx.stats.chaos_ns, t0);
            for ((id, unit), cloud) in batch.iter().zip(clouds) {
                let class = &ctx.plan.classes[unit.class as usize];
                let cloud = cloud
                    .map_err(|axis| cpu::degenerate_error(&class.path, unit.row as usize, axis))?;
                ctx.stats.clouds.fetch_add(1, Ordering::Relaxed);
                let t0 = Instant::now();
                let first = tags.len();
                tags.extend((0..unit.instances.len()).map(|s| (*id, s)));
                let ts: Vec<usize> = (first..tags.len()).collect();
                let draw = Draw {
                    cloud: &cloud,
                    cfg: ctx.cfg,
                    class_key: class.key,
                    row: unit.row,
                };
                engine.submit(draw, &unit.instances, &ts)?;
                let done = engine.collect(false)?;
                StageStats::add(&ctx.stats.raster_ns, t0);
                if !forward(done, &tags, feed) {
                    return Ok(());
                }
            }
        }
        let t0 = Instant::now();
        let done = engine.collect(true)?;
        StageStats::add(&ctx.stats.raster_ns, t0);
        forward(done, &tags, feed);
        ctx.stats
            .readback_ns
            .fetch_add(engine.take_readback_ns(), Ordering::Relaxed);
        Ok(())
    }
}
