//! MV-FractalDB / ExFractalDB (`exfractaldb_render/` of the CVPR 2022 ViT repository): 3D IFS point
//! clouds: the exact category search and 3D models (parameter files and PLY coordinates byte for
//! byte), and the multi-view rendering on the CPU engine ([`view`]: PyGLM's f32 matrices and the GL
//! driver's point rule; pixel-identical to the goldens).
//!
//! numpy's legacy stream drives both steps: the search from `--seed`, the models from one
//! `np.random.seed(model_seed)` before the first class (the goldens' protocol: the original leaves it
//! unseeded). Every model draws exactly 10,000 doubles, so model n of a run starts 20,000 n words
//! into the model stream, whatever came before.

pub mod gl;
pub mod run;
pub mod stage;
pub mod steps;
pub mod view;

use crate::error::{Error, Result};
use crate::ifs::fmt_e18;
use crate::rng::NumpyRandom;
use std::path::Path;

/// Points drawn per model or candidate (`calculate(10000)`): 9,999 are kept.
pub const POINTS: usize = 10_000;

/// One 3D affine map: a..l (x' = x*a + y*b + z*c + j, ...) and its weight (probability).
pub type Map3 = [f64; 13];

/// `np.linalg.det` of a 3x3 matrix as numpy 1.23.5 with OpenBLAS computes it (slogdet): a
/// left-looking LU with partial pivoting (reciprocal scaling), then sign x exp(sum of log|u_jj|).
#[allow(clippy::needless_range_loop)] // indices as in the LU's formulas
pub fn det3(m: [[f64; 3]; 3]) -> f64 {
    let mut a = m;
    let mut sign = 1.0f64;
    for j in 0..3 {
        for i in 0..3 {
            let kmax = i.min(j);
            if kmax > 0 {
                let mut t = 0.0f64;
                for k in 0..kmax {
                    t += a[i][k] * a[k][j];
                }
                a[i][j] -= t;
            }
        }
        let mut p = j;
        for i in j + 1..3 {
            if a[i][j].abs() > a[p][j].abs() {
                p = i;
            }
        }
        if p != j {
            a.swap(p, j);
            sign = -sign;
        }
        if a[j][j] != 0.0 {
            let r = 1.0 / a[j][j];
            for row in a.iter_mut().skip(j + 1) {
                row[j] *= r;
            }
        }
    }
    let mut logdet = 0.0f64;
    for (j, row) in a.iter().enumerate() {
        let d = row[j];
        if d == 0.0 {
            return 0.0;
        }
        if d < 0.0 {
            sign = -sign;
        }
        logdet += d.abs().ln();
    }
    sign * logdet.exp()
}

/// numpy's pairwise summation of float64 (`pairwise_sum`: 8 accumulators up to 128 values,
/// halves at a multiple of 8 above).
pub fn pairwise_sum(a: &[f64]) -> f64 {
    let n = a.len();
    if n < 8 {
        let mut s = 0.0;
        for &v in a {
            s += v;
        }
        s
    } else if n <= 128 {
        let mut r = [0.0f64; 8];
        r.copy_from_slice(&a[..8]);
        let mut i = 8;
        while i < n - n % 8 {
            for k in 0..8 {
                r[k] += a[i + k];
            }
            i += 8;
        }
        let mut res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        while i < n {
            res += a[i];
            i += 1;
        }
        res
    } else {
        let mut n2 = n / 2;
        n2 -= n2 % 8;
        pairwise_sum(&a[..n2]) + pairwise_sum(&a[n2..])
    }
}

/// `np.var(a)`: the pairwise mean, then the pairwise sum of squared deviations, over n.
pub fn np_var(a: &[f64]) -> f64 {
    let n = a.len() as f64;
    let mean = pairwise_sum(a) / n;
    let d: Vec<f64> = a
        .iter()
        .map(|&v| {
            let x = v - mean;
            x * x
        })
        .collect();
    pairwise_sum(&d) / n
}

