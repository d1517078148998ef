//! The GL toolkit every family's GL engine uses: programs, storage buffers, an R8UI target, fences
//! and error checks.

use super::*;

/// A linked GL program (shared with other families' GL stages), with the uniforms its sources
/// declare located once at link time.
pub(crate) struct Program {
    pub(crate) program: glow::Program,
    name: String,
    /// Declared uniforms and their locations (`None`: the compiler dropped an unused one).
    uniforms: std::collections::HashMap<String, Option<glow::UniformLocation>>,
}

impl Program {
    pub(crate) unsafe fn new(gl: &glow::Context, name: &str, src: &str) -> Result<Program> {
        // SAFETY: the GL contract of `render::gl` (this thread's current context, live objects of
        // it).
        unsafe { Self::link(gl, name, &[(glow::COMPUTE_SHADER, src)]) }
    }

    pub(crate) unsafe fn link(
        gl: &glow::Context,
        name: &str,
        stages: &[(u32, &str)],
    ) -> Result<Program> {
        // SAFETY: the GL contract of `render::gl` (this thread's current context, live objects of
        // it).
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
            let uniforms = stages
                .iter()
                .flat_map(|(_, src)| super::bindings::declared_uniforms(src))
                .chain(super::bindings::declared_uniforms(COMMON))
                .map(|u| {
                    let loc = gl.get_uniform_location(program, &u);
                    (u, loc)
                })
                .collect();
            Ok(Program {
                program,
                name: name.to_string(),
                uniforms,
            })
        }
    }

    /// The location of uniform `name`, located at link time. A name the program's sources do not
    /// declare is a bug of ours (a misspelt name would otherwise be ignored by GL): it panics,
    /// naming the program, and the GL tests run every uniform this code sets.
    pub(crate) fn location(&self, name: &str) -> Option<&glow::UniformLocation> {
        match self.uniforms.get(name) {
            Some(loc) => loc.as_ref(),
            None => panic!("GL: {} declares no uniform {name:?}", self.name),
        }
    }

    pub(crate) unsafe fn set_u32(&self, gl: &glow::Context, name: &str, v: u32) {
        // SAFETY: the GL contract of `render::gl` (this thread's current context, live objects of
        // it).
        unsafe { gl.uniform_1_u32(self.location(name), v) };
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
            // SAFETY: the GL contract of `render::gl` (this thread's current context, live objects
            // of it).
            buf: unsafe { gl.create_buffer() }.map_err(Error::Other)?,
            cap: 0,
        })
    }
    /// Ensures `bytes` of storage (contents undefined after growth) and binds it at `binding`.
    pub(crate) unsafe fn reserve(&mut self, gl: &glow::Context, bytes: usize, binding: u32) {
        // SAFETY: the GL contract of `render::gl` (this thread's current context, live objects of
        // it).
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
        // SAFETY: the GL contract of `render::gl` (this thread's current context, live objects of
        // it).
        unsafe {
            self.reserve(gl, data.len().max(4), binding);
            gl.buffer_sub_data_u8_slice(glow::SHADER_STORAGE_BUFFER, 0, data);
        }
    }
    pub(crate) fn buffer(&self) -> glow::Buffer {
        self.buf
    }
    pub(crate) unsafe fn bind(&self, gl: &glow::Context, binding: u32) {
        // SAFETY: the GL contract of `render::gl` (this thread's current context, live objects of
        // it).
        unsafe { gl.bind_buffer_base(glow::SHADER_STORAGE_BUFFER, binding, Some(self.buf)) };
    }
    pub(crate) unsafe fn read(&self, gl: &glow::Context, out: &mut [u8]) {
        // SAFETY: the GL contract of `render::gl` (this thread's current context, live objects of
        // it); GL checks the host slice's length against the buffer it reads.
        unsafe {
            gl.bind_buffer(glow::SHADER_STORAGE_BUFFER, Some(self.buf));
            gl.get_buffer_sub_data(glow::SHADER_STORAGE_BUFFER, 0, out);
        }
    }
}

pub(crate) fn bytes_of<T: bytemuck::Pod>(v: &[T]) -> &[u8] {
    bytemuck::cast_slice(v)
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
    // SAFETY: the GL contract of `render::gl` (this thread's current context, live objects of it).
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
pub(super) unsafe fn wait_fence(gl: &glow::Context, fence: glow::Fence) -> Result<()> {
    // SAFETY: the GL contract of `render::gl` (this thread's current context, live objects of it);
    // the fence is this context's and not yet deleted.
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
    // SAFETY: the GL contract of `render::gl` (this thread's current context, live objects of it).
    let e = unsafe { gl.get_error() };
    if e == glow::NO_ERROR {
        Ok(())
    } else {
        Err(Error::Other(format!("GL error 0x{e:x} in {what}")))
    }
}
