//! IFS parameters, their CSV formats, the chaos game and the original's rescale.

use crate::error::{Error, Result};
use std::path::Path;

/// One affine map `x' = a x + b y + e`, `y' = c x + d y + f`, chosen with probability `p`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Map {
    pub a: f64,
    pub b: f64,
    pub c: f64,
    pub d: f64,
    pub e: f64,
    pub f: f64,
    pub p: f64,
}

/// An IFS: the maps of one class, in CSV order.
#[derive(Clone, Debug, PartialEq)]
pub struct Ifs {
    pub maps: Vec<Map>,
}

/// The six multipliers of one weights-CSV row, for (a, b, c, d, e, f).
pub type WeightRow = [f64; 6];

/// Parses a comma-separated numeric file the way `np.genfromtxt(..., delimiter=',')` + `float()` reads it:
/// LF or CRLF, optional final newline, blank lines and `#` comments skipped. Every row must have `cols`
/// finite numbers.
pub fn parse_rows(path: &Path, text: &str, cols: usize, what: &str) -> Result<Vec<Vec<f64>>> {
    let mut rows = Vec::new();
    for (i, raw) in text.split('\n').enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split(',').collect();
        if fields.len() != cols {
            return Err(Error::input(
                path,
                Some(i + 1),
                format!(
                    "expected {cols} comma-separated values ({what}), found {}",
                    fields.len()
                ),
            ));
        }
        let mut row = Vec::with_capacity(cols);
        for (c, f) in fields.iter().enumerate() {
            let f = f.trim();
            let v: f64 = f.parse().map_err(|_| {
                Error::input(
                    path,
                    Some(i + 1),
                    format!("column {}: {f:?} is not a number", c + 1),
                )
            })?;
            if !v.is_finite() {
                return Err(Error::input(
                    path,
                    Some(i + 1),
                    format!("column {}: {f:?} is not a finite number", c + 1),
                ));
            }
            row.push(v);
        }
        rows.push(row);
    }
    if rows.is_empty() {
        return Err(Error::input(
            path,
            None,
            format!("no rows: expected lines of {cols} numbers ({what})"),
        ));
    }
    Ok(rows)
}

/// An input file's text: refused unless it is a regular file (a FIFO with no writer would block
/// forever, a device never end) or UTF-8.
pub(crate) fn read_text(path: &Path) -> Result<String> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, "cannot read", e))?;
    if !meta.is_file() {
        return Err(Error::input(
            path,
            None,
            "not a regular file (a FIFO, socket or device?): input files must be regular files",
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, "cannot read", e))?;
    String::from_utf8(bytes).map_err(|_| Error::input(path, None, "not UTF-8 text"))
}

impl Ifs {
    /// Reads a class CSV (`a,b,c,d,e,f,p` per map).
    pub fn read_csv(path: &Path) -> Result<Ifs> {
        let text = read_text(path)?;
        Self::parse_csv(path, &text)
    }

    pub fn parse_csv(path: &Path, text: &str) -> Result<Ifs> {
        let rows = parse_rows(path, text, 7, "a,b,c,d,e,f,p")?;
        let maps = rows
            .into_iter()
            .map(|r| Map {
                a: r[0],
                b: r[1],
                c: r[2],
                d: r[3],
                e: r[4],
                f: r[5],
                p: r[6],
            })
            .collect();
        Ok(Ifs { maps })
    }

    /// The CSV text as `np.savetxt(..., delimiter=',')` writes it (`%.18e`, LF, final newline).
    pub fn to_csv(&self) -> String {
        let mut s = String::new();
        for m in &self.maps {
            let vals = [m.a, m.b, m.c, m.d, m.e, m.f, m.p];
            for (i, v) in vals.iter().enumerate() {
                if i > 0 {
                    s.push(',');
                }
                s.push_str(&fmt_e18(*v));
            }
            s.push('\n');
        }
        s
    }

    /// `set_param(..., weight_a=..)`: every map's a..f multiplied; p kept as it is.
    pub fn weighted(&self, w: &WeightRow) -> Ifs {
        Ifs {
            maps: self
                .maps
                .iter()
                .map(|m| Map {
                    a: m.a * w[0],
                    b: m.b * w[1],
                    c: m.c * w[2],
                    d: m.d * w[3],
                    e: m.e * w[4],
                    f: m.f * w[5],
                    p: m.p,
                })
                .collect(),
        }
    }

    /// The running sums of p, accumulated left to right (the original's `select_function`).
    pub fn cumulative(&self) -> Vec<f64> {
        let mut acc = 0.0;
        self.maps
            .iter()
            .map(|m| {
                acc += m.p;
                acc
            })
            .collect()
    }

    /// The chaos game: `u.len()` points including the origin; step k uses `u[k]`.
    /// Writes into `xs`/`ys` (cleared first).
    /// Whether the first step of the chaos game chooses a map (some running sum of the probabilities
    /// reaches `u0`). When none does, the original's `next_x` is never set and it stops with
    /// `UnboundLocalError`; later steps that choose none repeat the previous point.
    pub fn first_step_chooses_a_map(&self, u0: f64) -> bool {
        self.cumulative().iter().any(|&c| u0 <= c)
    }

