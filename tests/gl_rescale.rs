//! glsl/rescale.comp against its CPU twin (`ifs::rescale` through `render::cpu::cloud_from_points`):
//! the NaN truncation (x's cut first, then y's on what is left, numpy's wrap for a NaN within the
//! first 100 points), inf kept, -inf shifts, numpy's uint16 cast (NaN/inf to 0, wrap past 65535),
//! the correctly rounded division, and the degenerate axis, point for point on Mesa's llvmpipe.

use fractaldb::ifs::Cloud;
use fractaldb::render::cpu::cloud_from_points;
use fractaldb::render::gl::{GlEngine, GlOptions};
use fractaldb::render::{DrawMode, MaskRng, RenderConfig};

/// xorshift64*: deterministic test data.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// One cloud of `n` points of a given kind.
fn cloud(kind: usize, n: usize, rng: &mut Rng) -> (Vec<f64>, Vec<f64>) {
    let (scale, offset) = match kind % 5 {
        0 => (1.0, 0.0),
        1 => (1e-3, 0.5),
        2 => (1e6, -3e6),
        3 => (2.0, 1e4), // no shift, min far from 0: the quotient exceeds 1 and uint16 wraps
        _ => (1e300, 0.0),
    };
    let mut xs: Vec<f64> = (0..n)
        .map(|_| (rng.unit() * 2.0 - 1.0) * scale + offset)
        .collect();
    let mut ys: Vec<f64> = (0..n)
        .map(|_| (rng.unit() * 2.0 - 1.0) * scale + offset)
        .collect();
    match kind / 5 {
        0 => {}
        1 => {
            // A divergent orbit: NaN from some point on in x (and y a little later).
            let k = [0, 3, 99, 100, 101, n / 2, n - 1][rng.below(7)];
            for v in &mut xs[k..] {
                *v = f64::NAN;
            }
            let ky = (k + rng.below(50)).min(n - 1);
            for v in &mut ys[ky..] {
                *v = f64::NAN;
            }
        }
        2 => {
            // NaN only in y, scattered, and inf in x.
            for _ in 0..5 {
                ys[rng.below(n)] = f64::NAN;
            }
            xs[rng.below(n)] = f64::INFINITY;
        }
        3 => {
            // -inf: the shift makes NaN, and numpy's min/max turn NaN.
            xs[rng.below(n)] = f64::NEG_INFINITY;
            ys[rng.below(n)] = f64::INFINITY;
        }
        4 => {
            // Scattered NaN in x, one within the first 100 points (numpy's negative indices wrap).
            xs[rng.below(100)] = f64::NAN;
            xs[rng.below(n)] = f64::NAN;
            ys[n - 1 - rng.below(100)] = f64::NAN;
        }
        5 => {
            // Degenerate: every x the same, or every y.
            let v = xs[0];
            if rng.below(2) == 0 {
                xs.iter_mut().for_each(|x| *x = v);
            } else {
                ys.iter_mut().for_each(|y| *y = v);
            }
        }
        _ => {
            // Everything NaN: no point left.
            xs.iter_mut().for_each(|x| *x = f64::NAN);
        }
    }
    (xs, ys)
}

#[test]
fn gpu_rescale_equals_the_cpu_rescale_point_for_point() {
    let mut engine = match GlEngine::new(Default::default(), &[], GlOptions::default()) {
        Ok(e) => e,
        Err(e) => panic!("no EGL device (install libegl1 libegl-mesa0 libgl1-mesa-dri): {e}"),
    };
    let n = 700;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for (w, h, pad) in [(362u32, 362u32, 6u32), (65, 37, 3)] {
        let cfg = RenderConfig {
            width: w,
            height: h,
            pad_x: pad,
            pad_y: pad,
            iterations: n,
            mode: DrawMode::PatchGray,
            masks: MaskRng::Counter { seed: 0 },
        };
        let kinds = 7 * 5;
        let (mut xs, mut ys) = (Vec::new(), Vec::new());
        for k in 0..kinds * 2 {
            let (x, y) = cloud(k % kinds, n, &mut rng);
            xs.extend(x);
            ys.extend(y);
        }
        let gpu = engine.rescale_points(&xs, &ys, n, &cfg).unwrap();
        for (c, got) in gpu.into_iter().enumerate() {
            let mut x = xs[c * n..(c + 1) * n].to_vec();
            let mut y = ys[c * n..(c + 1) * n].to_vec();
            let mut cl = Cloud::default();
            let want = cloud_from_points(&mut x, &mut y, &cfg, &mut cl).map(|_| {
                cl.xs
                    .iter()
                    .zip(&cl.ys)
                    .map(|(&a, &b)| a as u32 | (b as u32) << 16)
                    .collect::<Vec<u32>>()
            });
            if got != want {
                let first = match (&got, &want) {
                    (Ok(g), Ok(v)) => format!(
                        "{} vs {} points, first difference at {:?}",
                        g.len(),
                        v.len(),
                        g.iter().zip(v).position(|(a, b)| a != b)
                    ),
                    _ => format!("{:?} vs {:?}", got.as_ref().err(), want.as_ref().err()),
                };
                panic!(
                    "cloud {c} (kind {}) at {w}x{h}: GPU != CPU: {first}",
                    c % kinds
                );
            }
        }
    }
}
