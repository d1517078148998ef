//! MV-FractalDB's GL engine. A batch of models is computed on the device: the 3D chaos game in fp64
//! (`glsl/mvfdb_chaos.comp`, CPU twin `mvfdb::model`) and the min-max and centroid normalisation to
//! f32 points (`glsl/mvfdb_normalize.comp`), with nothing read back but a NaN flag per model. Each
//! model is then drawn as the original draws it (GL_POINTS of size 1 through proj * view * model,
//! `glsl/mvfdb_points.vert`), all of its views in one instanced draw into the layers of an R8UI
//! array framebuffer (a layer per view: each view keeps a whole viewport, so its window coordinates
//! are those of a draw of its own), read back bottom row first (the row order the original saves)
//! through the fenced ring that FractalDB's GL engine uses. On llvmpipe it is the goldens' own
//! rasteriser; the CPU twin of the draw is `mvfdb::view::draw_points`.

use super::view::Mat4;
use crate::error::{Error, Result};
use crate::render::gl::{
    Layout, Program, Ring, SOFTWARE_LOOP_BUDGET, Ssbo, bytes_of, check, egl, mvfdb_bind,
};
use glow::HasContext;

const CHAOS: &str = include_str!("../../glsl/mvfdb_chaos.comp");
const NORMALIZE: &str = include_str!("../../glsl/mvfdb_normalize.comp");
const VERT: &str = include_str!("../../glsl/mvfdb_points.vert");
const FRAG: &str = include_str!("../../glsl/mvfdb_points.frag");

/// Views one instanced draw renders at most (the array framebuffer's layers; GL promises 256).
pub const MAX_LAYERS: usize = 32;
/// Maps per model at most (the search draws 2..7; keep in sync: 16 doubles a map in
/// glsl/mvfdb_chaos.comp).
const MAP_DOUBLES: usize = 16;

/// One model of a batch: its maps (a..l already multiplied by the instance's row) with the running
/// weight sums in column 12, and its draws (`u`: [`super::POINTS`] doubles).
pub struct ModelIn<'a> {
    pub maps: &'a [[f64; 13]],
    pub u: &'a [f64],
}

/// What a finished readback was: views of a model, or the NaN flags of a batch.
#[derive(Clone, Copy, Debug)]
pub enum Done<T> {
    View(T),
    /// The NaN flags of batch `n` (one per model, in order).
    Flags(u64),
}

/// The per-batch buffers, two sets used in turn so a batch's chaos game never writes what the draws
/// of the batch before may still read.
struct ModelSet {
    xyz: Ssbo,
    pts: Ssbo,
    info: Ssbo,
    n: usize,
}

pub struct MvGl<T> {
    pub ctx: egl::Gl,
    chaos: Program,
    normalize: Program,
    points: Program,
    u: Ssbo,
    maps: Ssbo,
    nmaps: Ssbo,
    state: Ssbo,
    views: Ssbo,
    sets: [ModelSet; 2],
    set: usize,
    batches: u64,
    vao: glow::VertexArray,
    fbo: glow::Framebuffer,
    read_fbo: glow::Framebuffer,
    /// The array texture: (texture, side, layers).
    target: Option<(glow::Texture, usize, usize)>,
    /// Readbacks come back as what they are: views of a model, or a batch's NaN flags.
    ring: Ring<Done<T>>,
    /// glPointSize (glow does not wrap it).
    point_size: extern "system" fn(f32),
}

impl<T: Copy> MvGl<T> {
    pub fn new(choice: egl::Choice) -> Result<MvGl<T>> {
        // A compatibility context, as PyOpenGL's default: its points are rasterised as points
        // (sub-pixel snapped), not as point sprites (core profile), and the pixels differ.
        let ctx = egl::open_profile(choice, true)?;
        let Some(f) = ctx.proc_address("glPointSize") else {
            return Err(Error::Other("GL: the driver has no glPointSize".into()));
        };
        // SAFETY: glPointSize's C signature is `void glPointSize(GLfloat)`, the system ABI.
        let point_size: extern "system" fn(f32) = unsafe { std::mem::transmute(f) };
        // SAFETY: the context is current on this thread; these calls only create GL objects.
        unsafe {
            let gl = &ctx.gl;
            let set = || -> Result<ModelSet> {
                Ok(ModelSet {
                    xyz: Ssbo::new(gl)?,
                    pts: Ssbo::new(gl)?,
                    info: Ssbo::new(gl)?,
                    n: 0,
                })
            };
            Ok(MvGl {
                chaos: Program::new(gl, "glsl/mvfdb_chaos.comp", CHAOS)?,
                normalize: Program::new(gl, "glsl/mvfdb_normalize.comp", NORMALIZE)?,
                points: Program::link(
                    gl,
                    "glsl/mvfdb_points.vert + glsl/mvfdb_points.frag",
                    &[(glow::VERTEX_SHADER, VERT), (glow::FRAGMENT_SHADER, FRAG)],
                )?,
                u: Ssbo::new(gl)?,
                maps: Ssbo::new(gl)?,
                nmaps: Ssbo::new(gl)?,
                state: Ssbo::new(gl)?,
                views: Ssbo::new(gl)?,
                sets: [set()?, set()?],
                set: 1,
                batches: 0,
                vao: gl.create_vertex_array().map_err(Error::Other)?,
                fbo: gl.create_framebuffer().map_err(Error::Other)?,
                read_fbo: gl.create_framebuffer().map_err(Error::Other)?,
                target: None,
                ring: Ring::new(gl)?,
                point_size,
                ctx,
            })
        }
    }