    /// Four chaos games at once, each exactly [`chaos_game`](Self::chaos_game) of its own IFS and u
    /// sequence (all of one length): the four dependent chains interleave in one loop, so their
    /// latencies overlap (a step waits for the one before; four independent steps do not wait for
    /// each other). Bit-identical to four separate calls.
    pub fn chaos_games_4(
        ifss: [&Ifs; 4],
        us: [&[f64]; 4],
        xs: &mut [Vec<f64>; 4],
        ys: &mut [Vec<f64>; 4],
    ) {
        let n = us[0].len();
        assert!(us.iter().all(|u| u.len() == n));
        for l in 0..4 {
            xs[l].clear();
            ys[l].clear();
            xs[l].resize(n, 0.0);
            ys[l].resize(n, 0.0);
        }
        if n == 0 {
            return;
        }
        let cums: [Vec<f64>; 4] = std::array::from_fn(|l| ifss[l].cumulative());
        let mut x = [0.0f64; 4];
        let mut y = [0.0f64; 4];
        let mut nx = [0.0f64; 4];
        let mut ny = [0.0f64; 4];
        let [x0, x1, x2, x3] = xs;
        let [y0, y1, y2, y3] = ys;
        let outx = [&mut x0[..], &mut x1[..], &mut x2[..], &mut x3[..]];
        let outy = [&mut y0[..], &mut y1[..], &mut y2[..], &mut y3[..]];
        // With non-decreasing running sums (non-negative probabilities: every searched candidate),
        // "the first j with u <= C_j" is "how many C_j are below u", counted without branches, so
        // the random map choice costs no mispredicted jumps; otherwise the plain scan.
        let monotone = cums.iter().all(|c| c.windows(2).all(|w| w[0] <= w[1]));
        let maps: [Vec<[f64; 6]>; 4] = std::array::from_fn(|l| {
            ifss[l]
                .maps
                .iter()
                .map(|m| [m.a, m.b, m.c, m.d, m.e, m.f])
                .collect()
        });
        for k in 0..n - 1 {
            for l in 0..4 {
                let uk = us[l][k];
                let j = if monotone {
                    cums[l].iter().map(|&c| (c < uk) as usize).sum::<usize>()
                } else {
                    cums[l]
                        .iter()
                        .position(|&c| uk <= c)
                        .unwrap_or(cums[l].len())
                };
                if let Some(m) = maps[l].get(j) {
                    nx[l] = x[l] * m[0] + y[l] * m[1] + m[4];
                    ny[l] = x[l] * m[2] + y[l] * m[3] + m[5];
                }
                outx[l][k + 1] = nx[l];
                outy[l][k + 1] = ny[l];
                x[l] = nx[l];
                y[l] = ny[l];
            }
        }
    }

    pub fn chaos_game(&self, u: &[f64], xs: &mut Vec<f64>, ys: &mut Vec<f64>) {
        let n = u.len();
        xs.clear();
        ys.clear();
        xs.reserve(n);
        ys.reserve(n);
        if n == 0 {
            return;
        }
        let cum = self.cumulative();
        let (mut x, mut y) = (0.0f64, 0.0f64);
        xs.push(x);
        ys.push(y);
        // (next_x, next_y) persist across steps: when no map is chosen (u > the last cumulative
        // sum through rounding) the original appends the previous point again.
        let (mut nx, mut ny) = (0.0f64, 0.0f64);
        for &uk in &u[..n - 1] {
            if let Some(j) = cum.iter().position(|&c| uk <= c) {
                let m = &self.maps[j];
                nx = x * m.a + y * m.b + m.e;
                ny = x * m.c + y * m.d + m.f;
            }
            xs.push(nx);
            ys.push(ny);
            x = nx;
            y = ny;
        }
    }
}

/// Reads a weights CSV: rows of 6 multipliers (CRLF or LF, final newline optional).
pub fn read_weights(path: &Path) -> Result<Vec<WeightRow>> {
    let text = read_text(path)?;
    parse_weights(path, &text)
}

pub fn parse_weights(path: &Path, text: &str) -> Result<Vec<WeightRow>> {
    Ok(parse_rows(path, text, 6, "weights for a,b,c,d,e,f")?
        .into_iter()
        .map(|r| [r[0], r[1], r[2], r[3], r[4], r[5]])
        .collect())
}

/// numpy's `%.18e`: 19 significant digits, correctly rounded, exponent with sign and at least 2 digits.
pub fn fmt_e18(v: f64) -> String {
    if v.is_nan() {
        return "nan".into();
    }
    if v.is_infinite() {
        return if v > 0.0 { "inf".into() } else { "-inf".into() };
    }
    let s = format!("{v:.18e}");
    let (mant, exp) = s.split_once('e').expect("exponent");
    let e: i32 = exp.parse().expect("exponent digits");
    format!("{mant}e{}{:02}", if e < 0 { '-' } else { '+' }, e.abs())
}