/// `calculate(10000)`: 9,999 steps of the 3D chaos game from the origin on `u` (the last value is
/// unused), each point kept; the map is the first whose running weight sum reaches `u_i` (none: the
/// point repeats). Then the min-max over all coordinates to [-1, 1], and the centroid (left-to-right
/// sums divided by 10,000) subtracted per axis. Returns (x, y, z) columns.
pub fn model(maps: &[[f64; 12]], cum: &[f64], u: &[f64]) -> [Vec<f64>; 3] {
    let n = u.len() - 1;
    let mut xyz = [vec![0.0; n], vec![0.0; n], vec![0.0; n]];
    let (mut x, mut y, mut z) = (0.0f64, 0.0f64, 0.0f64);
    for i in 0..n {
        if let Some(k) = cum.iter().position(|&c| u[i] <= c) {
            let p = &maps[k];
            let nx = x * p[0] + y * p[1] + z * p[2] + p[9];
            let ny = x * p[3] + y * p[4] + z * p[5] + p[10];
            let nz = x * p[6] + y * p[7] + z * p[8] + p[11];
            (x, y, z) = (nx, ny, nz);
        }
        xyz[0][i] = x;
        xyz[1][i] = y;
        xyz[2][i] = z;
    }
    let (mut mn, mut mx) = (f64::INFINITY, f64::NEG_INFINITY);
    for axis in &xyz {
        for &v in axis {
            // numpy's min/max propagate NaN.
            if v.is_nan() || mn.is_nan() {
                mn = f64::NAN;
                mx = f64::NAN;
            } else {
                mn = mn.min(v);
                mx = mx.max(v);
            }
        }
    }
    for axis in xyz.iter_mut() {
        for v in axis.iter_mut() {
            *v = (*v - mn) / (mx - mn) * 2.0 - 1.0;
        }
        let mut s = 0.0f64;
        for &v in axis.iter() {
            s += v;
        }
        let c = s / POINTS as f64;
        for v in axis.iter_mut() {
            *v -= c;
        }
    }
    xyz
}

/// Running sums of the maps' weights (column 12), in map order.
fn cumulative(maps: &[Map3]) -> Vec<f64> {
    let mut s = 0.0;
    maps.iter()
        .map(|m| {
            s += m[12];
            s
        })
        .collect()
}

/// The category search (`category_search.py`): classes accepted from the seeded candidate stream
/// until `classes` are found; `Err(Interrupted)` once [`crate::interrupt`] asks it to stop.
pub fn search(seed: u32, classes: usize, threshold: f64) -> crate::Result<Vec<Vec<Map3>>> {
    search_with(seed, classes, threshold, false, GIVE_UP)
}

/// Candidates rejected in a row after which the search gives up. At the original's variance (0.05)
/// 1.2% are accepted (1 in 80), at 0.15 0.03%: this many rejections in a row mean the threshold is
/// out of reach in practice (the largest variance seen is in the message), not bad luck. About
/// 30 s of one core.
pub const GIVE_UP: u64 = 100_000;

