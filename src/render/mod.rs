//! Rasterisation: draw modes, patch-mask sources, flips and the CPU engine.

pub mod cpu;
pub mod gl;
pub mod resident;

use crate::error::{Error, Result};
use crate::plan::Plan;
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// One unit of render work: a point cloud (class, weight row), computed once, and the instances to draw
/// from it. The pipeline sees only units and the canvases they yield; another dataset family brings a
/// unit of its own (a stretch of one random stream, a 3D model seen from many views) and a stage for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unit {
    pub class: u32,
    pub row: u32,
    /// Epoch of the instance key (0: the run's own masks; see [`MaskRng::for_epoch`]).
    pub epoch: u64,
    /// Instances to draw, in the order their canvases are emitted.
    pub instances: Vec<u32>,
}

/// A finished label canvas (width x height bytes, y down): `slot` indexes its unit's `instances`.
pub struct Canvas {
    pub unit: u64,
    pub slot: usize,
    pub pixels: Vec<u8>,
}

/// What a render stage talks to: it claims units in order and hands back their canvases.
pub trait Feed {
    /// The next units (at most `max`) with their ids, in order; `None` when there is no more work
    /// or the run is stopping.
    fn claim(&mut self, max: usize) -> Option<Vec<(u64, Unit)>>;
    /// The next units if some are ready now, else `None` at once (it never waits for work): for
    /// claiming the next batch while the current one is still being drawn.
    fn try_claim(&mut self, max: usize) -> Option<Vec<(u64, Unit)>>;
    /// Hands over one canvas; `false` when the run is stopping (the stage then returns).
    fn emit(&mut self, canvas: Canvas) -> bool;
}

/// A render stage: made once per run and worker thread (one per CPU thread, or one per GPU with its
/// GL context), it turns claimed units into canvases until the feed runs dry.
pub trait Stage {
    fn run(&mut self, feed: &mut dyn Feed) -> Result<()>;
}

/// Counters of the render stage (nanoseconds summed over its threads).
#[derive(Default, Debug)]
pub struct StageStats {
    /// Chaos games run (one per unit, whatever the shard layout).
    pub clouds: AtomicU64,
    pub chaos_ns: AtomicU64,
    pub raster_ns: AtomicU64,
    /// GL only: device-to-host copies of finished results, and their bytes.
    pub readback_ns: AtomicU64,
    pub readback_bytes: AtomicU64,
}

impl StageStats {
    pub fn add(counter: &AtomicU64, since: Instant) {
        counter.fetch_add(since.elapsed().as_nanos() as u64, Ordering::Relaxed);
    }
}

/// Everything a render stage reads, for the whole run.
#[derive(Clone, Copy)]
pub struct StageContext<'a> {
    pub plan: &'a Plan,
    pub cfg: &'a RenderConfig,
    /// The shared `np.random.seed(100)` sequence, `cfg.iterations` long.
    pub u: &'a [f64],
    /// No messages (the device line and the software-renderer warning).
    pub quiet: bool,
    pub stats: &'a StageStats,
}

/// Opens the render stages of a run: the one thing the pipeline needs of a dataset family (FractalDB's
/// [`FractalStages`], RCDB's `rcdb::RcdbStages`).
pub trait Stages: Sync {
    /// The run's engine (`--backend`; [`CPU`] for a family with one engine).
    fn backend(&self) -> &Backend;
    /// Render worker threads for `threads` CPU threads (one per GPU for a GL engine).
    fn workers(&self, threads: usize) -> usize {
        self.backend().workers(threads)
    }
    /// Opens the stage of worker `worker` on the run's engine; called on the thread that runs it.
    fn open<'s>(&'s self, worker: usize, stats: &'s StageStats) -> Result<Box<dyn Stage + 's>> {
        self.open_on(self.backend(), worker, stats)
    }
    /// [`open`](Self::open) on `backend` instead of the run's own (Python's engine of one process
    /// draws on the GL engine from stages prepared for the CPU). A family with one engine ignores it.
    fn open_on<'s>(
        &'s self,
        backend: &Backend,
        worker: usize,
        stats: &'s StageStats,
    ) -> Result<Box<dyn Stage + 's>>;
    /// `unit`'s canvases one at a time on the CPU engine, for readers that keep many units open
    /// and draw from them in turn (Python's mixed iterables); `None`: the family has no cursor.
    /// `unit.instances` must ascend (the stream order of the families that have one).
    fn cursor(&self, unit: Unit) -> Option<Result<Box<dyn Cursor + Send + '_>>> {
        let _ = unit;
        None
    }
}