/// Python's `repr` of a float: the shortest digits that round-trip, fixed notation for decimal
/// exponents -4..=15 (`163.0`, `0.0001`), else scientific with a signed exponent of at least two
/// digits (`1e-05`, `1.5e+16`).
pub fn py_float_str(v: f64) -> String {
    if v.is_nan() {
        return "nan".into();
    }
    if v.is_infinite() {
        return if v > 0.0 { "inf" } else { "-inf" }.into();
    }
    // Rust's `{:e}` prints the shortest round-trip digits: "d.ddde-N".
    let e_form = format!("{:e}", v.abs());
    let (mant, exp) = e_form.split_once('e').unwrap();
    let exp: i32 = exp.parse().unwrap();
    let digits: String = mant.chars().filter(|c| *c != '.').collect();
    let sign = if v.is_sign_negative() { "-" } else { "" };
    if (-4..16).contains(&exp) {
        let body = if exp >= 0 {
            let int_len = exp as usize + 1;
            if digits.len() <= int_len {
                format!("{digits}{}.0", "0".repeat(int_len - digits.len()))
            } else {
                format!("{}.{}", &digits[..int_len], &digits[int_len..])
            }
        } else {
            format!("0.{}{digits}", "0".repeat((-exp - 1) as usize))
        };
        format!("{sign}{body}")
    } else {
        let m = if digits.len() > 1 {
            format!("{}.{}", &digits[..1], &digits[1..])
        } else {
            digits
        };
        let es = if exp < 0 { '-' } else { '+' };
        format!("{sign}{m}e{es}{:02}", exp.abs())
    }
}

/// Points on the pixel grid, after the original's NaN truncation and per-axis rescale.
#[derive(Clone, Debug, Default)]
pub struct Cloud {
    pub xs: Vec<u16>,
    pub ys: Vec<u16>,
    /// How many points the NaN truncation removed (0 when the orbit stayed finite).
    pub truncated: usize,
}

/// Steps per chunk of [`chaos_lanes`]: each lane's u draws for a chunk are fetched just before it
/// (from a stream, or a slice of a shared sequence), so they stay in the L1 cache.
const LANE_CHUNK: usize = 256;

/// Buckets of u for a lane's map choice: with at most 8 sums, at most 8 of 1,024 buckets hold one.
const BUCKETS: usize = 1024;
const AMBIGUOUS: u8 = u8::MAX;

/// An IFS as [`chaos_lanes`] runs it: the running sums padded with +inf to 8 (a padded sum is
/// never below u, so "how many sums are below u" counts only real maps), the maps padded to 9
/// (index `len` = no map chosen, the previous point kept), and a table of u buckets.
pub struct Lane {
    cums: [f64; 8],
    maps: [[f64; 6]; 9],
    len: usize,
    /// Per u bucket `[b, b + 1) / BUCKETS`: the map index when no running sum lies in the bucket
    /// (then every u in it counts the same sums below it), else [`AMBIGUOUS`].
    buckets: [u8; BUCKETS],
}

impl Lane {
    /// `None` for more than 8 maps or running sums that are not non-decreasing (negative or NaN
    /// probabilities): then the count would not be the original's first-match scan.
    pub fn new(ifs: &Ifs) -> Option<Lane> {
        let cum = ifs.cumulative();
        if cum.len() > 8 || !cum.windows(2).all(|w| w[0] <= w[1]) || cum.iter().any(|c| c.is_nan())
        {
            return None;
        }
        let mut lane = Lane {
            cums: [f64::INFINITY; 8],
            maps: [[0.0; 6]; 9],
            len: cum.len(),
            buckets: [0; BUCKETS],
        };
        lane.cums[..cum.len()].copy_from_slice(&cum);
        for (d, m) in lane.maps.iter_mut().zip(&ifs.maps) {
            *d = [m.a, m.b, m.c, m.d, m.e, m.f];
        }
        for (b, slot) in lane.buckets.iter_mut().enumerate() {
            // Exact: multiples of 1/1024.
            let (lo, hi) = (b as f64 / BUCKETS as f64, (b + 1) as f64 / BUCKETS as f64);
            *slot = if cum.iter().any(|&c| lo <= c && c < hi) {
                AMBIGUOUS
            } else {
                cum.iter().filter(|&&c| c < lo).count() as u8
            };
        }
        Some(lane)
    }

    /// The map index for draw `u` (`len`: no map chosen): the bucket's, or the count of sums
    /// below `u` when a sum lies in its bucket.
    #[inline(always)]
    fn choose(&self, u: f64) -> usize {
        // u is in [0, 1), so u * 1024 (exact) is below BUCKETS; clamped anyway (not with
        // clamp(), which keeps a NaN).
        #[allow(clippy::manual_clamp)]
        let b = (u * BUCKETS as f64).max(0.0).min((BUCKETS - 1) as f64);
        // SAFETY: b is in [0, BUCKETS - 1] (a NaN became 0), which i32 holds.
        let j = self.buckets[unsafe { b.to_int_unchecked::<i32>() } as usize];
        if j != AMBIGUOUS {
            return j as usize;
        }
        self.cums.iter().map(|&c| (c < u) as usize).sum::<usize>()
    }
}

/// A lane's bounds: (min x, max x, min y, max y) over every point, the origin included; the numpy
/// min/max when the orbit is finite (see [`pairs_finite`]), meaningless otherwise.
pub type Bounds = [f64; 4];

/// Whether every point of a chaos game's (x, y) pairs is finite. A non-finite coordinate stays
/// non-finite (inf or NaN times a coefficient, plus anything, is inf or NaN; a step that chooses
/// no map repeats it), so that is whether the last point is.
pub fn pairs_finite(pts: &[f64]) -> bool {
    pts.iter().rev().take(2).all(|v| v.is_finite())
}

