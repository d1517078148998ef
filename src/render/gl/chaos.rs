//! FractalDB's chaos game on the device (`glsl/chaos.comp`; CPU twin `ifs::Ifs::chaos_game`).

use super::*;

/// Points as the shaders read them: x | y << 16.
pub(super) fn pack_points(cloud: &Cloud) -> Vec<u32> {
    cloud
        .xs
        .iter()
        .zip(&cloud.ys)
        .map(|(&x, &y)| x as u32 | (y as u32) << 16)
        .collect()
}

impl GlEngine {
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
            // SAFETY: the GL contract of `render::gl` (this thread's current context, live objects
            // of it); glow passes the slice with its own length.
            unsafe { self.u.upload(&self.ctx.gl, bytes_of(u), bind::U) };
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
        // SAFETY: the GL contract of `render::gl` (this thread's current context, live objects of
        // it); glow passes the slice with its own length.
        unsafe {
            self.u
                .reserve(gl, own_u.map_or(self.n_u, |u| u.len()).max(1) * 8, bind::U);
            self.maps.upload(gl, bytes_of(&maps), bind::MAPS);
            self.nmaps.upload(gl, bytes_of(&nm), bind::NMAPS);
            self.state
                .upload(gl, bytes_of(&vec![0f64; nc * 4]), bind::STATE);
            // Every element is written by the shader (index 0 at k_begin == 0).
            self.xs.reserve(gl, nc * n * 8, bind::XS);
            self.ys.reserve(gl, nc * n * 8, bind::YS);
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
    pub(super) unsafe fn dispatch_steps(
        &self,
        nc: usize,
        max_maps: usize,
        k: u32,
        end: u32,
        first: bool,
    ) {
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
            // SAFETY: the GL contract of `render::gl` (this thread's current context, live objects
            // of it).
            unsafe {
                // The buffers of this chaos game (a raster may have rebound binding 0..5 since).
                self.u.bind(gl, bind::U);
                self.maps.bind(gl, bind::MAPS);
                self.nmaps.bind(gl, bind::NMAPS);
                self.state.bind(gl, bind::STATE);
                self.xs.bind(gl, bind::XS);
                self.ys.bind(gl, bind::YS);
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
        // SAFETY: the GL contract of `render::gl` (this thread's current context, live objects of
        // it).
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
    pub(super) unsafe fn read_points(
        &mut self,
        nc: usize,
        n: usize,
    ) -> Result<(Vec<f64>, Vec<f64>)> {
        let gl = &self.ctx.gl;
        // SAFETY: the GL contract of `render::gl` (this thread's current context, live objects of
        // it).
        unsafe {
            // Wait for the compute first, so that the copy below times the transfer alone.
            gl.finish();
            let t0 = std::time::Instant::now();
            let mut xs = vec![0f64; nc * n];
            let mut ys = vec![0f64; nc * n];
            self.xs.read(gl, bytemuck::cast_slice_mut(&mut xs[..]));
            self.ys.read(gl, bytemuck::cast_slice_mut(&mut ys[..]));
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
        // SAFETY: the GL contract of `render::gl` (this thread's current context, live objects of
        // it).
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
            // SAFETY: the GL contract of `render::gl` (this thread's current context, live objects
            // of it).
            unsafe { self.dispatch_steps(nc, mm, k, end, false) };
            self.run.as_mut().unwrap().k = end;
        }
    }
}