/// The CPU engine, for [`Stages::backend`] of a family with one engine.
pub static CPU: Backend = Backend::Cpu;

/// A unit opened by [`Stages::cursor`]: its canvases in the order of its instances, each drawn only
/// when asked for. It keeps the unit's stream state (an RCDB stream's 2.5 KB, an MV-FractalDB model).
pub trait Cursor {
    /// The next instance's canvas into `canvas` (resized): its slot, or `None` after the last.
    fn next(&mut self, canvas: &mut Vec<u8>) -> Result<Option<usize>>;
}

/// A borrowed family's stages are stages too (a prepared dataset lends its own).
impl<T: Stages + ?Sized> Stages for &T {
    fn backend(&self) -> &Backend {
        (**self).backend()
    }
    fn workers(&self, threads: usize) -> usize {
        (**self).workers(threads)
    }
    fn open<'s>(&'s self, worker: usize, stats: &'s StageStats) -> Result<Box<dyn Stage + 's>> {
        (**self).open(worker, stats)
    }
    fn open_on<'s>(
        &'s self,
        backend: &Backend,
        worker: usize,
        stats: &'s StageStats,
    ) -> Result<Box<dyn Stage + 's>> {
        (**self).open_on(backend, worker, stats)
    }
    fn cursor(&self, unit: Unit) -> Option<Result<Box<dyn Cursor + Send + '_>>> {
        (**self).cursor(unit)
    }
}

/// How the pipeline turns a canvas into pixels: its size and the colour of each label.
#[derive(Clone, Copy)]
pub struct ImageFormat {
    pub width: u32,
    pub height: u32,
    pub palette: [[u8; 3]; 256],
}

impl ImageFormat {
    /// Canvases that hold each pixel's gray value, written as RGB (v -> (v, v, v)).
    pub fn gray(width: u32, height: u32) -> Self {
        let mut palette = [[0u8; 3]; 256];
        for (v, p) in palette.iter_mut().enumerate() {
            *p = [v as u8; 3];
        }
        ImageFormat {
            width,
            height,
            palette,
        }
    }
}

/// FractalDB's render stages: a backend over a plan, its geometry and the chaos-game sequence.
pub struct FractalStages<'a> {
    pub backend: Backend,
    /// No messages from the render stage (the device line and the software-renderer warning).
    pub quiet: bool,
    pub plan: &'a Plan,
    pub cfg: &'a RenderConfig,
    /// The shared `np.random.seed(100)` sequence, `cfg.iterations` long.
    pub u: &'a [f64],
}

impl FractalStages<'_> {
    pub fn image(&self) -> ImageFormat {
        ImageFormat {
            width: self.cfg.width,
            height: self.cfg.height,
            palette: palette(self.cfg.mode),
        }
    }
}

impl Stages for FractalStages<'_> {
    fn backend(&self) -> &Backend {
        &self.backend
    }
    fn open_on<'s>(
        &'s self,
        backend: &Backend,
        worker: usize,
        stats: &'s StageStats,
    ) -> Result<Box<dyn Stage + 's>> {
        let ctx = StageContext {
            plan: self.plan,
            cfg: self.cfg,
            u: self.u,
            quiet: self.quiet,
            stats,
        };
        backend.open(worker, ctx)
    }
}

/// Which engine draws the images.
#[derive(Clone, Debug)]
pub enum Backend {
    Cpu,
    /// The GL engine: one stage per listed EGL device, each owning its context.
    Gl(Vec<gl::egl::Choice>, gl::GlOptions),
}