/// Four chaos games at once, each exactly [`Ifs::chaos_game`] of its lane's IFS with `points`
/// points; `u(l, k, buf)` fills `buf` with lane `l`'s draws `k..k + buf.len()`. The four
/// dependent chains interleave (their latencies overlap) and lane `l`'s points go to `pts[l]` as
/// (x, y) pairs; returns each lane's bounds.
///
/// Once [`crate::interrupted`], it stops at the next chunk of draws and the points and bounds are
/// incomplete: callers look at it (e.g. [`crate::check_interrupt`]) before using them.
pub fn chaos_lanes(
    lanes: [&Lane; 4],
    points: usize,
    pts: &mut [Vec<f64>; 4],
    u: impl FnMut(usize, usize, &mut [f64]),
) -> [Bounds; 4] {
    for p in pts.iter_mut() {
        // Every point is written: no clearing (6 MB for four lanes of 100,000 points).
        p.resize(2 * points, 0.0);
        p.truncate(2 * points);
    }
    #[cfg(target_arch = "x86_64")]
    // SAFETY: SSE2 is part of the x86-64 baseline, so every x86-64 processor has it.
    return unsafe { chaos_lanes_sse2(lanes, points, pts, u) };
    #[cfg(not(target_arch = "x86_64"))]
    return chaos_lanes_scalar(lanes, points, pts, u);
}

/// [`chaos_lanes`] with each lane's point as one SSE2 pair (x, y): `(x, x) * (a, c) + (y, y) *
/// (b, d) + (e, f)` is the original's `x*a + y*b + e` and `x*c + y*d + f`, operation for
/// operation; the bounds are a min and a max of pairs and a point is one 16-byte store, so the
/// state of four lanes fits in the registers.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse2")]
fn chaos_lanes_sse2(
    lanes: [&Lane; 4],
    points: usize,
    pts: &mut [Vec<f64>; 4],
    mut fill_u: impl FnMut(usize, usize, &mut [f64]),
) -> [Bounds; 4] {
    use std::arch::x86_64::*;
    let mut coef = [[[_mm_setzero_pd(); 3]; 9]; 4];
    for (cl, lane) in coef.iter_mut().zip(lanes) {
        for (cj, &[a, b, c, d, e, f]) in cl.iter_mut().zip(&lane.maps) {
            *cj = [_mm_set_pd(c, a), _mm_set_pd(d, b), _mm_set_pd(f, e)];
        }
    }
    let mut u = [[0.0f64; LANE_CHUNK]; 4];
    // (x, y) of each lane, and the bounds so far (the origin included).
    let mut p = [_mm_setzero_pd(); 4];
    let mut lo = p;
    let mut hi = p;
    let [o0, o1, o2, o3] = pts;
    for o in [&mut *o0, &mut *o1, &mut *o2, &mut *o3] {
        let origin = 2.min(o.len());
        o[..origin].fill(0.0);
    }
    let steps = points.saturating_sub(1);
    let mut k = 0;
    while k < steps && !crate::interrupted() {
        let m = LANE_CHUNK.min(steps - k);
        for (l, ul) in u.iter_mut().enumerate() {
            fill_u(l, k, &mut ul[..m]);
        }
        let r = 2 * (k + 1)..2 * (k + 1 + m);
        let out = [
            &mut o0[r.clone()],
            &mut o1[r.clone()],
            &mut o2[r.clone()],
            &mut o3[r],
        ];
        for t in 0..m {
            for l in 0..4 {
                let lane = lanes[l];
                let j = lane.choose(u[l][t]);
                // j == len: no map chosen, the point repeats.
                if j < lane.len {
                    let c = &coef[l][j];
                    let xx = _mm_unpacklo_pd(p[l], p[l]);
                    let yy = _mm_unpackhi_pd(p[l], p[l]);
                    p[l] = _mm_add_pd(_mm_add_pd(_mm_mul_pd(xx, c[0]), _mm_mul_pd(yy, c[1])), c[2]);
                }
                // minpd/maxpd: the bounds are used only for finite orbits.
                lo[l] = _mm_min_pd(lo[l], p[l]);
                hi[l] = _mm_max_pd(hi[l], p[l]);
                let dst = &mut out[l][2 * t..2 * t + 2];
                // SAFETY: `dst` is two f64s, what the unaligned store writes.
                unsafe { _mm_storeu_pd(dst.as_mut_ptr(), p[l]) };
            }
        }
        k += m;
    }
    let mut bounds = [[0.0; 4]; 4];
    for l in 0..4 {
        bounds[l] = [
            _mm_cvtsd_f64(lo[l]),
            _mm_cvtsd_f64(hi[l]),
            _mm_cvtsd_f64(_mm_unpackhi_pd(lo[l], lo[l])),
            _mm_cvtsd_f64(_mm_unpackhi_pd(hi[l], hi[l])),
        ];
    }
    bounds
}

/// [`chaos_lanes`] in plain f64, one lane after the other (processors other than x86-64; the
/// tests compare it with the SSE2 form).
#[cfg_attr(all(target_arch = "x86_64", not(test)), allow(dead_code))]
pub(crate) fn chaos_lanes_scalar(
    lanes: [&Lane; 4],
    points: usize,
    pts: &mut [Vec<f64>; 4],
    mut fill_u: impl FnMut(usize, usize, &mut [f64]),
) -> [Bounds; 4] {
    let mut bounds = [[0.0f64; 4]; 4];
    for l in 0..4 {
        bounds[l] = chaos_lane(lanes[l], points, &mut pts[l], |k, buf| fill_u(l, k, buf));
    }
    bounds
}

