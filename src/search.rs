//! The original category search (`param_search/ifs_search.py`), bit for bit, on all cores.
//!
//! Candidates are drawn in order from one numpy stream seeded with `--seed`; each candidate's chaos-game
//! draws are skipped on the main thread (a snapshot of the stream is handed to the evaluator), so the
//! candidates can be evaluated in parallel while the accepted set stays that of a sequential run.

use crate::error::Error;
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
    /// This process's rank and the number of ranks sharing the candidate evaluation.
    pub rank: u64,
    pub world: u64,
    /// Multi-rank: how long a rank waits for the others without any of them finishing a block.
    pub wait_timeout: std::time::Duration,
    /// Print a progress line (candidates tried, acceptance rate) every 10 s while searching.
    pub progress: bool,
    /// Digits of the class names (`%05d` in the original; 7 in the 21k-300k variants' scripts).
    pub class_digits: usize,
}

/// Candidates per block of the multi-rank search: block b goes to rank b % world.
pub const RANK_BLOCK: u64 = 32;
/// How many of its own blocks a rank may run ahead of the finished prefix before it waits.
const RANK_AHEAD: u64 = 4;

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
    let _lock = fsutil::OutputLock::acquire(
        &cfg.out,
        &format!("search-rank-{:05}-of-{:05}", cfg.rank, cfg.world),
    )?;
    fsutil::check_writable(&cdir)?;
    fsutil::remove_stale_tmp(&cdir);
    if cfg.write_previews {
        fsutil::create_dir(&pdir)?;
        fsutil::remove_stale_tmp(&pdir);
    }
    if cfg.world > 1 {
        return run_ranked(cfg, &cdir, &pdir, on_accept);
    }
    let mut rng = NumpyRandom::seed(cfg.seed);
    let threads = cfg.threads.max(1);
    let batch = threads * 4;
    let mut stats = SearchStats {
        candidates: 0,
        accepted: 0,
    };
    let mut rgb = Vec::new();
    let mut bytes = Vec::new();
    let mut engine = open_engine(cfg)?;
    let batch = if engine.is_some() { 64 } else { batch };
    let mut last_note = std::time::Instant::now();
    while stats.accepted < cfg.categories {
        if crate::interrupted() {
            return Err(Error::Interrupted);
        }
        let cands: Vec<Candidate> = (0..batch)
            .map(|_| next_candidate(&mut rng, cfg.points))
            .collect();
        let results = match engine.as_mut() {
            Some(e) => evaluate_all_gl(e, &cands, cfg.points, threads)?,
            None => evaluate_all(&cands, cfg.points, threads),
        };
        if cfg.progress && last_note.elapsed().as_secs() >= 10 {
            last_note = std::time::Instant::now();
            crate::say!(
                "search: {} candidates tried, {} of {} accepted ({:.2}% accepted)",
                stats.candidates,
                stats.accepted,
                cfg.categories,
                100.0 * stats.accepted as f64 / stats.candidates.max(1) as f64
            );
        }
        for (cand, fill) in cands.iter().zip(results) {
            stats.candidates += 1;
            if fill >= cfg.rate {
                let k = stats.accepted;
                // The preview canvas of an accepted candidate (about 1 in 40) is drawn again.
                let canvas = if cfg.write_previews {
                    evaluate(cand, cfg.points).0
                } else {
                    Vec::new()
                };
                write_class(cfg, (&cdir, &pdir), k, cand, &canvas, &mut rgb, &mut bytes)?;
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

/// The GL engine for `--backend gl` (made in this thread, which drives it), announced on stderr.
fn open_engine(cfg: &SearchConfig) -> Result<Option<crate::render::gl::GlEngine>> {
    let Some(choice) = cfg.gl else {
        return Ok(None);
    };
    let e = crate::render::gl::GlEngine::new(choice, &[], Default::default())?;
    crate::say!(
        "search: chaos games on {} ({})",
        e.ctx.renderer,
        e.ctx.device
    );
    Ok(Some(e))
}

/// Writes accepted class `k`: its CSV and (if wanted) its preview.
fn write_class(
    cfg: &SearchConfig,
    (cdir, pdir): (&Path, &Path),
    k: usize,
    cand: &Candidate,
    canvas: &[u8],
    rgb: &mut Vec<u8>,
    bytes: &mut Vec<u8>,
) -> Result<()> {
    let name = format!("{k:0w$}", w = cfg.class_digits);
    if cfg.write_previews {
        let pal = crate::render::palette(crate::render::DrawMode::PointGray);
        crate::render::write_flip(canvas, 512, 512, 1, &pal, 3, rgb);
        encode_png(
            rgb,
            512,
            512,
            PngConfig {
                level: cfg.png_level,
                gray: false,
            },
            bytes,
        )?;
        fsutil::write_atomic(&pdir.join(format!("{name}.png")), bytes, false)?;
    }
    fsutil::write_atomic(
        &cdir.join(format!("{name}.csv")),
        cand.ifs.to_csv().as_bytes(),
        false,
    )
}

/// One rank's record of a finished block: the candidate indices it accepted.
#[derive(serde::Serialize, serde::Deserialize)]
struct BlockLine {
    block: u64,
    accepted: Vec<u64>,
}

/// The multi-rank search. Candidates are numbered in stream order and grouped in blocks of
/// `RANK_BLOCK`; rank r evaluates blocks r, r+W, ... and appends each block's accepted candidates to its
/// own file under `{out}/.fractaldb-search/`. The ranks share nothing but that directory (the output
/// filesystem): each reads the others' files to see when the finished prefix of blocks holds enough
/// accepted candidates. Rank 0 then writes the first N of them in candidate order: exactly the classes of
/// a single-process search.
fn run_ranked(
    cfg: &SearchConfig,
    cdir: &Path,
    pdir: &Path,
    mut on_accept: impl FnMut(usize, usize),
) -> Result<SearchStats> {
    let dir = cfg.out.join(".fractaldb-search");
    fsutil::create_dir(&dir)?;
    let header = serde_json::json!({
        "rate": cfg.rate, "categories": cfg.categories, "points": cfg.points, "seed": cfg.seed,
        "block": RANK_BLOCK, "world": cfg.world,
    })
    .to_string();
    let mine = dir.join(format!("rank-{:05}-of-{:05}.jsonl", cfg.rank, cfg.world));
    let read_parts = || -> Result<std::collections::HashMap<u64, Vec<u64>>> {
        let mut blocks = std::collections::HashMap::new();
        for r in 0..cfg.world {
            let p = dir.join(format!("rank-{r:05}-of-{:05}.jsonl", cfg.world));
            let Ok(text) = std::fs::read_to_string(&p) else {
                continue;
            };
            let mut lines = text.lines();
            match lines.next() {
                Some(h) if h == header => {}
                Some(_) => {
                    return Err(Error::input(
                        &p,
                        Some(1),
                        "a search with other settings wrote this part: use another --out",
                    ));
                }
                None => continue,
            }
            for (i, l) in lines.enumerate() {
                // A line cut by a crash is incomplete: ignore it (the block is evaluated again).
                if let Ok(b) = serde_json::from_str::<BlockLine>(l) {
                    blocks.insert(b.block, b.accepted);
                } else if !l.is_empty() && i + 2 < text.lines().count() {
                    return Err(Error::input(&p, Some(i + 2), "not a search block record"));
                }
            }
        }
        Ok(blocks)
    };
    // Every part must be of these settings before this rank writes anything (its own included:
    // rewriting it would lose a finished search's record).
    read_parts()?;
    let marker = |r: u64| dir.join(format!("failed-rank-{r:05}-of-{:05}", cfg.world));
    let _ = std::fs::remove_file(marker(cfg.rank));
    // Resume: keep the blocks this rank already recorded.
    let own_text = std::fs::read_to_string(&mine).unwrap_or_default();
    if !own_text.starts_with(&header) {
        fsutil::write_atomic(&mine, format!("{header}\n").as_bytes(), true)?;
    }
    // A failure from here on leaves a marker, so the other ranks stop waiting for this one.
    let r = search_blocks(cfg, &header, &mine, &read_parts, &marker);
    if let Err(e) = &r {
        let _ = fsutil::write_atomic(
            &marker(cfg.rank),
            format!("{header}\n{e}\n").as_bytes(),
            true,
        );
    }
    let (accepted_prefix, evaluated) = r?;
    if cfg.rank == 0 {
        let mut wanted: Vec<u64> = accepted_prefix;
        wanted.sort();
        wanted.truncate(cfg.categories);
        let mut rng = NumpyRandom::seed(cfg.seed);
        let (mut rgb, mut bytes) = (Vec::new(), Vec::new());
        let mut idx = 0u64;
        for (k, &want) in wanted.iter().enumerate() {
            while idx < want {
                next_candidate(&mut rng, cfg.points);
                idx += 1;
            }
            let cand = next_candidate(&mut rng, cfg.points);
            idx += 1;
            let canvas = if cfg.write_previews {
                evaluate(&cand, cfg.points).0
            } else {
                Vec::new()
            };
            write_class(cfg, (cdir, pdir), k, &cand, &canvas, &mut rgb, &mut bytes)?;
            on_accept(k, want as usize + 1);
        }
    }
    Ok(SearchStats {
        candidates: evaluated,
        accepted: if cfg.rank == 0 { cfg.categories } else { 0 },
    })
}

/// `f(0..n)` on `threads` threads, results in index order.
fn parallel_map<T: Send>(n: usize, threads: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let next = AtomicUsize::new(0);
    let out: Vec<std::sync::Mutex<Option<T>>> =
        (0..n).map(|_| std::sync::Mutex::new(None)).collect();
    std::thread::scope(|s| {
        for _ in 0..threads.min(n).max(1) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    let r = f(i);
                    *out[i].lock().unwrap() = Some(r);
                }
            });
        }
    });
    out.into_iter()
        .map(|m| m.into_inner().unwrap().expect("computed"))
        .collect()
}

