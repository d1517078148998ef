//! The GL engine as a render stage: one per GPU and run, owning its context for the whole run.
//!
//! Clouds come in device-sized batches. While batch k is rastered (groups of clouds, each group one
//! splat and one resolve into a fenced readback slot), the chaos game of batch k+1 advances a slice
//! after each group, so the device always has work queued and the readbacks keep flowing; only the
//! small per-cloud info of a batch is waited for, once the batch is done.

use super::{GlEngine, GlOptions, GroupCloud, MAX_GROUP, MAX_GROUP_CANVASES};
use crate::error::Result;
use crate::render::{Canvas, Feed, MaskRng, Stage, StageContext, StageStats, Unit, cpu};
use std::sync::atomic::Ordering;
use std::time::Instant;

pub struct GlStage<'a> {
    ctx: StageContext<'a>,
    engine: GlEngine,
}

impl<'a> GlStage<'a> {
    /// Opens the device, compiles the shaders and uploads the chaos sequence: once per run.
    pub fn new(ctx: StageContext<'a>, choice: super::egl::Choice, opts: GlOptions) -> Result<Self> {
        let engine = GlEngine::new(choice, ctx.u, opts)?;
        let c = &engine.ctx;
        if !ctx.quiet {
            crate::say!(
                "backend gl: {} -> {} ({}), raster {:?}, rescale {}",
                c.device,
                c.renderer,
                c.version,
                opts.raster,
                if opts.cpu_rescale { "cpu" } else { "gpu" }
            );
            if c.software {
                crate::say!(
                    "WARNING: the GL backend is running on a SOFTWARE renderer ({}): about 100x slower than a GPU; \
                     --backend cpu is faster on this machine",
                    c.renderer
                );
            }
        }
        Ok(GlStage { ctx, engine })
    }

    fn begin(&mut self, units: &[(u64, Unit)]) -> Result<()> {
        let ctx = self.ctx;
        let mut ifss = Vec::with_capacity(units.len());
        for (_, u) in units {
            let class = &ctx.plan.classes[u.class as usize];
            let ifs = class.ifs.weighted(&ctx.plan.weights[u.row as usize]);
            if ctx.cfg.iterations > 1 && !ifs.first_step_chooses_a_map(ctx.u[0]) {
                return Err(cpu::degenerate_error(
                    &class.path,
                    u.row as usize,
                    cpu::NO_FIRST_MAP,
                ));
            }
            ifss.push(ifs);
        }
        self.engine.begin_clouds(&ifss, ctx.cfg)
    }
}

/// Hands finished canvases to the feed; false when the run is stopping.
fn forward(done: Vec<(usize, Vec<u8>)>, tags: &[(u64, usize)], feed: &mut dyn Feed) -> bool {
    for (tag, pixels) in done {
        let (unit, slot) = tags[tag];
        if !feed.emit(Canvas { unit, slot, pixels }) {
            return false;
        }
    }
    true
}

impl Stage for GlStage<'_> {
    fn run(&mut self, feed: &mut dyn Feed) -> Result<()> {
        let ctx = self.ctx;
        let size = self.engine.batch_size(ctx.cfg.iterations);
        // CPython masks are drawn on the CPU per canvas and uploaded: keep their groups small.
        let max_canvases = match ctx.cfg.masks {
            MaskRng::Python { .. } => 8,
            MaskRng::Counter { .. } => MAX_GROUP_CANVASES,
        };
        // `cur`: a batch whose chaos game is already queued (claimed while the last one was drawn).
        let mut cur: Option<Vec<(u64, Unit)>> = None;
        let mut stopped = false;
        loop {
            let units = match cur.take() {
                Some(u) => u,
                // Nothing claimed ahead: wait for work (a service's source blocks here).
                None => match feed.claim(size) {
                    Some(u) => {
                        self.begin(&u)?;
                        self.engine.end_clouds(ctx.cfg)?;
                        u
                    }
                    None => break,
                },
            };
            let t0 = Instant::now();
            let (set, counts) = self.engine.wait_clouds()?;
            StageStats::add(&ctx.stats.chaos_ns, t0);
            for ((_, unit), c) in units.iter().zip(&counts) {
                if let Err(axis) = c {
                    let class = &ctx.plan.classes[unit.class as usize];
                    return Err(cpu::degenerate_error(&class.path, unit.row as usize, axis));
                }
            }
            ctx.stats
                .clouds
                .fetch_add(units.len() as u64, Ordering::Relaxed);
            // The next batch's chaos game starts now and advances between this batch's groups
            // (if one is ready: never wait for work while holding this batch).
            let next = if stopped { None } else { feed.try_claim(size) };
            if let Some(n) = &next {
                self.begin(n)?;
            }
            let t0 = Instant::now();
            // Groups: up to MAX_GROUP clouds and max_canvases canvases (a larger cloud alone).
            let mut groups: Vec<std::ops::Range<usize>> = Vec::new();
            let mut start = 0;
            let mut canvases = 0;
            for (i, (_, u)) in units.iter().enumerate() {
                let k = u.instances.len();
                if i > start && (i - start >= MAX_GROUP || canvases + k > max_canvases) {
                    groups.push(start..i);
                    start = i;
                    canvases = 0;
                }
                canvases += k;
            }
            groups.push(start..units.len());
            let steps = ctx.cfg.iterations.saturating_sub(1) as u32;
            let slice = steps.div_ceil(groups.len() as u32).max(1);
            let mut tags: Vec<(u64, usize)> = Vec::new();
            for range in groups {
                let mut group = Vec::with_capacity(range.len());
                let mut gtags = Vec::new();
                for i in range {
                    let (id, unit) = &units[i];
                    let class = &ctx.plan.classes[unit.class as usize];
                    group.push(GroupCloud {
                        index: i,
                        count: *counts[i].as_ref().unwrap(),
                        class_key: class.key,
                        row: unit.row,
                        instances: &unit.instances,
                        masks: ctx.cfg.masks.for_epoch(unit.epoch),
                    });
                    for s in 0..unit.instances.len() {
                        gtags.push(tags.len());
                        tags.push((*id, s));
                    }
                }
                self.engine.raster(set, &group, ctx.cfg, &gtags)?;
                if next.is_some() {
                    self.engine.advance_clouds(slice);
                }
                let done = self.engine.collect(false)?;
                if !forward(done, &tags, feed) {
                    stopped = true;
                    break;
                }
            }
            if next.is_some() {
                self.engine.end_clouds(ctx.cfg)?;
            }
            // This batch's canvases were queued before the rest of the next chaos game: take them all.
            let done = self.engine.collect(true)?;
            if !stopped && !forward(done, &tags, feed) {
                stopped = true;
            }
            StageStats::add(&ctx.stats.raster_ns, t0);
            cur = next;
            if stopped {
                if cur.is_some() {
                    self.engine.wait_clouds()?;
                }
                break;
            }
        }
        let (ns, bytes) = self.engine.take_readback();
        ctx.stats.readback_ns.fetch_add(ns, Ordering::Relaxed);
        ctx.stats.readback_bytes.fetch_add(bytes, Ordering::Relaxed);
        Ok(())
    }
}
