//! RCDB's unit of render work, shared by its CPU and GL stages: a class's stream walked from the
//! class's start, the wanted instances drawn and the others replayed.

use super::{ClassParams, Settings, Shape, unit_circle};
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

/// Walks a unit's class stream from the class's start: the wanted instances (instance `i` of row
/// `r` is the class's `r * group + i`) in stream order, the others before them replayed as draws.
/// `draw` must consume the instance's draws (draw it, or trace it); it returns `false` to stop.
/// Returns the nanoseconds spent replaying, and `false` when `draw` stopped.
pub fn walk_unit(
    s: &Settings,
    starts: &ClassStarts,
    group: u32,
    unit: &crate::render::Unit,
    stats: &StageStats,
    mut draw: impl FnMut(Instance) -> Result<bool>,
) -> Result<(u64, bool)> {
    let t0 = Instant::now();
    let mut rng = starts.get(&unit.class).cloned().ok_or_else(|| {
        crate::Error::Other(format!(
            "internal: no stream start for class {}",
            unit.class
        ))
    })?;
    let p: ClassParams = s.draw_class(&mut rng);
    let circle = unit_circle(p.vertices);
    stats.clouds.fetch_add(1, Ordering::Relaxed);
    let mut order: Vec<(u32, usize)> = unit
        .instances
        .iter()
        .enumerate()
        .map(|(slot, &i)| (unit.row * group + i, slot))
        .collect();
    order.sort_unstable();
    let mut shape = p.first;
    let mut next = 0u32;
    let mut replay_ns = t0.elapsed().as_nanos() as u64;
    for (k, slot) in order {
        let t1 = Instant::now();
        while next < k {
            // A long replay (a resume deep into a large unit) stops on an interrupt too.
            if next.is_multiple_of(1024) {
                crate::check_interrupt()?;
            }
            s.skip_instance(&mut rng, &p);
            shape = s.draw_next_shape(&mut rng);
            next += 1;
        }
        replay_ns += t1.elapsed().as_nanos() as u64;
        // Between instances: the GL stage hands canvases over only per batch.
        crate::check_interrupt()?;
        let go = draw(Instance {
            rng: &mut rng,
            params: &p,
            shape: &shape,
            circle: &circle,
            slot,
        })?;
        shape = s.draw_next_shape(&mut rng);
        next += 1;
        if !go {
            return Ok((replay_ns, false));
        }
    }
    Ok((replay_ns, true))
}
