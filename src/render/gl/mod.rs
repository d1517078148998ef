//! The GL backend: the chaos game in fp64 compute shaders (many clouds per dispatch, one invocation per
//! cloud) and a compute raster (atomicMax of the point index per pixel, then a resolve pass per instance),
//! on a headless EGL context. Its pixels equal the CPU engine's: the chaos game is exact in fp64, the
//! rescale (`glsl/rescale.comp`, or the CPU engine's own code with `--rescale cpu`) follows the
//! original's operations and NaN truncation, and "last point wins" is what atomicMax computes.
//!
//! What runs where today: the chaos game (`chaos.rs`, `glsl/chaos.comp`), the rescale (`rescale.rs`,
//! `glsl/rescale.comp`) and the raster (`raster.rs`: `glsl/splat.comp` + `glsl/resolve.comp`, or
//! `glsl/points.vert` + `glsl/points.frag`) run on the device; the CPU prepares the maps, the masks
//! of `--mask-rng python:S` and the readback order, and encodes. Each shader names its CPU twin and
//! the test that compares them in its header. `toolkit.rs` (programs, buffers, fences, errors) and
//! `ring.rs` (the readback ring) serve RCDB's and MV-FractalDB's GL engines too; `egl.rs` opens the
//! headless context.
//!
//! # SAFETY contract of the GL calls
//! Every `unsafe` block that calls GL through `glow`, here and in the families' GL engines, relies on
//! three things the engines keep, and its `// SAFETY:` note says so or adds what else it needs:
//! 1. **A current context on this thread.** An engine opens its context with `egl::open` on the
//!    thread that uses it (a render stage opens it on its worker thread) and never hands it to
//!    another (`glow::Context` is not `Send`).
//! 2. **Live objects of that context.** Every program, buffer, texture, framebuffer and fence named
//!    was made by the engine's own context and is deleted only with the engine (or, for a fence,
//!    after its wait).
//! 3. **Checked sizes.** Host memory is passed as whole slices whose lengths glow gives to GL (and
//!    GL checks against the buffer); casts of numeric slices to bytes go through `bytemuck`; reads
//!    into pixel-pack buffers stay inside the slot `Ring::acquire` sized.
//!
//! The toolkit's `unsafe fn`s carry the same contract to their callers.

mod bindings;
mod chaos;
pub mod egl;
mod raster;
mod rescale;
mod ring;
mod stage;
mod toolkit;

pub(crate) use bindings::{fractal as bind, mvfdb as mvfdb_bind, rcdb as rcdb_bind};
pub(crate) use ring::{Layout, Ring};
pub use stage::GlStage;
use toolkit::wait_fence;
pub(crate) use toolkit::{Program, Ssbo, bytes_of, check, r8ui_target};

use super::{MaskRng, RenderConfig, cpu};
use crate::error::{Error, Result};
use crate::ifs::{Cloud, Ifs};
use crate::rng::MaskKey;
use glow::HasContext;

const CHAOS: &str = include_str!("../../../glsl/chaos.comp");
const COMMON: &str = include_str!("../../../glsl/common.glsl");
const FP64: &str = include_str!("../../../glsl/fp64.glsl");
const RESCALE: &str = include_str!("../../../glsl/rescale.comp");
pub(crate) const CLEAR: &str = include_str!("../../../glsl/clear.comp");
const SPLAT: &str = include_str!("../../../glsl/splat.comp");
const RESOLVE: &str = include_str!("../../../glsl/resolve.comp");
const POINTS_VS: &str = include_str!("../../../glsl/points.vert");
const POINTS_FS: &str = include_str!("../../../glsl/points.frag");

/// How the GL engine rasterises: GL_POINTS into an integer FBO, or a compute splat + resolve.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum, serde::Serialize)]
pub enum RasterMethod {
    Points,
    #[default]
    Compute,
}

/// Settings of the GL engine.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GlOptions {
    pub raster: RasterMethod,
    /// Rescale the clouds on the CPU (read the fp64 points back) instead of in `glsl/rescale.comp`.
    pub cpu_rescale: bool,
    /// Video memory (MiB) the batches are sized by (`--gl-memory`); `None`: a quarter of the free
    /// memory the driver reports (2 GiB when it reports none).
    pub memory_mib: Option<u64>,
}

