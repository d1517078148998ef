//! RCDB's GL engine. The stream is sequential, so the CPU draws each instance's segments from it
//! ([`super::trace_instance`], the same code the CPU engine draws with); the GPU rasterises them:
//! `glsl/rcdb_segments.comp` (CPU twin: [`super::line::draw_line`]) walks every segment in parallel,
//! each pixel keeping the largest segment index that covers it (Pillow's "later segments overwrite
//! earlier ones"), and `glsl/rcdb_resolve.comp` turns the winners into grays, 4 pixels a word.

use super::unit::{ClassStarts, walk_unit};
use super::{Scratch, Settings, line, trace_instance};
use crate::error::{Error, Result};
use crate::render::gl::egl;
use crate::render::gl::{CLEAR, Program, SOFTWARE_LOOP_BUDGET, Ssbo, bytes_of, check, rcdb_bind};
use crate::render::{Canvas, Feed, Stage, StageStats};
use glow::HasContext;
use std::sync::atomic::Ordering;
use std::time::Instant;

const SEGMENTS: &str = include_str!("../../glsl/rcdb_segments.comp");
const RESOLVE: &str = include_str!("../../glsl/rcdb_resolve.comp");

/// Canvases per dispatch (keep in sync: `canvases[64]` in glsl/rcdb_segments.comp and
/// glsl/rcdb_resolve.comp).
pub const MAX_CANVASES: usize = 64;

/// Workgroups of one dispatch dimension that every GL 4.3 device takes.
const MAX_GROUPS: usize = 65_535;

/// Canvases per dispatch for `size`^2 images: the clear pass runs one invocation per pixel of the
/// batch in 256-wide groups along one dimension.
pub fn batch_limit(size: usize) -> usize {
    (MAX_GROUPS * 256 / (size * size).max(1)).clamp(1, MAX_CANVASES)
}

/// Largest pixel coordinate the shader takes: `2 * dx` must not overflow its 32-bit ints.
const MAX_COORD: i64 = 1 << 28;

/// One canvas's segments (pixel endpoints, in drawing order) and each segment's gray.
#[derive(Default)]
pub struct Segments {
    pub ends: Vec<[i32; 4]>,
    pub grays: Vec<u32>,
}

/// The GL side: a context with the three programs and their buffers; lives on its thread.
pub struct RcdbGl {
    pub ctx: egl::Gl,
    clear: Program,
    segments: Program,
    resolve: Program,
    segs: Ssbo,
    winner: Ssbo,
    grays: Ssbo,
    pixels: Ssbo,
}

impl RcdbGl {
    pub fn new(choice: egl::Choice) -> Result<RcdbGl> {
        let ctx = egl::open(choice)?;
        // SAFETY: the context is current on this thread; the calls only create GL objects.
        unsafe {
            let gl = &ctx.gl;
            Ok(RcdbGl {
                clear: Program::new(gl, "glsl/clear.comp", CLEAR)?,
                segments: Program::new(gl, "glsl/rcdb_segments.comp", SEGMENTS)?,
                resolve: Program::new(gl, "glsl/rcdb_resolve.comp", RESOLVE)?,
                segs: Ssbo::new(gl)?,
                winner: Ssbo::new(gl)?,
                grays: Ssbo::new(gl)?,
                pixels: Ssbo::new(gl)?,
                ctx,
            })
        }
    }

