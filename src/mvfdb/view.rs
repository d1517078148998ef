//! The multi-view renderer's transform, as the original computes it: PyGLM's single-precision
//! `perspective`, `rotate` and `lookAt`, and the point rule of its GL driver (llvmpipe, the goldens'):
//! the shader's product right to left without fusion, clipping, `1 / w` and the viewport as a fused
//! multiply-add, window coordinates snapped to 1/256 pixel, GL's legacy square points
//! ([`draw_points`]).

/// A column-major 4x4 matrix, `m[c][r]`, as glm stores it.
pub type Mat4 = [[f32; 4]; 4];

/// The largest `--point_size` (GL promises aliased points up to 1 pixel; llvmpipe draws up to 255,
/// and the square stays cheap to fill at this size).
pub const MAX_POINT_SIZE: u32 = 64;

/// The identity (the original's model matrix).
pub const IDENTITY: Mat4 = [
    [1.0, 0.0, 0.0, 0.0],
    [0.0, 1.0, 0.0, 0.0],
    [0.0, 0.0, 1.0, 0.0],
    [0.0, 0.0, 0.0, 1.0],
];

fn identity() -> Mat4 {
    IDENTITY
}

/// glm `perspective` (right-handed, depth -1..1).
pub fn perspective(fovy: f32, aspect: f32, near: f32, far: f32) -> Mat4 {
    let t = (fovy / 2.0).tan();
    let mut m = [[0.0f32; 4]; 4];
    m[0][0] = 1.0 / (aspect * t);
    m[1][1] = 1.0 / t;
    m[2][2] = -(far + near) / (far - near);
    m[2][3] = -1.0;
    m[3][2] = -(2.0 * far * near) / (far - near);
    m
}

fn add4(a: [f32; 4], b: [f32; 4]) -> [f32; 4] {
    std::array::from_fn(|i| a[i] + b[i])
}

fn scale4(a: [f32; 4], s: f32) -> [f32; 4] {
    a.map(|v| v * s)
}

fn dot3(a: [f32; 3], b: [f32; 3]) -> f32 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

fn normalize(v: [f32; 3]) -> [f32; 3] {
    let k = 1.0 / dot3(v, v).sqrt();
    v.map(|x| x * k)
}

fn cross(a: [f32; 3], b: [f32; 3]) -> [f32; 3] {
    [
        a[1] * b[2] - b[1] * a[2],
        a[2] * b[0] - b[2] * a[0],
        a[0] * b[1] - b[0] * a[1],
    ]
}

/// glm `rotate(m, angle, axis)`.
pub fn rotate(m: &Mat4, angle: f32, v: [f32; 3]) -> Mat4 {
    let (c, s) = (angle.cos(), angle.sin());
    let axis = normalize(v);
    let temp = axis.map(|a| (1.0 - c) * a);
    let r = [
        [
            c + temp[0] * axis[0],
            temp[0] * axis[1] + s * axis[2],
            temp[0] * axis[2] - s * axis[1],
        ],
        [
            temp[1] * axis[0] - s * axis[2],
            c + temp[1] * axis[1],
            temp[1] * axis[2] + s * axis[0],
        ],
        [
            temp[2] * axis[0] + s * axis[1],
            temp[2] * axis[1] - s * axis[0],
            c + temp[2] * axis[2],
        ],
    ];
    let col = |k: usize| {
        add4(
            add4(scale4(m[0], r[k][0]), scale4(m[1], r[k][1])),
            scale4(m[2], r[k][2]),
        )
    };
    [col(0), col(1), col(2), m[3]]
}

/// glm `lookAt` (right-handed).
pub fn look_at(eye: [f32; 3], center: [f32; 3], up: [f32; 3]) -> Mat4 {
    let f = normalize([center[0] - eye[0], center[1] - eye[1], center[2] - eye[2]]);
    let s = normalize(cross(f, up));
    let u = cross(s, f);
    let mut m = identity();
    m[0][0] = s[0];
    m[1][0] = s[1];
    m[2][0] = s[2];
    m[0][1] = u[0];
    m[1][1] = u[1];
    m[2][1] = u[2];
    m[0][2] = -f[0];
    m[1][2] = -f[1];
    m[2][2] = -f[2];
    m[3][0] = -dot3(s, eye);
    m[3][1] = -dot3(u, eye);
    m[3][2] = dot3(f, eye);
    m
}

/// glm `m * v`: (m0*v0 + m1*v1) + (m2*v2 + m3*v3).
pub fn mul_vec(m: &Mat4, v: [f32; 4]) -> [f32; 4] {
    add4(
        add4(scale4(m[0], v[0]), scale4(m[1], v[1])),
        add4(scale4(m[2], v[2]), scale4(m[3], v[3])),
    )
}

/// The view matrix of view `k` of `views`, with the draw `r` the original makes for it
/// (`random.uniform(-pi, pi)`, then passed through `radians` as the original does).
pub fn view_matrix(k: u32, views: u32, r: f64) -> Mat4 {
    let y = [0.0f32, 1.0, 0.0];
    let theta = k as f64 / views as f64 * 2.0 * std::f64::consts::PI;
    let m = rotate(&identity(), theta as f32, y);
    let m = rotate(&m, 30f64.to_radians() as f32, y);
    let m = rotate(&m, r.to_radians() as f32, y);
    let dir = mul_vec(&m, [1.0, 0.0, 0.0, 0.0]);
    let up = mul_vec(&m, [0.0, 1.0, 0.0, 0.0]);
    let eye = [-4.0 * dir[0], -4.0 * dir[1], -4.0 * dir[2]];
    look_at(eye, [0.0, 0.0, 0.0], [up[0], up[1], up[2]])
}