/// One chaos game as a lane: exactly [`Ifs::chaos_game`], with the bucket map choice, the points
/// as (x, y) pairs in `out` and the bounds on the way; `fill_u(k, buf)` gives draws `k..`.
/// Stops early once [`crate::interrupted`], as [`chaos_lanes`] does.
pub fn chaos_lane(
    lane: &Lane,
    points: usize,
    out: &mut Vec<f64>,
    mut fill_u: impl FnMut(usize, &mut [f64]),
) -> Bounds {
    let mut u = [0.0f64; LANE_CHUNK];
    let mut b = [0.0f64; 4];
    let steps = points.saturating_sub(1);
    out.resize(2 * points, 0.0);
    out.truncate(2 * points);
    let origin = 2.min(out.len());
    out[..origin].fill(0.0);
    let (mut x, mut y) = (0.0f64, 0.0f64);
    let mut k = 0;
    while k < steps && !crate::interrupted() {
        let m = LANE_CHUNK.min(steps - k);
        fill_u(k, &mut u[..m]);
        let dst = &mut out[2 * (k + 1)..2 * (k + 1 + m)];
        for (&ut, d) in u[..m].iter().zip(dst.chunks_exact_mut(2)) {
            let j = lane.choose(ut);
            if j < lane.len {
                let c = &lane.maps[j];
                (x, y) = (x * c[0] + y * c[1] + c[4], x * c[2] + y * c[3] + c[5]);
            }
            d[0] = x;
            d[1] = y;
            // Plain comparisons: the bounds are used only for finite orbits.
            b = [
                if x < b[0] { x } else { b[0] },
                if x > b[1] { x } else { b[1] },
                if y < b[2] { y } else { b[2] },
                if y > b[3] { y } else { b[3] },
            ];
        }
        k += m;
    }
    b
}

/// numpy's `uint16(v)` for a float on x86-64: truncation, NaN/inf to 0, wrap-around past the range.
#[inline]
fn np_u16(v: f64) -> u16 {
    if v.is_finite() { (v as i64) as u16 } else { 0 }
}

/// Deletes, as `np.delete(a, range(k-100, k) + nan_indices)` does for the first NaN at k, from both arrays.
fn delete_nan_run(first: &[f64], xs: &mut Vec<f64>, ys: &mut Vec<f64>) -> bool {
    let Some(k) = first.iter().position(|v| v.is_nan()) else {
        return false;
    };
    let n = first.len() as i64;
    let mut del = vec![false; first.len()];
    for i in (k as i64 - 100)..(k as i64) {
        // numpy wraps negative indices (only reachable for a NaN within the first 100 points).
        del[i.rem_euclid(n) as usize] = true;
    }
    for (i, v) in first.iter().enumerate() {
        if v.is_nan() {
            del[i] = true;
        }
    }
    let mut j = 0;
    xs.retain(|_| {
        j += 1;
        !del[j - 1]
    });
    j = 0;
    ys.retain(|_| {
        j += 1;
        !del[j - 1]
    });
    true
}

/// The original's `__rescale`: NaN truncation (x first, then y), shift to 0, per-axis scale to
/// `[pad, size - pad]`, uint16 truncation. `xs`/`ys` are consumed as scratch.
pub fn rescale(
    xs: &mut Vec<f64>,
    ys: &mut Vec<f64>,
    width: u32,
    height: u32,
    pad_x: u32,
    pad_y: u32,
    out: &mut Cloud,
) {
    let n0 = xs.len();
    let xs_copy;
    if xs.iter().any(|v| v.is_nan()) {
        xs_copy = xs.clone();
        delete_nan_run(&xs_copy, xs, ys);
    }
    if ys.iter().any(|v| v.is_nan()) {
        let ys_copy = ys.clone();
        delete_nan_run(&ys_copy, xs, ys);
    }
    out.truncated = n0 - xs.len();
    out.xs.clear();
    out.ys.clear();
    scale_axis(xs, width, pad_x, &mut out.xs);
    scale_axis(ys, height, pad_y, &mut out.ys);
}