impl Backend {
    /// Render worker threads: `threads` for the CPU engine, one per GPU for GL.
    pub fn workers(&self, threads: usize) -> usize {
        match self {
            Backend::Cpu => threads.max(1),
            Backend::Gl(devices, _) => devices.len().max(1),
        }
    }

    /// Opens the stage of worker `worker`; call it on the thread that runs the stage.
    pub fn open<'a>(&self, worker: usize, ctx: StageContext<'a>) -> Result<Box<dyn Stage + 'a>> {
        Ok(match self {
            Backend::Cpu => Box::new(cpu::CpuStage::new(ctx)),
            Backend::Gl(devices, opts) => {
                let choice = devices.get(worker).copied().unwrap_or_default();
                Box::new(gl::GlStage::new(ctx, choice, *opts)?)
            }
        })
    }
}

/// The original's `--draw_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DrawMode {
    PointGray,
    PointColor,
    PatchGray,
    PatchColor,
}

impl DrawMode {
    pub const ALL: [DrawMode; 4] = [
        DrawMode::PointGray,
        DrawMode::PointColor,
        DrawMode::PatchGray,
        DrawMode::PatchColor,
    ];

    pub fn is_patch(self) -> bool {
        matches!(self, DrawMode::PatchGray | DrawMode::PatchColor)
    }
    pub fn is_color(self) -> bool {
        matches!(self, DrawMode::PointColor | DrawMode::PatchColor)
    }
    pub fn name(self) -> &'static str {
        match self {
            DrawMode::PointGray => "point_gray",
            DrawMode::PointColor => "point_color",
            DrawMode::PatchGray => "patch_gray",
            DrawMode::PatchColor => "patch_color",
        }
    }
}

impl fmt::Display for DrawMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for DrawMode {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        DrawMode::ALL.into_iter().find(|m| m.name() == s).ok_or_else(|| {
            format!("unknown draw type {s:?}: expected point_gray, point_color, patch_gray or patch_color")
        })
    }
}

/// Which split of the dataset to draw (`--split`): the same classes, other instances.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Split {
    #[default]
    Train,
    Val,
}

impl Split {
    pub fn index(self) -> u32 {
        match self {
            Split::Train => 0,
            Split::Val => 1,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
        }
    }
}

/// Where the 9-bit patch masks come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MaskRng {
    /// Counter-based, keyed by (seed, class, row, instance, point index): independent of scheduling.
    Counter { seed: u64 },
    /// CPython's `random`, seeded with `S + n` right before instance n of every (class, row):
    /// reproduces a seeded run of the original (`random.seed(S + n)` before `draw_patch`).
    Python { seed: i64 },
}

impl FromStr for MaskRng {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let bad = || {
            format!("invalid mask generator {s:?}: expected counter, counter:SEED or python:SEED")
        };
        match s.split_once(':') {
            None if s == "counter" => Ok(MaskRng::Counter { seed: 0 }),
            Some(("counter", v)) => v
                .parse()
                .map(|seed| MaskRng::Counter { seed })
                .map_err(|_| bad()),
            Some(("python", v)) => v
                .parse()
                .map(|seed| MaskRng::Python { seed })
                .map_err(|_| bad()),
            _ => Err(bad()),
        }
    }
}

impl MaskRng {
    /// The masks of epoch `epoch` of these masks' instances: counter masks re-keyed by the
    /// instance key (epoch 0 unchanged); CPython masks have no epochs.
    pub fn for_epoch(self, epoch: u64) -> MaskRng {
        match self {
            MaskRng::Counter { seed } if epoch > 0 => MaskRng::Counter {
                seed: crate::rng::instance_seed(seed, 0, epoch),
            },
            m => m,
        }
    }
}

impl fmt::Display for MaskRng {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MaskRng::Counter { seed } => write!(f, "counter:{seed}"),
            MaskRng::Python { seed } => write!(f, "python:{seed}"),
        }
    }
}

/// The masks of instance `instance` under `--mask-rng python:S`: CPython's `randrange(1, 512)` after
/// `random.seed(S + instance)`, one per point, in point order.
pub fn python_masks(seed: i64, instance: u32, n: usize) -> Vec<u32> {
    let mut py = crate::rng::PyRandom::seed(seed as i128 + instance as i128);
    (0..n).map(|_| py.randrange_1_512() as u32).collect()
}