    /// Queues a batch of models (the chaos game and the normalisation; nothing waits) with the view
    /// matrices its draws will use (`draw` takes them by index), and queues the read-back of its NaN
    /// flags, which [`collect`](Self::collect) returns as `Done::Flags(batch)`. Returns the batch's
    /// number.
    pub fn models(&mut self, models: &[ModelIn], views: &[Mat4]) -> Result<u64> {
        let n = super::POINTS - 1;
        let nm = models.len();
        let max_maps = models
            .iter()
            .map(|m| m.maps.len())
            .max()
            .unwrap_or(1)
            .max(1);
        if nm == 0 || models.iter().any(|m| m.u.len() != super::POINTS) {
            return Err(Error::Other(
                "internal: a model batch needs models of 10,000 draws".into(),
            ));
        }
        if nm * 3 * n * 8 > i32::MAX as usize {
            return Err(Error::Other(format!(
                "internal: {nm} models exceed a GL buffer"
            )));
        }
        let mut maps = vec![0f64; nm * max_maps * MAP_DOUBLES];
        let mut counts = vec![0u32; nm];
        let mut u = Vec::with_capacity(nm * super::POINTS);
        for (c, m) in models.iter().enumerate() {
            counts[c] = m.maps.len() as u32;
            for (k, map) in m.maps.iter().enumerate() {
                let o = (c * max_maps + k) * MAP_DOUBLES;
                maps[o..o + 13].copy_from_slice(map);
            }
            u.extend_from_slice(m.u);
        }
        let flat: Vec<f32> = views
            .iter()
            .flat_map(|m| m.iter().flatten())
            .copied()
            .collect();
        self.set ^= 1;
        let batch = self.batches;
        self.batches += 1;
        let tag = Done::Flags(batch);
        let gl = &self.ctx.gl;
        let set = &mut self.sets[self.set];
        set.n = nm;
        // SAFETY: the context is current; every buffer is sized here for what the shaders index
        // (u: nm x 10,000, maps: nm x max_maps x 16, xyz: nm x 3n, pts: nm x 3n floats, info: nm).
        unsafe {
            self.u.upload(gl, bytes_of(&u), mvfdb_bind::U);
            self.maps.upload(gl, bytes_of(&maps), mvfdb_bind::MAPS);
            self.nmaps.upload(gl, bytes_of(&counts), mvfdb_bind::NMAPS);
            self.state
                .upload(gl, bytes_of(&vec![0f64; nm * 4]), mvfdb_bind::STATE);
            set.xyz.reserve(gl, nm * 3 * n * 8, mvfdb_bind::XYZ);
            if !flat.is_empty() {
                self.views.upload(gl, bytes_of(&flat), mvfdb_bind::VIEWS);
            }
            let p = &self.chaos;
            gl.use_program(Some(p.program));
            p.set_u32(gl, "n_models", nm as u32);
            p.set_u32(gl, "n_points", n as u32);
            p.set_u32(gl, "u_stride", super::POINTS as u32);
            p.set_u32(gl, "max_maps", max_maps as u32);
            // Short dispatches on a software renderer (its loop limit counts the inner map loop).
            let chunk = if self.ctx.software {
                (SOFTWARE_LOOP_BUDGET / (max_maps as u32 + 2)).max(1) as usize
            } else {
                n
            };
            let mut k = 0;
            while k < n {
                let e = n.min(k + chunk);
                p.set_u32(gl, "k_begin", k as u32);
                p.set_u32(gl, "k_end", e as u32);
                gl.dispatch_compute((nm as u32).div_ceil(32), 1, 1);
                gl.memory_barrier(glow::SHADER_STORAGE_BARRIER_BIT);
                k = e;
            }
            set.pts.reserve(gl, nm * 3 * n * 4, mvfdb_bind::PTS);
            set.info.reserve(gl, nm * 4, mvfdb_bind::INFO);
            let p = &self.normalize;
            gl.use_program(Some(p.program));
            p.set_u32(gl, "n_points", n as u32);
            p.set_u32(gl, "divisor", super::POINTS as u32);
            gl.dispatch_compute(nm as u32, 1, 1);
            gl.memory_barrier(
                glow::SHADER_STORAGE_BARRIER_BIT
                    | glow::BUFFER_UPDATE_BARRIER_BIT
                    | glow::VERTEX_ATTRIB_ARRAY_BARRIER_BIT,
            );
            check(gl, "the MV-FractalDB models")?;
            // The flags travel through the ring like the views.
            let slot = self.ring.acquire(gl, nm * 4)?;
            gl.bind_buffer(glow::COPY_READ_BUFFER, Some(set.info.buffer()));
            gl.bind_buffer(glow::COPY_WRITE_BUFFER, Some(self.ring.slots[slot].0));
            gl.copy_buffer_sub_data(
                glow::COPY_READ_BUFFER,
                glow::COPY_WRITE_BUFFER,
                0,
                0,
                (nm * 4) as i32,
            );
            gl.bind_buffer(glow::COPY_READ_BUFFER, None);
            gl.bind_buffer(glow::COPY_WRITE_BUFFER, None);
            self.ring.push(
                gl,
                slot,
                nm * 4,
                Layout::Packed {
                    w: nm * 4,
                    h: 1,
                    stride: 0,
                },
                vec![tag],
            )?;
        }
        Ok(batch)
    }