/// [`rescale`] for a cloud of finite points, without building it: calls `f(x, y)` with each rescaled
/// point in order, in two passes (min/max, then the points). Returns `false`, having called nothing,
/// when a point is NaN or infinite (then the NaN truncation and inf rules of [`rescale`] apply: use it).
/// The same arithmetic as `rescale` (shift, then `v / range * span + pad`, numpy's uint16 cast).
pub fn rescale_finite_each(
    xs: &[f64],
    ys: &[f64],
    (width, height): (u32, u32),
    (pad_x, pad_y): (u32, u32),
    mut f: impl FnMut(u16, u16),
) -> bool {
    if xs.is_empty() {
        return true;
    }
    let (mut x0, mut x1) = (f64::INFINITY, f64::NEG_INFINITY);
    let (mut y0, mut y1) = (f64::INFINITY, f64::NEG_INFINITY);
    let mut finite = true;
    for (&x, &y) in xs.iter().zip(ys) {
        finite &= x.is_finite() & y.is_finite();
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if !finite {
        return false;
    }
    let sx = AxisScale::new(x0, x1, width, pad_x);
    let sy = AxisScale::new(y0, y1, height, pad_y);
    for (&x, &y) in xs.iter().zip(ys) {
        f(sx.apply(x), sy.apply(y));
    }
    true
}

/// One axis of [`rescale`] for finite points with known bounds: the shift by a negative minimum,
/// then `v / range * span + pad` and numpy's uint16 cast, the arithmetic of `scale_axis`.
#[derive(Clone, Copy, Debug)]
pub struct AxisScale {
    shift: bool,
    mn: f64,
    range: f64,
    span: f64,
    pad: f64,
}

impl AxisScale {
    /// The scale of an axis whose finite values lie in `mn..=mx`. After the shift by a negative
    /// min the min is 0 and the max `mx - mn` (the shift is monotone), so the range is
    /// `(mx - mn) - 0`; without it the values are divided by `mx - mn` unshifted (the original's).
    pub fn new(mn: f64, mx: f64, size: u32, pad: u32) -> Self {
        let shift = mn < 0.0;
        AxisScale {
            shift,
            mn,
            range: if shift { (mx - mn) - 0.0 } else { mx - mn },
            span: (size - 2 * pad) as f64,
            pad: pad as f64,
        }
    }

    /// `max - min` of the (shifted) values: 0 for an axis the original cannot scale.
    pub fn range(&self) -> f64 {
        self.range
    }

    #[inline(always)]
    pub fn apply(&self, v: f64) -> u16 {
        let v = if self.shift { v - self.mn } else { v };
        np_u16(v / self.range * self.span + self.pad)
    }

    /// [`apply`](Self::apply) of interleaved values (`src[2i]` on axis `axes[0]`, `src[2i + 1]`
    /// on `axes[1]`: a cloud's (x, y) pairs) into `dst`, in two loops: the arithmetic (which
    /// vectorises: subtracting 0.0 is the identity on every double, -0.0 included), then numpy's
    /// cast. On x86-64 an AVX2 copy is taken when the processor has it.
    pub fn apply_pairs(axes: [&AxisScale; 2], src: &[f64], dst: &mut [u16]) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the processor has AVX2 (checked just above), all the function requires.
            unsafe { Self::apply_pairs_avx2(axes, src, dst) };
            return;
        }
        Self::apply_pairs_any(axes, src, dst);
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    fn apply_pairs_avx2(axes: [&AxisScale; 2], src: &[f64], dst: &mut [u16]) {
        Self::apply_pairs_any(axes, src, dst);
    }

    #[inline(always)]
    fn apply_pairs_any(axes: [&AxisScale; 2], src: &[f64], dst: &mut [u16]) {
        let sub = axes.map(|a| if a.shift { a.mn } else { 0.0 });
        let (range, span, pad) = (
            axes.map(|a| a.range),
            axes.map(|a| a.span),
            axes.map(|a| a.pad),
        );
        let mut t = [0.0f64; 512];
        for (s, d) in src.chunks(512).zip(dst.chunks_mut(512)) {
            let t = &mut t[..s.len()];
            for (t, v) in t.chunks_exact_mut(2).zip(s.chunks_exact(2)) {
                t[0] = (v[0] - sub[0]) / range[0] * span[0] + pad[0];
                t[1] = (v[1] - sub[1]) / range[1] * span[1] + pad[1];
            }
            // numpy's cast is truncation for values in [0, 2^31) (all of them, for finite points
            // and a non-zero range): convert those in a loop without branches, then the rest.
            let mut all_plain = true;
            // Not clamp(): it keeps a NaN, which the unchecked conversion must not see.
            #[allow(clippy::manual_clamp)]
            for (d, &t) in d.iter_mut().zip(t.iter()) {
                all_plain &= (0.0..2_147_483_648.0).contains(&t);
                // SAFETY: clamped into [0, 2^31 - 1] (a NaN becomes 0), which i32 holds.
                *d = unsafe { t.max(0.0).min(2_147_483_647.0).to_int_unchecked::<i32>() } as u16;
            }
            if !all_plain {
                for (d, &t) in d.iter_mut().zip(t.iter()) {
                    *d = np_u16(t);
                }
            }
        }
    }
}

/// numpy's min/max: NaN propagates (cannot happen after truncation, kept for parity).
fn np_min_max(v: &[f64]) -> (f64, f64) {
    let mut lo = f64::INFINITY;
    let mut hi = f64::NEG_INFINITY;
    for &x in v {
        if x.is_nan() {
            return (f64::NAN, f64::NAN);
        }
        if x < lo {
            lo = x;
        }
        if x > hi {
            hi = x;
        }
    }
    (lo, hi)
}

fn scale_axis(v: &mut [f64], size: u32, pad: u32, out: &mut Vec<u16>) {
    if v.is_empty() {
        return;
    }
    let (mn, _) = np_min_max(v);
    if mn < 0.0 {
        for x in v.iter_mut() {
            *x -= mn;
        }
    }
    let (mn, mx) = np_min_max(v);
    let range = mx - mn;
    let span = (size - 2 * pad) as f64;
    let pad = pad as f64;
    out.reserve(v.len());
    out.extend(v.iter().map(|&x| np_u16(x / range * span + pad)));
}

/// The bounding box width/height after truncation is zero: the rescale divides by zero.
pub fn degenerate_axis(xs: &[f64], ys: &[f64]) -> Option<&'static str> {
    let (x0, x1) = np_min_max(xs);
    let (y0, y1) = np_min_max(ys);
    if x1 - x0 == 0.0 {
        Some("x")
    } else if y1 - y0 == 0.0 {
        Some("y")
    } else {
        None
    }
}