/// Image geometry and drawing settings shared by every image of a run.
#[derive(Clone, Debug, PartialEq)]
pub struct RenderConfig {
    pub width: u32,
    pub height: u32,
    pub pad_x: u32,
    pub pad_y: u32,
    /// Points per image, the origin included (`--iteration`).
    pub iterations: usize,
    pub mode: DrawMode,
    pub masks: MaskRng,
}

impl RenderConfig {
    /// Rejects geometry the original would crash on or silently garble.
    pub fn validate(&self) -> Result<()> {
        if self.iterations < 1 {
            return Err(Error::flag("--iteration", "must be at least 1"));
        }
        for (flag, size, pad) in [
            ("--image-size-x/--pad-size-x", self.width, self.pad_x),
            ("--image-size-y/--pad-size-y", self.height, self.pad_y),
        ] {
            if pad < 1 || size <= 2 * pad {
                return Err(Error::flag(
                    flag,
                    format!(
                        "image size {size} with pad {pad}: need pad >= 1 and size > 2*pad \
                         (points land in [pad, size-pad]; the 3x3 patch at +1..+3 is clipped at the edge)"
                    ),
                ));
            }
            if size > 16384 {
                return Err(Error::flag(
                    flag,
                    format!("image size {size} is larger than 16384"),
                ));
            }
        }
        Ok(())
    }

    /// Instances actually drawn per (class, row): point modes ignore `--instance`.
    pub fn instances(&self, requested: u32) -> u32 {
        if self.mode.is_patch() { requested } else { 1 }
    }
}

/// The original's `convert_color(i, 128)`, returned as (R, G, B).
pub fn convert_color(i: usize) -> [u8; 3] {
    use std::f64::consts::PI;
    let s = 0.75f64;
    let mut h_ang = 2.0 * PI * ((i % 128) as f64 / 128.0);
    if h_ang >= 2.0 * PI {
        h_ang -= 2.0 * PI;
    }
    let k = (3.0 / PI) * h_ang;
    let h = k.floor();
    let iv = 0.75f64;
    let p = iv * (1.0 - s);
    let q = iv * (1.0 - s * (k - h));
    let t = iv * (1.0 - s * ((1.0 - k) + h));
    let u8c = |v: f64| (v * 255.0) as u8;
    let (i8, p8, q8, t8) = (u8c(iv), u8c(p), u8c(q), u8c(t));
    match h as i32 {
        0 => [p8, t8, i8],
        1 => [p8, i8, q8],
        2 => [t8, i8, p8],
        3 => [i8, q8, p8],
        4 => [i8, p8, t8],
        _ => [q8, p8, i8],
    }
}

/// Label → RGB: 0 is black; gray modes use label 127; colour modes use 1 + (i % 128).
pub fn palette(mode: DrawMode) -> [[u8; 3]; 256] {
    let mut pal = [[0u8; 3]; 256];
    if mode.is_color() {
        for i in 0..128 {
            pal[1 + i] = convert_color(i);
        }
    } else {
        pal[127] = [127, 127, 127];
    }
    pal
}

/// Writes flip `t` of a label canvas as 8-bit pixels (`channels` 3 = RGB, 1 = gray) into `out`.
/// The canvas has y pointing down; the original flips it top-bottom first, then:
/// flip0 = that image, flip1 = top-bottom of it (the raw canvas), flip2 = left-right, flip3 = both.
pub fn write_flip(
    canvas: &[u8],
    width: usize,
    height: usize,
    flip: u8,
    pal: &[[u8; 3]; 256],
    channels: usize,
    out: &mut Vec<u8>,
) {
    out.resize(width * height * channels, 0);
    write_flip_into(canvas, width, height, flip, pal, channels, out);
}

