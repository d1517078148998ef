//! The GL backend: the chaos game in fp64 compute shaders (many clouds per dispatch, one invocation per
//! cloud) and a compute raster (atomicMax of the point index per pixel, then a resolve pass per instance),
//! on a headless EGL context. Its pixels equal the CPU engine's: the chaos game is exact in fp64, the
//! rescale runs on the CPU with the same code, and "last point wins" is what atomicMax computes.

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
const SOFTWARE_LOOP_BUDGET: u32 = 60_000;

struct Program {
    program: glow::Program,
}

impl Program {
    unsafe fn new(gl: &glow::Context, name: &str, src: &str) -> Result<Program> {
        unsafe { Self::link(gl, name, &[(glow::COMPUTE_SHADER, src)]) }
    }

    unsafe fn link(gl: &glow::Context, name: &str, stages: &[(u32, &str)]) -> Result<Program> {
        unsafe {
            let program = gl.create_program().map_err(Error::Other)?;
            let mut shaders = Vec::new();
            for &(kind, src) in stages {
                let src = src.replace("#include \"common.glsl\"", COMMON);
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

    unsafe fn set_u32(&self, gl: &glow::Context, name: &str, v: u32) {
        unsafe {
            let loc = gl.get_uniform_location(self.program, name);
            gl.uniform_1_u32(loc.as_ref(), v);
        }
    }
}

/// A growable shader storage buffer.
struct Ssbo {
    buf: glow::Buffer,
    cap: usize,
}

impl Ssbo {
    unsafe fn new(gl: &glow::Context) -> Result<Ssbo> {
        Ok(Ssbo {
            buf: unsafe { gl.create_buffer() }.map_err(Error::Other)?,
            cap: 0,
        })
    }
    /// Ensures `bytes` of storage (contents undefined after growth) and binds it at `binding`.
    unsafe fn reserve(&mut self, gl: &glow::Context, bytes: usize, binding: u32) {
        unsafe {
            gl.bind_buffer(glow::SHADER_STORAGE_BUFFER, Some(self.buf));
            if bytes > self.cap {
                self.cap = bytes.next_power_of_two().max(256);
                gl.buffer_data_size(
                    glow::SHADER_STORAGE_BUFFER,
                    self.cap as i32,
                    glow::DYNAMIC_COPY,
                );
            }
            gl.bind_buffer_base(glow::SHADER_STORAGE_BUFFER, binding, Some(self.buf));
        }
    }
    unsafe fn upload(&mut self, gl: &glow::Context, data: &[u8], binding: u32) {
        unsafe {
            self.reserve(gl, data.len().max(4), binding);
            gl.buffer_sub_data_u8_slice(glow::SHADER_STORAGE_BUFFER, 0, data);
        }
    }
    unsafe fn zero(&mut self, gl: &glow::Context, bytes: usize, binding: u32, zeros: &mut Vec<u8>) {
        if zeros.len() < bytes {
            zeros.resize(bytes, 0);
        }
        unsafe { self.upload(gl, &zeros[..bytes], binding) }
    }
    unsafe fn read(&self, gl: &glow::Context, out: &mut [u8]) {
        unsafe {
            gl.bind_buffer(glow::SHADER_STORAGE_BUFFER, Some(self.buf));
            gl.get_buffer_sub_data(glow::SHADER_STORAGE_BUFFER, 0, out);
        }
    }
}

/// Readback slots in flight: the GL thread queues up to this many readbacks before it waits for one.
const RING: usize = 4;

/// How a finished readback splits into canvases.
#[derive(Clone, Copy)]
enum Layout {
    /// One canvas, w*h bytes.
    Packed { w: usize, h: usize },
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
struct Ring {
    slots: Vec<(glow::Buffer, usize)>,
    next: usize,
    pending: std::collections::VecDeque<Pending>,
    done: Vec<(usize, Vec<u8>)>,
    /// Time spent copying finished results to the host (after their fences signalled).
    readback_ns: u64,
}

impl Ring {
    unsafe fn new(gl: &glow::Context) -> Result<Ring> {
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
        })
    }

    /// A free slot of at least `bytes`, waiting for the oldest readback when all are in flight.
    unsafe fn acquire(&mut self, gl: &glow::Context, bytes: usize) -> Result<usize> {
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

    unsafe fn push(
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
            match p.layout {
                Layout::Packed { w, h } => {
                    data.truncate(w * h);
                    self.done.push((p.tags[0], data));
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
    unsafe fn collect(&mut self, gl: &glow::Context, wait: bool) -> Result<Vec<(usize, Vec<u8>)>> {
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

fn bytes_of<T: Copy>(v: &[T]) -> &[u8] {
    // SAFETY: plain numeric data, read as bytes.
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, std::mem::size_of_val(v)) }
}

/// One cloud to draw: its points, the run's settings, and the keys of its masks.
#[derive(Clone, Copy)]
pub struct Draw<'a> {
    pub cloud: &'a Cloud,
    pub cfg: &'a RenderConfig,
    pub class_key: u32,
    pub row: u32,
}

/// The GL engine; lives in (and must stay on) the thread that created it.
pub struct GlEngine {
    pub ctx: egl::Gl,
    chaos: Program,
    splat: Program,
    resolve: Program,
    points: Program,
    vao: glow::VertexArray,
    fbo: glow::Framebuffer,
    /// The atlas texture and its size.
    atlas: Option<(glow::Texture, usize, usize)>,
    max_texture: usize,
    pub method: RasterMethod,
    ring: Ring,
    u: Ssbo,
    maps: Ssbo,
    nmaps: Ssbo,
    state: Ssbo,
    xs: Ssbo,
    ys: Ssbo,
    pts: Ssbo,
    winner: Ssbo,
    masks: Ssbo,
    n_u: usize,
    zeros: Vec<u8>,
}

impl GlEngine {
    /// Opens a device and compiles the shaders; `u` is the shared chaos-game sequence.
    pub fn new(choice: egl::Choice, u: &[f64], method: RasterMethod) -> Result<GlEngine> {
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
                method,
                ring: Ring::new(gl)?,
                chaos: Program::new(gl, "glsl/chaos.comp", CHAOS)?,
                splat: Program::new(gl, "glsl/splat.comp", SPLAT)?,
                resolve: Program::new(gl, "glsl/resolve.comp", RESOLVE)?,
                u: Ssbo::new(gl)?,
                maps: Ssbo::new(gl)?,
                nmaps: Ssbo::new(gl)?,
                state: Ssbo::new(gl)?,
                xs: Ssbo::new(gl)?,
                ys: Ssbo::new(gl)?,
                pts: Ssbo::new(gl)?,
                winner: Ssbo::new(gl)?,
                masks: Ssbo::new(gl)?,
                n_u: u.len(),
                zeros: Vec::new(),
                ctx,
            };
            e.u.upload(&e.ctx.gl, bytes_of(u), 0);
            Ok(e)
        }
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

    fn chaos_games_with(
        &mut self,
        ifss: &[Ifs],
        n: usize,
        own_u: Option<&[f64]>,
    ) -> Result<Vec<(Vec<f64>, Vec<f64>)>> {
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
        if nc == 0 || n == 0 {
            return Ok(vec![(vec![], vec![]); nc]);
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
            let steps = (n - 1) as u32;
            let chunk = if self.ctx.software {
                (SOFTWARE_LOOP_BUDGET / (max_maps as u32 + 2)).max(1)
            } else {
                steps.max(1)
            };
            let mut k = 0;
            loop {
                // At least one dispatch: the first one also writes the origin.
                let end = (k + chunk).min(steps);
                self.chaos.set_u32(gl, "k_begin", k);
                self.chaos.set_u32(gl, "k_end", end);
                gl.dispatch_compute((nc as u32).div_ceil(32), 1, 1);
                gl.memory_barrier(
                    glow::SHADER_STORAGE_BARRIER_BIT | glow::BUFFER_UPDATE_BARRIER_BIT,
                );
                k = end;
                if k >= steps {
                    break;
                }
            }
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
            self.ring.readback_ns += t0.elapsed().as_nanos() as u64;
            check(gl, "chaos game")?;
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

    /// Queues the instances of one cloud; their canvases come back from [`collect`](Self::collect)
    /// with the given tags, once their readback has finished.
    pub fn submit(&mut self, d: Draw, instances: &[u32], tags: &[usize]) -> Result<()> {
        let cfg = d.cfg;
        match self.method {
            RasterMethod::Compute => self.raster_compute(d, instances, tags),
            RasterMethod::Points => {
                let per = MAX_INSTANCES_PER_DRAW
                    .min((self.max_texture / (cfg.width as usize + GUARD)).max(1));
                for (chunk, tchunk) in instances.chunks(per).zip(tags.chunks(per)) {
                    self.raster_points(d, chunk, tchunk)?;
                }
                Ok(())
            }
        }
    }

    /// Nanoseconds spent copying results to the host since the last call.
    pub fn take_readback_ns(&mut self) -> u64 {
        std::mem::take(&mut self.ring.readback_ns)
    }

    /// Canvases whose readback has finished (all queued ones with `wait`), with their tags.
    pub fn collect(&mut self, wait: bool) -> Result<Vec<(usize, Vec<u8>)>> {
        unsafe { self.ring.collect(&self.ctx.gl, wait) }
    }

    /// GL_POINTS, one instanced draw for up to 64 instances side by side in an R8UI atlas.
    fn raster_points(&mut self, d: Draw, instances: &[u32], tags: &[usize]) -> Result<()> {
        let Draw {
            cloud,
            cfg,
            class_key,
            row,
        } = d;
        let (w, h) = (cfg.width as usize, cfg.height as usize);
        let n = cloud.xs.len();
        let region_w = w + GUARD;
        let (aw, ah) = (region_w * instances.len(), h + GUARD);
        let pts = pack_points(cloud);
        let gl = &self.ctx.gl;
        unsafe {
            if !matches!(self.atlas, Some((_, tw, th)) if tw >= aw && th >= ah) {
                if let Some((t, _, _)) = self.atlas.take() {
                    gl.delete_texture(t);
                }
                let (tw, th) = (aw.max(self.atlas.map_or(0, |a| a.1)), ah);
                let tex = gl.create_texture().map_err(Error::Other)?;
                gl.bind_texture(glow::TEXTURE_2D, Some(tex));
                gl.tex_storage_2d(glow::TEXTURE_2D, 1, glow::R8UI, tw as i32, th as i32);
                gl.bind_framebuffer(glow::FRAMEBUFFER, Some(self.fbo));
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
                self.atlas = Some((tex, tw, th));
            }
            let (_, tw, th) = self.atlas.unwrap();
            gl.bind_framebuffer(glow::FRAMEBUFFER, Some(self.fbo));
            gl.viewport(0, 0, tw as i32, th as i32);
            gl.disable(glow::BLEND);
            gl.disable(glow::DEPTH_TEST);
            gl.clear_buffer_u32_slice(glow::COLOR, 0, &[0, 0, 0, 0]);
            self.pts.upload(gl, bytes_of(&pts), 0);
            let p = &self.points;
            gl.use_program(Some(p.program));
            p.set_u32(gl, "patch_mode", cfg.mode.is_patch() as u32);
            p.set_u32(gl, "region_w", region_w as u32);
            p.set_u32(gl, "atlas_w", tw as u32);
            p.set_u32(gl, "atlas_h", th as u32);
            p.set_u32(gl, "n_points", n as u32);
            p.set_u32(gl, "color_mode", cfg.mode.is_color() as u32);
            match cfg.masks {
                MaskRng::Counter { seed } => {
                    let keys: Vec<u32> = instances
                        .iter()
                        .flat_map(|&i| {
                            let k = MaskKey::new(seed, class_key, row, i);
                            [k.k0, k.k1]
                        })
                        .collect();
                    let loc = gl.get_uniform_location(p.program, "mask_keys");
                    gl.uniform_2_u32_slice(loc.as_ref(), &keys);
                    p.set_u32(gl, "python_masks", 0);
                    self.masks.reserve(gl, 4, 3);
                }
                MaskRng::Python { seed } => {
                    let m: Vec<u32> = instances
                        .iter()
                        .flat_map(|&i| super::python_masks(seed, i, n))
                        .collect();
                    self.masks.upload(gl, bytes_of(&m), 3);
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

    /// Compute raster: splat once per cloud, resolve per instance.
    fn raster_compute(&mut self, d: Draw, instances: &[u32], tags: &[usize]) -> Result<()> {
        let Draw {
            cloud,
            cfg,
            class_key,
            row,
        } = d;
        let (w, h) = (cfg.width as usize, cfg.height as usize);
        let n = cloud.xs.len();
        let pts = pack_points(cloud);
        let patch = cfg.mode.is_patch() as u32;
        let gl = &self.ctx.gl;
        unsafe {
            self.pts.upload(gl, bytes_of(&pts), 0);
            self.winner.zero(gl, w * h * 4, 1, &mut self.zeros);
            gl.use_program(Some(self.splat.program));
            self.splat.set_u32(gl, "n_points", n as u32);
            self.splat.set_u32(gl, "width", w as u32);
            self.splat.set_u32(gl, "height", h as u32);
            self.splat.set_u32(gl, "patch_mode", patch);
            if n > 0 {
                gl.dispatch_compute((n as u32).div_ceil(256), 1, 1);
            }
            gl.memory_barrier(glow::SHADER_STORAGE_BARRIER_BIT);
            let words = (w * h).div_ceil(4);
            gl.use_program(Some(self.resolve.program));
            self.resolve.set_u32(gl, "width", w as u32);
            self.resolve.set_u32(gl, "height", h as u32);
            self.resolve.set_u32(gl, "patch_mode", patch);
            self.resolve
                .set_u32(gl, "color_mode", cfg.mode.is_color() as u32);
            for (&inst, &tag) in instances.iter().zip(tags) {
                // The resolve writes straight into a readback slot.
                let slot = self.ring.acquire(gl, words * 4)?;
                gl.bind_buffer_base(
                    glow::SHADER_STORAGE_BUFFER,
                    2,
                    Some(self.ring.slots[slot].0),
                );
                match cfg.masks {
                    MaskRng::Counter { seed } => {
                        let k = MaskKey::new(seed, class_key, row, inst);
                        gl.use_program(Some(self.resolve.program));
                        self.resolve.set_u32(gl, "python_masks", 0);
                        self.resolve.set_u32(gl, "mask_k0", k.k0);
                        self.resolve.set_u32(gl, "mask_k1", k.k1);
                        self.masks.reserve(gl, 4, 3);
                    }
                    MaskRng::Python { seed } => {
                        let m = super::python_masks(seed, inst, n);
                        self.masks.upload(gl, bytes_of(&m), 3);
                        gl.use_program(Some(self.resolve.program));
                        self.resolve.set_u32(gl, "python_masks", 1);
                    }
                }
                gl.use_program(Some(self.resolve.program));
                gl.dispatch_compute((words as u32).div_ceil(256), 1, 1);
                gl.memory_barrier(
                    glow::SHADER_STORAGE_BARRIER_BIT | glow::BUFFER_UPDATE_BARRIER_BIT,
                );
                self.ring
                    .push(gl, slot, words * 4, Layout::Packed { w, h }, vec![tag])?;
            }
            check(gl, "raster")?;
        }
        Ok(())
    }

    /// Chaos game on the GPU, rescale on the CPU (the same code as the CPU engine).
    pub fn clouds(
        &mut self,
        ifss: &[Ifs],
        cfg: &RenderConfig,
    ) -> Result<Vec<std::result::Result<Cloud, &'static str>>> {
        let mut pts = self.chaos_games(ifss, cfg.iterations)?;
        // The rescale is sequential per cloud: spread the clouds over the cores, in order.
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(pts.len())
            .max(1);
        let per = pts.len().div_ceil(threads).max(1);
        let mut out: Vec<std::result::Result<Cloud, &'static str>> = Vec::with_capacity(pts.len());
        std::thread::scope(|s| {
            let handles: Vec<_> = pts
                .chunks_mut(per)
                .map(|chunk| {
                    s.spawn(move || {
                        chunk
                            .iter_mut()
                            .map(|(xs, ys)| {
                                let mut c = Cloud::default();
                                cpu::cloud_from_points(xs, ys, cfg, &mut c).map(|_| c)
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            for h in handles {
                out.extend(h.join().expect("rescale thread"));
            }
        });
        Ok(out)
    }
}

unsafe fn check(gl: &glow::Context, what: &str) -> Result<()> {
    let e = unsafe { gl.get_error() };
    if e == glow::NO_ERROR {
        Ok(())
    } else {
        Err(Error::Other(format!("GL error 0x{e:x} in {what}")))
    }
}
