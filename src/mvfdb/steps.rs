//! MV-FractalDB's three original scripts as steps, each with its own roots and flags:
//! `mvfdb search` (`category_search.py`: the params folder), `mvfdb models` (`instance.py`: params
//! in, PLY models out), `mvfdb render` (`render.py`: PLY models in, views out). The files are those
//! of the one-shot `mvfdb` (its `params/`, `models/` and `images/`); here each step reads the
//! previous one's files, as the originals do, so a folder made by the original scripts works too.
//! CPU engine, one thread: the one-shot command is the fast path.

use super::view::{draw_points, perspective, view_matrix};
use super::{Map3, POINTS, instance, params_csv, ply, read_multipliers};
use crate::error::{Error, Result};
use crate::fsutil;
use crate::rng::{NumpyRandom, PyRandom};
use std::path::{Path, PathBuf};

#[derive(clap::Subcommand, Debug)]
pub enum Step {
    /// The category search (the original `category_search.py`): `{save_root}/%06d.csv`
    Search(SearchStep),
    /// The 3D models (the original `instance.py`): the params of --load_root in, PLY files out
    Models(ModelsStep),
    /// The views (the original `render.py`): the PLY models of --load_root in, PNGs out
    Render(RenderStep),
}

#[derive(clap::Args, Debug)]
pub struct SearchStep {
    /// Classes to find [original: --numof_classes]
    #[arg(
        long = "numof_classes",
        visible_alias = "classes",
        default_value_t = 1000
    )]
    pub classes: usize,
    /// numpy seed of the search [original: --seed]
    #[arg(long, default_value_t = 1)]
    pub seed: u32,
    /// Variance threshold of every axis (the original's 0.05)
    #[arg(long, default_value_t = 0.05)]
    pub variance: f64,
    /// The params folder [original: --save_root]
    #[arg(long = "save_root", default_value = "./data/3DIFS_params")]
    pub save_root: PathBuf,
    /// No progress lines
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

#[derive(clap::Args, Debug)]
pub struct ModelsStep {
    /// The params folder of `mvfdb search` (or the original's) [original: --load_root]
    #[arg(long = "load_root", default_value = "./data/3DIFS_params")]
    pub load_root: PathBuf,
    /// The models folder: `{class}/{class}_{row:04d}.ply` [original: --save_root]
    #[arg(long = "save_root", default_value = "./data/3Dmodels")]
    pub save_root: PathBuf,
    /// At most this many classes, in sorted file order [original: --classes]
    #[arg(long)]
    pub classes: Option<usize>,
    /// The instance multipliers: `builtin` (the original's weights_ins145.csv) or a CSV file
    #[arg(long = "weight-csv", default_value = "builtin")]
    pub weight_csv: PathBuf,
    /// Rows of the multipliers file to draw: `0-3`, `0,5`
    #[arg(long = "weight-rows")]
    pub weight_rows: Option<String>,
    /// numpy seed before the models (the original leaves it unseeded)
    #[arg(long = "model-seed", default_value_t = 0)]
    pub model_seed: u32,
    /// No progress lines
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

#[derive(clap::Args, Debug)]
pub struct RenderStep {
    /// The models folder of `mvfdb models` (or the original's) [original: --load_root]
    #[arg(long = "load_root", default_value = "./data/3Dmodels")]
    pub load_root: PathBuf,
    /// The images folder: `{class}/{class}_{i:05d}_{k:03d}.png` [original: --save_root]
    #[arg(long = "save_root", default_value = "./data/images")]
    pub save_root: PathBuf,
    /// Views per model [original: --view_point, 12]
    #[arg(long = "view_point", visible_alias = "views", default_value_t = 12)]
    pub views: u32,
    /// Image side [original: --img_size, 224]
    #[arg(long = "img_size", default_value_t = 224)]
    pub img_size: u32,
    /// Point size in pixels, 1..=64 [original: --point_size, 1]
    #[arg(long = "point_size", default_value_t = 1)]
    pub point_size: u32,
    /// CPython random seed before the views (the original leaves it unseeded)
    #[arg(long = "view-seed", default_value_t = 0)]
    pub view_seed: i64,
    /// zlib level of the PNGs, 0..9
    #[arg(long = "png-level", default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=9))]
    pub png_level: u8,
    /// No progress lines
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

pub fn run(step: &Step) -> Result<()> {
    match step {
        Step::Search(a) => search(a),
        Step::Models(a) => models(a),
        Step::Render(a) => render(a),
    }
}

fn search(a: &SearchStep) -> Result<()> {
    if a.classes == 0 {
        return Err(Error::flag("--numof_classes", "must be at least 1"));
    }
    let found = super::search_with(a.seed, a.classes, a.variance, !a.quiet, super::GIVE_UP)?;
    fsutil::create_dir(&a.save_root)?;
    for (c, maps) in found.iter().enumerate() {
        let path = a.save_root.join(format!("{c:06}.csv"));
        fsutil::write_atomic(&path, params_csv(maps).as_bytes(), false)?;
    }
    if !a.quiet {
        crate::say!(
            "mvfdb search: {} classes -> {}",
            found.len(),
            a.save_root.display()
        );
    }
    Ok(())
}

/// The entries of `dir` whose names end with `ext` (or the sub-folders, `ext` empty), sorted.
fn sorted(dir: &Path, ext: &str) -> Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, "cannot list", e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| match ext {
            "" => p.is_dir(),
            _ => p.extension().is_some_and(|x| x == ext),
        })
        .collect();
    out.sort();
    Ok(out)
}