/// Reusable buffers of one evaluating thread: four candidates' u sequences and points, the rescaled
/// cloud, and a stamped preview canvas (no clearing between candidates).
#[derive(Default)]
struct Evaluator {
    u: [Vec<f64>; 4],
    xs: [Vec<f64>; 4],
    ys: [Vec<f64>; 4],
    cloud: Cloud,
    stamp: Vec<u32>,
    generation: u32,
}

impl Evaluator {
    /// The fill rate of a candidate's chaos-game points (as [`fill`] computes it).
    fn fill_rate(&mut self, lane: usize) -> f64 {
        let w = PREVIEW as usize;
        if self.stamp.len() != w * w || self.generation == u32::MAX {
            self.stamp = vec![0; w * w];
            self.generation = 0;
        }
        self.generation += 1;
        let g = self.generation;
        // Finite orbits (nearly all): rescaled and counted in two passes, no cloud built.
        let mut count = 0usize;
        let stamp = &mut self.stamp;
        if ifs::rescale_finite_each(
            &self.xs[lane],
            &self.ys[lane],
            (PREVIEW, PREVIEW),
            (PREVIEW_PAD, PREVIEW_PAD),
            |x, y| {
                let px = &mut stamp[y as usize * w + x as usize];
                if *px != g {
                    *px = g;
                    count += 1;
                }
            },
        ) {
            return count as f64 / (w * w) as f64;
        }
        ifs::rescale(
            &mut self.xs[lane],
            &mut self.ys[lane],
            PREVIEW,
            PREVIEW,
            PREVIEW_PAD,
            PREVIEW_PAD,
            &mut self.cloud,
        );
        for (&x, &y) in self.cloud.xs.iter().zip(&self.cloud.ys) {
            let px = &mut self.stamp[y as usize * w + x as usize];
            if *px != g {
                *px = g;
                count += 1;
            }
        }
        count as f64 / (w * w) as f64
    }