    /// Rasterises up to [`MAX_CANVASES`] canvases of `size`^2 pixels; returns their gray bytes and
    /// the nanoseconds of the device-to-host copy.
    pub fn raster(&mut self, size: usize, canvases: &[Segments]) -> Result<(Vec<Vec<u8>>, u64)> {
        assert!(canvases.len() <= batch_limit(size));
        if size * size > MAX_GROUPS * 256 {
            return Err(Error::Other(format!(
                "rcdb: --image_size {size} is too large for the GL engine (at most 4095); use --backend cpu"
            )));
        }
        if canvases.is_empty() {
            return Ok((vec![], 0));
        }
        let mut ends: Vec<[i32; 4]> = Vec::new();
        let mut grays: Vec<u32> = Vec::new();
        let mut ranges: Vec<u32> = Vec::new();
        for c in canvases {
            ranges.extend([ends.len() as u32, c.ends.len() as u32]);
            ends.extend_from_slice(&c.ends);
            grays.extend_from_slice(&c.grays);
        }
        let max_n = canvases.iter().map(|c| c.ends.len()).max().unwrap_or(0) as u32;
        let words = (size * size).div_ceil(4);
        let cells = canvases.len() * size * size;
        let gl = &self.ctx.gl;
        let mut out = vec![0u8; canvases.len() * words * 4];
        let readback_ns;
        // SAFETY: the context is current on this thread; every buffer is sized before it is bound
        // and read, and `out` is exactly the bytes of the pixel buffer read back.
        unsafe {
            self.segs.upload(gl, bytes_of(&ends), rcdb_bind::SEGMENTS);
            self.winner.reserve(gl, cells * 4, rcdb_bind::WINNER);
            self.grays.upload(gl, bytes_of(&grays), rcdb_bind::GRAYS);
            self.pixels.reserve(gl, out.len(), rcdb_bind::PIXELS);
            gl.use_program(Some(self.clear.program));
            self.clear.set_u32(gl, "count", cells as u32);
            gl.dispatch_compute((cells as u32).div_ceil(256), 1, 1);
            gl.memory_barrier(glow::SHADER_STORAGE_BARRIER_BIT);
            let sp = &self.segments;
            gl.use_program(Some(sp.program));
            sp.set_u32(gl, "size", size as u32);
            let loc = sp.location("canvases");
            gl.uniform_2_u32_slice(loc, &ranges);
            if max_n > 0 {
                gl.dispatch_compute(max_n.div_ceil(64), canvases.len() as u32, 1);
            }
            gl.memory_barrier(glow::SHADER_STORAGE_BARRIER_BIT);
            let rp = &self.resolve;
            gl.use_program(Some(rp.program));
            rp.set_u32(gl, "size", size as u32);
            rp.set_u32(gl, "words", words as u32);
            let loc = rp.location("canvases");
            gl.uniform_2_u32_slice(loc, &ranges);
            gl.dispatch_compute((words as u32).div_ceil(256), canvases.len() as u32, 1);
            gl.memory_barrier(glow::BUFFER_UPDATE_BARRIER_BIT);
            let t0 = Instant::now();
            self.pixels.read(gl, &mut out);
            readback_ns = t0.elapsed().as_nanos() as u64;
            check(gl, "the RCDB raster")?;
        }
        let pixels = out
            .chunks(words * 4)
            .map(|c| c[..size * size].to_vec())
            .collect();
        Ok((pixels, readback_ns))
    }
}

/// Collects one instance's segments for the GPU: endpoints truncated as Pillow does, segments that
/// cannot touch the canvas left out (the order of the others is kept, and only it matters).
pub fn collect_segments(
    size: usize,
    software: bool,
) -> impl FnMut(&mut Segments, u8, (f64, f64), (f64, f64)) -> Result<()> {
    move |out, gray, a, b| {
        let (a, b) = (line::pixel_of(a), line::pixel_of(b));
        if !line::may_touch(a, b, size as i64) {
            return Ok(());
        }
        if [a.0, a.1, b.0, b.1].iter().any(|v| v.abs() >= MAX_COORD) {
            return Err(Error::Other(format!(
                "rcdb: a segment reaches pixel ({}, {}), outside the GL engine's range; use --backend cpu",
                b.0, b.1
            )));
        }
        if software && (a.0 - b.0).abs().max((a.1 - b.1).abs()) >= SOFTWARE_LOOP_BUDGET as i64 {
            return Err(Error::Other(
                "rcdb: a segment is longer than a software renderer's loop limit; use --backend cpu".into(),
            ));
        }
        out.ends
            .push([a.0 as i32, a.1 as i32, b.0 as i32, b.1 as i32]);
        out.grays.push(gray as u32);
        Ok(())
    }
}