    /// Draws model `m` of the last batch through views `first..first + tags.len()` of its matrices,
    /// each view's canvas (`size`^2 bytes, 0 or 255, bottom row first) queued for readback under its
    /// tag.
    pub fn draw(
        &mut self,
        m: usize,
        first: usize,
        proj: &Mat4,
        size: usize,
        point: u32,
        tags: &[T],
    ) -> Result<()> {
        let n = super::POINTS - 1;
        let set = self.set;
        if m >= self.sets[set].n {
            return Err(Error::Other("internal: no such model in the batch".into()));
        }
        for (c, chunk) in tags.chunks(MAX_LAYERS).enumerate() {
            let first = first + c * MAX_LAYERS;
            let layers = chunk.len();
            let ids: Vec<Done<T>> = chunk.iter().map(|&t| Done::View(t)).collect();
            let gl = &self.ctx.gl;
            // SAFETY: the context is current; the array texture is (re)made with at least `layers`
            // layers of `size`^2 before it is bound; the ring slot holds layers x size^2 bytes and
            // each layer is read at its offset (pack alignment 1).
            unsafe {
                let want_layers = tags.len().min(MAX_LAYERS);
                if self.target.is_none_or(|t| t.1 != size || t.2 < want_layers) {
                    if let Some((t, ..)) = self.target.take() {
                        gl.delete_texture(t);
                    }
                    let tex = r8ui_layers(gl, self.fbo, size, want_layers)?;
                    self.target = Some((tex, size, want_layers));
                }
                let tex = self.target.unwrap().0;
                gl.bind_framebuffer(glow::FRAMEBUFFER, Some(self.fbo));
                gl.viewport(0, 0, size as i32, size as i32);
                gl.disable(glow::BLEND);
                gl.disable(glow::DEPTH_TEST);
                // The point size as the original sets it: glPointSize (state, not the shader).
                gl.disable(glow::PROGRAM_POINT_SIZE);
                (self.point_size)(point as f32);
                // Clears every layer of the layered attachment.
                gl.clear_buffer_u32_slice(glow::COLOR, 0, &[0, 0, 0, 0]);
                let p = &self.points;
                gl.use_program(Some(p.program));
                for (name, mat) in [("proj", proj), ("model", &super::view::IDENTITY)] {
                    let loc = p.location(name);
                    let flat: Vec<f32> = mat.iter().flatten().copied().collect();
                    gl.uniform_matrix_4_f32_slice(loc, false, &flat);
                }
                p.set_u32(gl, "view_base", first as u32);
                self.sets[set].pts.bind(gl, mvfdb_bind::PTS);
                self.views.bind(gl, mvfdb_bind::VIEWS);
                gl.bind_vertex_array(Some(self.vao));
                gl.draw_arrays_instanced(glow::POINTS, (m * n) as i32, n as i32, layers as i32);
                let bytes = size * size;
                let slot = self.ring.acquire(gl, bytes * layers)?;
                gl.pixel_store_i32(glow::PACK_ALIGNMENT, 1);
                gl.bind_framebuffer(glow::READ_FRAMEBUFFER, Some(self.read_fbo));
                gl.bind_buffer(glow::PIXEL_PACK_BUFFER, Some(self.ring.slots[slot].0));
                for l in 0..layers {
                    gl.framebuffer_texture_layer(
                        glow::READ_FRAMEBUFFER,
                        glow::COLOR_ATTACHMENT0,
                        Some(tex),
                        0,
                        l as i32,
                    );
                    gl.read_buffer(glow::COLOR_ATTACHMENT0);
                    gl.read_pixels(
                        0,
                        0,
                        size as i32,
                        size as i32,
                        glow::RED_INTEGER,
                        glow::UNSIGNED_BYTE,
                        glow::PixelPackData::BufferOffset((l * bytes) as u32),
                    );
                }
                gl.bind_buffer(glow::PIXEL_PACK_BUFFER, None);
                gl.bind_framebuffer(glow::READ_FRAMEBUFFER, None);
                check(gl, "the MV-FractalDB points")?;
                self.ring.push(
                    gl,
                    slot,
                    bytes * layers,
                    Layout::Packed {
                        w: size,
                        h: size,
                        stride: bytes,
                    },
                    ids,
                )?;
            }
        }
        Ok(())
    }

