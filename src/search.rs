//! The original category search (`param_search/ifs_search.py`), bit for bit, on all cores.
//!
//! Candidates are drawn in order from one numpy stream seeded with `--seed`; each candidate's chaos-game
//! draws are skipped on the main thread (a snapshot of the stream is handed to the evaluator), so the
//! candidates can be evaluated in parallel while the accepted set stays that of a sequential run.

use crate::error::Result;
use crate::fsutil;
use crate::ifs::{self, Cloud, Ifs, Map};
use crate::render::{PngConfig, encode_png};
use crate::rng::NumpyRandom;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

pub const PREVIEW: u32 = 512;
pub const PREVIEW_PAD: u32 = 6;

#[derive(Clone, Debug)]
pub struct SearchConfig {
    pub rate: f64,
    pub categories: usize,
    pub points: usize,
    pub seed: u32,
    pub out: PathBuf,
    pub threads: usize,
    pub write_previews: bool,
    pub png_level: u8,
    /// Run the candidates' chaos games on this GL device instead of the CPU.
    pub gl: Option<crate::render::gl::egl::Choice>,
}

/// One candidate: its maps (p already normalised) and the stream positioned at its chaos-game draws.
pub struct Candidate {
    pub ifs: Ifs,
    stream: NumpyRandom,
}

/// Draws the next candidate exactly as the original does, leaving `rng` after its chaos-game draws.
pub fn next_candidate(rng: &mut NumpyRandom, points: usize) -> Candidate {
    let n = rng.randint(2, 8) as usize;
    let mut maps = Vec::with_capacity(n);
    let mut sum = 0.0f64;
    for _ in 0..n {
        let v: [f64; 6] = std::array::from_fn(|_| rng.uniform(-1.0, 1.0));
        let [a, b, c, d, e, f] = v;
        let p = (a * d - b * c).abs();
        sum += p;
        maps.push(Map {
            a,
            b,
            c,
            d,
            e,
            f,
            p,
        });
    }
    for m in &mut maps {
        m.p /= sum;
    }
    let stream = rng.clone();
    rng.skip_doubles(points);
    Candidate {
        ifs: Ifs { maps },
        stream,
    }
}

/// The search preview: single gray pixels on a 512x512 canvas, not flipped. Returns the label canvas
/// and the fill (non-zero pixels of channel 0 / 512^2).
pub fn evaluate(c: &Candidate, points: usize) -> (Vec<u8>, f64) {
    let u = c.chaos_sequence(points);
    let (mut xs, mut ys) = (Vec::new(), Vec::new());
    c.ifs.chaos_game(&u, &mut xs, &mut ys);
    fill(xs, ys)
}

impl Candidate {
    /// The candidate's own `np.random.random(points)` draws.
    pub fn chaos_sequence(&self, points: usize) -> Vec<f64> {
        self.stream.clone().random_vec(points)
    }
}

/// The preview and fill of a candidate's chaos-game points (however they were computed).
pub fn fill(mut xs: Vec<f64>, mut ys: Vec<f64>) -> (Vec<u8>, f64) {
    let mut cloud = Cloud::default();
    ifs::rescale(
        &mut xs,
        &mut ys,
        PREVIEW,
        PREVIEW,
        PREVIEW_PAD,
        PREVIEW_PAD,
        &mut cloud,
    );
    let w = PREVIEW as usize;
    let mut canvas = vec![0u8; w * w];
    let mut count = 0usize;
    for (&x, &y) in cloud.xs.iter().zip(&cloud.ys) {
        let px = &mut canvas[y as usize * w + x as usize];
        if *px == 0 {
            *px = 127;
            count += 1;
        }
    }
    (canvas, count as f64 / (w * w) as f64)
}

pub fn csv_dir(out: &Path, rate: f64, categories: usize) -> PathBuf {
    out.join(format!(
        "csv_rate{}_category{categories}",
        ifs::py_float_str(rate)
    ))
}

pub fn preview_dir(out: &Path, rate: f64, categories: usize) -> PathBuf {
    out.join(format!(
        "rate{}_category{categories}",
        ifs::py_float_str(rate)
    ))
}

/// Statistics of a finished search.
#[derive(Debug, Clone, Copy)]
pub struct SearchStats {
    pub candidates: usize,
    pub accepted: usize,
}

