//! FractalDB's rescale of the clouds to pixels (`glsl/rescale.comp`; CPU twin `ifs::AxisScale` through
//! [`cpu_rescale`], which `--rescale cpu` uses instead).

use super::*;
use chaos::pack_points;

impl GlEngine {
    /// Finishes the running chaos game and queues the rescale (GPU), or reads the points back and
    /// rescales them with the CPU engine's code (`cpu_rescale`).
    pub fn end_clouds(&mut self, cfg: &RenderConfig) -> Result<()> {
        let Some(r) = self.run.as_ref() else {
            return Err(Error::Other("internal: no chaos game is running".into()));
        };
        let (nc, n, set, mm, k, steps) = (r.nc, r.n, r.set, r.max_maps, r.k, r.steps);
        // SAFETY: the GL contract of `render::gl` (this thread's current context, live objects of
        // it).
        unsafe { self.dispatch_steps(nc, mm, k, steps, false) };
        let gl = &self.ctx.gl;
        if self.opts.cpu_rescale {
            // SAFETY: the GL contract of `render::gl` (this thread's current context, live objects
            // of it).
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
            // SAFETY: the GL contract of `render::gl` (this thread's current context, live objects
            // of it); glow passes the slice with its own length.
            unsafe {
                self.pts[set].upload(gl, bytes_of(&packed), bind::PTS);
                check(gl, "points upload")?;
            }
            let r = self.run.as_mut().unwrap();
            r.cpu_counts = Some(out);
            r.k = steps;
            return Ok(());
        }
        // SAFETY: the GL contract of `render::gl` (this thread's current context, live objects of
        // it).
        unsafe {
            self.xs.bind(gl, bind::XS);
            self.ys.bind(gl, bind::YS);
            self.pts[set].reserve(gl, nc * n * 4, bind::PTS);
            self.info[set].reserve(gl, nc * 16, bind::INFO);
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
        // SAFETY: the GL contract of `render::gl` (this thread's current context, live objects of
        // it); glow passes the slice with its own length.
        unsafe {
            self.xs.upload(gl, bytes_of(xs), bind::XS);
            self.ys.upload(gl, bytes_of(ys), bind::YS);
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
        // SAFETY: the GL contract of `render::gl` (this thread's current context, live objects of
        // it); GL checks the host slice's length against the buffer it reads.
        unsafe {
            self.pts[set].read(gl, bytemuck::cast_slice_mut(&mut pts[..]));
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
        // SAFETY: the GL contract of `render::gl` (this thread's current context, live objects of
        // it); the fence is this context's and not yet deleted.
        unsafe {
            wait_fence(gl, fence)?;
            let t0 = std::time::Instant::now();
            let mut info = vec![0u32; r.nc * 4];
            self.info[r.set].read(gl, bytemuck::cast_slice_mut(&mut info[..]));
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