/// Instances drawn by one instanced GL_POINTS draw (the size of the fragment shader's key array).
const MAX_INSTANCES_PER_DRAW: usize = 64;
/// Guard band around each atlas region: a 3x3 patch at +1..+3 may reach 3 pixels past the image.
const GUARD: usize = 4;

/// llvmpipe ends an invocation after 65,535 loop iterations in total; stay well under it.
pub(crate) const SOFTWARE_LOOP_BUDGET: u32 = 60_000;

/// Most clouds one splat dispatch draws (keep in sync: `clouds[8]` in glsl/splat.comp and resolve.comp).
pub const MAX_GROUP: usize = 8;
/// Most canvases one resolve dispatch writes (keep in sync: `canvases[64]` in glsl/resolve.comp).
pub const MAX_GROUP_CANVASES: usize = 64;
/// The largest buffer glow can allocate (its sizes are i32).
const MAX_BUFFER: usize = i32::MAX as usize;
/// Clouds per batch on a hardware device, at most (memory decides below that).
const MAX_BATCH: usize = 4096;
/// Clouds per batch on a software renderer: short dispatches.
const SOFTWARE_BATCH: usize = 32;

/// One cloud of a raster group: its index in the batch, its point count after the rescale, the keys
/// of its masks, and the instances to draw.
#[derive(Clone, Copy)]
pub struct GroupCloud<'a> {
    pub index: usize,
    pub count: u32,
    pub class_key: u32,
    pub row: u32,
    pub instances: &'a [u32],
    /// This cloud's masks (the run's, or another epoch's).
    pub masks: MaskRng,
}

/// What the rescale left per cloud of a batch: the point count, or the degenerate axis.
pub type BatchCounts = Vec<std::result::Result<u32, &'static str>>;

/// A chaos game in flight over several dispatches: its clouds, points, and the next step.
struct ChaosRun {
    nc: usize,
    n: usize,
    steps: u32,
    k: u32,
    set: usize,
    max_maps: usize,
    /// The CPU rescale's results (with `cpu_rescale`), ready after `end_clouds`.
    cpu_counts: Option<BatchCounts>,
    fence: Option<glow::Fence>,
}

/// The GL engine; lives in (and must stay on) the thread that created it.
pub struct GlEngine {
    pub ctx: egl::Gl,
    chaos: Program,
    rescale: Program,
    clear: Program,
    splat: Program,
    resolve: Program,
    points: Program,
    vao: glow::VertexArray,
    fbo: glow::Framebuffer,
    /// The atlas texture and its size.
    atlas: Option<(glow::Texture, usize, usize)>,
    max_texture: usize,
    pub opts: GlOptions,
    /// Canvases come back with their tags (the stage's indices).
    ring: Ring<usize>,
    u: Ssbo,
    maps: Ssbo,
    nmaps: Ssbo,
    state: Ssbo,
    xs: Ssbo,
    ys: Ssbo,
    /// Packed points of two batches (one rastered while the next one's chaos game runs), and per
    /// cloud (count, truncated, degenerate axis, 0).
    pts: [Ssbo; 2],
    info: [Ssbo; 2],
    next_set: usize,
    run: Option<ChaosRun>,
    winner: Ssbo,
    masks: Ssbo,
    n_u: usize,
    /// Bytes copied to the host outside the ring (cloud info, CPU-rescale points).
    readback_bytes: u64,
    readback_ns: u64,
}

impl GlEngine {
    /// Opens a device and compiles the shaders; `u` is the shared chaos-game sequence (uploaded once).
    pub fn new(choice: egl::Choice, u: &[f64], opts: GlOptions) -> Result<GlEngine> {
        let ctx = egl::open(choice)?;
        // SAFETY: the GL contract of `render::gl` (this thread's current context, live objects of
        // it).
        unsafe {
            let gl = &ctx.gl;
            let mut e = GlEngine {
                points: Program::link(
                    gl,
                    "glsl/points.vert + glsl/points.frag",
                    &[
                        (glow::VERTEX_SHADER, POINTS_VS),
                        (glow::FRAGMENT_SHADER, POINTS_FS),
                    ],
                )?,
                vao: gl.create_vertex_array().map_err(Error::Other)?,
                fbo: gl.create_framebuffer().map_err(Error::Other)?,
                atlas: None,
                max_texture: gl.get_parameter_i32(glow::MAX_TEXTURE_SIZE).max(1024) as usize,
                opts,
                ring: Ring::new(gl)?,
                chaos: Program::new(gl, "glsl/chaos.comp", CHAOS)?,
                rescale: Program::new(gl, "glsl/rescale.comp", RESCALE)?,
                clear: Program::new(gl, "glsl/clear.comp", CLEAR)?,
                splat: Program::new(gl, "glsl/splat.comp", SPLAT)?,
                resolve: Program::new(gl, "glsl/resolve.comp", RESOLVE)?,
                u: Ssbo::new(gl)?,
                maps: Ssbo::new(gl)?,
                nmaps: Ssbo::new(gl)?,
                state: Ssbo::new(gl)?,
                xs: Ssbo::new(gl)?,
                ys: Ssbo::new(gl)?,
                pts: [Ssbo::new(gl)?, Ssbo::new(gl)?],
                info: [Ssbo::new(gl)?, Ssbo::new(gl)?],
                next_set: 0,
                run: None,
                winner: Ssbo::new(gl)?,
                masks: Ssbo::new(gl)?,
                n_u: u.len(),
                readback_bytes: 0,
                readback_ns: 0,
                ctx,
            };
            e.u.upload(&e.ctx.gl, bytes_of(u), bind::U);
            Ok(e)
        }
    }