    /// Fill rates of up to four candidates, their chaos games interleaved.
    fn fills(&mut self, cands: &[Candidate], points: usize) -> Vec<f64> {
        let k = cands.len();
        for (l, c) in cands.iter().enumerate() {
            let mut stream = c.stream.clone();
            self.u[l].clear();
            self.u[l].extend((0..points).map(|_| stream.random()));
        }
        if k == 4 {
            let us = [
                &self.u[0][..],
                &self.u[1][..],
                &self.u[2][..],
                &self.u[3][..],
            ];
            Ifs::chaos_games_4(
                [&cands[0].ifs, &cands[1].ifs, &cands[2].ifs, &cands[3].ifs],
                us,
                &mut self.xs,
                &mut self.ys,
            );
        } else {
            for (l, c) in cands.iter().enumerate() {
                c.ifs
                    .chaos_game(&self.u[l], &mut self.xs[l], &mut self.ys[l]);
            }
        }
        (0..k).map(|l| self.fill_rate(l)).collect()
    }
}

/// Evaluators between batches (the threads of a batch end with it).
static EVALUATORS: std::sync::Mutex<Vec<Evaluator>> = std::sync::Mutex::new(Vec::new());

/// The fill rates of candidates on `threads` threads, in candidate order; each thread takes four
/// candidates at a time and keeps its buffers.
pub fn evaluate_all(cands: &[Candidate], points: usize, threads: usize) -> Vec<f64> {
    let next = AtomicUsize::new(0);
    let out: Vec<std::sync::Mutex<f64>> = (0..cands.len())
        .map(|_| std::sync::Mutex::new(f64::NAN))
        .collect();
    std::thread::scope(|s| {
        for _ in 0..threads.min(cands.len().div_ceil(4)).max(1) {
            s.spawn(|| {
                // Buffers outlive the batch: a fresh 11 MB per thread and batch cost page faults.
                let mut ev = EVALUATORS.lock().unwrap().pop().unwrap_or_default();
                loop {
                    let i = next.fetch_add(4, Ordering::Relaxed);
                    if i >= cands.len() {
                        break;
                    }
                    let group = &cands[i..(i + 4).min(cands.len())];
                    for (k, f) in ev.fills(group, points).into_iter().enumerate() {
                        *out[i + k].lock().unwrap() = f;
                    }
                }
                EVALUATORS.lock().unwrap().push(ev);
            });
        }
    });
    out.into_iter().map(|m| m.into_inner().unwrap()).collect()
}