/// RCDB's GL render stage: one per GPU.
pub struct GlStage<'a> {
    pub settings: &'a Settings,
    pub starts: &'a ClassStarts,
    pub group: u32,
    pub stats: &'a StageStats,
    pub gl: RcdbGl,
    pub scratch: Scratch,
}

impl GlStage<'_> {
    /// Rasterises the batch and hands its canvases over; `false` when the run is stopping.
    fn flush(
        &mut self,
        feed: &mut dyn Feed,
        batch: &mut Vec<(u64, usize, Segments)>,
    ) -> Result<bool> {
        if batch.is_empty() {
            return Ok(true);
        }
        let t0 = Instant::now();
        let segs: Vec<Segments> = batch.iter_mut().map(|b| std::mem::take(&mut b.2)).collect();
        let size = self.settings.image_size as usize;
        let (pixels, readback_ns) = self.gl.raster(size, &segs)?;
        StageStats::add(&self.stats.raster_ns, t0);
        self.stats
            .readback_ns
            .fetch_add(readback_ns, Ordering::Relaxed);
        self.stats
            .readback_bytes
            .fetch_add((pixels.len() * size * size) as u64, Ordering::Relaxed);
        for ((unit, slot, _), pixels) in batch.drain(..).zip(pixels) {
            if !feed.emit(Canvas { unit, slot, pixels }) {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

impl Stage for GlStage<'_> {
    fn run(&mut self, feed: &mut dyn Feed) -> Result<()> {
        let s = self.settings;
        let size = s.image_size as usize;
        let limit = batch_limit(size);
        let mut collect = collect_segments(size, self.gl.ctx.software);
        let mut batch: Vec<(u64, usize, Segments)> = Vec::new();
        while let Some(units) = feed.claim(1) {
            for (id, unit) in units {
                let t0 = Instant::now();
                let mut flush_ns = 0u64;
                let (starts, group, stats) = (self.starts, self.group, self.stats);
                let (_, go) = walk_unit(s, starts, group, &unit, stats, |i| {
                    let mut segs = Segments::default();
                    let mut failed = Ok(());
                    trace_instance(
                        s,
                        i.rng,
                        i.params,
                        i.shape,
                        i.circle,
                        &mut self.scratch,
                        |g, a, b| {
                            if failed.is_ok() {
                                failed = collect(&mut segs, g, a, b);
                            }
                        },
                    );
                    failed?;
                    batch.push((id, i.slot, segs));
                    if batch.len() < limit {
                        return Ok(true);
                    }
                    let t1 = Instant::now();
                    let go = self.flush(feed, &mut batch)?;
                    flush_ns += t1.elapsed().as_nanos() as u64;
                    Ok(go)
                })?;
                // The CPU side of the GL thread: replay and segment lists (the GPU's time is raster).
                let cpu_ns = (t0.elapsed().as_nanos() as u64).saturating_sub(flush_ns);
                stats.chaos_ns.fetch_add(cpu_ns, Ordering::Relaxed);
                if !go {
                    return Ok(());
                }
            }
            // Canvases are handed over per claim, so writers never wait on a half-filled batch
            // for long.
            if !self.flush(feed, &mut batch)? {
                return Ok(());
            }
        }
        self.flush(feed, &mut batch)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every batch's clear pass fits one dispatch dimension, at any image size the engine takes.
    #[test]
    fn batches_fit_a_dispatch() {
        for size in [2usize, 64, 96, 362, 511, 512, 1024, 2048, 4095] {
            let n = batch_limit(size);
            assert!((1..=MAX_CANVASES).contains(&n));
            assert!(
                (n * size * size).div_ceil(256) <= MAX_GROUPS,
                "size {size}: {n} canvases"
            );
        }
        assert_eq!(batch_limit(512), 63);
        assert_eq!(batch_limit(64), MAX_CANVASES);
    }
}
