//! RCDB, the Radial Contour DataBase ("Replacing Labeled Real-image Datasets with Auto-generated
//! Contours", CVPR 2022), exactly as its generator (`rcdb_render/make_rcdb.py`) makes it.
//!
//! What is RCDB's own lives here: the settings, the random stream of one generator process and
//! what each class and instance draws from it ([`Settings::draw_class`], [`Stream`]), replaying a
//! stream without drawing ([`Stream::skip_instance`]), the contour raster ([`draw_instance`], with
//! [`noise::pnoise1`] and Pillow's [`line::draw_line`]) and the parameter files. Its render stage
//! ([`stage`]) plugs into the shared pipeline; [`run`] is the `rcdb` command (folders or shards).
//!
//! The original runs `T` processes; process `t` seeds CPython's `random` with `t + 1` and makes the
//! classes `[t*q, t*q + q)`, `q = C / T`, in one stream through all their instances. `T` therefore
//! defines the dataset; threads, ranks, `--thread_num` and resume do not change a byte.

pub mod gl;
pub mod line;
pub mod noise;
pub mod run;
pub mod stage;
pub mod unit;

use crate::error::{Error, Result};
use crate::rng::PyRandom;

/// The original's flags (`make_rcdb.py`'s defaults) and the process count `T` (`--numof_thread`).
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    pub image_size: u32,
    pub vertex_num: u32,
    pub perlin_min: f64,
    pub line_width: f64,
    pub radius_min: i64,
    pub line_num_min: i64,
    pub oval_rate: f64,
    pub start_pos: i64,
    pub classes: u32,
    pub instances: u32,
    /// `T`: the original's process count; it defines the dataset.
    pub processes: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            image_size: 512,
            vertex_num: 200,
            perlin_min: 0.0,
            line_width: 0.1,
            radius_min: 0,
            line_num_min: 1,
            oval_rate: 2.0,
            start_pos: 400,
            classes: 1000,
            instances: 1000,
            processes: 40,
        }
    }
}

/// What a class draws once: kept for all its instances.
#[derive(Clone, Debug, PartialEq)]
pub struct ClassParams {
    /// `V`: vertices of the contour.
    pub vertices: u32,
    /// `L`: lines (contours) per image.
    pub lines: u32,
    /// `P`: Perlin noise amplitude.
    pub perlin: f64,
    /// `Wd`.
    pub line_width: f64,
    /// The shape of instance 0 (the parameter file records it).
    pub first: Shape,
}

/// What changes from instance to instance: radius, oval rates and centre.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Shape {
    pub radius: i64,
    pub ox: f64,
    pub oy: f64,
    /// Centre, y then x, as floats (`(image_size + randint(-s, s)) / 2`).
    pub cy: f64,
    pub cx: f64,
}

impl Settings {
    /// Rejects what the original would crash on, loop forever on, or draw nothing with.
    pub fn validate(&self) -> Result<()> {
        if self.image_size == 0 || self.image_size % 2 == 1 {
            return Err(Error::flag(
                "--image_size",
                format!(
                    "{} is not a positive even number: the original draws grays with randint(0, image_size / 2), \
                     which CPython refuses for a non-integer bound",
                    self.image_size
                ),
            ));
        }
        if self.vertex_num < 3 {
            return Err(Error::flag(
                "--vertex_num",
                format!(
                    "{} leaves no vertex count to draw (it must be above 2), so the original never ends",
                    self.vertex_num
                ),
            ));
        }
        for (flag, v) in [
            ("--perlin_min", self.perlin_min),
            ("--line_width", self.line_width),
            ("--oval_rate", self.oval_rate),
        ] {
            if !v.is_finite() {
                return Err(Error::flag(flag, format!("{v} is not a finite number")));
            }
        }
        if self.line_num_min < 0 {
            return Err(Error::flag("--line_num_min", "must not be negative"));
        }
        if self.start_pos < 0 {
            return Err(Error::flag(
                "--start_pos",
                "must not be negative (randint(-start_pos, start_pos) would be empty)",
            ));
        }
        if self.instances == 0 {
            return Err(Error::flag("--numof_instances", "must be at least 1"));
        }
        if self.processes == 0 {
            return Err(Error::flag("--numof_thread", "must be at least 1"));
        }
        if self.per_process() == 0 {
            return Err(Error::flag(
                "--numof_thread",
                format!(
                    "{} processes with --numof_classes {} make no class: each process makes int({} / {}) = 0 \
                     classes (as in the original); use at most {} processes",
                    self.processes, self.classes, self.classes, self.processes, self.classes
                ),
            ));
        }
        Ok(())
    }