/// The step values of the original's `weights_{s}.csv` files.
pub const WEIGHT_STEPS: [&str; 8] = ["0.0125", "0.025", "0.05", "0.1", "0.2", "0.3", "0.4", "0.5"];

/// The original's weights file for step `s` as text: 25 rows, coefficient k of (a..f) multiplied by
/// {1-2s, 1-s, 1, 1+s, 1+2s} (row 2 the identity; `0.5` uses {0.01, 0.5, 1.5, 2}), written like the
/// published files (CRLF except `0.1`, no final newline).
pub fn builtin_weights_csv(step: &str) -> Option<String> {
    if !WEIGHT_STEPS.contains(&step) {
        return None;
    }
    // Work in units of 1e-4 so every value prints as its exact short decimal.
    let s: i64 = (step.parse::<f64>().ok()? * 10_000.0).round() as i64;
    let dec = |v: i64| {
        let int = v / 10_000;
        let frac = v % 10_000;
        if frac == 0 {
            int.to_string()
        } else {
            format!("{int}.{}", format!("{frac:04}").trim_end_matches('0'))
        }
    };
    let low = if step == "0.5" { 100 } else { 10_000 - 2 * s };
    let muls = [low, 10_000 - s, 10_000 + s, 10_000 + 2 * s];
    let mut rows: Vec<[i64; 6]> = Vec::new();
    for m in [low, 10_000 - s, 10_000, 10_000 + s, 10_000 + 2 * s] {
        let mut r = [10_000; 6];
        r[0] = m;
        rows.push(r);
    }
    for col in 1..6 {
        for &m in &muls {
            let mut r = [10_000; 6];
            r[col] = m;
            rows.push(r);
        }
    }
    let eol = if step == "0.1" { "\n" } else { "\r\n" };
    Some(
        rows.iter()
            .map(|r| r.iter().map(|&v| dec(v)).collect::<Vec<_>>().join(","))
            .collect::<Vec<_>>()
            .join(eol),
    )
}

