//! The GL backend: the chaos game in fp64 compute shaders (many clouds per dispatch, one invocation per
//! cloud) and a compute raster (atomicMax of the point index per pixel, then a resolve pass per instance),
//! on a headless EGL context. Its pixels equal the CPU engine's: the chaos game is exact in fp64, the
//! rescale (`glsl/rescale.comp`, or the CPU engine's own code with `--rescale cpu`) follows the
//! original's operations and NaN truncation, and "last point wins" is what atomicMax computes.

pub mod egl;
mod stage;

pub use stage::GlStage;

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
}

/// Instances drawn by one instanced GL_POINTS draw (the size of the fragment shader's key array).
const MAX_INSTANCES_PER_DRAW: usize = 64;
/// Guard band around each atlas region: a 3x3 patch at +1..+3 may reach 3 pixels past the image.
const GUARD: usize = 4;

/// llvmpipe ends an invocation after 65,535 loop iterations in total; stay well under it.
pub(crate) const SOFTWARE_LOOP_BUDGET: u32 = 60_000;

/// A linked GL program (shared with other families' GL stages).
pub(crate) struct Program {
    pub(crate) program: glow::Program,
}

impl Program {
    pub(crate) unsafe fn new(gl: &glow::Context, name: &str, src: &str) -> Result<Program> {
        unsafe { Self::link(gl, name, &[(glow::COMPUTE_SHADER, src)]) }
    }

    pub(crate) unsafe fn link(
        gl: &glow::Context,
        name: &str,
        stages: &[(u32, &str)],
    ) -> Result<Program> {
        unsafe {
            let program = gl.create_program().map_err(Error::Other)?;
            let mut shaders = Vec::new();
            for &(kind, src) in stages {
                let src = src
                    .replace("#include \"common.glsl\"", COMMON)
                    .replace("#include \"fp64.glsl\"", FP64);
                let shader = gl.create_shader(kind).map_err(Error::Other)?;
                gl.shader_source(shader, &src);
                gl.compile_shader(shader);
                if !gl.get_shader_compile_status(shader) {
                    let log = gl.get_shader_info_log(shader);
                    return Err(Error::Other(format!(
                        "GL: compiling {name} failed (the driver may lack fp64 or GLSL 4.30); use --backend cpu:\n{log}"
                    )));
                }
                gl.attach_shader(program, shader);
                shaders.push(shader);
            }
            gl.link_program(program);
            if !gl.get_program_link_status(program) {
                return Err(Error::Other(format!(
                    "GL: linking {name} failed: {}",
                    gl.get_program_info_log(program)
                )));
            }
            for sh in shaders {
                gl.delete_shader(sh);
            }
            Ok(Program { program })
        }
    }

    pub(crate) unsafe fn set_u32(&self, gl: &glow::Context, name: &str, v: u32) {
        unsafe {
            let loc = gl.get_uniform_location(self.program, name);
            gl.uniform_1_u32(loc.as_ref(), v);
        }
    }
}

/// A growable shader storage buffer.
pub(crate) struct Ssbo {
    buf: glow::Buffer,
    cap: usize,
}

impl Ssbo {
    pub(crate) unsafe fn new(gl: &glow::Context) -> Result<Ssbo> {
        Ok(Ssbo {
            buf: unsafe { gl.create_buffer() }.map_err(Error::Other)?,
            cap: 0,
        })
    }
    /// Ensures `bytes` of storage (contents undefined after growth) and binds it at `binding`.
    pub(crate) unsafe fn reserve(&mut self, gl: &glow::Context, bytes: usize, binding: u32) {
        unsafe {
            gl.bind_buffer(glow::SHADER_STORAGE_BUFFER, Some(self.buf));
            if bytes > self.cap {
                // Powers of two, up to the largest size a GL buffer takes here.
                self.cap = bytes.next_power_of_two().max(256);
                if self.cap > MAX_BUFFER {
                    self.cap = bytes;
                }
                gl.buffer_data_size(
                    glow::SHADER_STORAGE_BUFFER,
                    self.cap as i32,
                    glow::DYNAMIC_COPY,
                );
            }
            gl.bind_buffer_base(glow::SHADER_STORAGE_BUFFER, binding, Some(self.buf));
        }
    }
    pub(crate) unsafe fn upload(&mut self, gl: &glow::Context, data: &[u8], binding: u32) {
        unsafe {
            self.reserve(gl, data.len().max(4), binding);
            gl.buffer_sub_data_u8_slice(glow::SHADER_STORAGE_BUFFER, 0, data);
        }
    }
    pub(crate) fn buffer(&self) -> glow::Buffer {
        self.buf
    }
    pub(crate) unsafe fn bind(&self, gl: &glow::Context, binding: u32) {
        unsafe { gl.bind_buffer_base(glow::SHADER_STORAGE_BUFFER, binding, Some(self.buf)) };
    }
    pub(crate) unsafe fn read(&self, gl: &glow::Context, out: &mut [u8]) {
        unsafe {
            gl.bind_buffer(glow::SHADER_STORAGE_BUFFER, Some(self.buf));
            gl.get_buffer_sub_data(glow::SHADER_STORAGE_BUFFER, 0, out);
        }
    }
}