    /// `q = int(C / T)`: classes per process.
    pub fn per_process(&self) -> u32 {
        self.classes / self.processes.max(1)
    }

    /// Classes the original makes (`T * q`; any past that are never made).
    pub fn made_classes(&self) -> u32 {
        self.per_process() * self.processes
    }

    /// The process that makes class `class`.
    pub fn process_of(&self, class: u32) -> u32 {
        class / self.per_process()
    }

    /// `randint(-start_pos, start_pos)` around the middle, halved as a float.
    fn draw_center(&self, rng: &mut PyRandom) -> f64 {
        (self.image_size as i64 + rng.randint(-self.start_pos, self.start_pos)) as f64 / 2.0
    }

    fn draw_oval(&self, rng: &mut PyRandom) -> f64 {
        rng.uniform(1.0, self.oval_rate)
    }

    fn draw_radius(&self, rng: &mut PyRandom) -> i64 {
        rng.randint(self.radius_min, self.radius_min + 100)
    }

    /// A class's parameters, in the original's draw order (V, L, P, Wd, R, ox, oy, cy, cx).
    pub fn draw_class(&self, rng: &mut PyRandom) -> ClassParams {
        let vertices = loop {
            // `int(expovariate(1 / 100))`, redrawn until 2 < V <= vertex_num.
            let v = rng.expovariate(1.0 / 100.0) as u64;
            if v > 2 && v <= self.vertex_num as u64 {
                break v as u32;
            }
        };
        let lines = rng.randint(self.line_num_min, self.line_num_min + 199) as u32;
        let perlin = rng.uniform(self.perlin_min, self.perlin_min + 4.0);
        let line_width = rng.uniform(0.0, self.line_width);
        let radius = self.draw_radius(rng);
        let ox = self.draw_oval(rng);
        let oy = self.draw_oval(rng);
        let cy = self.draw_center(rng);
        let cx = self.draw_center(rng);
        ClassParams {
            vertices,
            lines,
            perlin,
            line_width,
            first: Shape {
                radius,
                ox,
                oy,
                cy,
                cx,
            },
        }
    }

    /// The shape drawn after each instance, for the next one (ox, oy, R, cy, cx).
    pub fn draw_next_shape(&self, rng: &mut PyRandom) -> Shape {
        let ox = self.draw_oval(rng);
        let oy = self.draw_oval(rng);
        let radius = self.draw_radius(rng);
        let cy = self.draw_center(rng);
        let cx = self.draw_center(rng);
        Shape {
            radius,
            ox,
            oy,
            cy,
            cx,
        }
    }

    /// The gray of one line: `randint(0, image_size / 2)`, 256 drawn as 255.
    #[inline]
    fn draw_gray(&self, rng: &mut PyRandom) -> u8 {
        rng.randint(0, self.image_size as i64 / 2).min(255) as u8
    }

    /// The fixed sequence of CPython's `random` that one process of the original draws from.
    pub fn process_stream(&self, process: u32) -> PyRandom {
        PyRandom::seed(process as i128 + 1)
    }

    /// Replays instance draws without drawing: per line, the gray (with `randint`'s redraws) and
    /// the `2V` noise inputs skipped unread.
    pub fn skip_instance(&self, rng: &mut PyRandom, p: &ClassParams) {
        for _ in 0..p.lines {
            self.draw_gray(rng);
            rng.skip_doubles(2 * p.vertices as u64);
        }
    }

    /// Replays a whole class (its parameters, every instance and the shape draws after each).
    pub fn skip_class(&self, rng: &mut PyRandom) {
        let p = self.draw_class(rng);
        for _ in 0..self.instances {
            self.skip_instance(rng, &p);
            self.draw_next_shape(rng);
        }
    }
}

/// The flip of the shared encoder that leaves a canvas as it is (RCDB has no flips).
pub const FLIP: u8 = 1;

/// RCDB canvases hold the gray of each pixel (255 = the white background); the PNGs are RGB.
pub fn image_format(s: &Settings) -> crate::render::ImageFormat {
    crate::render::ImageFormat::gray(s.image_size, s.image_size)
}