/// Reads `--weight-csv`: a file, or `builtin:S` for the original's `weights_S.csv`.
pub fn load_weights(spec: &str) -> Result<Vec<WeightRow>> {
    if let Some(step) = spec.strip_prefix("builtin:") {
        let text = builtin_weights_csv(step).ok_or_else(|| {
            Error::flag(
                "--weight-csv",
                format!(
                    "no built-in weights {step:?}: expected one of {}",
                    WEIGHT_STEPS.join(", ")
                ),
            )
        })?;
        parse_weights(Path::new(spec), &text)
    } else if !Path::new(spec).exists() {
        // The original's README names its own weights folder, which a drop-in user does not have:
        // say that those files are built in, before any work.
        let name = Path::new(spec).file_name().and_then(|n| n.to_str());
        let step = name
            .and_then(|n| n.strip_prefix("weights_")?.strip_suffix(".csv"))
            .filter(|s| builtin_weights_csv(s).is_some());
        let hint = match step {
            Some(s) => format!(
                "the original's {} is built in: --weight-csv builtin:{s}",
                name.unwrap()
            ),
            None => format!(
                "the original's weights files are built in: --weight-csv builtin:S, S one of {}",
                WEIGHT_STEPS.join(", ")
            ),
        };
        // Still a file that cannot be read (an OSError in Python), with the hint in its reason.
        let why = std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("no such file; {hint}"),
        );
        Err(Error::io(spec, "cannot read --weight-csv", why))
    } else {
        read_weights(Path::new(spec))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn rescale_finite_each_equals_rescale() {
        let mut v: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            v ^= v << 13;
            v ^= v >> 7;
            v ^= v << 17;
            (v >> 11) as f64 / (1u64 << 53) as f64
        };
        for (scale, offset) in [
            (1.0, 0.0),
            (1e6, -3e6),
            (2.0, 1e4),
            (1e307, -1e308),
            (0.0, 5.0),
        ] {
            let n = 3000;
            let xs: Vec<f64> = (0..n)
                .map(|_| (next() * 2.0 - 1.0) * scale + offset)
                .collect();
            let ys: Vec<f64> = (0..n)
                .map(|_| (next() * 2.0 - 1.0) * scale - offset)
                .collect();
            let mut got = Vec::new();
            assert!(rescale_finite_each(&xs, &ys, (512, 384), (6, 9), |x, y| {
                got.push((x, y))
            }));
            let (mut a, mut b) = (xs.clone(), ys.clone());
            let mut c = Cloud::default();
            rescale(&mut a, &mut b, 512, 384, 6, 9, &mut c);
            let want: Vec<(u16, u16)> = c.xs.iter().copied().zip(c.ys.iter().copied()).collect();
            assert_eq!(got, want, "scale {scale} offset {offset}");
        }
        assert!(!rescale_finite_each(
            &[1.0, f64::NAN],
            &[0.0, 1.0],
            (64, 64),
            (2, 2),
            |_, _| {}
        ));
        assert!(!rescale_finite_each(
            &[1.0, f64::INFINITY],
            &[0.0, 1.0],
            (64, 64),
            (2, 2),
            |_, _| {}
        ));
    }

    #[test]
    fn four_interleaved_chaos_games_equal_four_single_ones() {
        let mut v: u64 = 0x1234_5678_9abc_def1;
        let mut next = || {
            v ^= v << 13;
            v ^= v >> 7;
            v ^= v << 17;
            (v >> 11) as f64 / (1u64 << 53) as f64
        };
        let n = 5000;
        for round in 0..6 {
            let ifss: Vec<Ifs> = (0..4)
                .map(|l| Ifs {
                    maps: (0..2 + (round + l) % 4)
                        .map(|_| Map {
                            a: next() * 2.0 - 1.0,
                            b: next() * 2.0 - 1.0,
                            c: next() * 2.0 - 1.0,
                            d: next() * 2.0 - 1.0,
                            e: next() * 2.0 - 1.0,
                            f: next() * 2.0 - 1.0,
                            // Round 1: negative probabilities (a non-monotone running sum);
                            // round 2: sums below some draws (no map chosen there).
                            p: match round {
                                1 => next() - 0.5,
                                2 => next() * 0.2,
                                _ => next(),
                            },
                        })
                        .collect(),
                })
                .collect();
            let us: Vec<Vec<f64>> = (0..4).map(|_| (0..n).map(|_| next()).collect()).collect();
            let mut xs: [Vec<f64>; 4] = Default::default();
            let mut ys: [Vec<f64>; 4] = Default::default();
            Ifs::chaos_games_4(
                [&ifss[0], &ifss[1], &ifss[2], &ifss[3]],
                [&us[0][..], &us[1][..], &us[2][..], &us[3][..]],
                &mut xs,
                &mut ys,
            );
            for l in 0..4 {
                let (mut x, mut y) = (Vec::new(), Vec::new());
                ifss[l].chaos_game(&us[l], &mut x, &mut y);
                let bits = |v: &[f64]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&xs[l]), bits(&x), "round {round} lane {l}");
                assert_eq!(bits(&ys[l]), bits(&y), "round {round} lane {l}");
            }
        }
    }

    use super::*;

    #[test]
    fn e18_matches_numpy() {
        assert_eq!(
            fmt_e18(0.172_422_324_317_123_45),
            "1.724223243171234543e-01"
        );
        assert_eq!(fmt_e18(-0.731_175_606_078_728), "-7.311756060787280020e-01");
        assert_eq!(fmt_e18(1.0), "1.000000000000000000e+00");
        assert_eq!(fmt_e18(0.0), "0.000000000000000000e+00");
        assert_eq!(fmt_e18(1.5e-300), "1.500000000000000120e-300");
    }

    #[test]
    fn py_str() {
        assert_eq!(py_float_str(0.2), "0.2");
        assert_eq!(py_float_str(1.0), "1.0");
        assert_eq!(py_float_str(0.25), "0.25");
    }

    #[test]
    fn csv_round_trip() {
        let p = Path::new("x.csv");
        let ifs = Ifs {
            maps: vec![
                Map {
                    a: 0.1,
                    b: -0.2,
                    c: 1.0 / 3.0,
                    d: 0.4,
                    e: -0.5,
                    f: 0.6,
                    p: 0.25,
                },
                Map {
                    a: -1e-5,
                    b: 0.9999,
                    c: 0.0,
                    d: 0.7,
                    e: 0.5,
                    f: -0.6,
                    p: 0.75,
                },
            ],
        };
        let text = ifs.to_csv();
        let back = Ifs::parse_csv(p, &text).unwrap();
        assert_eq!(back, ifs);
        assert_eq!(back.to_csv(), text);
    }

    #[test]
    fn bad_csv_errors_name_the_line() {
        let p = Path::new("c.csv");
        let e = Ifs::parse_csv(p, "1,2,3,4,5,6,7\n1,2,3\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("c.csv:2") && e.contains("expected 7"), "{e}");
        let e = Ifs::parse_csv(p, "1,2,3,4,5,x,7\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("c.csv:1") && e.contains("column 6"), "{e}");
        let e = Ifs::parse_csv(p, "1,2,3,4,5,nan,7\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("finite"), "{e}");
        assert!(
            Ifs::parse_csv(p, "")
                .unwrap_err()
                .to_string()
                .contains("no rows")
        );
    }

    #[test]
    fn weights_accept_crlf_without_final_newline() {
        let w = parse_weights(Path::new("w.csv"), "1,1,1,1,1,1\r\n0.2,1,1,1,1,1").unwrap();
        assert_eq!(w, vec![[1.0; 6], [0.2, 1.0, 1.0, 1.0, 1.0, 1.0]]);
    }

    #[test]
    fn nan_truncation_x_first() {
        // x NaN at index 150, y NaN at 149: x first removes 50..=149 and 150.., y has no NaN left.
        let mut xs: Vec<f64> = (0..200)
            .map(|i| if i >= 150 { f64::NAN } else { i as f64 })
            .collect();
        let mut ys: Vec<f64> = (0..200)
            .map(|i| if i >= 149 { f64::NAN } else { -(i as f64) })
            .collect();
        let mut c = Cloud::default();
        rescale(&mut xs, &mut ys, 362, 362, 6, 6, &mut c);
        assert_eq!(c.xs.len(), 50);
        assert_eq!(c.truncated, 150);
        assert_eq!(c.xs[0], 6);
        assert_eq!(c.xs[49], 356);
    }
}
