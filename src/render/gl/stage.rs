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

/// Each unit's instances cut into ranges of at most `max` (a unit without instances has none).
fn pieces(units: &[(u64, Unit)], max: usize) -> Vec<(usize, std::ops::Range<usize>)> {
    let mut out = Vec::new();
    for (i, (_, u)) in units.iter().enumerate() {
        let n = u.instances.len();
        let mut a = 0;
        while a < n {
            let b = (a + max.max(1)).min(n);
            out.push((i, a..b));
            a = b;
        }
    }
    out
}

/// Consecutive pieces grouped into raster groups: at most [`MAX_GROUP`] pieces and `max`
/// canvases each (a piece holds at most `max`, so no cloud is twice in a group).
fn groups(pieces: &[(usize, std::ops::Range<usize>)], max: usize) -> Vec<std::ops::Range<usize>> {
    let mut groups = Vec::new();
    let (mut start, mut canvases) = (0, 0);
    for (p, (_, r)) in pieces.iter().enumerate() {
        if p > start && (p - start >= MAX_GROUP || canvases + r.len() > max) {
            groups.push(start..p);
            start = p;
            canvases = 0;
        }
        canvases += r.len();
    }
    if !pieces.is_empty() {
        groups.push(start..pieces.len());
    }
    groups
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
            // Pieces: a unit's instances, at most max_canvases at a time (a unit of 1,000
            // instances is 16 pieces, so an interrupt is seen between them); groups: up to
            // MAX_GROUP pieces and max_canvases canvases.
            let pieces = pieces(&units, max_canvases);
            let groups = groups(&pieces, max_canvases);
            let steps = ctx.cfg.iterations.saturating_sub(1) as u32;
            let slice = steps.div_ceil(groups.len().max(1) as u32).max(1);
            let mut tags: Vec<(u64, usize)> = Vec::new();
            for range in groups {
                let mut group = Vec::with_capacity(range.len());
                let mut gtags = Vec::new();
                for (i, r) in &pieces[range] {
                    let (id, unit) = &units[*i];
                    let class = &ctx.plan.classes[unit.class as usize];
                    group.push(GroupCloud {
                        index: *i,
                        count: *counts[*i].as_ref().unwrap(),
                        class_key: class.key,
                        row: unit.row,
                        instances: &unit.instances[r.clone()],
                        masks: ctx.cfg.masks.for_epoch(unit.epoch),
                    });
                    for s in r.clone() {
                        gtags.push(tags.len());
                        tags.push((*id, s));
                    }
                }
                self.engine.raster(set, &group, ctx.cfg, &gtags)?;
                if next.is_some() {
                    self.engine.advance_clouds(slice);
                }
                let done = self.engine.collect(false)?;
                // No canvas may have come back yet, so the interrupt is looked at here too.
                if !forward(done, &tags, feed) || crate::interrupted() {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(n: u32) -> (u64, Unit) {
        let u = Unit {
            class: 0,
            row: 0,
            epoch: 0,
            instances: (0..n).collect(),
        };
        (0, u)
    }

    #[test]
    fn large_units_are_cut_and_groups_hold_each_cloud_once() {
        let units = [unit(1000), unit(10), unit(0), unit(3), unit(64), unit(65)];
        for max in [8, 64] {
            let pieces = pieces(&units, max);
            let groups = groups(&pieces, max);
            // Every instance of every unit once, in order.
            for (i, (_, u)) in units.iter().enumerate() {
                let got: Vec<usize> = pieces
                    .iter()
                    .filter(|(k, _)| *k == i)
                    .flat_map(|(_, r)| r.clone())
                    .collect();
                assert_eq!(got, (0..u.instances.len()).collect::<Vec<_>>());
            }
            assert_eq!(groups.first().unwrap().start, 0);
            assert_eq!(groups.last().unwrap().end, pieces.len());
            for g in &groups {
                let ps = &pieces[g.clone()];
                assert!(!ps.is_empty() && ps.len() <= MAX_GROUP);
                assert!(ps.iter().map(|(_, r)| r.len()).sum::<usize>() <= max);
                let mut clouds: Vec<usize> = ps.iter().map(|(i, _)| *i).collect();
                clouds.dedup();
                assert_eq!(clouds.len(), ps.len(), "a cloud twice in a group");
            }
            assert!(pieces.iter().filter(|(i, _)| *i == 0).count() >= 1000 / max);
        }
        assert!(groups(&pieces(&[unit(0)], 64), 64).is_empty());
    }
}