/// [`search`], with a progress line every 10 s when `progress` (candidates tried, accepted, the
/// largest smallest-axis variance seen), and a clear error after `give_up` rejections in a row.
pub fn search_with(
    seed: u32,
    classes: usize,
    threshold: f64,
    progress: bool,
    give_up: u64,
) -> crate::Result<Vec<Vec<Map3>>> {
    let mut rng = NumpyRandom::seed(seed);
    let mut found = Vec::new();
    let (mut tried, mut in_a_row, mut best) = (0u64, 0u64, 0.0f64);
    let mut last_note = std::time::Instant::now();
    while found.len() < classes {
        crate::check_interrupt()?;
        let m = rng.randint(2, 8) as usize;
        let mut maps: Vec<Map3> = Vec::with_capacity(m);
        for _ in 0..m {
            let mut p = [0.0f64; 13];
            for v in p.iter_mut().take(12) {
                *v = rng.uniform(-1.0, 1.0);
            }
            p[12] = det3([[p[0], p[1], p[2]], [p[3], p[4], p[5]], [p[6], p[7], p[8]]]).abs();
            maps.push(p);
        }
        let sum = maps.iter().fold(0.0, |s, p| s + p[12]);
        for p in maps.iter_mut() {
            p[12] /= sum;
        }
        let u = rng.random_vec(POINTS);
        let affine: Vec<[f64; 12]> = maps.iter().map(|p| p[..12].try_into().unwrap()).collect();
        let pts = model(&affine, &cumulative(&maps), &u);
        tried += 1;
        // The original's test: no NaN in y, every axis's variance above the threshold.
        let vars = if pts[1].iter().any(|v| v.is_nan()) {
            None
        } else {
            Some(pts.iter().map(|a| np_var(a)).collect::<Vec<_>>())
        };
        let accepted = vars
            .as_ref()
            .is_some_and(|v| v.iter().all(|&v| v > threshold));
        if accepted {
            found.push(maps);
            in_a_row = 0;
        } else {
            in_a_row += 1;
            let least = vars.map_or(f64::NAN, |v| v.iter().fold(f64::INFINITY, |a, &v| a.min(v)));
            if least.is_finite() {
                best = best.max(least);
            }
        }
        if in_a_row >= give_up {
            return Err(crate::Error::flag(
                "--variance",
                format!(
                    "no candidate reached {threshold} in {give_up} tries in a row ({} of {classes} \
                     classes found): the largest smallest-axis variance seen was {best:.4}; use a \
                     lower --variance (the original uses 0.05)",
                    found.len()
                ),
            ));
        }
        if progress && last_note.elapsed().as_secs() >= 10 {
            last_note = std::time::Instant::now();
            crate::say!(
                "mvfdb search: {tried} candidates tried, {} of {classes} accepted ({:.2}% \
                 accepted; largest smallest-axis variance among the rejected: {best:.4})",
                found.len(),
                100.0 * found.len() as f64 / tried as f64
            );
        }
    }
    Ok(found)
}

/// `params/%06d.csv`: `np.savetxt(params, delimiter=",")`.
pub fn params_csv(maps: &[Map3]) -> String {
    maps.iter()
        .map(|m| m.iter().map(|&v| fmt_e18(v)).collect::<Vec<_>>().join(",") + "\n")
        .collect()
}

/// Rows of exactly `N` comma-separated numbers (blank lines skipped); errors name the file and line.
fn parse_rows<const N: usize>(path: &Path, text: &str) -> Result<Vec<[f64; N]>> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            let v: Vec<f64> = l
                .split(',')
                .map(|x| x.trim().parse::<f64>())
                .collect::<std::result::Result<_, _>>()
                .map_err(|e| Error::input(path, Some(i + 1), format!("not a number: {e}")))?;
            if let Some(x) = v.iter().find(|x| !x.is_finite()) {
                return Err(Error::input(
                    path,
                    Some(i + 1),
                    format!("{x} is not a finite number"),
                ));
            }
            v.try_into().map_err(|v: Vec<f64>| {
                Error::input(
                    path,
                    Some(i + 1),
                    format!("{} values, expected {N}", v.len()),
                )
            })
        })
        .collect()
}

/// The original's `weights_ins145.csv`, rebuilt byte for byte: parameter 0 times 0.4, 0.5, .., 1.6
/// (13 rows, 1.0 the unchanged model), then each of parameters 1..11 times the same values but 1.0
/// (12 rows each), every other multiplier `1`; row 108 (parameter 8's last) holds 0.6 where 1.6 is
/// expected, as the original file does; no final newline.
pub fn builtin_multipliers_csv() -> String {
    let mut rows = Vec::with_capacity(145);
    for p in 0..12 {
        for t in 4..=16 {
            if p > 0 && t == 10 {
                continue;
            }
            let mut r = vec!["1".to_string(); 12];
            if t != 10 {
                r[p] = format!("{:.1}", t as f64 / 10.0);
            }
            rows.push(r.join(","));
        }
    }
    rows[108] = rows[108].replace("1.6", "0.6");
    rows.join("\n")
}