/// Readback slots in flight: the GL thread queues up to this many readbacks before it waits for one.
pub(crate) const RING: usize = 8;

/// How a finished readback splits into canvases.
#[derive(Clone, Copy)]
pub(crate) enum Layout {
    /// Canvases of w*h bytes, canvas k at byte k*stride.
    Packed { w: usize, h: usize, stride: usize },
    /// An atlas row-major `aw` wide: canvas k starts at column k*region_w.
    Atlas {
        aw: usize,
        region_w: usize,
        w: usize,
        h: usize,
    },
}

struct Pending {
    fence: glow::Fence,
    slot: usize,
    bytes: usize,
    layout: Layout,
    tags: Vec<usize>,
}

/// A ring of buffer objects that readbacks land in (PIXEL_PACK for GL_POINTS, SSBO for the compute
/// resolve), each guarded by a fence, so the GL thread keeps queueing work while earlier results travel.
pub(crate) struct Ring {
    pub(crate) slots: Vec<(glow::Buffer, usize)>,
    next: usize,
    pending: std::collections::VecDeque<Pending>,
    done: Vec<(usize, Vec<u8>)>,
    /// Time spent copying finished results to the host (after their fences signalled), and bytes.
    pub(crate) readback_ns: u64,
    pub(crate) readback_bytes: u64,
}

impl Ring {
    pub(crate) unsafe fn new(gl: &glow::Context) -> Result<Ring> {
        let mut slots = Vec::new();
        for _ in 0..RING {
            slots.push((unsafe { gl.create_buffer() }.map_err(Error::Other)?, 0));
        }
        Ok(Ring {
            slots,
            next: 0,
            pending: Default::default(),
            done: vec![],
            readback_ns: 0,
            readback_bytes: 0,
        })
    }

    /// A free slot of at least `bytes`, waiting for the oldest readback when all are in flight.
    pub(crate) unsafe fn acquire(&mut self, gl: &glow::Context, bytes: usize) -> Result<usize> {
        if self.pending.len() >= self.slots.len() {
            unsafe { self.finish_oldest(gl)? };
        }
        let i = self.next;
        self.next = (self.next + 1) % self.slots.len();
        let (buf, cap) = &mut self.slots[i];
        if *cap < bytes {
            *cap = bytes.next_power_of_two();
            unsafe {
                gl.bind_buffer(glow::COPY_WRITE_BUFFER, Some(*buf));
                gl.buffer_data_size(glow::COPY_WRITE_BUFFER, *cap as i32, glow::STREAM_READ);
                gl.bind_buffer(glow::COPY_WRITE_BUFFER, None);
            }
        }
        Ok(i)
    }

    pub(crate) unsafe fn push(
        &mut self,
        gl: &glow::Context,
        slot: usize,
        bytes: usize,
        layout: Layout,
        tags: Vec<usize>,
    ) -> Result<()> {
        let fence =
            unsafe { gl.fence_sync(glow::SYNC_GPU_COMMANDS_COMPLETE, 0) }.map_err(Error::Other)?;
        unsafe { gl.flush() };
        self.pending.push_back(Pending {
            fence,
            slot,
            bytes,
            layout,
            tags,
        });
        Ok(())
    }

    unsafe fn finish_oldest(&mut self, gl: &glow::Context) -> Result<()> {
        let Some(p) = self.pending.pop_front() else {
            return Ok(());
        };
        unsafe {
            loop {
                let r = gl.client_wait_sync(p.fence, glow::SYNC_FLUSH_COMMANDS_BIT, 1_000_000_000);
                if r == glow::ALREADY_SIGNALED || r == glow::CONDITION_SATISFIED {
                    break;
                }
                if r == glow::WAIT_FAILED {
                    return Err(Error::Other(
                        "GL: waiting for a readback fence failed".into(),
                    ));
                }
            }
            gl.delete_sync(p.fence);
            let t0 = std::time::Instant::now();
            let mut data = vec![0u8; p.bytes];
            gl.bind_buffer(glow::COPY_READ_BUFFER, Some(self.slots[p.slot].0));
            gl.get_buffer_sub_data(glow::COPY_READ_BUFFER, 0, &mut data);
            gl.bind_buffer(glow::COPY_READ_BUFFER, None);
            self.readback_ns += t0.elapsed().as_nanos() as u64;
            self.readback_bytes += p.bytes as u64;
            match p.layout {
                Layout::Packed { w, h, stride } => {
                    if p.tags.len() == 1 {
                        data.truncate(w * h);
                        self.done.push((p.tags[0], data));
                    } else {
                        for (k, &tag) in p.tags.iter().enumerate() {
                            self.done
                                .push((tag, data[k * stride..k * stride + w * h].to_vec()));
                        }
                    }
                }
                Layout::Atlas { aw, region_w, w, h } => {
                    for (k, &tag) in p.tags.iter().enumerate() {
                        let mut c = Vec::with_capacity(w * h);
                        for y in 0..h {
                            let o = y * aw + k * region_w;
                            c.extend_from_slice(&data[o..o + w]);
                        }
                        self.done.push((tag, c));
                    }
                }
            }
        }
        Ok(())
    }

