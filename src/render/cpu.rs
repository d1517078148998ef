//! The CPU engine: the chaos game once per (class, weight row), then one label canvas per instance.

use super::{Canvas, DrawMode, Feed, MaskRng, RenderConfig, Stage, StageContext, StageStats};
use crate::error::{Error, Result};
use crate::ifs::{self, Cloud, Ifs, WeightRow};
use crate::rng::MaskKey;
use std::sync::atomic::Ordering;
use std::time::Instant;

/// Units a CPU stage claims at once: their chaos games run as the four lanes of
/// [`ifs::chaos_lanes`], so their latencies overlap.
pub const UNITS_PER_CLAIM: usize = 4;

/// The CPU engine as a render stage: four units at a time (their clouds computed together), each
/// unit's canvases as soon as they are drawn.
pub struct CpuStage<'a> {
    ctx: StageContext<'a>,
    scratch: Scratch,
    clouds: Vec<Cloud>,
    cover: Cover,
}

impl<'a> CpuStage<'a> {
    pub fn new(ctx: StageContext<'a>) -> Self {
        CpuStage {
            ctx,
            scratch: Scratch::default(),
            clouds: Vec::new(),
            cover: Cover::default(),
        }
    }
}

impl Stage for CpuStage<'_> {
    fn run(&mut self, feed: &mut dyn Feed) -> Result<()> {
        let ctx = self.ctx;
        while let Some(units) = feed.claim(UNITS_PER_CLAIM) {
            let t0 = Instant::now();
            let sources: Vec<(&Ifs, &WeightRow)> = units
                .iter()
                .map(|(_, u)| {
                    let class = &ctx.plan.classes[u.class as usize];
                    (&class.ifs, &ctx.plan.weights[u.row as usize])
                })
                .collect();
            let made = compute_clouds(
                &sources,
                ctx.u,
                ctx.cfg,
                &mut self.scratch,
                &mut self.clouds,
            );
            StageStats::add(&ctx.stats.chaos_ns, t0);
            // An interrupted chaos game leaves its clouds incomplete: never drawn.
            crate::check_interrupt()?;
            for (((id, unit), made), cloud) in units.into_iter().zip(made).zip(&self.clouds) {
                let class = &ctx.plan.classes[unit.class as usize];
                made.map_err(|axis| degenerate_error(&class.path, unit.row as usize, axis))?;
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
                let t0 = Instant::now();
                self.cover.build(cloud, cfg);
                StageStats::add(&ctx.stats.raster_ns, t0);
                for (slot, &instance) in unit.instances.iter().enumerate() {
                    let t0 = Instant::now();
                    let mut pixels = Vec::new();
                    raster(
                        cloud,
                        &self.cover,
                        cfg,
                        class.key,
                        unit.row,
                        instance,
                        &mut pixels,
                    );
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
    /// Four lanes' (x, y) points, and one lane's rescaled pairs.
    pairs: [Vec<f64>; 4],
    px: Vec<u16>,
}

/// Computes the rescaled point cloud of `ifs` with weight row `w` (the original's `calculate` +
/// `__rescale`). `u` is the shared `np.random.seed(100)` sequence, `cfg.iterations` long.
/// A zero-width bounding box is an error (the original divides by zero and draws garbage).
/// Once [`crate::interrupted`], the cloud may be incomplete: look at it before using the cloud.
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
    if let Some(lane) = ifs::Lane::new(&weighted) {
        // As a lane: the bucket map choice and the rescale straight from the bounds.
        let mut pairs = std::mem::take(&mut scratch.pairs[0]);
        let bounds = ifs::chaos_lane(&lane, cfg.iterations, &mut pairs, |k, buf| {
            buf.copy_from_slice(&u[k..k + buf.len()])
        });
        let r = cloud_from_pairs(&pairs, bounds, cfg, scratch, out);
        scratch.pairs[0] = pairs;
        return r;
    }
    weighted.chaos_game(&u[..cfg.iterations], &mut scratch.xs, &mut scratch.ys);
    cloud_from_points(&mut scratch.xs, &mut scratch.ys, cfg, out)
}

/// [`compute_cloud`] of several (IFS, weight row) sources into `out[i]` (resized to fit), the same
/// clouds and errors: up to four at a time as the lanes of [`ifs::chaos_lanes`] (every source a
/// [`ifs::Lane`]; a missing lane is filled with a copy), else one by one.
pub fn compute_clouds(
    sources: &[(&Ifs, &WeightRow)],
    u: &[f64],
    cfg: &RenderConfig,
    scratch: &mut Scratch,
    out: &mut Vec<Cloud>,
) -> Vec<Result<(), &'static str>> {
    out.resize_with(out.len().max(sources.len()), Cloud::default);
    let mut made = Vec::with_capacity(sources.len());
    for (group, outs) in sources.chunks(4).zip(out.chunks_mut(4)) {
        let weighted: Vec<Ifs> = group.iter().map(|(ifs, w)| ifs.weighted(w)).collect();
        let lanes: Vec<Option<ifs::Lane>> = weighted.iter().map(ifs::Lane::new).collect();
        let first_ok = |w: &Ifs| cfg.iterations <= 1 || w.first_step_chooses_a_map(u[0]);
        if group.len() < 2 || lanes.iter().any(|l| l.is_none()) {
            for ((ifs, w), cloud) in group.iter().zip(outs.iter_mut()) {
                made.push(compute_cloud(ifs, w, u, cfg, scratch, cloud));
            }
            continue;
        }
        let pick = |i: usize| lanes[i.min(group.len() - 1)].as_ref().unwrap();
        let bounds = ifs::chaos_lanes(
            std::array::from_fn(pick),
            cfg.iterations,
            &mut scratch.pairs,
            |_, k, buf| buf.copy_from_slice(&u[k..k + buf.len()]),
        );
        for (l, (w, cloud)) in weighted.iter().zip(outs.iter_mut()).enumerate() {
            made.push(if !first_ok(w) {
                Err(NO_FIRST_MAP)
            } else {
                let pairs = std::mem::take(&mut scratch.pairs[l]);
                let r = cloud_from_pairs(&pairs, bounds[l], cfg, scratch, cloud);
                scratch.pairs[l] = pairs;
                r
            });
        }
    }
    made
}

/// The rescale of a chaos game's (x, y) pairs with its lane bounds: for a finite orbit straight
/// from the bounds (the arithmetic of [`ifs::rescale`], vectorised); otherwise through
/// [`cloud_from_points`] (NaN truncation, inf).
fn cloud_from_pairs(
    pairs: &[f64],
    bounds: ifs::Bounds,
    cfg: &RenderConfig,
    scratch: &mut Scratch,
    out: &mut Cloud,
) -> Result<(), &'static str> {
    if !ifs::pairs_finite(pairs) {
        scratch.xs.clear();
        scratch.ys.clear();
        scratch.xs.extend(pairs.iter().step_by(2));
        scratch.ys.extend(pairs.iter().skip(1).step_by(2));
        return cloud_from_points(&mut scratch.xs, &mut scratch.ys, cfg, out);
    }
    let sx = ifs::AxisScale::new(bounds[0], bounds[1], cfg.width, cfg.pad_x);
    let sy = ifs::AxisScale::new(bounds[2], bounds[3], cfg.height, cfg.pad_y);
    // degenerate_axis on the shifted points: max - min is the scale's range.
    if sx.range() == 0.0 {
        return Err("x");
    }
    if sy.range() == 0.0 {
        return Err("y");
    }
    scratch.px.resize(pairs.len(), 0);
    ifs::AxisScale::apply_pairs([&sx, &sy], pairs, &mut scratch.px);
    out.xs.clear();
    out.ys.clear();
    out.xs.extend(scratch.px.iter().step_by(2));
    out.ys.extend(scratch.px.iter().skip(1).step_by(2));
    out.truncated = 0;
    Ok(())
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

/// Which point last covers each pixel of a cloud's canvas, and which bit of that point's 3x3 mask
/// lands there: the same for every instance of the cloud (only the masks differ), so a cloud's
/// patch canvases cost one pass over its points plus one pass over the pixels per instance, instead
/// of nine byte stores per point per instance. The compute raster of the GL engine (glsl/splat.comp)
/// keeps the same winner per pixel.
#[derive(Default)]
pub struct Cover {
    /// Per pixel (y down): 0 when no patch covers it, else `(i + 1) << 4 | s` for the last point `i`
    /// whose patch covers it, `s` the shift of its mask bit there (`8 - (3 r + c)`).
    cells: Vec<u32>,
    /// The geometry the cells were built for; `None` for point modes and clouds too large for the
    /// 28 bits of a point index (then [`raster`] pastes patches point by point).
    built: Option<(usize, usize)>,
}

/// Points whose index + 1 fits in a [`Cover`] cell's 28 bits.
const COVER_MAX_POINTS: usize = (1 << 28) - 1;

impl Cover {
    /// Whether [`raster_cover`] can draw `cfg`'s images from this cover alone.
    pub fn draws(&self, cfg: &RenderConfig) -> bool {
        cfg.mode.is_patch() && self.built == Some((cfg.width as usize, cfg.height as usize))
    }

    /// Finds the winner of every pixel of `cloud` drawn with `cfg` (patch modes; a no-op otherwise).
    pub fn build(&mut self, cloud: &Cloud, cfg: &RenderConfig) {
        self.built = None;
        if !cfg.mode.is_patch() || cloud.xs.len() > COVER_MAX_POINTS {
            return;
        }
        let (w, h) = (cfg.width as usize, cfg.height as usize);
        let cells = &mut self.cells;
        cells.clear();
        cells.resize(w * h, 0);
        for (i, (&x, &y)) in cloud.xs.iter().zip(&cloud.ys).enumerate() {
            let id = (i as u32 + 1) << 4;
            let (x0, y0) = (x as usize + 1, y as usize + 1);
            if x0 + 3 <= w && y0 + 3 <= h {
                let base = y0 * w + x0;
                for r in 0..3 {
                    let s = 8 - 3 * r as u32;
                    cells[base + r * w..base + r * w + 3].copy_from_slice(&[
                        id | s,
                        id | (s - 1),
                        id | (s - 2),
                    ]);
                }
            } else {
                for r in 0..3 {
                    for c in 0..3 {
                        let (yy, xx) = (y0 + r, x0 + c);
                        if yy < h && xx < w {
                            cells[yy * w + xx] = id | (8 - (3 * r + c)) as u32;
                        }
                    }
                }
            }
        }
        self.built = Some((w, h));
    }
}

/// Draws instance `instance` of a cloud into a label canvas (width*height bytes, y down, cleared
/// first). Patch modes read `cover`, built from this cloud with [`Cover::build`].
pub fn raster(
    cloud: &Cloud,
    cover: &Cover,
    cfg: &RenderConfig,
    class_key: u32,
    row: u32,
    instance: u32,
    canvas: &mut Vec<u8>,
) {
    let points = cloud.xs.len();
    if !raster_cover(cover, points, cfg, (class_key, row, instance), canvas) {
        raster_points(cloud, cfg, class_key, row, instance, canvas);
    }
}

/// [`raster`] from the cover alone (a cloud of `points` points; the points themselves are not
/// needed): `false`, with nothing drawn, when the cover cannot draw it (point modes, a cover not
/// built for this geometry), where [`raster_points`] needs the cloud.
pub fn raster_cover(
    cover: &Cover,
    points: usize,
    cfg: &RenderConfig,
    (class_key, row, instance): (u32, u32, u32),
    canvas: &mut Vec<u8>,
) -> bool {
    let (w, h) = (cfg.width as usize, cfg.height as usize);
    if !cover.draws(cfg) {
        return false;
    }
    canvas.clear();
    canvas.resize(w * h, 0);
    let color = cfg.mode.is_color();
    match cfg.masks {
        MaskRng::Counter { seed } => {
            let key = MaskKey::new(seed, class_key, row, instance);
            resolve_counter(&cover.cells, key, color, canvas);
        }
        MaskRng::Python { seed } => {
            let masks = super::python_masks(seed, instance, points);
            for (o, &c) in canvas.iter_mut().zip(&cover.cells) {
                if c != 0 {
                    let i = (c >> 4) as usize - 1;
                    if (masks[i] >> (c & 15)) & 1 == 1 {
                        *o = label(color, i as u32);
                    }
                }
            }
        }
    }
    true
}

/// The label of point `i`: 127 in gray modes, `1 + i % 128` in colour modes.
#[inline(always)]
fn label(color: bool, i: u32) -> u8 {
    if color { 1 + (i % 128) as u8 } else { 127u8 }
}

/// The counter masks' canvas from a cover: each covered pixel is its winner's label where the
/// winner's mask bit is set, else 0. One independent hash per pixel, so the loop vectorises; on
/// x86-64 an AVX2 copy of it is taken when the processor has AVX2 (the same arithmetic).
fn resolve_counter(cells: &[u32], key: MaskKey, color: bool, canvas: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the processor has AVX2 (checked just above), all the function requires.
        unsafe { resolve_counter_avx2(cells, key, color, canvas) };
        return;
    }
    resolve_counter_any(cells, key, color, canvas);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn resolve_counter_avx2(cells: &[u32], key: MaskKey, color: bool, canvas: &mut [u8]) {
    resolve_counter_any(cells, key, color, canvas);
}

#[inline(always)]
fn resolve_counter_any(cells: &[u32], key: MaskKey, color: bool, canvas: &mut [u8]) {
    for (o, &c) in canvas.iter_mut().zip(cells) {
        // c == 0 (uncovered) hashes a wrapped index whose result is masked off.
        let i = (c >> 4).wrapping_sub(1);
        let bit = (key.mask(i) as u32 >> (c & 15)) & 1;
        let on = (c != 0) as u32 & bit;
        *o = label(color, i) & 0u8.wrapping_sub(on as u8);
    }
}

/// Point modes (one pixel per point, the last one wins), and patches pasted point by point when
/// there is no cover: the original's order, one point after the other.
pub fn raster_points(
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
    let label = |i: usize| label(color, i as u32);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A cloud of `n` points from a small LCG: mostly inside, some on and past the edges (the
    /// clipped paths), some far off the canvas (numpy's uint16 wrap-around).
    fn cloud(n: usize, w: u16, h: u16, seed: u64) -> Cloud {
        let mut s = seed;
        let mut next = || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (s >> 33) as u32
        };
        let mut c = Cloud::default();
        for _ in 0..n {
            let (x, y) = match next() % 16 {
                0 => (w - 1 - (next() % 4) as u16, (next() % h as u32) as u16),
                1 => ((next() % w as u32) as u16, h - 1 - (next() % 4) as u16),
                2 => (next() as u16, next() as u16),
                _ => ((next() % w as u32) as u16, (next() % h as u32) as u16),
            };
            c.xs.push(x);
            c.ys.push(y);
        }
        c
    }

    /// The original's order of work for one cloud: `Ifs::chaos_game`, then the full rescale.
    fn reference_cloud(
        ifs: &Ifs,
        w: &WeightRow,
        u: &[f64],
        cfg: &RenderConfig,
    ) -> Result<Cloud, &'static str> {
        let weighted = ifs.weighted(w);
        if cfg.iterations > 1 && !weighted.first_step_chooses_a_map(u[0]) {
            return Err(NO_FIRST_MAP);
        }
        let (mut xs, mut ys, mut c) = (Vec::new(), Vec::new(), Cloud::default());
        weighted.chaos_game(&u[..cfg.iterations], &mut xs, &mut ys);
        cloud_from_points(&mut xs, &mut ys, cfg, &mut c).map(|_| c)
    }

    #[test]
    fn lanes_and_the_single_lane_give_the_reference_clouds_and_errors() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/reference/categories");
        let mut ifss: Vec<Ifs> = (0..6)
            .map(|k| Ifs::read_csv(&dir.join(format!("{k:05}.csv"))).unwrap())
            .collect();
        // A constant orbit (zero extent), and one that overflows to inf and NaN.
        let mut flat = ifss[0].clone();
        for m in &mut flat.maps {
            (m.a, m.b, m.c, m.d) = (0.0, 0.0, 0.0, 0.0);
        }
        let mut wild = ifss[1].clone();
        for m in &mut wild.maps {
            (m.a, m.d) = (m.a * 1e100, m.d * 1e100);
        }
        ifss.extend([flat, wild]);
        let weights = ifs::load_weights("builtin:0.4").unwrap();
        let cfg = RenderConfig {
            width: 362,
            height: 300,
            pad_x: 6,
            pad_y: 9,
            iterations: 20_000,
            mode: DrawMode::PatchGray,
            masks: MaskRng::Counter { seed: 0 },
        };
        let u = crate::rng::NumpyRandom::seed(100).random_vec(cfg.iterations);
        let sources: Vec<(&Ifs, &WeightRow)> = ifss
            .iter()
            .flat_map(|f| [(f, &weights[0]), (f, &weights[4]), (f, &weights[24])])
            .collect();
        let want: Vec<_> = sources
            .iter()
            .map(|(f, w)| reference_cloud(f, w, &u, &cfg))
            .collect();
        assert!(
            want.iter().any(|r| r.is_err())
                && want
                    .iter()
                    .any(|r| r.as_ref().is_ok_and(|c| c.truncated > 0))
        );
        let (mut scratch, mut clouds) = (Scratch::default(), Vec::new());
        let made = compute_clouds(&sources, &u, &cfg, &mut scratch, &mut clouds);
        for (i, (want, made)) in want.iter().zip(&made).enumerate() {
            let mut single = Cloud::default();
            let one = compute_cloud(
                sources[i].0,
                sources[i].1,
                &u,
                &cfg,
                &mut scratch,
                &mut single,
            );
            match want {
                Ok(c) => {
                    assert!(made.is_ok() && one.is_ok(), "source {i}");
                    for got in [&clouds[i], &single] {
                        assert_eq!(
                            (&got.xs, &got.ys, got.truncated),
                            (&c.xs, &c.ys, c.truncated),
                            "source {i}"
                        );
                    }
                }
                Err(e) => assert!(made == &Err(*e) && one == Err(*e), "source {i}: {e}"),
            }
        }
    }

    #[test]
    fn the_cover_draws_what_point_by_point_pasting_draws() {
        let mut cover = Cover::default();
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for (k, (w, h, n)) in [
            (37u16, 23u16, 3_000usize),
            (64, 64, 20_000),
            (5, 5, 40),
            (362, 362, 1),
        ]
        .into_iter()
        .enumerate()
        {
            let c = cloud(n, w, h, k as u64 + 7);
            for mode in [DrawMode::PatchGray, DrawMode::PatchColor] {
                for masks in [
                    MaskRng::Counter { seed: 3 },
                    MaskRng::Counter { seed: 1 << 40 },
                    MaskRng::Python { seed: 12345 },
                ] {
                    let cfg = RenderConfig {
                        width: w as u32,
                        height: h as u32,
                        pad_x: 1,
                        pad_y: 1,
                        iterations: n,
                        mode,
                        masks,
                    };
                    cover.build(&c, &cfg);
                    for instance in [0, 9] {
                        raster(&c, &cover, &cfg, 0xabcd, 2, instance, &mut a);
                        raster_points(&c, &cfg, 0xabcd, 2, instance, &mut b);
                        assert_eq!(
                            a, b,
                            "{w}x{h}, {n} points, {mode}, {masks}, instance {instance}"
                        );
                        assert!(a.iter().any(|&v| v != 0));
                    }
                }
            }
        }
    }
}