/// The GL form of [`evaluate_all`]: the chaos games run on the GPU (bit-identical in fp64), the
/// rescale and fill count on the CPU with the same code.
pub fn evaluate_all_gl(
    engine: &mut crate::render::gl::GlEngine,
    cands: &[Candidate],
    points: usize,
    threads: usize,
) -> Result<Vec<f64>> {
    let mut u = Vec::with_capacity(cands.len() * points);
    for c in cands {
        u.extend(c.chaos_sequence(points));
    }
    let ifss: Vec<Ifs> = cands.iter().map(|c| c.ifs.clone()).collect();
    let pts: Vec<std::sync::Mutex<_>> = engine
        .chaos_games_own_u(&ifss, points, &u)?
        .into_iter()
        .map(std::sync::Mutex::new)
        .collect();
    Ok(parallel_map(cands.len(), threads, |i| {
        let (xs, ys) = std::mem::take(&mut *pts[i].lock().unwrap());
        fill(xs, ys).1
    }))
}

/// The block loop of one rank of a multi-rank search: evaluates its blocks, records them, and
/// waits for the others until the finished prefix holds enough accepted candidates. Returns that
/// prefix's accepted candidates and the number this rank evaluated.
fn search_blocks(
    cfg: &SearchConfig,
    header: &str,
    mine: &Path,
    read_parts: &dyn Fn() -> Result<std::collections::HashMap<u64, Vec<u64>>>,
    marker: &dyn Fn(u64) -> std::path::PathBuf,
) -> Result<(Vec<u64>, usize)> {
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(mine)
        .map_err(|e| Error::io(mine, "cannot open search part", e))?;
    let mut engine = open_engine(cfg)?;
    let threads = cfg.threads.max(1);
    let mut rng = NumpyRandom::seed(cfg.seed);
    let mut next_index = 0u64;
    let mut b = cfg.rank;
    let mut evaluated = 0usize;
    let needed = cfg.categories as u64;
    let mut last_note = std::time::Instant::now();
    let mut last_progress = (std::time::Instant::now(), 0usize);
    let accepted_prefix = loop {
        let blocks = read_parts()?;
        let mut prefix = 0u64;
        let mut acc: Vec<u64> = Vec::new();
        while let Some(a) = blocks.get(&prefix) {
            acc.extend(a);
            prefix += 1;
        }
        if acc.len() as u64 >= needed {
            break acc;
        }
        if blocks.contains_key(&b) {
            b += cfg.world;
            continue;
        }
        if b >= prefix + RANK_AHEAD * cfg.world {
            // Another rank failed: stop waiting for it.
            for r in 0..cfg.world {
                if let Ok(t) = std::fs::read_to_string(marker(r))
                    && let Some((h, msg)) = t.split_once('\n')
                    && h == header
                {
                    return Err(Error::Other(format!(
                        "search rank {}: rank {r} failed, so block {prefix} will not come: {}",
                        cfg.rank,
                        msg.trim()
                    )));
                }
            }
            // No rank has finished a block for too long: say so instead of waiting forever.
            let seen: usize = blocks.len();
            if seen != last_progress.1 {
                last_progress = (std::time::Instant::now(), seen);
            } else if last_progress.0.elapsed() >= cfg.wait_timeout {
                return Err(Error::Other(format!(
                    "search rank {}: no rank finished a block for {} s while waiting for block {prefix} \
                     (rank {}): is that rank running? (--wait-timeout)",
                    cfg.rank,
                    cfg.wait_timeout.as_secs(),
                    prefix % cfg.world
                )));
            }
            if last_note.elapsed().as_secs() >= 30 {
                crate::say!(
                    "search rank {}: waiting for block {prefix} (rank {})",
                    cfg.rank,
                    prefix % cfg.world
                );
                last_note = std::time::Instant::now();
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
            continue;
        }
        while next_index < b * RANK_BLOCK {
            next_candidate(&mut rng, cfg.points);
            next_index += 1;
        }
        let cands: Vec<Candidate> = (0..RANK_BLOCK)
            .map(|_| next_candidate(&mut rng, cfg.points))
            .collect();
        next_index += RANK_BLOCK;
        let results = match engine.as_mut() {
            Some(e) => evaluate_all_gl(e, &cands, cfg.points, threads)?,
            None => evaluate_all(&cands, cfg.points, threads),
        };
        evaluated += cands.len();
        let accepted: Vec<u64> = results
            .iter()
            .enumerate()
            .filter(|(_, fill)| **fill >= cfg.rate)
            .map(|(i, _)| b * RANK_BLOCK + i as u64)
            .collect();
        let mut line = serde_json::to_string(&BlockLine { block: b, accepted }).expect("json");
        line.push('\n');
        use std::io::Write;
        file.write_all(line.as_bytes())
            .and_then(|_| file.sync_data())
            .map_err(|e| Error::io(mine, "cannot append to search part", e))?;
        b += cfg.world;
    };
    Ok((accepted_prefix, evaluated))
}
