//! The readback ring: finished results copied to host memory through pixel-pack buffers, collected
//! in order once their fence signals.

use super::*;

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

struct Pending<T> {
    fence: glow::Fence,
    slot: usize,
    bytes: usize,
    layout: Layout,
    tags: Vec<T>,
}

/// A ring of buffer objects that readbacks land in (PIXEL_PACK for GL_POINTS, SSBO for the compute
/// resolve), each guarded by a fence, so the GL thread keeps queueing work while earlier results travel.
/// Each canvas of a readback comes back with its payload `T` (what it is to the engine that queued it).
pub(crate) struct Ring<T> {
    pub(crate) slots: Vec<(glow::Buffer, usize)>,
    next: usize,
    pending: std::collections::VecDeque<Pending<T>>,
    done: Vec<(T, Vec<u8>)>,
    /// Time spent copying finished results to the host (after their fences signalled), and bytes.
    pub(crate) readback_ns: u64,
    pub(crate) readback_bytes: u64,
}

impl<T> Ring<T> {
    pub(crate) unsafe fn new(gl: &glow::Context) -> Result<Ring<T>> {
        let mut slots = Vec::new();
        for _ in 0..RING {
            // SAFETY: the GL contract of `render::gl` (this thread's current context, live objects
            // of it).
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
            // SAFETY: the GL contract of `render::gl` (this thread's current context, live objects
            // of it), which the callee needs too.
            unsafe { self.finish_oldest(gl)? };
        }
        let i = self.next;
        self.next = (self.next + 1) % self.slots.len();
        let (buf, cap) = &mut self.slots[i];
        if *cap < bytes {
            *cap = bytes.next_power_of_two();
            // SAFETY: the GL contract of `render::gl` (this thread's current context, live objects
            // of it).
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
        tags: Vec<T>,
    ) -> Result<()> {
        let fence =
            // SAFETY: the GL contract of `render::gl` (this thread's current context, live objects
            // of it); the fence is this context's and not yet deleted.
            unsafe { gl.fence_sync(glow::SYNC_GPU_COMMANDS_COMPLETE, 0) }.map_err(Error::Other)?;
        // SAFETY: the GL contract of `render::gl` (this thread's current context, live objects of
        // it); the fence is this context's and not yet deleted.
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
        // SAFETY: the GL contract of `render::gl` (this thread's current context, live objects of
        // it); the fence is this context's and not yet deleted.
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
                        let tag = p.tags.into_iter().next().expect("one tag");
                        self.done.push((tag, data));
                    } else {
                        for (k, tag) in p.tags.into_iter().enumerate() {
                            self.done
                                .push((tag, data[k * stride..k * stride + w * h].to_vec()));
                        }
                    }
                }
                Layout::Atlas { aw, region_w, w, h } => {
                    for (k, tag) in p.tags.into_iter().enumerate() {
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
    ) -> Result<Vec<(T, Vec<u8>)>> {
        while let Some(p) = self.pending.front() {
            let ready = wait || {
                // SAFETY: the GL contract of `render::gl` (this thread's current context, live
                // objects of it); the fence is this context's and not yet deleted.
                let r = unsafe { gl.client_wait_sync(p.fence, 0, 0) };
                r == glow::ALREADY_SIGNALED || r == glow::CONDITION_SATISFIED
            };
            if !ready {
                break;
            }
            // SAFETY: the GL contract of `render::gl` (this thread's current context, live objects
            // of it), which the callee needs too.
            unsafe { self.finish_oldest(gl)? };
        }
        Ok(std::mem::take(&mut self.done))
    }
}