/// ExFractalDB-style random views, **our definition** (the original defines none): view `k` of model
/// `i` of class `class` looks at the origin from distance 4 at an azimuth uniform in [0, 2pi) and an
/// elevation uniform in [-30, 30] degrees, both from a counter hash of (seed, class, i, k), so a view
/// depends on nothing else; up is +y. The camera position is computed in f64 and the matrix in f32
/// with glm's lookAt.
pub fn random_view(seed: u64, class: u32, i: u32, k: u32) -> Mat4 {
    let (az, el) = random_angles(seed, class, i, k);
    let eye = [
        (4.0 * el.cos() * az.cos()) as f32,
        (4.0 * el.sin()) as f32,
        (4.0 * el.cos() * az.sin()) as f32,
    ];
    look_at(eye, [0.0, 0.0, 0.0], [0.0, 1.0, 0.0])
}

/// (azimuth, elevation) in radians of [`random_view`].
pub fn random_angles(seed: u64, class: u32, i: u32, k: u32) -> (f64, f64) {
    use crate::rng::hash32;
    let mut h = hash32(seed as u32 ^ 0x2545_f491);
    for v in [(seed >> 32) as u32, class, i, k] {
        h = hash32(h ^ v);
    }
    let a = hash32(h ^ 0x9e37_79b9);
    let b = hash32(a ^ 0x85eb_ca6b);
    let unit = |x: u32| x as f64 / 4_294_967_296.0;
    let az = unit(a) * 2.0 * std::f64::consts::PI;
    let el = (unit(b) * 60.0 - 30.0).to_radians();
    (az, el)
}

/// `m * v` as llvmpipe's vertex shader computes it: per row, the column products added left to
/// right, each operation rounded (no fusion).
#[inline(always)]
fn shader_mul_vec(m: &Mat4, v: [f32; 4]) -> [f32; 4] {
    std::array::from_fn(|r| ((m[0][r] * v[0] + m[1][r] * v[1]) + m[2][r] * v[2]) + m[3][r] * v[3])
}

/// Draws the points (f32) white into a `size`^2 canvas (row 0 = the framebuffer's bottom row, as
/// the original saves it) through the original's `proj * view * model` (model: the identity), each
/// a GL point of `point` pixels (`glPointSize`, legacy non-sprite points), with llvmpipe's
/// arithmetic, which reproduces every golden and every view of the GL engine on llvmpipe
/// (SPEC-MVFDB.md section 3 gives a variant of it that reproduces the goldens alone):
/// - the product evaluated right to left, `proj * (view * (model * p))`, each matrix-vector product
///   as plain rounded multiplies and adds, left to right (the identity's product is exact and
///   skipped);
/// - kept when the clip position is inside -w..w on every axis;
/// - `1 / w`, then `x * (1 / w)` and the viewport as one fused multiply-add (llvmpipe's draw module);
/// - window coordinates snapped to 1/256 pixel (round to nearest even);
/// - the `point` x `point` pixels GL 2.1 (section 3.3.1) gives a non-antialiased point: for an odd
///   size those around the pixel the snapped position is in, for an even size those around the
///   pixel corner nearest to it; pixels off the canvas are dropped.
pub fn draw_points(
    pts: &[[f32; 3]],
    proj: &Mat4,
    view: &Mat4,
    size: usize,
    point: u32,
    canvas: &mut [u8],
) {
    let half = size as f32 / 2.0;
    let w = point.max(1) as i64;
    // The first covered pixel of a snapped coordinate (in 1/256 pixel).
    let first = |s: i64| {
        if w == 1 {
            s >> 8
        } else if w % 2 == 1 {
            (s >> 8) - (w - 1) / 2
        } else {
            ((s + 128) >> 8) - w / 2
        }
    };
    let n = size as i64;
    for p in pts {
        let c = shader_mul_vec(proj, shader_mul_vec(view, [p[0], p[1], p[2], 1.0]));
        let cw = c[3];
        if !(c[0] >= -cw && c[0] <= cw && c[1] >= -cw && c[1] <= cw && c[2] >= -cw && c[2] <= cw) {
            continue;
        }
        let inv = 1.0 / cw;
        let snap = |v: f32| ((v * inv).mul_add(half, half) * 256.0).round_ties_even() as i64;
        let (x0, y0) = (first(snap(c[0])), first(snap(c[1])));
        if w == 1 {
            if (0..n).contains(&x0) && (0..n).contains(&y0) {
                canvas[(y0 * n + x0) as usize] = 255;
            }
            continue;
        }
        for y in y0.max(0)..(y0 + w).min(n) {
            let row = &mut canvas[(y * n) as usize..((y + 1) * n) as usize];
            for px in &mut row[x0.clamp(0, n) as usize..(x0 + w).clamp(0, n) as usize] {
                *px = 255;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn random_views_cover_the_azimuths_within_the_elevation_band() {
        let mut quadrants = [0u32; 4];
        for k in 0..4000 {
            let (az, el) = super::random_angles(7, k % 5, k / 5, k);
            assert!((0.0..2.0 * std::f64::consts::PI).contains(&az));
            assert!(el.abs() <= 30f64.to_radians() + 1e-12);
            quadrants[(az / (std::f64::consts::PI / 2.0)) as usize] += 1;
        }
        assert!(
            quadrants.iter().all(|&q| (850..1150).contains(&q)),
            "{quadrants:?}"
        );
        assert_ne!(
            super::random_angles(7, 0, 0, 0),
            super::random_angles(8, 0, 0, 0)
        );
    }
}
