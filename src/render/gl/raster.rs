//! FractalDB's rasters: the compute splat + resolve (`glsl/splat.comp`, `glsl/resolve.comp`) and
//! GL_POINTS into an R8UI atlas (`glsl/points.vert`, `glsl/points.frag`); CPU twin: `render::cpu`.

use super::*;

impl GlEngine {
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
        // SAFETY: the GL contract of `render::gl` (this thread's current context, live objects of
        // it).
        unsafe { self.ring.collect(&self.ctx.gl, wait) }
    }

    /// The masks buffer of a draw: counter keys need none; CPython masks are drawn here.
    fn python_masks(masks: MaskRng, count: u32, instances: &[u32]) -> Option<Vec<u32>> {
        match masks {
            MaskRng::Counter { .. } => None,
            MaskRng::Python { seed } => Some(
                instances
                    .iter()
                    .flat_map(|&i| crate::render::python_masks(seed, i, count as usize))
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
        // SAFETY: the GL contract of `render::gl` (this thread's current context, live objects of
        // it).
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
            self.pts[set].bind(gl, bind::POINTS);
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
                    let loc = p.location("mask_keys");
                    gl.uniform_2_u32_slice(loc, &keys);
                    p.set_u32(gl, "python_masks", 0);
                    self.masks.reserve(gl, 4, bind::MASKS);
                }
                (m, _) => {
                    self.masks
                        .upload(gl, bytes_of(m.as_deref().unwrap_or(&[0])), bind::MASKS);
                    p.set_u32(gl, "python_masks", 1);
                }
            }
            gl.enable(glow::PROGRAM_POINT_SIZE);
            let loc = p.location("point_size");
            gl.uniform_1_f32(loc, if cfg.mode.is_patch() { 3.0 } else { 1.0 });
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
                        masks.extend(crate::render::python_masks(seed, inst, g.count as usize));
                    }
                }
            }
        }
        let gl = &self.ctx.gl;
        // SAFETY: the GL contract of `render::gl` (this thread's current context, live objects of
        // it).
        unsafe {
            self.pts[set].bind(gl, bind::POINTS);
            let cells = group.len() * w * h;
            self.winner.reserve(gl, cells * 4, bind::WINNER);
            gl.use_program(Some(self.clear.program));
            self.clear.set_u32(gl, "count", cells as u32);
            gl.dispatch_compute((cells as u32).div_ceil(256), 1, 1);
            gl.memory_barrier(glow::SHADER_STORAGE_BARRIER_BIT);
            let sp = &self.splat;
            gl.use_program(Some(sp.program));
            sp.set_u32(gl, "width", w as u32);
            sp.set_u32(gl, "height", h as u32);
            sp.set_u32(gl, "patch_mode", patch);
            let loc = sp.location("clouds");
            gl.uniform_2_u32_slice(loc, &clouds);
            if max_n > 0 {
                gl.dispatch_compute(max_n.div_ceil(256), group.len() as u32, 1);
            }
            gl.memory_barrier(glow::SHADER_STORAGE_BARRIER_BIT);
            if masks.is_empty() {
                self.masks.reserve(gl, 4, bind::MASKS);
            } else {
                self.masks.upload(gl, bytes_of(&masks), bind::MASKS);
            }
            let rp = &self.resolve;
            gl.use_program(Some(rp.program));
            rp.set_u32(gl, "width", w as u32);
            rp.set_u32(gl, "height", h as u32);
            rp.set_u32(gl, "patch_mode", patch);
            rp.set_u32(gl, "words", words as u32);
            rp.set_u32(gl, "color_mode", cfg.mode.is_color() as u32);
            rp.set_u32(gl, "python_masks", (!masks.is_empty()) as u32);
            let loc = rp.location("clouds");
            gl.uniform_2_u32_slice(loc, &clouds);
            for (chunk, tchunk) in canvases
                .chunks(MAX_GROUP_CANVASES)
                .zip(tags.chunks(MAX_GROUP_CANVASES))
            {
                let bytes = chunk.len() * words * 4;
                let slot = self.ring.acquire(gl, bytes)?;
                gl.bind_buffer_base(
                    glow::SHADER_STORAGE_BUFFER,
                    bind::LABELS,
                    Some(self.ring.slots[slot].0),
                );
                gl.use_program(Some(self.resolve.program));
                let flat: Vec<u32> = chunk.iter().flatten().copied().collect();
                let loc = self.resolve.location("canvases");
                gl.uniform_4_u32_slice(loc, &flat);
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
