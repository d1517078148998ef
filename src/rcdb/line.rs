//! Pillow's `ImageDraw.line(..., width=1)` on one segment: the float endpoints are truncated toward
//! zero (a C `(int)` cast), the segment is walked by Pillow's Bresenham (`line8` in `Draw.c`: the
//! start pixel included, the end pixel excluded), then the end pixel is drawn as a point; pixels off
//! the canvas are skipped one by one. Checked against Pillow itself on random segments
//! (`tests/rcdb.rs`).

/// The pixel Pillow draws a float coordinate at: a C `(int)` cast, truncation toward zero.
#[inline]
pub fn pixel_of(p: (f64, f64)) -> (i64, i64) {
    (p.0 as i64, p.1 as i64)
}

/// Whether the segment between two pixels can touch a `size` x `size` canvas: not when both ends
/// are past the same edge (each coordinate of the walk is monotone).
#[inline]
pub fn may_touch(a: (i64, i64), b: (i64, i64), size: i64) -> bool {
    !((a.0 < 0 && b.0 < 0)
        || (a.1 < 0 && b.1 < 0)
        || (a.0 >= size && b.0 >= size)
        || (a.1 >= size && b.1 >= size))
}

/// Draws the segment (x0, y0) -> (x1, y1) with `value` into a `size` x `size` canvas (row-major,
/// y down). Its GPU twin is `glsl/rcdb_segments.comp`.
#[inline]
pub fn draw_line(canvas: &mut [u8], size: usize, p0: (f64, f64), p1: (f64, f64), value: u8) {
    let (x0, y0) = pixel_of(p0);
    let (x1, y1) = pixel_of(p1);
    let n = size as i64;
    if !may_touch((x0, y0), (x1, y1), n) {
        return;
    }
    let mut put = |x: i64, y: i64| {
        if (x as u64) < n as u64 && (y as u64) < n as u64 {
            canvas[y as usize * size + x as usize] = value;
        }
    };
    let (mut dx, xs) = if x1 < x0 { (x0 - x1, -1) } else { (x1 - x0, 1) };
    let (mut dy, ys) = if y1 < y0 { (y0 - y1, -1) } else { (y1 - y0, 1) };
    let (mut x, mut y) = (x0, y0);
    if dx == 0 {
        for _ in 0..dy {
            put(x, y);
            y += ys;
        }
    } else if dy == 0 {
        for _ in 0..dx {
            put(x, y);
            x += xs;
        }
    } else if dx > dy {
        let steps = dx;
        dy += dy;
        let mut e = dy - dx;
        dx += dx;
        for _ in 0..steps {
            put(x, y);
            if e >= 0 {
                y += ys;
                e -= dx;
            }
            e += dy;
            x += xs;
        }
    } else {
        let steps = dy;
        dx += dx;
        let mut e = dx - dy;
        dy += dy;
        for _ in 0..steps {
            put(x, y);
            if e >= 0 {
                x += xs;
                e -= dy;
            }
            e += dx;
            y += ys;
        }
    }
    put(x1, y1);
}
