//! The CPU engine: the chaos game once per (class, weight row), then one label canvas per instance.

use super::{Canvas, DrawMode, Feed, MaskRng, RenderConfig, Stage, StageContext, StageStats};
use crate::error::{Error, Result};
use crate::ifs::{self, Cloud, Ifs, WeightRow};
use crate::rng::MaskKey;
use std::sync::atomic::Ordering;
use std::time::Instant;

/// The CPU engine as a render stage: one unit at a time, its canvases as soon as they are drawn.
pub struct CpuStage<'a> {
    ctx: StageContext<'a>,
    scratch: Scratch,
    cloud: Cloud,
}

impl<'a> CpuStage<'a> {
    pub fn new(ctx: StageContext<'a>) -> Self {
        CpuStage {
            ctx,
            scratch: Scratch::default(),
            cloud: Cloud::default(),
        }
    }
}

impl Stage for CpuStage<'_> {
    fn run(&mut self, feed: &mut dyn Feed) -> Result<()> {
        let ctx = self.ctx;
        while let Some(units) = feed.claim(1) {
            for (id, unit) in units {
                let class = &ctx.plan.classes[unit.class as usize];
                let t0 = Instant::now();
                compute_cloud(
                    &class.ifs,
                    &ctx.plan.weights[unit.row as usize],
                    ctx.u,
                    ctx.cfg,
                    &mut self.scratch,
                    &mut self.cloud,
                )
                .map_err(|axis| degenerate_error(&class.path, unit.row as usize, axis))?;
                StageStats::add(&ctx.stats.chaos_ns, t0);
                ctx.stats.clouds.fetch_add(1, Ordering::Relaxed);
                let epoch_cfg;
                let cfg = if unit.epoch == 0 {
                    ctx.cfg
                } else {
                    epoch_cfg = RenderConfig {
                        masks: ctx.cfg.masks.for_epoch(unit.epoch),
                        ..ctx.cfg.clone()
                    };
                    &epoch_cfg
                };
                for (slot, &instance) in unit.instances.iter().enumerate() {
                    let t0 = Instant::now();
                    let mut pixels = Vec::new();
                    raster(&self.cloud, cfg, class.key, unit.row, instance, &mut pixels);
                    StageStats::add(&ctx.stats.raster_ns, t0);
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
        Ok(())
    }
}

/// Reusable buffers of one render thread.
#[derive(Default)]
pub struct Scratch {
    xs: Vec<f64>,
    ys: Vec<f64>,
}

/// Computes the rescaled point cloud of `ifs` with weight row `w` (the original's `calculate` +
/// `__rescale`). `u` is the shared `np.random.seed(100)` sequence, `cfg.iterations` long.
/// A zero-width bounding box is an error (the original divides by zero and draws garbage).
pub fn compute_cloud(
    ifs: &Ifs,
    w: &WeightRow,
    u: &[f64],
    cfg: &RenderConfig,
    scratch: &mut Scratch,
    out: &mut Cloud,
) -> Result<(), &'static str> {
    let weighted = ifs.weighted(w);
    if cfg.iterations > 1 && !weighted.first_step_chooses_a_map(u[0]) {
        return Err(NO_FIRST_MAP);
    }
    weighted.chaos_game(&u[..cfg.iterations], &mut scratch.xs, &mut scratch.ys);
    cloud_from_points(&mut scratch.xs, &mut scratch.ys, cfg, out)
}

/// The rescale step alone, for engines that compute the points elsewhere.
pub fn cloud_from_points(
    xs: &mut Vec<f64>,
    ys: &mut Vec<f64>,
    cfg: &RenderConfig,
    out: &mut Cloud,
) -> Result<(), &'static str> {
    ifs::rescale(xs, ys, cfg.width, cfg.height, cfg.pad_x, cfg.pad_y, out);
    if xs.is_empty() {
        return Err(NO_POINTS_LEFT);
    }
    // `rescale` leaves the truncated, shifted coordinates in xs/ys.
    if let Some(axis) = ifs::degenerate_axis(xs, ys) {
        return Err(axis);
    }
    Ok(())
}

/// A cloud whose orbit diverges before point 100: the NaN cut removes every point.
pub const NO_POINTS_LEFT: &str = "empty";
/// Probabilities that never reach the first chaos-game draw: no map at the first step.
pub const NO_FIRST_MAP: &str = "no-map";