/// `param/%05d.csv`: the original's rows, Python `repr` floats, `\r\n` after every row.
pub fn param_csv(p: &ClassParams) -> String {
    let s = &p.first;
    let rows = [
        ("Vertex", p.vertices.to_string()),
        ("Perlin_noise", py_repr(p.perlin)),
        ("line_width", py_repr(p.line_width)),
        ("Center_rad", s.radius.to_string()),
        ("Line_num", p.lines.to_string()),
        ("Oval_rate_x", py_repr(s.ox)),
        ("Oval_rate_y", py_repr(s.oy)),
        ("start_pos_h", py_repr(s.cy)),
        ("start_pos_w", py_repr(s.cx)),
    ];
    rows.iter().map(|(k, v)| format!("{k},{v}\r\n")).collect()
}

/// Python's `repr` of a float (see [`crate::ifs::py_float_str`]).
pub use crate::ifs::py_float_str as py_repr;

/// Per-class constants of the raster: the unit circle at the vertices, `(cos(a*v), sin(a*v))` with
/// `a = 2*pi / V`, computed by the C library as the original's `math.cos`/`math.sin`.
pub fn unit_circle(vertices: u32) -> Vec<(f64, f64)> {
    let a = 2.0 * std::f64::consts::PI / vertices as f64;
    (0..vertices)
        .map(|v| {
            let t = a * v as f64;
            (t.cos(), t.sin())
        })
        .collect()
}

/// Reusable buffers of [`draw_instance`].
#[derive(Default)]
pub struct Scratch {
    xs: Vec<f64>,
    ys: Vec<f64>,
    nx: Vec<f64>,
    ny: Vec<f64>,
}

/// Draws one instance into `canvas` (`image_size`^2 gray values, white first), consuming its draws
/// (see [`trace_instance`]); later pixels overwrite earlier ones.
pub fn draw_instance(
    s: &Settings,
    rng: &mut PyRandom,
    p: &ClassParams,
    shape: &Shape,
    circle: &[(f64, f64)],
    scratch: &mut Scratch,
    canvas: &mut Vec<u8>,
) {
    let size = s.image_size as usize;
    canvas.clear();
    canvas.resize(size * size, 255);
    trace_instance(s, rng, p, shape, circle, scratch, |gray, a, b| {
        line::draw_line(canvas, size, a, b, gray)
    });
}

/// One instance's segments in drawing order, consuming its draws: per line a gray, V noise inputs
/// for x then V for y; every vertex moves by its noise and the closed polygon's V segments follow
/// (`segment(gray, from, to)` in pixel coordinates, as passed to Pillow).
pub fn trace_instance(
    s: &Settings,
    rng: &mut PyRandom,
    p: &ClassParams,
    shape: &Shape,
    circle: &[(f64, f64)],
    scratch: &mut Scratch,
    mut segment: impl FnMut(u8, (f64, f64), (f64, f64)),
) {
    let v = p.vertices as usize;
    let r = shape.radius as f64;
    let Scratch { xs, ys, nx, ny } = scratch;
    xs.clear();
    ys.clear();
    xs.extend(circle.iter().map(|&(c, _)| c * r * shape.ox));
    ys.extend(circle.iter().map(|&(_, sn)| sn * r * shape.oy));
    nx.resize(v, 0.0);
    ny.resize(v, 0.0);
    let (pn, wd) = (p.perlin, p.line_width);
    for _ in 0..p.lines {
        let gray = s.draw_gray(rng);
        for n in nx.iter_mut().chain(ny.iter_mut()) {
            *n = noise::pnoise1(rng.uniform(0.0, 10000.0)) * pn * 2.0 - pn;
        }
        for i in 0..v {
            let (c, sn) = circle[i];
            xs[i] -= c * (nx[i] - wd);
            ys[i] -= sn * (ny[i] - wd);
        }
        for i in 0..v {
            let j = if i + 1 == v { 0 } else { i + 1 };
            segment(
                gray,
                (xs[i] + shape.cx, ys[i] + shape.cy),
                (xs[j] + shape.cx, ys[j] + shape.cy),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::py_repr;

    #[test]
    fn repr_matches_python() {
        for (v, want) in [
            (163.0, "163.0"),
            (0.011791870367106105, "0.011791870367106105"),
            (1.449491064788738, "1.449491064788738"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (3.5e-05, "3.5e-05"),
            (1e16, "1e+16"),
            (1234567890123456.0, "1234567890123456.0"),
            (0.0, "0.0"),
            (-2.5, "-2.5"),
            (1e100, "1e+100"),
            (123.456, "123.456"),
        ] {
            assert_eq!(py_repr(v), want, "{v:e}");
        }
    }
}