/// A params file: rows of 13 numbers (a..l, weight), as `np.savetxt` writes them.
fn read_params(path: &Path) -> Result<Vec<Map3>> {
    let text = crate::ifs::read_text(path)?;
    let mut maps = Vec::new();
    for (n, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let v: Vec<f64> = line
            .split(',')
            .map(|x| x.trim().parse::<f64>())
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| Error::input(path, Some(n + 1), format!("not a number: {e}")))?;
        let row: Map3 = v.try_into().map_err(|v: Vec<f64>| {
            Error::input(
                path,
                Some(n + 1),
                format!("{} values, expected 13", v.len()),
            )
        })?;
        maps.push(row);
    }
    if maps.is_empty() {
        return Err(Error::input(path, None, "holds no maps"));
    }
    Ok(maps)
}

fn models(a: &ModelsStep) -> Result<()> {
    let mut files = sorted(&a.load_root, "csv")?;
    files.truncate(a.classes.unwrap_or(usize::MAX));
    if files.is_empty() {
        return Err(Error::input(
            &a.load_root,
            None,
            "holds no params files: run `fractaldb mvfdb search` first",
        ));
    }
    let all = read_multipliers(&a.weight_csv)?;
    let rows: Vec<u32> = match &a.weight_rows {
        Some(sel) => crate::plan::parse_selection("--weight-rows", sel, all.len() as u32)?,
        None => (0..all.len() as u32).collect(),
    };
    // Every params file read before any model is written: a bad one leaves nothing behind.
    let params: Vec<Vec<Map3>> = files
        .iter()
        .map(|f| read_params(f))
        .collect::<Result<_>>()?;
    // One numpy stream through every class and row, as the original's one process draws it.
    let mut rng = NumpyRandom::seed(a.model_seed);
    let mut made = 0;
    for (f, maps) in files.iter().zip(&params) {
        let class = f
            .file_stem()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let dir = a.save_root.join(&class);
        fsutil::create_dir(&dir)?;
        for &r in &rows {
            crate::check_interrupt()?;
            let u = rng.random_vec(POINTS);
            if let Some(pts) = instance(maps, &all[r as usize], &u) {
                fsutil::write_atomic(&dir.join(format!("{class}_{r:04}.ply")), &ply(&pts), false)?;
                made += 1;
            }
        }
    }
    if !a.quiet {
        crate::say!(
            "mvfdb models: {made} models of {} classes -> {}",
            files.len(),
            a.save_root.display()
        );
    }
    Ok(())
}

/// The points of a PLY model as `mvfdb models` (and open3d) write them: binary little-endian doubles.
fn read_ply(path: &Path) -> Result<Vec<[f32; 3]>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, "cannot read", e))?;
    let bad = |why: &str| {
        Error::input(
            path,
            None,
            format!("not a binary little-endian PLY of x, y, z doubles: {why}"),
        )
    };
    let end = bytes
        .windows(11)
        .position(|w| w == b"end_header\n")
        .ok_or_else(|| bad("no end_header"))?
        + 11;
    let head = String::from_utf8_lossy(&bytes[..end]);
    let n: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("element vertex "))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| bad("no vertex count"))?;
    if !head.contains("binary_little_endian") || bytes.len() != end + n * 24 {
        return Err(bad("other format or size"));
    }
    let f = |i: usize| {
        f64::from_le_bytes(bytes[end + 8 * i..end + 8 * i + 8].try_into().unwrap()) as f32
    };
    Ok((0..n)
        .map(|i| [f(3 * i), f(3 * i + 1), f(3 * i + 2)])
        .collect())
}

fn render(a: &RenderStep) -> Result<()> {
    if a.views == 0 || !(1..=64).contains(&a.point_size) || a.img_size == 0 {
        return Err(Error::flag(
            "--view_point/--point_size/--img_size",
            "views >= 1, point size 1..=64, size >= 1",
        ));
    }
    let classes = sorted(&a.load_root, "")?;
    if classes.is_empty() {
        return Err(Error::input(
            &a.load_root,
            None,
            "holds no class folders of models: run `fractaldb mvfdb models` first",
        ));
    }
    let size = a.img_size as usize;
    let image = crate::render::ImageFormat::gray(a.img_size, a.img_size);
    let png = crate::render::PngConfig {
        level: a.png_level,
        gray: false,
    };
    let proj = perspective(45f64.to_radians() as f32, 1.0, 1.0, 100.0);
    let pi = std::f64::consts::PI;
    // One CPython stream, one draw per view, in file order then view order (the original's).
    let mut views = PyRandom::seed(a.view_seed as i128);
    let (mut scratch, mut out, mut canvas) =
        (Default::default(), Vec::new(), vec![0u8; size * size]);
    let mut made = 0;
    for dir in &classes {
        let class = dir
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let dst = a.save_root.join(&class);
        fsutil::create_dir(&dst)?;
        for (i, model) in sorted(dir, "ply")?.iter().enumerate() {
            let pts = read_ply(model)?;
            for k in 0..a.views {
                crate::check_interrupt()?;
                let view = view_matrix(k, a.views, views.uniform(-pi, pi));
                canvas.fill(0);
                draw_points(&pts, &proj, &view, size, a.point_size, &mut canvas);
                out.clear();
                crate::encode::Encoding::Png.encode(
                    &canvas,
                    &image,
                    1,
                    png,
                    &mut scratch,
                    &mut out,
                )?;
                fsutil::write_atomic(&dst.join(format!("{class}_{i:05}_{k:03}.png")), &out, false)?;
                made += 1;
            }
        }
    }
    if !a.quiet {
        crate::say!(
            "mvfdb render: {made} images of {} classes -> {}",
            classes.len(),
            a.save_root.display()
        );
    }
    Ok(())
}