/// [`write_flip`] into a slice of exactly `width * height * channels` bytes.
pub fn write_flip_into(
    canvas: &[u8],
    width: usize,
    height: usize,
    flip: u8,
    pal: &[[u8; 3]; 256],
    channels: usize,
    out: &mut [u8],
) {
    for r in 0..height {
        let dst = &mut out[r * width * channels..(r + 1) * width * channels];
        flip_row(canvas, width, height, flip, r, pal, channels, dst);
    }
}

/// Row `r` of flip `flip` of a label canvas, as 8-bit gray (`channels` 1) or RGB pixels in `dst`.
#[allow(clippy::too_many_arguments)]
#[inline]
fn flip_row(
    canvas: &[u8],
    width: usize,
    height: usize,
    flip: u8,
    r: usize,
    pal: &[[u8; 3]; 256],
    channels: usize,
    dst: &mut [u8],
) {
    let tb = flip == 0 || flip == 2;
    let lr = flip >= 2;
    let src_row = if tb { height - 1 - r } else { r };
    let src = &canvas[src_row * width..(src_row + 1) * width];
    match (channels, lr) {
        (1, false) => dst
            .iter_mut()
            .zip(src)
            .for_each(|(d, &l)| *d = pal[l as usize][0]),
        (1, true) => dst
            .iter_mut()
            .zip(src.iter().rev())
            .for_each(|(d, &l)| *d = pal[l as usize][0]),
        (_, false) => dst
            .chunks_exact_mut(3)
            .zip(src)
            .for_each(|(d, &l)| d.copy_from_slice(&pal[l as usize])),
        (_, true) => dst
            .chunks_exact_mut(3)
            .zip(src.iter().rev())
            .for_each(|(d, &l)| d.copy_from_slice(&pal[l as usize])),
    }
}

/// PNG settings: zlib level and colour type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PngConfig {
    /// 0 = stored, 1..=9 = zlib levels.
    pub level: u8,
    /// 1-channel gray instead of the original's RGB.
    pub gray: bool,
}

impl PngConfig {
    pub fn channels(&self) -> usize {
        if self.gray { 1 } else { 3 }
    }
}

/// The identity of the PNG encoder, which the shard bytes depend on (recorded in the settings
/// fingerprint and the manifest, so `--resume` refuses parts another encoder wrote): zlib-rs
/// (checked against Cargo.lock by a test), no filter, the whole image deflated in one call.
pub const ENCODER: &str = "zlib-rs-0.6 nofilter oneshot";

/// An encoder thread's reusable state: the filtered rows, the deflate output and one zlib stream,
/// reset per image (a fresh stream costs its allocation and table clears every time).
#[derive(Default)]
pub struct PngScratch {
    raw: Vec<u8>,
    z: Vec<u8>,
    deflate: Option<(u8, zlib_rs::Deflate)>,
}

fn png_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let crc = zlib_rs::crc32::crc32(zlib_rs::crc32::crc32(0, kind), data);
    out.extend_from_slice(&crc.to_be_bytes());
}

/// Flip `flip` of a label canvas straight to a PNG: one pass writes the filtered rows (filter byte
/// 0, then the palette's gray or RGB bytes, flipped) into the deflate input, one deflate call
/// compresses them (its Adler-32 computed on the way), then IHDR, one IDAT and IEND.
#[allow(clippy::too_many_arguments)]
pub fn encode_canvas(
    canvas: &[u8],
    width: usize,
    height: usize,
    flip: u8,
    pal: &[[u8; 3]; 256],
    cfg: PngConfig,
    scratch: &mut PngScratch,
    out: &mut Vec<u8>,
) -> Result<()> {
    let ch = cfg.channels();
    let row = 1 + width * ch;
    let mut raw = std::mem::take(&mut scratch.raw);
    // One byte of slack: the RGB rows are written four bytes a pixel, three apart.
    raw.resize(row * height + 1, 0);
    let rgb: [u32; 256] = std::array::from_fn(|l| {
        let [r, g, b] = pal[l];
        u32::from_le_bytes([r, g, b, 0])
    });
    for r in 0..height {
        let dst = &mut raw[r * row..(r + 1) * row + 1];
        dst[0] = 0;
        filtered_row(canvas, width, height, flip, r, pal, &rgb, ch, &mut dst[1..]);
    }
    let result = deflate_png(&raw[..row * height], width, height, cfg, scratch, out);
    scratch.raw = raw;
    result
}