/// The instance multipliers: `builtin` (the original's file, [`builtin_multipliers_csv`]) or a CSV
/// path; rows of 12 numbers.
pub fn read_multipliers(path: &Path) -> Result<Vec<[f64; 12]>> {
    let text = if path.as_os_str() == "builtin" {
        builtin_multipliers_csv()
    } else if !path.exists() {
        // The original's scripts name their own weights file, which a drop-in user lacks.
        let why = std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "no such file; the original's weights_ins145.csv is built in: --weight-csv builtin",
        );
        return Err(Error::io(path, "cannot read --weight-csv", why));
    } else {
        crate::ifs::read_text(path)?
    };
    let rows = parse_rows(path, &text)?;
    if rows.is_empty() {
        return Err(Error::input(
            path,
            None,
            "holds no rows of 12 multipliers: the models need at least one",
        ));
    }
    Ok(rows)
}

/// The model of a class under one multiplier row, on `u` (its 10,000 draws); `None` when y has a NaN
/// (the original writes no file but consumed the draws).
pub fn instance(maps: &[Map3], mult: &[f64; 12], u: &[f64]) -> Option<[Vec<f64>; 3]> {
    let affine: Vec<[f64; 12]> = maps
        .iter()
        .map(|p| std::array::from_fn(|k| p[k] * mult[k]))
        .collect();
    let pts = model(&affine, &cumulative(maps), u);
    (!pts[1].iter().any(|v| v.is_nan())).then_some(pts)
}

/// The maps [`instance`] runs, as the GL engine takes them: a..l times the row's multipliers, and
/// the running sum of the weights (as read, not multiplied) in column 12.
pub fn weighted_maps(maps: &[Map3], mult: &[f64; 12]) -> Vec<[f64; 13]> {
    maps.iter()
        .zip(cumulative(maps))
        .map(|(p, c)| std::array::from_fn(|k| if k < 12 { p[k] * mult[k] } else { c }))
        .collect()
}

/// The PLY file open3d writes for a model: its 147-byte header, then little-endian (x, y, z) doubles.
pub fn ply(pts: &[Vec<f64>; 3]) -> Vec<u8> {
    let n = pts[0].len();
    let mut out = format!(
        "ply\nformat binary_little_endian 1.0\ncomment Created by Open3D\nelement vertex {n}\n\
         property double x\nproperty double y\nproperty double z\nend_header\n"
    )
    .into_bytes();
    out.reserve(n * 24);
    for i in 0..n {
        for axis in pts {
            out.extend_from_slice(&axis[i].to_le_bytes());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn builtin_multipliers_are_the_originals_file_byte_for_byte() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/reference/mvfdb/weights_ins145.csv"
        );
        let want = std::fs::read_to_string(path)
            .expect("weights_ins145.csv in tests/fixtures/reference/mvfdb");
        assert_eq!(super::builtin_multipliers_csv(), want);
    }

    #[test]
    fn pairwise_sum_matches_plain_sums_on_small_and_exact_inputs() {
        let v: Vec<f64> = (0..1000).map(|i| i as f64).collect();
        assert_eq!(super::pairwise_sum(&v), 499_500.0);
        assert_eq!(super::pairwise_sum(&v[..5]), 10.0);
        assert_eq!(super::np_var(&[1.0, 2.0, 3.0, 4.0]), 1.25);
    }

    /// A variance below 1 that no candidate reaches in practice used to search forever, silently.
    /// Now it gives up after `give_up` rejections in a row, naming the flag and the best seen; the
    /// classes it does find are the plain search's (the stream is the same).
    #[test]
    fn an_unreachable_variance_gives_up_with_the_largest_seen_and_a_reachable_one_does_not() {
        let e = super::search_with(100, 3, 0.9, false, 2000)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--variance") && e.contains("2000 tries") && e.contains("largest"),
            "{e}"
        );
        let plain = super::search(100, 3, 0.05).unwrap();
        assert_eq!(super::search_with(100, 3, 0.05, true, 2000).unwrap(), plain);
    }
}