/// Runs the search, writing `%05d.csv` and `%05d.png` per accepted class. `on_accept` is told of each.
pub fn run(cfg: &SearchConfig, mut on_accept: impl FnMut(usize, usize)) -> Result<SearchStats> {
    let cdir = csv_dir(&cfg.out, cfg.rate, cfg.categories);
    let pdir = preview_dir(&cfg.out, cfg.rate, cfg.categories);
    fsutil::create_dir(&cdir)?;
    fsutil::check_writable(&cdir)?;
    fsutil::remove_stale_tmp(&cdir);
    if cfg.write_previews {
        fsutil::create_dir(&pdir)?;
        fsutil::remove_stale_tmp(&pdir);
    }
    let mut rng = NumpyRandom::seed(cfg.seed);
    let threads = cfg.threads.max(1);
    let batch = threads * 4;
    let mut stats = SearchStats {
        candidates: 0,
        accepted: 0,
    };
    let png = PngConfig {
        level: cfg.png_level,
        gray: false,
    };
    let pal = crate::render::palette(crate::render::DrawMode::PointGray);
    let mut rgb = Vec::new();
    let mut bytes = Vec::new();
    let mut engine = match cfg.gl {
        Some(choice) => Some(crate::render::gl::GlEngine::new(
            choice,
            &[],
            Default::default(),
        )?),
        None => None,
    };
    if let Some(e) = &engine {
        eprintln!(
            "search: chaos games on {} ({})",
            e.ctx.renderer, e.ctx.device
        );
    }
    let batch = if engine.is_some() { 64 } else { batch };
    while stats.accepted < cfg.categories {
        let cands: Vec<Candidate> = (0..batch)
            .map(|_| next_candidate(&mut rng, cfg.points))
            .collect();
        let results = match engine.as_mut() {
            Some(e) => evaluate_all_gl(e, &cands, cfg.points, threads)?,
            None => evaluate_all(&cands, cfg.points, threads),
        };
        for (cand, (canvas, fill)) in cands.iter().zip(results) {
            stats.candidates += 1;
            if fill >= cfg.rate {
                let k = stats.accepted;
                let name = format!("{k:05}");
                if cfg.write_previews {
                    crate::render::write_flip(&canvas, 512, 512, 1, &pal, 3, &mut rgb);
                    encode_png(&rgb, 512, 512, png, &mut bytes)?;
                    fsutil::write_atomic(&pdir.join(format!("{name}.png")), &bytes, false)?;
                }
                fsutil::write_atomic(
                    &cdir.join(format!("{name}.csv")),
                    cand.ifs.to_csv().as_bytes(),
                    false,
                )?;
                stats.accepted += 1;
                on_accept(k, stats.candidates);
                if stats.accepted == cfg.categories {
                    break;
                }
            }
        }
    }
    Ok(stats)
}

/// Evaluates candidates on `threads` threads; the result is in candidate order.
pub fn evaluate_all(cands: &[Candidate], points: usize, threads: usize) -> Vec<(Vec<u8>, f64)> {
    let next = AtomicUsize::new(0);
    let mut results: Vec<Option<(Vec<u8>, f64)>> = (0..cands.len()).map(|_| None).collect();
    let slots: Vec<std::sync::Mutex<&mut Option<(Vec<u8>, f64)>>> =
        results.iter_mut().map(std::sync::Mutex::new).collect();
    std::thread::scope(|s| {
        for _ in 0..threads.min(cands.len()) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= cands.len() {
                        break;
                    }
                    let r = evaluate(&cands[i], points);
                    **slots[i].lock().unwrap() = Some(r);
                }
            });
        }
    });
    drop(slots);
    results.into_iter().map(|r| r.expect("evaluated")).collect()
}

/// The GL form of [`evaluate_all`]: the chaos games run on the GPU (bit-identical in fp64), the
/// rescale and fill count on the CPU with the same code.
pub fn evaluate_all_gl(
    engine: &mut crate::render::gl::GlEngine,
    cands: &[Candidate],
    points: usize,
    threads: usize,
) -> Result<Vec<(Vec<u8>, f64)>> {
    let mut u = Vec::with_capacity(cands.len() * points);
    for c in cands {
        u.extend(c.chaos_sequence(points));
    }
    let ifss: Vec<Ifs> = cands.iter().map(|c| c.ifs.clone()).collect();
    let pts = engine.chaos_games_own_u(&ifss, points, &u)?;
    let slots: Vec<std::sync::Mutex<Option<(Vec<f64>, Vec<f64>)>>> = pts
        .into_iter()
        .map(|p| std::sync::Mutex::new(Some(p)))
        .collect();
    let out: Vec<std::sync::Mutex<Option<(Vec<u8>, f64)>>> =
        (0..cands.len()).map(|_| Default::default()).collect();
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..threads.min(cands.len()).max(1) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= cands.len() {
                        break;
                    }
                    let (xs, ys) = slots[i].lock().unwrap().take().unwrap();
                    *out[i].lock().unwrap() = Some(fill(xs, ys));
                }
            });
        }
    });
    Ok(out
        .into_iter()
        .map(|m| m.into_inner().unwrap().unwrap())
        .collect())
}