/// Encodes 8-bit pixels (rows of `width * channels` bytes) as a PNG with no filter, as
/// [`encode_canvas`] does (the search previews).
pub fn encode_png(
    pixels: &[u8],
    width: u32,
    height: u32,
    cfg: PngConfig,
    out: &mut Vec<u8>,
) -> Result<()> {
    let (w, h) = (width as usize, height as usize);
    let line = w * cfg.channels();
    let mut scratch = PngScratch::default();
    let mut raw = Vec::with_capacity((line + 1) * h);
    for r in 0..h {
        raw.push(0);
        raw.extend_from_slice(&pixels[r * line..(r + 1) * line]);
    }
    deflate_png(&raw, w, h, cfg, &mut scratch, out)
}

/// The PNG around filtered rows `raw`: signature, IHDR, the zlib stream as one IDAT, IEND.
fn deflate_png(
    raw: &[u8],
    width: usize,
    height: usize,
    cfg: PngConfig,
    scratch: &mut PngScratch,
    out: &mut Vec<u8>,
) -> Result<()> {
    let level = cfg.level.min(9);
    let deflate = match &mut scratch.deflate {
        Some((l, d)) if *l == level => {
            d.reset();
            d
        }
        slot => {
            let d = zlib_rs::Deflate::new(level as i32, true, 15);
            &mut slot.insert((level, d)).1
        }
    };
    let z = &mut scratch.z;
    // Kept between images: clearing it would write the whole bound again each time.
    let bound = zlib_rs::compress_bound(raw.len());
    if z.len() < bound {
        z.resize(bound, 0);
    }
    let status = deflate
        .compress(raw, z, zlib_rs::DeflateFlush::Finish)
        .map_err(|e| Error::Png(format!("deflate: {}", e.as_str())))?;
    if status != zlib_rs::Status::StreamEnd {
        return Err(Error::Png(format!(
            "deflate did not finish ({status:?}) in a buffer of compress_bound bytes"
        )));
    }
    let zlen = deflate.total_out() as usize;
    out.clear();
    out.reserve(zlen + 64);
    out.extend_from_slice(&[0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a]);
    let mut ihdr = [0u8; 13];
    ihdr[0..4].copy_from_slice(&(width as u32).to_be_bytes());
    ihdr[4..8].copy_from_slice(&(height as u32).to_be_bytes());
    ihdr[8] = 8;
    ihdr[9] = if cfg.gray { 0 } else { 2 };
    png_chunk(out, b"IHDR", &ihdr);
    png_chunk(out, b"IDAT", &z[..zlen]);
    png_chunk(out, b"IEND", &[]);
    Ok(())
}