    /// Finished readbacks: those already signalled, or all of them with `wait`.
    pub(crate) unsafe fn collect(
        &mut self,
        gl: &glow::Context,
        wait: bool,
    ) -> Result<Vec<(usize, Vec<u8>)>> {
        while let Some(p) = self.pending.front() {
            let ready = wait || {
                let r = unsafe { gl.client_wait_sync(p.fence, 0, 0) };
                r == glow::ALREADY_SIGNALED || r == glow::CONDITION_SATISFIED
            };
            if !ready {
                break;
            }
            unsafe { self.finish_oldest(gl)? };
        }
        Ok(std::mem::take(&mut self.done))
    }
}

/// Points as the shaders read them: x | y << 16.
fn pack_points(cloud: &Cloud) -> Vec<u32> {
    cloud
        .xs
        .iter()
        .zip(&cloud.ys)
        .map(|(&x, &y)| x as u32 | (y as u32) << 16)
        .collect()
}

pub(crate) fn bytes_of<T: Copy>(v: &[T]) -> &[u8] {
    // SAFETY: plain numeric data, read as bytes.
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, std::mem::size_of_val(v)) }
}

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
    ring: Ring,
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
            e.u.upload(&e.ctx.gl, bytes_of(u), 0);
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
        let n = n.max(1);
        // NVX_gpu_memory_info's available video memory (KiB), when the driver has it: use a quarter.
        let avail = unsafe {
            let kib = self.ctx.gl.get_parameter_i32(0x9049);
            while self.ctx.gl.get_error() != glow::NO_ERROR {}
            if kib > 0 {
                kib as usize * 1024 / 4
            } else {
                2 << 30
            }
        };
        let by_memory = avail / (n * (8 + 8 + 4 + 4));
        // The largest buffer glow sizes (i32) and the driver binds as one storage block.
        let max_block = unsafe {
            let v = self
                .ctx
                .gl
                .get_parameter_i64(glow::MAX_SHADER_STORAGE_BLOCK_SIZE);
            while self.ctx.gl.get_error() != glow::NO_ERROR {}
            if v > 0 {
                (v as usize).min(MAX_BUFFER)
            } else {
                MAX_BUFFER
            }
        };
        let by_buffer = max_block / (n * 8);
        by_memory.min(by_buffer).clamp(1, MAX_BATCH)
    }

    /// Runs the chaos game of every IFS (already weighted) for `n` points, the origin included.
    /// Returns (xs, ys) per cloud, bit-identical to `Ifs::chaos_game`.
    pub fn chaos_games(&mut self, ifss: &[Ifs], n: usize) -> Result<Vec<(Vec<f64>, Vec<f64>)>> {
        self.chaos_games_with(ifss, n, None)
    }

    /// The search's form: cloud c uses its own sequence `own_u[c*n..(c+1)*n]` (replacing the shared one).
    pub fn chaos_games_own_u(
        &mut self,
        ifss: &[Ifs],
        n: usize,
        own_u: &[f64],
    ) -> Result<Vec<(Vec<f64>, Vec<f64>)>> {
        if own_u.len() != ifss.len() * n {
            return Err(Error::Other(
                "internal: one u sequence per cloud expected".into(),
            ));
        }
        self.chaos_games_with(ifss, n, Some(own_u))
    }

    /// Uploads the maps of a batch and zeroes the chain state; the dispatches follow.
    fn prepare_chaos(&mut self, ifss: &[Ifs], n: usize, own_u: Option<&[f64]>) -> Result<usize> {
        if let Some(u) = own_u {
            unsafe { self.u.upload(&self.ctx.gl, bytes_of(u), 0) };
            self.n_u = 0; // the shared sequence is gone
        } else if n > self.n_u {
            return Err(Error::Other(format!(
                "internal: {n} points but a u sequence of {}",
                self.n_u
            )));
        }
        let nc = ifss.len();
        if nc * n * 8 > MAX_BUFFER {
            return Err(Error::Other(format!(
                "internal: {nc} clouds of {n} points exceed a GL buffer"
            )));
        }
        let max_maps = ifss.iter().map(|f| f.maps.len()).max().unwrap_or(1).max(1);
        let mut maps = vec![0f64; nc * max_maps * 8];
        let mut nm = vec![0u32; nc];
        for (c, ifs) in ifss.iter().enumerate() {
            let cum = ifs.cumulative();
            nm[c] = ifs.maps.len() as u32;
            for (m, (map, cp)) in ifs.maps.iter().zip(cum).enumerate() {
                let o = (c * max_maps + m) * 8;
                maps[o..o + 7].copy_from_slice(&[map.a, map.b, map.c, map.d, map.e, map.f, cp]);
            }
        }
        let gl = &self.ctx.gl;
        unsafe {
            self.u
                .reserve(gl, own_u.map_or(self.n_u, |u| u.len()).max(1) * 8, 0);
            self.maps.upload(gl, bytes_of(&maps), 1);
            self.nmaps.upload(gl, bytes_of(&nm), 2);
            self.state.upload(gl, bytes_of(&vec![0f64; nc * 4]), 3);
            // Every element is written by the shader (index 0 at k_begin == 0).
            self.xs.reserve(gl, nc * n * 8, 4);
            self.ys.reserve(gl, nc * n * 8, 5);
            gl.use_program(Some(self.chaos.program));
            self.chaos.set_u32(gl, "n_clouds", nc as u32);
            self.chaos.set_u32(gl, "n_points", n as u32);
            self.chaos.set_u32(gl, "max_maps", max_maps as u32);
            self.chaos
                .set_u32(gl, "u_stride", if own_u.is_some() { n as u32 } else { 0 });
        }
        Ok(max_maps)
    }

    /// Dispatches steps `[k, end)` of the prepared chaos game, in dispatches short enough for a
    /// software renderer (llvmpipe stops an invocation after 65,535 loop iterations).
    unsafe fn dispatch_steps(&self, nc: usize, max_maps: usize, k: u32, end: u32, first: bool) {
        let chunk = if self.ctx.software {
            (SOFTWARE_LOOP_BUDGET / (max_maps as u32 + 2)).max(1)
        } else {
            u32::MAX
        };
        let gl = &self.ctx.gl;
        let mut k = k;
        // At least one dispatch at the start: it also writes the origin.
        let mut once = first;
        while k < end || once {
            once = false;
            let e = end.min(k.saturating_add(chunk));
            unsafe {
                // The buffers of this chaos game (a raster may have rebound binding 0..5 since).
                self.u.bind(gl, 0);
                self.maps.bind(gl, 1);
                self.nmaps.bind(gl, 2);
                self.state.bind(gl, 3);
                self.xs.bind(gl, 4);
                self.ys.bind(gl, 5);
                gl.use_program(Some(self.chaos.program));
                self.chaos.set_u32(gl, "k_begin", k);
                self.chaos.set_u32(gl, "k_end", e);
                gl.dispatch_compute((nc as u32).div_ceil(32), 1, 1);
                gl.memory_barrier(
                    glow::SHADER_STORAGE_BARRIER_BIT | glow::BUFFER_UPDATE_BARRIER_BIT,
                );
            }
            k = e;
        }
    }

    fn chaos_games_with(
        &mut self,
        ifss: &[Ifs],
        n: usize,
        own_u: Option<&[f64]>,
    ) -> Result<Vec<(Vec<f64>, Vec<f64>)>> {
        let nc = ifss.len();
        if nc == 0 || n == 0 {
            return Ok(vec![(vec![], vec![]); nc]);
        }
        let max_maps = self.prepare_chaos(ifss, n, own_u)?;
        unsafe {
            self.dispatch_steps(nc, max_maps, 0, (n - 1) as u32, true);
            let (xs, ys) = self.read_points(nc, n)?;
            Ok((0..nc)
                .map(|c| {
                    (
                        xs[c * n..(c + 1) * n].to_vec(),
                        ys[c * n..(c + 1) * n].to_vec(),
                    )
                })
                .collect())
        }
    }

    /// Copies the fp64 points of the last chaos game to the host (after waiting for it).
    unsafe fn read_points(&mut self, nc: usize, n: usize) -> Result<(Vec<f64>, Vec<f64>)> {
        let gl = &self.ctx.gl;
        unsafe {
            // Wait for the compute first, so that the copy below times the transfer alone.
            gl.finish();
            let t0 = std::time::Instant::now();
            let mut xs = vec![0f64; nc * n];
            let mut ys = vec![0f64; nc * n];
            self.xs.read(
                gl,
                std::slice::from_raw_parts_mut(xs.as_mut_ptr() as *mut u8, nc * n * 8),
            );
            self.ys.read(
                gl,
                std::slice::from_raw_parts_mut(ys.as_mut_ptr() as *mut u8, nc * n * 8),
            );
            self.readback_ns += t0.elapsed().as_nanos() as u64;
            self.readback_bytes += (nc * n * 16) as u64;
            check(gl, "chaos game")?;
            Ok((xs, ys))
        }
    }

    /// Starts the chaos game of a batch (IFSs already weighted) for `cfg.iterations` points; its
    /// steps run in [`advance_clouds`](Self::advance_clouds) slices, interleaved with the raster of
    /// the batch before, and [`end_clouds`](Self::end_clouds) finishes it and rescales.
    pub fn begin_clouds(&mut self, ifss: &[Ifs], cfg: &RenderConfig) -> Result<()> {
        if self.run.is_some() {
            return Err(Error::Other(
                "internal: a chaos game is already running".into(),
            ));
        }
        let n = cfg.iterations;
        let nc = ifss.len();
        let max_maps = self.prepare_chaos(ifss, n, None)?;
        let set = self.next_set;
        self.next_set ^= 1;
        unsafe { self.dispatch_steps(nc, max_maps, 0, 0, true) };
        self.run = Some(ChaosRun {
            nc,
            n,
            steps: (n - 1) as u32,
            k: 0,
            set,
            max_maps,
            cpu_counts: None,
            fence: None,
        });
        Ok(())
    }

    /// Runs up to `steps` more steps of the running chaos game.
    pub fn advance_clouds(&mut self, steps: u32) {
        if let Some(r) = &self.run
            && r.fence.is_none()
            && r.k < r.steps
        {
            let (nc, mm, k) = (r.nc, r.max_maps, r.k);
            let end = r.steps.min(k.saturating_add(steps.max(1)));
            unsafe { self.dispatch_steps(nc, mm, k, end, false) };
            self.run.as_mut().unwrap().k = end;
        }
    }

    /// Finishes the running chaos game and queues the rescale (GPU), or reads the points back and
    /// rescales them with the CPU engine's code (`cpu_rescale`).
    pub fn end_clouds(&mut self, cfg: &RenderConfig) -> Result<()> {
        let Some(r) = self.run.as_ref() else {
            return Err(Error::Other("internal: no chaos game is running".into()));
        };
        let (nc, n, set, mm, k, steps) = (r.nc, r.n, r.set, r.max_maps, r.k, r.steps);
        unsafe { self.dispatch_steps(nc, mm, k, steps, false) };
        let gl = &self.ctx.gl;
        if self.opts.cpu_rescale {
            let (mut xs, mut ys) = unsafe { self.read_points(nc, n)? };
            let counts = cpu_rescale(&mut xs, &mut ys, nc, n, cfg);
            let gl = &self.ctx.gl;
            let mut packed = vec![0u32; nc * n];
            let mut out = Vec::with_capacity(nc);
            for (c, cloud) in counts.into_iter().enumerate() {
                out.push(cloud.map(|cl| {
                    let p = pack_points(&cl);
                    packed[c * n..c * n + p.len()].copy_from_slice(&p);
                    p.len() as u32
                }));
            }
            unsafe {
                self.pts[set].upload(gl, bytes_of(&packed), 6);
                check(gl, "points upload")?;
            }
            let r = self.run.as_mut().unwrap();
            r.cpu_counts = Some(out);
            r.k = steps;
            return Ok(());
        }
        unsafe {
            self.xs.bind(gl, 4);
            self.ys.bind(gl, 5);
            self.pts[set].reserve(gl, nc * n * 4, 6);
            self.info[set].reserve(gl, nc * 16, 7);
            let p = &self.rescale;
            gl.use_program(Some(p.program));
            p.set_u32(gl, "n_points", n as u32);
            p.set_u32(gl, "width", cfg.width);
            p.set_u32(gl, "height", cfg.height);
            p.set_u32(gl, "pad_x", cfg.pad_x);
            p.set_u32(gl, "pad_y", cfg.pad_y);
            gl.dispatch_compute(nc as u32, 1, 1);
            gl.memory_barrier(glow::SHADER_STORAGE_BARRIER_BIT | glow::BUFFER_UPDATE_BARRIER_BIT);
            let fence = gl
                .fence_sync(glow::SYNC_GPU_COMMANDS_COMPLETE, 0)
                .map_err(Error::Other)?;
            gl.flush();
            check(gl, "rescale")?;
            let r = self.run.as_mut().unwrap();
            r.fence = Some(fence);
            r.k = steps;
        }
        Ok(())
    }

    /// Rescales the given fp64 points (`n` per cloud) with glsl/rescale.comp and reads them back:
    /// per cloud its packed points (x | y << 16) or its degenerate axis. For tests against the
    /// CPU twin, `ifs::rescale`.
    pub fn rescale_points(
        &mut self,
        xs: &[f64],
        ys: &[f64],
        n: usize,
        cfg: &RenderConfig,
    ) -> Result<Vec<std::result::Result<Vec<u32>, &'static str>>> {
        let nc = xs.len() / n.max(1);
        let gl = &self.ctx.gl;
        unsafe {
            self.xs.upload(gl, bytes_of(xs), 4);
            self.ys.upload(gl, bytes_of(ys), 5);
        }
        self.run = Some(ChaosRun {
            nc,
            n,
            steps: 0,
            k: 0,
            set: 0,
            max_maps: 1,
            cpu_counts: None,
            fence: None,
        });
        self.end_clouds(cfg)?;
        let (set, counts) = self.wait_clouds()?;
        let gl = &self.ctx.gl;
        let mut pts = vec![0u32; nc * n];
        unsafe {
            self.pts[set].read(
                gl,
                std::slice::from_raw_parts_mut(pts.as_mut_ptr() as *mut u8, nc * n * 4),
            );
        }
        Ok(counts
            .into_iter()
            .enumerate()
            .map(|(c, r)| r.map(|k| pts[c * n..c * n + k as usize].to_vec()))
            .collect())
    }

    /// Waits for the batch begun last and returns its points buffer and per-cloud counts.
    pub fn wait_clouds(&mut self) -> Result<(usize, BatchCounts)> {
        let Some(mut r) = self.run.take() else {
            return Err(Error::Other("internal: no chaos game is running".into()));
        };
        if let Some(c) = r.cpu_counts.take() {
            return Ok((r.set, c));
        }
        let gl = &self.ctx.gl;
        let fence = r
            .fence
            .ok_or_else(|| Error::Other("internal: end_clouds first".into()))?;
        unsafe {
            wait_fence(gl, fence)?;
            let t0 = std::time::Instant::now();
            let mut info = vec![0u32; r.nc * 4];
            self.info[r.set].read(
                gl,
                std::slice::from_raw_parts_mut(info.as_mut_ptr() as *mut u8, r.nc * 16),
            );
            self.readback_ns += t0.elapsed().as_nanos() as u64;
            self.readback_bytes += (r.nc * 16) as u64;
            Ok((
                r.set,
                info.chunks(4)
                    .map(|i| match i[2] {
                        1 => Err("x"),
                        2 => Err("y"),
                        _ if i[0] == 0 => Err(cpu::NO_POINTS_LEFT),
                        _ => Ok(i[0]),
                    })
                    .collect(),
            ))
        }
    }

    /// Queues the canvases of a group of clouds of batch `set` (at most [`MAX_GROUP`] clouds; with
    /// the compute raster at most [`MAX_GROUP_CANVASES`] canvases, unless it is one cloud); they come
    /// back from [`collect`](Self::collect) with the given tags, one per canvas in order.
    pub fn raster(
        &mut self,
        set: usize,
        group: &[GroupCloud],
        cfg: &RenderConfig,
        tags: &[usize],
    ) -> Result<()> {
        match self.opts.raster {
            RasterMethod::Compute => self.raster_compute(set, group, cfg, tags),
            RasterMethod::Points => {
                let per = MAX_INSTANCES_PER_DRAW
                    .min((self.max_texture / (cfg.width as usize + GUARD)).max(1));
                let mut t = tags;
                for g in group {
                    let (mine, rest) = t.split_at(g.instances.len());
                    t = rest;
                    for (chunk, tchunk) in g.instances.chunks(per).zip(mine.chunks(per)) {
                        self.raster_points(set, g, chunk, cfg, tchunk)?;
                    }
                }
                Ok(())
            }
        }
    }

    /// Nanoseconds and bytes of device-to-host copies since the last call.
    pub fn take_readback(&mut self) -> (u64, u64) {
        (
            std::mem::take(&mut self.ring.readback_ns) + std::mem::take(&mut self.readback_ns),
            std::mem::take(&mut self.ring.readback_bytes)
                + std::mem::take(&mut self.readback_bytes),
        )
    }

    /// Canvases whose readback has finished (all queued ones with `wait`), with their tags.
    pub fn collect(&mut self, wait: bool) -> Result<Vec<(usize, Vec<u8>)>> {
        unsafe { self.ring.collect(&self.ctx.gl, wait) }
    }

    /// The masks buffer of a draw: counter keys need none; CPython masks are drawn here.
    fn python_masks(masks: MaskRng, count: u32, instances: &[u32]) -> Option<Vec<u32>> {
        match masks {
            MaskRng::Counter { .. } => None,
            MaskRng::Python { seed } => Some(
                instances
                    .iter()
                    .flat_map(|&i| super::python_masks(seed, i, count as usize))
                    .collect(),
            ),
        }
    }

    /// GL_POINTS, one instanced draw for up to 64 instances side by side in an R8UI atlas.
    fn raster_points(
        &mut self,
        set: usize,
        g: &GroupCloud,
        instances: &[u32],
        cfg: &RenderConfig,
        tags: &[usize],
    ) -> Result<()> {
        let (w, h) = (cfg.width as usize, cfg.height as usize);
        let n = g.count as usize;
        let region_w = w + GUARD;
        let (aw, ah) = (region_w * instances.len(), h + GUARD);
        let masks = Self::python_masks(g.masks, g.count, instances);
        let gl = &self.ctx.gl;
        unsafe {
            if !matches!(self.atlas, Some((_, tw, th)) if tw >= aw && th >= ah) {
                // A new atlas keeps at least the old one's width (it was read before the take:
                // after it, the old size is gone).
                let old_w = self.atlas.map_or(0, |a| a.1);
                if let Some((t, _, _)) = self.atlas.take() {
                    gl.delete_texture(t);
                }
                let (tw, th) = (aw.max(old_w), ah);
                let tex = r8ui_target(gl, self.fbo, tw, th)?;
                self.atlas = Some((tex, tw, th));
            }
            let (_, tw, th) = self.atlas.unwrap();
            gl.bind_framebuffer(glow::FRAMEBUFFER, Some(self.fbo));
            gl.viewport(0, 0, tw as i32, th as i32);
            gl.disable(glow::BLEND);
            gl.disable(glow::DEPTH_TEST);
            gl.clear_buffer_u32_slice(glow::COLOR, 0, &[0, 0, 0, 0]);
            self.pts[set].bind(gl, 0);
            let p = &self.points;
            gl.use_program(Some(p.program));
            p.set_u32(gl, "pt_base", (g.index * self.pts_stride(cfg)) as u32);
            p.set_u32(gl, "patch_mode", cfg.mode.is_patch() as u32);
            p.set_u32(gl, "region_w", region_w as u32);
            p.set_u32(gl, "atlas_w", tw as u32);
            p.set_u32(gl, "atlas_h", th as u32);
            p.set_u32(gl, "n_points", n as u32);
            p.set_u32(gl, "color_mode", cfg.mode.is_color() as u32);
            match (&masks, g.masks) {
                (None, MaskRng::Counter { seed }) => {
                    let keys: Vec<u32> = instances
                        .iter()
                        .flat_map(|&i| {
                            let k = MaskKey::new(seed, g.class_key, g.row, i);
                            [k.k0, k.k1]
                        })
                        .collect();
                    let loc = gl.get_uniform_location(p.program, "mask_keys");
                    gl.uniform_2_u32_slice(loc.as_ref(), &keys);
                    p.set_u32(gl, "python_masks", 0);
                    self.masks.reserve(gl, 4, 3);
                }
                (m, _) => {
                    self.masks
                        .upload(gl, bytes_of(m.as_deref().unwrap_or(&[0])), 3);
                    p.set_u32(gl, "python_masks", 1);
                }
            }
            gl.enable(glow::PROGRAM_POINT_SIZE);
            let loc = gl.get_uniform_location(p.program, "point_size");
            gl.uniform_1_f32(loc.as_ref(), if cfg.mode.is_patch() { 3.0 } else { 1.0 });
            gl.bind_vertex_array(Some(self.vao));
            gl.memory_barrier(glow::SHADER_STORAGE_BARRIER_BIT);
            if n > 0 {
                gl.draw_arrays_instanced(glow::POINTS, 0, n as i32, instances.len() as i32);
            }
            let slot = self.ring.acquire(gl, aw * ah)?;
            gl.pixel_store_i32(glow::PACK_ALIGNMENT, 1);
            gl.bind_buffer(glow::PIXEL_PACK_BUFFER, Some(self.ring.slots[slot].0));
            gl.read_pixels(
                0,
                0,
                aw as i32,
                ah as i32,
                glow::RED_INTEGER,
                glow::UNSIGNED_BYTE,
                glow::PixelPackData::BufferOffset(0),
            );
            gl.bind_buffer(glow::PIXEL_PACK_BUFFER, None);
            check(gl, "GL_POINTS raster")?;
            self.ring.push(
                gl,
                slot,
                aw * ah,
                Layout::Atlas { aw, region_w, w, h },
                tags.to_vec(),
            )
        }
    }

    /// Points per cloud in the packed points buffers.
    fn pts_stride(&self, cfg: &RenderConfig) -> usize {
        cfg.iterations
    }

    /// Compute raster of a group: one clear, one splat for all its clouds, one resolve per
    /// [`MAX_GROUP_CANVASES`] canvases, each resolve writing straight into a readback slot.
    fn raster_compute(
        &mut self,
        set: usize,
        group: &[GroupCloud],
        cfg: &RenderConfig,
        tags: &[usize],
    ) -> Result<()> {
        if group.is_empty() {
            return Ok(());
        }
        if group.len() > MAX_GROUP {
            return Err(Error::Other("internal: raster group too large".into()));
        }
        let (w, h) = (cfg.width as usize, cfg.height as usize);
        let words = (w * h).div_ceil(4);
        let patch = cfg.mode.is_patch() as u32;
        let stride = self.pts_stride(cfg);
        let clouds: Vec<u32> = group
            .iter()
            .flat_map(|g| [(g.index * stride) as u32, g.count])
            .collect();
        let max_n = group.iter().map(|g| g.count).max().unwrap_or(0);
        // Every canvas of the group: (cloud in group, k0, k1, first CPython mask), and the masks.
        let mut canvases: Vec<[u32; 4]> = Vec::new();
        let mut masks: Vec<u32> = Vec::new();
        for (z, g) in group.iter().enumerate() {
            for &inst in g.instances {
                match g.masks {
                    MaskRng::Counter { seed } => {
                        let k = MaskKey::new(seed, g.class_key, g.row, inst);
                        canvases.push([z as u32, k.k0, k.k1, 0]);
                    }
                    MaskRng::Python { seed } => {
                        canvases.push([z as u32, 0, 0, masks.len() as u32]);
                        masks.extend(super::python_masks(seed, inst, g.count as usize));
                    }
                }
            }
        }
        let gl = &self.ctx.gl;
        unsafe {
            self.pts[set].bind(gl, 0);
            let cells = group.len() * w * h;
            self.winner.reserve(gl, cells * 4, 1);
            gl.use_program(Some(self.clear.program));
            self.clear.set_u32(gl, "count", cells as u32);
            gl.dispatch_compute((cells as u32).div_ceil(256), 1, 1);
            gl.memory_barrier(glow::SHADER_STORAGE_BARRIER_BIT);
            let sp = &self.splat;
            gl.use_program(Some(sp.program));
            sp.set_u32(gl, "width", w as u32);
            sp.set_u32(gl, "height", h as u32);
            sp.set_u32(gl, "patch_mode", patch);
            let loc = gl.get_uniform_location(sp.program, "clouds");
            gl.uniform_2_u32_slice(loc.as_ref(), &clouds);
            if max_n > 0 {
                gl.dispatch_compute(max_n.div_ceil(256), group.len() as u32, 1);
            }
            gl.memory_barrier(glow::SHADER_STORAGE_BARRIER_BIT);
            if masks.is_empty() {
                self.masks.reserve(gl, 4, 3);
            } else {
                self.masks.upload(gl, bytes_of(&masks), 3);
            }
            let rp = &self.resolve;
            gl.use_program(Some(rp.program));
            rp.set_u32(gl, "width", w as u32);
            rp.set_u32(gl, "height", h as u32);
            rp.set_u32(gl, "patch_mode", patch);
            rp.set_u32(gl, "words", words as u32);
            rp.set_u32(gl, "color_mode", cfg.mode.is_color() as u32);
            rp.set_u32(gl, "python_masks", (!masks.is_empty()) as u32);
            let loc = gl.get_uniform_location(rp.program, "clouds");
            gl.uniform_2_u32_slice(loc.as_ref(), &clouds);
            for (chunk, tchunk) in canvases
                .chunks(MAX_GROUP_CANVASES)
                .zip(tags.chunks(MAX_GROUP_CANVASES))
            {
                let bytes = chunk.len() * words * 4;
                let slot = self.ring.acquire(gl, bytes)?;
                gl.bind_buffer_base(
                    glow::SHADER_STORAGE_BUFFER,
                    2,
                    Some(self.ring.slots[slot].0),
                );
                gl.use_program(Some(self.resolve.program));
                let flat: Vec<u32> = chunk.iter().flatten().copied().collect();
                let loc = gl.get_uniform_location(self.resolve.program, "canvases");
                gl.uniform_4_u32_slice(loc.as_ref(), &flat);
                gl.dispatch_compute((words as u32).div_ceil(256), chunk.len() as u32, 1);
                gl.memory_barrier(
                    glow::SHADER_STORAGE_BARRIER_BIT | glow::BUFFER_UPDATE_BARRIER_BIT,
                );
                self.ring.push(
                    gl,
                    slot,
                    bytes,
                    Layout::Packed {
                        w,
                        h,
                        stride: words * 4,
                    },
                    tchunk.to_vec(),
                )?;
            }
            check(gl, "raster")?;
        }
        Ok(())
    }
}