    /// Clouds of `n` points per batch: a GPU wants thousands of invocations in flight, as many as
    /// its memory allows (the fp64 points, and two batches of packed points); a software renderer
    /// wants short dispatches.
    pub fn batch_size(&self, n: usize) -> usize {
        if self.ctx.software {
            return SOFTWARE_BATCH;
        }
        // NVX_gpu_memory_info's available video memory (KiB), 0 when the driver lacks it; the
        // largest storage block.
        // SAFETY: the GL contract of `render::gl` (this thread's current context, live objects of
        // it).
        let (free_kib, max_block) = unsafe {
            let gl = &self.ctx.gl;
            let kib = gl.get_parameter_i32(0x9049);
            while gl.get_error() != glow::NO_ERROR {}
            let block = gl.get_parameter_i64(glow::MAX_SHADER_STORAGE_BLOCK_SIZE);
            while gl.get_error() != glow::NO_ERROR {}
            (kib, block)
        };
        clouds_per_batch(n, self.opts.memory_mib, free_kib, max_block)
    }
}

/// Clouds of `n` points per device batch: their fp64 points and two batches of packed points
/// within `budget_mib` (`--gl-memory`; else a quarter of the driver's `free_kib`, else 2 GiB), and
/// within one storage block of `max_block` bytes (the largest buffer glow sizes when unknown).
fn clouds_per_batch(n: usize, budget_mib: Option<u64>, free_kib: i32, max_block: i64) -> usize {
    let n = n.max(1);
    let avail = match budget_mib {
        Some(mib) => (mib as usize).saturating_mul(1 << 20),
        None if free_kib > 0 => free_kib as usize * 1024 / 4,
        None => 2 << 30,
    };
    let by_memory = avail / n.saturating_mul(8 + 8 + 4 + 4);
    let max_block = if max_block > 0 {
        (max_block as usize).min(MAX_BUFFER)
    } else {
        MAX_BUFFER
    };
    let by_buffer = max_block / n.saturating_mul(8);
    by_memory.min(by_buffer).clamp(1, MAX_BATCH)
}

#[cfg(test)]
mod batch_tests {
    use super::*;

    #[test]
    fn a_memory_budget_bounds_the_batch() {
        let n = 200_000; // FractalDB-1k's points: 4.8 MB a cloud in the batch buffers
        assert_eq!(clouds_per_batch(n, Some(1024), 80 << 20, 1 << 40), 223);
        assert_eq!(clouds_per_batch(n, Some(64), 80 << 20, 1 << 40), 13);
        // Without a budget: a quarter of what is free (80 GiB free: one 2 GiB buffer's worth).
        assert_eq!(clouds_per_batch(n, None, 80 << 20, 1 << 40), 1342);
        assert_eq!(clouds_per_batch(1000, None, 80 << 20, 1 << 40), MAX_BATCH);
        assert_eq!(clouds_per_batch(n, None, 4 << 20, 1 << 40), 223);
        assert_eq!(clouds_per_batch(n, None, 0, 0), 447);
        // One storage block holds a batch's xs: 128 MiB blocks hold 83 clouds.
        assert_eq!(clouds_per_batch(n, Some(1 << 20), 0, 128 << 20), 83);
        assert_eq!(clouds_per_batch(usize::MAX / 64, Some(64), 0, 0), 1);
    }
}
