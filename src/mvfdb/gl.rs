//! MV-FractalDB's GL engine: the original's draw (GL_POINTS of size 1 through proj * view * model,
//! `glsl/mvfdb_points.vert`) into an offscreen R8UI framebuffer, read back bottom row first, which
//! is the row order the original saves. On llvmpipe it is the goldens' own rasteriser; the CPU twin
//! is `mvfdb::view::draw_points`.

use super::view::Mat4;
use crate::error::{Error, Result};
use crate::render::gl::{Program, Ssbo, bytes_of, check, egl, r8ui_target};
use glow::HasContext;

const VERT: &str = include_str!("../../glsl/mvfdb_points.vert");
const FRAG: &str = include_str!("../../glsl/mvfdb_points.frag");

pub struct MvGl {
    pub ctx: egl::Gl,
    program: Program,
    points: Ssbo,
    vao: glow::VertexArray,
    fbo: glow::Framebuffer,
    target: Option<(glow::Texture, usize)>,
    n: usize,
}

impl MvGl {
    pub fn new(choice: egl::Choice) -> Result<MvGl> {
        // A compatibility context, as PyOpenGL's default: its points are rasterised as points
        // (sub-pixel snapped), not as point sprites (core profile), and the pixels differ.
        let ctx = egl::open_profile(choice, true)?;
        // SAFETY: the context is current on this thread; these calls only create GL objects.
        unsafe {
            let gl = &ctx.gl;
            Ok(MvGl {
                program: Program::link(
                    gl,
                    "glsl/mvfdb_points.vert + glsl/mvfdb_points.frag",
                    &[(glow::VERTEX_SHADER, VERT), (glow::FRAGMENT_SHADER, FRAG)],
                )?,
                points: Ssbo::new(gl)?,
                vao: gl.create_vertex_array().map_err(Error::Other)?,
                fbo: gl.create_framebuffer().map_err(Error::Other)?,
                target: None,
                n: 0,
                ctx,
            })
        }
    }

    /// Uploads a model's points (drawn by every following `draw`).
    pub fn set_points(&mut self, pts: &[[f32; 3]]) {
        // SAFETY: the context is current; the buffer is sized by `upload`.
        unsafe { self.points.upload(&self.ctx.gl, bytes_of(pts), 0) };
        self.n = pts.len();
    }

    /// One view: the canvas (`size`^2 bytes, 0 or 255, bottom row first), and the nanoseconds of
    /// its readback.
    pub fn draw(
        &mut self,
        proj: &Mat4,
        view: &Mat4,
        model: &Mat4,
        size: usize,
    ) -> Result<(Vec<u8>, u64)> {
        let gl = &self.ctx.gl;
        let mut out = vec![0u8; size * size];
        let readback_ns;
        // SAFETY: the context is current; the texture is (re)made at `size` before it is bound,
        // and `out` holds exactly the size*size bytes read back (pack alignment 1).
        unsafe {
            if self.target.is_none_or(|t| t.1 != size) {
                if let Some((t, _)) = self.target.take() {
                    gl.delete_texture(t);
                }
                let tex = r8ui_target(gl, self.fbo, size, size)?;
                self.target = Some((tex, size));
            }
            gl.bind_framebuffer(glow::FRAMEBUFFER, Some(self.fbo));
            gl.viewport(0, 0, size as i32, size as i32);
            gl.disable(glow::BLEND);
            gl.disable(glow::DEPTH_TEST);
            // Point size: GL's default, 1 (the original's --point_size).
            gl.disable(glow::PROGRAM_POINT_SIZE);
            gl.clear_buffer_u32_slice(glow::COLOR, 0, &[0, 0, 0, 0]);
            let p = &self.program;
            gl.use_program(Some(p.program));
            for (name, m) in [("proj", proj), ("view", view), ("model", model)] {
                let loc = gl.get_uniform_location(p.program, name);
                let flat: Vec<f32> = m.iter().flatten().copied().collect();
                gl.uniform_matrix_4_f32_slice(loc.as_ref(), false, &flat);
            }
            self.points.bind(gl, 0);
            gl.bind_vertex_array(Some(self.vao));
            gl.memory_barrier(glow::SHADER_STORAGE_BARRIER_BIT);
            if self.n > 0 {
                gl.draw_arrays(glow::POINTS, 0, self.n as i32);
            }
            gl.pixel_store_i32(glow::PACK_ALIGNMENT, 1);
            let t0 = std::time::Instant::now();
            gl.read_pixels(
                0,
                0,
                size as i32,
                size as i32,
                glow::RED_INTEGER,
                glow::UNSIGNED_BYTE,
                glow::PixelPackData::Slice(Some(&mut out)),
            );
            readback_ns = t0.elapsed().as_nanos() as u64;
            check(gl, "the MV-FractalDB points")?;
        }
        Ok((out, readback_ns))
    }
}