/// The CPU rescale of a batch's fp64 points (the CPU engine's code, on all cores, in order).
fn cpu_rescale(
    xs: &mut [f64],
    ys: &mut [f64],
    nc: usize,
    n: usize,
    cfg: &RenderConfig,
) -> Vec<std::result::Result<Cloud, &'static str>> {
    let mut pts: Vec<(&mut [f64], &mut [f64])> = xs.chunks_mut(n).zip(ys.chunks_mut(n)).collect();
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(nc)
        .max(1);
    let per = nc.div_ceil(threads).max(1);
    let mut out = Vec::with_capacity(nc);
    std::thread::scope(|s| {
        let handles: Vec<_> = pts
            .chunks_mut(per)
            .map(|chunk| {
                s.spawn(move || {
                    chunk
                        .iter_mut()
                        .map(|(x, y)| {
                            let (mut x, mut y) = (x.to_vec(), y.to_vec());
                            let mut c = Cloud::default();
                            cpu::cloud_from_points(&mut x, &mut y, cfg, &mut c).map(|_| c)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for h in handles {
            out.extend(h.join().expect("rescale thread"));
        }
    });
    out
}

/// A new `w` x `h` R8UI texture as `fbo`'s only colour attachment (point rasters draw labels or
/// 0/255 into it).
///
/// # Safety
/// The context that owns `fbo` must be current on this thread.
pub(crate) unsafe fn r8ui_target(
    gl: &glow::Context,
    fbo: glow::Framebuffer,
    w: usize,
    h: usize,
) -> Result<glow::Texture> {
    unsafe {
        let tex = gl.create_texture().map_err(Error::Other)?;
        gl.bind_texture(glow::TEXTURE_2D, Some(tex));
        gl.tex_storage_2d(glow::TEXTURE_2D, 1, glow::R8UI, w as i32, h as i32);
        gl.bind_framebuffer(glow::FRAMEBUFFER, Some(fbo));
        gl.framebuffer_texture_2d(
            glow::FRAMEBUFFER,
            glow::COLOR_ATTACHMENT0,
            glow::TEXTURE_2D,
            Some(tex),
            0,
        );
        gl.draw_buffers(&[glow::COLOR_ATTACHMENT0]);
        let status = gl.check_framebuffer_status(glow::FRAMEBUFFER);
        if status != glow::FRAMEBUFFER_COMPLETE {
            return Err(Error::Other(format!(
                "GL: the R8UI framebuffer is incomplete (0x{status:x})"
            )));
        }
        Ok(tex)
    }
}

/// Blocks until a fence has signalled, then deletes it.
unsafe fn wait_fence(gl: &glow::Context, fence: glow::Fence) -> Result<()> {
    unsafe {
        loop {
            let r = gl.client_wait_sync(fence, glow::SYNC_FLUSH_COMMANDS_BIT, 1_000_000_000);
            if r == glow::ALREADY_SIGNALED || r == glow::CONDITION_SATISFIED {
                break;
            }
            if r == glow::WAIT_FAILED {
                return Err(Error::Other("GL: waiting for a fence failed".into()));
            }
        }
        gl.delete_sync(fence);
    }
    Ok(())
}

pub(crate) unsafe fn check(gl: &glow::Context, what: &str) -> Result<()> {
    let e = unsafe { gl.get_error() };
    if e == glow::NO_ERROR {
        Ok(())
    } else {
        Err(Error::Other(format!("GL error 0x{e:x} in {what}")))
    }
}