    /// Finished readbacks (all of them with `wait`): views' canvases and batches' NaN flags.
    pub fn collect(&mut self, wait: bool) -> Result<Vec<(Done<T>, Vec<u8>)>> {
        // SAFETY: the context is current; the ring only reads its own finished slots.
        unsafe { self.ring.collect(&self.ctx.gl, wait) }
    }

    /// Readback time and bytes since the last call.
    pub fn take_readback(&mut self) -> (u64, u64) {
        (
            std::mem::take(&mut self.ring.readback_ns),
            std::mem::take(&mut self.ring.readback_bytes),
        )
    }

    /// The f32 points of model `m` of the last batch (waits; for tests).
    pub fn read_points(&mut self, m: usize) -> Result<Vec<[f32; 3]>> {
        let n = super::POINTS - 1;
        let set = &self.sets[self.set];
        if m >= set.n {
            return Err(Error::Other("internal: no such model in the batch".into()));
        }
        let mut all = vec![0u8; set.n * n * 12];
        // SAFETY: the context is current; `all` is the size of the batch's points.
        unsafe {
            self.ctx.gl.finish();
            set.pts.read(&self.ctx.gl, &mut all);
        }
        Ok(all[m * n * 12..(m + 1) * n * 12]
            .chunks_exact(12)
            .map(|c| {
                std::array::from_fn(|k| f32::from_le_bytes(c[k * 4..k * 4 + 4].try_into().unwrap()))
            })
            .collect())
    }
}

/// An R8UI 2D array texture of `layers` layers attached, layered, to `fbo`.
unsafe fn r8ui_layers(
    gl: &glow::Context,
    fbo: glow::Framebuffer,
    size: usize,
    layers: usize,
) -> Result<glow::Texture> {
    // SAFETY: the GL contract of `render::gl`: the context is current on this thread and the
    // framebuffer is this context's; sizes are checked against GL_MAX_ARRAY_TEXTURE_LAYERS by the
    // caller.
    unsafe {
        let tex = gl.create_texture().map_err(Error::Other)?;
        gl.bind_texture(glow::TEXTURE_2D_ARRAY, Some(tex));
        gl.tex_storage_3d(
            glow::TEXTURE_2D_ARRAY,
            1,
            glow::R8UI,
            size as i32,
            size as i32,
            layers as i32,
        );
        gl.bind_framebuffer(glow::FRAMEBUFFER, Some(fbo));
        gl.framebuffer_texture(glow::FRAMEBUFFER, glow::COLOR_ATTACHMENT0, Some(tex), 0);
        gl.draw_buffers(&[glow::COLOR_ATTACHMENT0]);
        let status = gl.check_framebuffer_status(glow::FRAMEBUFFER);
        if status != glow::FRAMEBUFFER_COMPLETE {
            return Err(Error::Other(format!(
                "GL: the layered R8UI framebuffer is incomplete (0x{status:x})"
            )));
        }
        Ok(tex)
    }
}