/// Row `r` of flip `flip` as PNG pixel bytes in `dst` (`width * channels` bytes, plus one byte of
/// slack for RGB, which is written as overlapping 4-byte words of `rgb`: the palette's colours).
#[allow(clippy::too_many_arguments)]
#[inline]
fn filtered_row(
    canvas: &[u8],
    width: usize,
    height: usize,
    flip: u8,
    r: usize,
    pal: &[[u8; 3]; 256],
    rgb: &[u32; 256],
    channels: usize,
    dst: &mut [u8],
) {
    if channels == 1 {
        return flip_row(canvas, width, height, flip, r, pal, 1, &mut dst[..width]);
    }
    let tb = flip == 0 || flip == 2;
    let src_row = if tb { height - 1 - r } else { r };
    let src = &canvas[src_row * width..(src_row + 1) * width];
    let dst = &mut dst[..3 * width + 1];
    let put = |dst: &mut [u8], k: usize, l: u8| {
        dst[3 * k..3 * k + 4].copy_from_slice(&rgb[l as usize].to_le_bytes());
    };
    if flip >= 2 {
        for (k, &l) in src.iter().rev().enumerate() {
            put(dst, k, l);
        }
    } else {
        for (k, &l) in src.iter().enumerate() {
            put(dst, k, l);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colours_match_the_original_table() {
        // i = 0: H = 0, h = 0 -> (P, T, I) with P = 47, I = 191, T = uint8(0.75*(1-0.75*1)*255) = 47.
        assert_eq!(convert_color(0), [47, 47, 191]);
        assert_eq!(convert_color(128), convert_color(0));
        let distinct: std::collections::HashSet<_> = (0..128).map(convert_color).collect();
        assert!(distinct.len() > 64);
    }

    #[test]
    fn flips() {
        // 2x2 canvas, labels: row0 = [127, 0], row1 = [0, 0]
        let canvas = [127u8, 0, 0, 0];
        let pal = palette(DrawMode::PointGray);
        let mut out = Vec::new();
        write_flip(&canvas, 2, 2, 1, &pal, 1, &mut out);
        assert_eq!(out, [127, 0, 0, 0]);
        write_flip(&canvas, 2, 2, 0, &pal, 1, &mut out);
        assert_eq!(out, [0, 0, 127, 0]);
        write_flip(&canvas, 2, 2, 2, &pal, 1, &mut out);
        assert_eq!(out, [0, 0, 0, 127]);
        write_flip(&canvas, 2, 2, 3, &pal, 1, &mut out);
        assert_eq!(out, [0, 127, 0, 0]);
    }

    /// Decodes a PNG with the `png` crate (a decoder we did not write): (colour type, pixels).
    fn decode(png: &[u8]) -> (png::ColorType, u32, u32, Vec<u8>) {
        let mut r = png::Decoder::new(std::io::Cursor::new(png))
            .read_info()
            .unwrap();
        let mut buf = vec![0; r.output_buffer_size().unwrap()];
        let info = r.next_frame(&mut buf).unwrap();
        buf.truncate(info.buffer_size());
        (info.color_type, info.width, info.height, buf)
    }

    #[test]
    fn the_fused_encoder_writes_write_flips_pixels() {
        // Canvases like ours (sparse labels, noise), every flip, gray and RGB, every level and odd
        // sizes: the png crate decodes exactly what write_flip makes of the canvas.
        let mut x: u32 = 0x1234_5678;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x
        };
        let mut scratch = PngScratch::default();
        for (w, h) in [(362usize, 362usize), (64, 48), (7, 3), (1, 1)] {
            let canvas: Vec<u8> = (0..w * h)
                .map(|_| {
                    let v = next();
                    if v % 3 == 0 { (v >> 8) as u8 % 129 } else { 0 }
                })
                .collect();
            for mode in [DrawMode::PatchGray, DrawMode::PatchColor] {
                let pal = palette(mode);
                for gray in [false, true] {
                    if gray && mode.is_color() {
                        continue;
                    }
                    for level in 0u8..=9 {
                        let cfg = PngConfig { level, gray };
                        for flip in 0..4 {
                            let mut pixels = Vec::new();
                            write_flip(&canvas, w, h, flip, &pal, cfg.channels(), &mut pixels);
                            let mut got = Vec::new();
                            encode_canvas(&canvas, w, h, flip, &pal, cfg, &mut scratch, &mut got)
                                .unwrap();
                            let what =
                                format!("{w}x{h} {mode} gray={gray} level {level} flip {flip}");
                            let want_type = if gray {
                                png::ColorType::Grayscale
                            } else {
                                png::ColorType::Rgb
                            };
                            assert_eq!(
                                decode(&got),
                                (want_type, w as u32, h as u32, pixels.clone()),
                                "{what}"
                            );
                            let mut again = Vec::new();
                            encode_png(&pixels, w as u32, h as u32, cfg, &mut again).unwrap();
                            assert!(again == got, "{what}: encode_png and encode_canvas differ");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn mask_rng_parse() {
        assert_eq!(
            "python:12345".parse::<MaskRng>().unwrap(),
            MaskRng::Python { seed: 12345 }
        );
        assert_eq!(
            "counter".parse::<MaskRng>().unwrap(),
            MaskRng::Counter { seed: 0 }
        );
        assert!("python:x".parse::<MaskRng>().is_err());
    }
}
