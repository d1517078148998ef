//! RCDB's unit of render work, shared by its CPU and GL stages: a class's stream walked from the
//! class's start, the wanted instances drawn and the others replayed.

use super::{ClassParams, Scratch, Settings, Shape, draw_instance, unit_circle};
use crate::error::Result;
use crate::render::StageStats;
use crate::rng::PyRandom;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Instant;

/// The stream of each class to draw, at the class's first draw (its parameters).
pub type ClassStarts = HashMap<u32, PyRandom>;

/// One instance to draw, handed to a stage by [`walk_unit`]: the stream right at its first draw.
pub struct Instance<'a> {
    pub rng: &'a mut PyRandom,
    pub params: &'a ClassParams,
    pub shape: &'a Shape,
    pub circle: &'a [(f64, f64)],
    /// Its slot in the unit.
    pub slot: usize,
}

/// A unit's class stream walked from the class's start: [`Walk::step`] replays up to the next
/// wanted instance (instance `i` of row `r` is the class's `r * group + i`), hands it over and
/// moves past it. Shared by [`walk_unit`] (the stages) and [`RcdbCursor`] (one canvas at a time).
pub struct Walk<'a> {
    s: &'a Settings,
    rng: PyRandom,
    p: ClassParams,
    circle: Vec<(f64, f64)>,
    shape: Shape,
    /// The stream's next instance.
    next: u32,
    /// Wanted (instance, slot), in stream order; `at` is the next.
    order: Vec<(u32, usize)>,
    at: usize,
}

impl<'a> Walk<'a> {
    pub fn new(
        s: &'a Settings,
        starts: &ClassStarts,
        group: u32,
        unit: &crate::render::Unit,
    ) -> Result<Self> {
        let mut rng = starts.get(&unit.class).cloned().ok_or_else(|| {
            crate::Error::Other(format!(
                "internal: no stream start for class {}",
                unit.class
            ))
        })?;
        let p: ClassParams = s.draw_class(&mut rng);
        let circle = unit_circle(p.vertices);
        let mut order: Vec<(u32, usize)> = unit
            .instances
            .iter()
            .enumerate()
            .map(|(slot, &i)| (unit.row * group + i, slot))
            .collect();
        order.sort_unstable();
        Ok(Walk {
            s,
            rng,
            shape: p.first,
            p,
            circle,
            next: 0,
            order,
            at: 0,
        })
    }

    /// Replays to the next wanted instance, hands it to `draw` (which must consume its draws) and
    /// moves past it: `draw`'s answer and the nanoseconds spent replaying, or `None` after the last.
    pub fn step<R>(
        &mut self,
        draw: impl FnOnce(Instance) -> Result<R>,
    ) -> Result<Option<(R, u64)>> {
        let Some(&(k, slot)) = self.order.get(self.at) else {
            return Ok(None);
        };
        self.at += 1;
        let t1 = Instant::now();
        while self.next < k {
            // A long replay (a resume deep into a large unit) stops on an interrupt too.
            if self.next.is_multiple_of(1024) {
                crate::check_interrupt()?;
            }
            self.s.skip_instance(&mut self.rng, &self.p);
            self.shape = self.s.draw_next_shape(&mut self.rng);
            self.next += 1;
        }
        let replay_ns = t1.elapsed().as_nanos() as u64;
        let got = draw(Instance {
            rng: &mut self.rng,
            params: &self.p,
            shape: &self.shape,
            circle: &self.circle,
            slot,
        })?;
        self.shape = self.s.draw_next_shape(&mut self.rng);
        self.next += 1;
        Ok(Some((got, replay_ns)))
    }
}

/// Walks a unit's class stream from the class's start ([`Walk`]): the wanted instances in stream
/// order, the others before them replayed as draws. `draw` must consume the instance's draws (draw
/// it, or trace it); it returns `false` to stop. Returns the nanoseconds spent replaying, and
/// `false` when `draw` stopped.
pub fn walk_unit(
    s: &Settings,
    starts: &ClassStarts,
    group: u32,
    unit: &crate::render::Unit,
    stats: &StageStats,
    mut draw: impl FnMut(Instance) -> Result<bool>,
) -> Result<(u64, bool)> {
    let t0 = Instant::now();
    let mut walk = Walk::new(s, starts, group, unit)?;
    stats.clouds.fetch_add(1, Ordering::Relaxed);
    let mut replay_ns = t0.elapsed().as_nanos() as u64;
    loop {
        // Between instances: the GL stage hands canvases over only per batch.
        crate::check_interrupt()?;
        match walk.step(&mut draw)? {
            None => return Ok((replay_ns, true)),
            Some((go, ns)) => {
                replay_ns += ns;
                if !go {
                    return Ok((replay_ns, false));
                }
            }
        }
    }
}

/// An RCDB unit's instances drawn one at a time on the CPU engine (see [`crate::render::Cursor`]).
pub struct RcdbCursor<'a> {
    pub walk: Walk<'a>,
    pub scratch: Scratch,
}

impl crate::render::Cursor for RcdbCursor<'_> {
    fn next(&mut self, canvas: &mut Vec<u8>) -> Result<Option<usize>> {
        let s = self.walk.s;
        let scratch = &mut self.scratch;
        let got = self.walk.step(|i| {
            draw_instance(s, i.rng, i.params, i.shape, i.circle, scratch, canvas);
            Ok(i.slot)
        })?;
        Ok(got.map(|(slot, _)| slot))
    }
}