/// The error for a cloud the original cannot render either (a zero-extent axis "x"/"y",
/// [`NO_POINTS_LEFT`], [`NO_FIRST_MAP`]), naming the class file and weight row.
pub fn degenerate_error(class_path: &std::path::Path, row: usize, why: &str) -> Error {
    let msg = match why {
        NO_POINTS_LEFT => format!(
            "weight row {row:02}: the orbit diverges (NaN) before point 100, so the original's NaN cut \
             removes every point and nothing can be drawn (the original fails on it too)"
        ),
        NO_FIRST_MAP => format!(
            "weight row {row:02}: the map probabilities (times the row's weights) never reach the first \
             chaos-game draw, so no map is chosen at the first step (the original stops with UnboundLocalError)"
        ),
        axis => format!(
            "weight row {row:02}: the point cloud has zero {axis}-extent (every point has the same {axis}), \
             so it cannot be scaled to the image"
        ),
    };
    Error::input(class_path, None, msg)
}

/// Draws instance `instance` of a cloud into a label canvas (width*height bytes, y down, cleared first).
pub fn raster(
    cloud: &Cloud,
    cfg: &RenderConfig,
    class_key: u32,
    row: u32,
    instance: u32,
    canvas: &mut Vec<u8>,
) {
    let (w, h) = (cfg.width as usize, cfg.height as usize);
    canvas.clear();
    canvas.resize(w * h, 0);
    let color = cfg.mode.is_color();
    let label = |i: usize| if color { 1 + (i % 128) as u8 } else { 127u8 };
    match cfg.mode {
        DrawMode::PointGray | DrawMode::PointColor => {
            for (i, (&x, &y)) in cloud.xs.iter().zip(&cloud.ys).enumerate() {
                let (x, y) = (x as usize, y as usize);
                if x < w && y < h {
                    canvas[y * w + x] = label(i);
                }
            }
        }
        DrawMode::PatchGray | DrawMode::PatchColor => match cfg.masks {
            MaskRng::Counter { seed } => {
                let key = MaskKey::new(seed, class_key, row, instance);
                // All masks first, in a loop of independent hashes the compiler vectorises, then
                // the scatter (one loop doing both waits on each point's hash chain).
                let masks: Vec<u16> = (0..cloud.xs.len() as u32).map(|i| key.mask(i)).collect();
                draw_patches(cloud, w, h, canvas, label, |i| masks[i]);
            }
            MaskRng::Python { seed } => {
                let masks = super::python_masks(seed, instance, cloud.xs.len());
                draw_patches(cloud, w, h, canvas, label, |i| masks[i] as u16);
            }
        },
    }
}

/// Pastes a 3x3 patch at (+1..+3, +1..+3) of every point, in point order, zeros included
/// (PIL's `paste` overwrites), clipped at the canvas edge.
#[inline]
fn draw_patches(
    cloud: &Cloud,
    w: usize,
    h: usize,
    canvas: &mut [u8],
    label: impl Fn(usize) -> u8,
    mut mask: impl FnMut(usize) -> u16,
) {
    for (i, (&x, &y)) in cloud.xs.iter().zip(&cloud.ys).enumerate() {
        let m = mask(i);
        let l = label(i);
        let (x0, y0) = (x as usize + 1, y as usize + 1);
        if x0 + 3 <= w && y0 + 3 <= h {
            // Three rows of three bytes: bits 8..6, 5..3, 2..0 of the mask, most significant first.
            let base = y0 * w + x0;
            for r in 0..3 {
                let bits = (m >> (6 - 3 * r)) & 7;
                let px = [
                    l & 0u8.wrapping_sub(((bits >> 2) & 1) as u8),
                    l & 0u8.wrapping_sub(((bits >> 1) & 1) as u8),
                    l & 0u8.wrapping_sub((bits & 1) as u8),
                ];
                canvas[base + r * w..base + r * w + 3].copy_from_slice(&px);
            }
        } else {
            for r in 0..3 {
                for c in 0..3 {
                    let (yy, xx) = (y0 + r, x0 + c);
                    if yy < h && xx < w {
                        let bit = (m >> (8 - (3 * r + c))) & 1;
                        canvas[yy * w + xx] = if bit == 1 { l } else { 0 };
                    }
                }
            }
        }
    }
}
