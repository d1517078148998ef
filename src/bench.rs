//! `fractaldb bench`: images/s per stage and end to end, per backend, with median and spread over
//! repetitions (a warm-up run excluded): the CPU engine with 1 thread and with all threads, and the GL
//! backend with each raster path.

use crate::cluster::Rank;
use crate::dataset::{Dataset, Run, ShardSettings};
use crate::error::{Error, Result};
use crate::generate::RenderOptions;
use crate::ifs::Cloud;
use crate::pipeline::Summary;
use crate::pipeline::Threads;
use crate::progress;
use crate::render::gl::{GlOptions, RasterMethod};
use crate::render::{Backend, DrawMode, MaskRng, PngConfig, RenderConfig};
use crate::search::{self, SearchConfig};
use crate::sink::Format;
use serde::Serialize;
use std::path::PathBuf;

#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Dataset family: fractaldb, or rcdb (the original's defaults, 512x512; --classes classes of one
    /// process, --rcdb-instances images each; the FractalDB flags below do not apply)
    #[arg(long, default_value = "fractaldb")]
    pub family: Family,
    /// RCDB: images per class
    #[arg(long, default_value_t = 200)]
    pub rcdb_instances: u32,
    /// MV-FractalDB: models per class (the first rows of the builtin multipliers)
    #[arg(long, default_value_t = 145)]
    pub mvfdb_models: u32,
    /// Backends: auto (cpu, plus gl on a hardware GPU), cpu, gl, or cpu,gl (gl also on a software renderer).
    #[arg(long, default_value = "auto")]
    pub backend: String,
    /// Class CSV directory; by default the first --classes published classes are made by the search.
    #[arg(long = "load-root")]
    pub load_root: Option<PathBuf>,
    /// Classes found by the built-in search when --load-root is not given.
    #[arg(long, default_value_t = 2)]
    pub classes: usize,
    /// Image side in pixels (FractalDB; RCDB and MV-FractalDB keep their originals' sizes)
    #[arg(long = "image-size", default_value_t = 362)]
    pub image_size: u32,
    /// Chaos-game points per cloud (FractalDB)
    #[arg(long, default_value_t = 200_000)]
    pub iteration: usize,
    /// Draw type (FractalDB): patch_gray, patch_color, point_gray, point_color
    #[arg(long = "draw-type", default_value = "patch_gray")]
    pub draw_type: DrawMode,
    /// Instances per weight row (FractalDB)
    #[arg(long, default_value_t = 10)]
    pub instance: u32,
    /// Weights CSV or builtin:S (FractalDB)
    #[arg(long = "weight-csv", default_value = "builtin:0.4")]
    pub weight_csv: String,
    /// Shards of the WebDataset run: the default keeps FractalDB-1k's 100 shards whatever the class
    /// count, so each shard mixes the classes as at full scale (folder output is measured beside it)
    #[arg(long, default_value_t = 100)]
    pub shards: u64,
    /// Samples per shard instead of --shards (e.g. 10000, the render default)
    #[arg(long)]
    pub samples_per_shard: Option<u64>,
    /// CPU rows: `all` (1 thread and all threads) or `threads` (all threads only)
    #[arg(long, default_value = "all")]
    pub cpu_rows: String,
    /// zlib level of the PNGs, 0..9 (as render's --png-level)
    #[arg(long, default_value_t = 1)]
    pub png_level: u8,
    /// Timed repetitions per backend (after one warm-up).
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    /// Threads of the "all threads" CPU run (default: all cores).
    #[arg(long, short = 'j')]
    pub threads: Option<usize>,
    /// Print JSON (the table goes to stderr).
    #[arg(long)]
    pub json: bool,
    /// Also write an SVG bar chart of images/s by backend and stage.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Where to put the scratch directory (default: the system's temporary directory); the bench
    /// works in a new `fractaldb-bench-*` directory there and removes only that.
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Instead of the backends: time PNG encoders (the one in use at levels 1 and 3, and zlib-rs
    /// levels and strategies on the same filtered rows) on one instance of every cloud of the
    /// workload, every flip, RGB and gray: ms per image and average bytes (docs/benchmarks.md)
    #[arg(long)]
    pub png_candidates: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Family {
    Fractaldb,
    Rcdb,
    /// MV-FractalDB: --classes classes x --mvfdb-models models x 12 views at 224x224 (folders;
    /// the search and models are timed apart from the views)
    Mvfdb,
}

#[derive(Serialize, Debug, Clone)]
pub struct Rate {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Rate {
    fn of(mut v: Vec<f64>) -> Rate {
        v.sort_by(|a, b| a.total_cmp(b));
        Rate {
            median: v[v.len() / 2],
            min: v[0],
            max: v[v.len() - 1],
        }
    }
}

/// One backend's figures. Stage rates are images/s of one thread of that stage (thread-seconds;
/// `readback`, GL rows only, is the device-to-host copy time alone, also counted inside `raster`);
/// `end_to_end` is images/s of wall time writing WebDataset shards, `end_to_end_folder` the same
/// workload written as the original's folders, in the same repetitions; `per_core` is images per
/// CPU-second of the whole process (shards). `clouds_per_image` counts chaos games (1/40 at
/// FractalDB-1k settings when each cloud is computed once), `readback_bytes_per_image` the bytes
/// copied from the device, and `peak_rss_bytes` the process's high-water mark during this backend's
/// runs.
#[derive(Serialize, Debug, Clone)]
pub struct BackendResult {
    pub backend: String,
    pub device: String,
    pub threads: usize,
    pub images: u64,
    pub shards: u64,
    pub stages: std::collections::BTreeMap<String, Rate>,
    pub end_to_end: Rate,
    pub end_to_end_folder: Rate,
    /// Median wds end to end over median folder end to end.
    pub wds_over_folder: f64,
    pub per_core: Rate,
    pub clouds_per_image: f64,
    pub readback_bytes_per_image: f64,
    /// Average size of the PNG files (without tar headers).
    pub png_bytes_per_image: f64,
    pub peak_rss_bytes: u64,
}

#[derive(Serialize, Debug, Clone)]
pub struct Report {
    pub workload: serde_json::Value,
    pub cores: usize,
    pub cpu: String,
    pub backends: Vec<BackendResult>,
    /// End-to-end ratio of each backend to the first one measured (the 1-thread CPU run when present).
    pub ratio_to_cpu_1t: std::collections::BTreeMap<String, f64>,
}

fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

pub fn run(a: &BenchArgs) -> Result<()> {
    if a.png_candidates {
        return crate::fsutil::write_stdout(&png_candidates(a)?);
    }
    let report = measure(a)?;
    if let Some(p) = &a.plot {
        crate::fsutil::write_atomic(p, svg(&report).as_bytes(), false)?;
    }
    if a.json {
        // The table too, on stderr, so that one run gives both.
        crate::say_raw!("{}", table(&report));
        let mut json =
            serde_json::to_string_pretty(&report).map_err(|e| Error::Other(e.to_string()))?;
        json.push('\n');
        crate::fsutil::write_stdout(&json)
    } else {
        crate::fsutil::write_stdout(&table(&report))
    }
}

pub fn measure(a: &BenchArgs) -> Result<Report> {
    if a.repeat == 0 {
        return Err(Error::flag("--repeat", "must be at least 1"));
    }
    let variants = variants(a)?;
    // A fresh directory of our own, inside --work-dir or the system's temporary directory: the runs
    // write and remove only there, never anything the user had.
    let parent = match &a.work_dir {
        Some(d) => {
            crate::fsutil::create_dir(d)?;
            d.clone()
        }
        None => std::env::temp_dir(),
    };
    let tmp_holder = TempDir::new_in(&parent)?;
    let work = tmp_holder.0.clone();
    let w = workload(a, &work)?;
    let per_shard = match a.samples_per_shard {
        Some(p) => p.max(1),
        None => w.total.div_ceil(a.shards.max(1)).max(1),
    };
    let mut backends = Vec::new();
    for v in variants {
        backends.push(measure_variant(a, &w, &work, per_shard, v)?);
    }
    if backends.is_empty() {
        return Err(Error::flag("--backend", "no backend to measure"));
    }
    let base = backends[0].end_to_end.median;
    let ratio = backends
        .iter()
        .map(|b| (b.backend.clone(), b.end_to_end.median / base))
        .collect();
    let mut workload = w.json;
    workload["images"] = w.total.into();
    workload["png_level"] = a.png_level.into();
    workload["repeat"] = a.repeat.into();
    if a.family != Family::Mvfdb {
        workload["samples_per_shard"] = per_shard.into();
    }
    Ok(Report {
        workload,
        cores: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        cpu: cpu_name(),
        backends,
        ratio_to_cpu_1t: ratio,
    })
}

/// One row of the report: a name, the engine, its threads and the device it runs on.
struct Variant {
    name: String,
    backend: Backend,
    threads: usize,
    device: String,
}

/// The rows `--backend` and `--cpu-rows` ask for: the CPU engine with 1 thread and all threads,
/// the GL engine with each raster path the family has.
fn variants(a: &BenchArgs) -> Result<Vec<Variant>> {
    let (want_cpu, want_gl) = match a.backend.as_str() {
        "cpu" => (true, false),
        "gl" => (false, true),
        "cpu,gl" | "gl,cpu" | "all" => (true, true),
        "auto" => (
            true,
            crate::render::gl::egl::has_hardware_device() == Some(true),
        ),
        other => {
            return Err(Error::flag(
                "--backend",
                format!("{other:?}: expected auto, cpu, gl, cpu,gl or all"),
            ));
        }
    };
    if !matches!(a.cpu_rows.as_str(), "all" | "threads") {
        return Err(Error::flag("--cpu-rows", "expected all or threads"));
    }
    let all = a.threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    let cpu = |name: String, threads| Variant {
        name,
        backend: Backend::Cpu,
        threads,
        device: cpu_name(),
    };
    let mut out = Vec::new();
    if want_cpu && (a.cpu_rows == "all" || all == 1) {
        out.push(cpu("cpu-1t".into(), 1));
    }
    if want_cpu && all > 1 {
        out.push(cpu(format!("cpu-{all}t"), all));
    }
    if !want_gl {
        return Ok(out);
    }
    let device = crate::render::gl::egl::describe_all()?
        .into_iter()
        .find_map(|(_, r)| r.ok())
        .map(|i| format!("{} / {}", i.renderer, i.version))
        .ok_or_else(|| {
            Error::Other("bench: no EGL device could be opened for the GL backend".into())
        })?;
    // RCDB has one GL raster (segments in a compute shader), MV-FractalDB one (GL_POINTS).
    let rasters: &[(&str, RasterMethod)] = match a.family {
        Family::Mvfdb => &[("gl-points", RasterMethod::Points)],
        Family::Rcdb => &[("gl-compute", RasterMethod::Compute)],
        Family::Fractaldb => &[
            ("gl-compute", RasterMethod::Compute),
            ("gl-points", RasterMethod::Points),
        ],
    };
    for &(name, raster) in rasters {
        let gl = GlOptions {
            raster,
            cpu_rescale: false,
            memory_mib: None,
        };
        out.push(Variant {
            name: name.into(),
            backend: Backend::Gl(vec![Default::default()], gl),
            threads: all,
            device: device.clone(),
        });
    }
    Ok(out)
}

/// Runs the workload `--repeat` times (after a warm-up) with one variant, in each of its formats.
fn measure_variant(
    a: &BenchArgs,
    w: &Workload,
    work: &std::path::Path,
    per_shard: u64,
    v: Variant,
) -> Result<BackendResult> {
    let t = v.threads;
    let mut runs: Vec<Summary> = Vec::new();
    let mut folder_runs: Vec<Summary> = Vec::new();
    reset_peak_rss();
    for rep in 0..=a.repeat {
        for &format in w.formats {
            let out = work.join(format!("{}-{rep}-{format:?}", v.name));
            let job = Run {
                out: out.clone(),
                format,
                shards: ShardSettings {
                    per_shard,
                    seed: 0,
                    prefix: "bench".into(),
                    dali_index: false,
                },
                resume: false,
                threads: Threads {
                    render: t,
                    encode: t,
                    queue: 2 * t,
                },
                writers: if format == Format::Wds {
                    (t / 4).clamp(1, 4)
                } else {
                    2
                },
                rank: Rank::default(),
                progress: progress::Mode::Quiet,
                backend: v.backend.clone(),
                encoding: crate::encode::Encoding::Png,
            };
            crate::say!(
                "bench: {} ({} threads), {} {} of {}, {:?}: {} images",
                v.name,
                t,
                if rep == 0 { "warm-up" } else { "run" },
                rep,
                a.repeat,
                format,
                w.total
            );
            let cpu0 = process_cpu_seconds();
            let mut s = crate::dataset::run(&*w.dataset, &job)?;
            s.cpu_s = process_cpu_seconds() - cpu0;
            let _ = std::fs::remove_dir_all(&out);
            if rep > 0 {
                // rep 0 is the warm-up (and, for GL, the shader compile)
                match format {
                    Format::Wds => runs.push(s),
                    Format::Folder => folder_runs.push(s),
                }
            }
        }
    }
    if runs.is_empty() {
        runs = folder_runs.clone();
    }
    let peak = peak_rss_bytes();
    let stage = |f: &dyn Fn(&Summary) -> f64| Rate::of(runs.iter().map(f).collect());
    let mut stages = std::collections::BTreeMap::new();
    let per_img = |secs: f64, s: &Summary| s.images as f64 / secs.max(1e-12);
    // The first stage: the chaos game (RCDB: the replay of its random streams; MV: the models).
    stages.insert(w.first_stage.to_string(), stage(&|s| per_img(s.chaos_s, s)));
    stages.insert("raster".to_string(), stage(&|s| per_img(s.raster_s, s)));
    // The render thread's whole rate: chaos game + raster (+ readback for GL), before PNG.
    stages.insert(
        "render_readback".to_string(),
        stage(&|s| per_img(s.chaos_s + s.raster_s, s)),
    );
    stages.insert("png_encode".to_string(), stage(&|s| per_img(s.encode_s, s)));
    if matches!(v.backend, Backend::Gl(..)) {
        // Device-to-host copies alone (after each fence signalled); the CPU engine has none.
        stages.insert("readback".to_string(), stage(&|s| per_img(s.readback_s, s)));
    }
    stages.insert("tar_write".to_string(), stage(&|s| per_img(s.write_s, s)));
    let end_to_end = stage(&|s| s.images_per_second());
    let end_to_end_folder = Rate::of(folder_runs.iter().map(|s| s.images_per_second()).collect());
    let r0 = &runs[0];
    let per_image = |x: f64| x / r0.images.max(1) as f64;
    Ok(BackendResult {
        backend: v.name,
        device: v.device,
        threads: t,
        images: r0.images,
        shards: r0.shards,
        stages,
        wds_over_folder: end_to_end.median / end_to_end_folder.median.max(1e-9),
        end_to_end,
        end_to_end_folder,
        per_core: stage(&|s| s.images as f64 / s.cpu_s.max(1e-9)),
        clouds_per_image: per_image(r0.clouds as f64),
        readback_bytes_per_image: per_image(r0.readback_bytes as f64),
        png_bytes_per_image: per_image(r0.png_bytes as f64),
        peak_rss_bytes: peak,
    })
}

/// What a benchmark measures: a dataset of `--family`, its image count, the name of its first
/// stage (what `chaos_s` times for it), the formats it is run in and its description.
struct Workload {
    dataset: Box<dyn Dataset>,
    total: u64,
    first_stage: &'static str,
    formats: &'static [Format],
    json: serde_json::Value,
}

fn workload(a: &BenchArgs, work: &std::path::Path) -> Result<Workload> {
    let png = PngConfig {
        level: a.png_level,
        gray: false,
    };
    let both = &[Format::Wds, Format::Folder];
    match a.family {
        Family::Rcdb => {
            let settings = crate::rcdb::Settings {
                classes: a.classes as u32,
                instances: a.rcdb_instances,
                processes: 1,
                ..crate::rcdb::Settings::default()
            };
            settings.validate()?;
            let json = serde_json::json!({
                "family": "rcdb", "classes": settings.classes, "instances": settings.instances,
                "image_size": settings.image_size, "numof_thread": settings.processes,
            });
            Ok(Workload {
                total: settings.made_classes() as u64 * settings.instances as u64,
                dataset: Box::new(crate::rcdb::run::Rcdb::new(settings, png, None)),
                // RCDB has no chaos game: its first stage replays the random streams.
                first_stage: "stream_replay",
                formats: both,
                json,
            })
        }
        Family::Mvfdb => mvfdb_workload(a, png),
        Family::Fractaldb => {
            let load_root = match &a.load_root {
                Some(p) => p.clone(),
                None => search_classes(a.classes, work)?,
            };
            let cfg = render_config(a)?;
            let classes = crate::plan::discover_classes(&load_root)?.len() as u64;
            let rows = crate::ifs::load_weights(&a.weight_csv)?.len() as u64;
            let total = classes * rows * cfg.instances(a.instance) as u64 * crate::plan::FLIPS;
            let json = serde_json::json!({
                "load_root": load_root, "image_size": a.image_size, "iteration": a.iteration,
                "draw_type": a.draw_type.name(), "instance": a.instance, "weights": a.weight_csv,
            });
            let (dataset, _) = RenderOptions {
                load_root,
                weights: a.weight_csv.clone(),
                cfg,
                instances: a.instance,
                png,
                weight_rows: None,
                flips: None,
                job: Run::default(),
            }
            .split()?;
            Ok(Workload {
                dataset: Box::new(dataset),
                total,
                first_stage: "chaos_game",
                formats: both,
                json,
            })
        }
    }
}

/// MV-FractalDB at its defaults (224x224, 10,000 points, 12 views), the first `--mvfdb-models`
/// rows of the builtin multipliers; folder runs, comparable with the earlier tables.
fn mvfdb_workload(a: &BenchArgs, png: PngConfig) -> Result<Workload> {
    if !(1..=145).contains(&a.mvfdb_models) {
        return Err(Error::flag("--mvfdb-models", "must be 1 to 145"));
    }
    let opts = crate::mvfdb::run::MvfdbOptions {
        classes: a.classes,
        seed: 1,
        variance: 0.05,
        weights: Some(PathBuf::from("builtin")),
        rows: Some(format!("0-{}", a.mvfdb_models - 1)),
        model_seed: 0,
        write_models: false,
        views: 12,
        random_views: false,
        view_seed: 0,
        size: 224,
        point_size: 1,
        png,
        job: Run::default(),
        prepared: None,
    };
    let (dataset, _) = opts.split()?.expect("views > 0 and weights");
    Ok(Workload {
        dataset: Box::new(dataset),
        total: a.classes as u64 * a.mvfdb_models as u64 * 12,
        first_stage: "model",
        formats: &[Format::Folder],
        json: serde_json::json!({
            "family": "mvfdb", "classes": a.classes, "models_per_class": a.mvfdb_models,
            "views": 12, "image_size": 224, "points": 10_000, "format": "folder",
        }),
    })
}

/// The FractalDB geometry and drawing of the bench workload (pad 6, the default masks).
fn render_config(a: &BenchArgs) -> Result<RenderConfig> {
    let cfg = RenderConfig {
        width: a.image_size,
        height: a.image_size,
        pad_x: 6,
        pad_y: 6,
        iterations: a.iteration,
        mode: a.draw_type,
        masks: MaskRng::Counter { seed: 0 },
    };
    cfg.validate()?;
    Ok(cfg)
}

/// The first `classes` classes of the seed-1 search (the published ones), in `work/search`.
fn search_classes(classes: usize, work: &std::path::Path) -> Result<PathBuf> {
    let cfg = SearchConfig {
        rate: 0.2,
        categories: classes,
        points: 100_000,
        seed: 1,
        out: work.join("search"),
        threads: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        write_previews: false,
        png_level: 6,
        gl: None,
        rank: 0,
        world: 1,
        wait_timeout: std::time::Duration::from_secs(3600),
        progress: false,
        class_digits: 5,
    };
    search::run(&cfg, |_, _| {})?;
    Ok(search::csv_dir(&cfg.out, cfg.rate, cfg.categories))
}

/// `bench --png-candidates`: the table of PNG encoders on the workload's canvases.
fn png_candidates(a: &BenchArgs) -> Result<String> {
    use crate::render::{self, cpu};
    use zlib_rs::{Deflate, DeflateConfig, DeflateFlush, Method, Strategy};
    let parent = a.work_dir.clone().unwrap_or_else(std::env::temp_dir);
    let tmp = TempDir::new_in(&parent)?;
    let load_root = match &a.load_root {
        Some(p) => p.clone(),
        None => search_classes(a.classes, &tmp.0)?,
    };
    let cfg = render_config(a)?;
    let plan = crate::plan::Plan::new(crate::plan::load_classes(&load_root)?, &a.weight_csv, 1)?;
    let u = crate::rng::NumpyRandom::seed(100).random_vec(cfg.iterations);
    let (mut scratch, mut cloud, mut cover) = (
        cpu::Scratch::default(),
        Cloud::default(),
        cpu::Cover::default(),
    );
    let mut canvases = Vec::new();
    for class in &plan.classes {
        for (row, w) in plan.weights.iter().enumerate() {
            cpu::compute_cloud(&class.ifs, w, &u, &cfg, &mut scratch, &mut cloud)
                .map_err(|why| cpu::degenerate_error(&class.path, row, why))?;
            cover.build(&cloud, &cfg);
            let mut c = Vec::new();
            cpu::raster(&cloud, &cover, &cfg, class.key, row as u32, 0, &mut c);
            canvases.push(c);
        }
    }
    let (w, h) = (cfg.width as usize, cfg.height as usize);
    let pal = render::palette(cfg.mode);
    let n = (canvases.len() * 4) as f64;
    let mut out = format!(
        "PNG encoders on {} canvases x 4 flips ({w}x{h}, {}, {}), best of 3 passes\n{:<72} {:>10} {:>10}\n",
        canvases.len(),
        cfg.mode,
        load_root.display(),
        "encoder",
        "ms/image",
        "KB/image"
    );
    let best_of_3 = |f: &mut dyn FnMut() -> usize| {
        let mut best = (f64::MAX, 0);
        for _ in 0..3 {
            let t = std::time::Instant::now();
            let bytes = f();
            best = (best.0.min(t.elapsed().as_secs_f64()), bytes);
        }
        (best.0 * 1e3 / n, best.1 as f64 / n / 1e3)
    };
    for gray in [false, true] {
        if gray && cfg.mode.is_color() {
            continue;
        }
        let ch = if gray { 1 } else { 3 };
        let kind = if gray { "gray" } else { "RGB" };
        let mut line = |name: String, (ms, kb): (f64, f64)| {
            out.push_str(&format!(
                "{:<72} {ms:>10.3} {kb:>10.2}\n",
                format!("{kind}: {name}")
            ));
        };
        for level in [1u8, 3] {
            let png = PngConfig { level, gray };
            let (mut sc, mut file) = (render::PngScratch::default(), Vec::new());
            let r = best_of_3(&mut || {
                let mut bytes = 0;
                for c in &canvases {
                    for flip in 0..4 {
                        render::encode_canvas(c, w, h, flip, &pal, png, &mut sc, &mut file)
                            .expect("encode");
                        bytes += file.len();
                    }
                }
                bytes
            });
            line(
                format!(
                    "{} --png-level {level} (flip + rows + deflate)",
                    render::ENCODER
                ),
                r,
            );
        }
        // The same filtered rows for every deflate setting (filter 0; "sub" = PNG filter 1).
        let raws = |filter: u8| -> Vec<Vec<u8>> {
            let mut v = Vec::new();
            for c in &canvases {
                for flip in 0..4 {
                    let mut px = Vec::new();
                    render::write_flip(c, w, h, flip, &pal, ch, &mut px);
                    let mut raw = Vec::with_capacity((w * ch + 1) * h);
                    for row in px.chunks(w * ch) {
                        raw.push(filter);
                        raw.extend(row.iter().enumerate().map(|(i, &b)| {
                            if filter == 1 && i >= ch {
                                b.wrapping_sub(row[i - ch])
                            } else {
                                b
                            }
                        }));
                    }
                    v.push(raw);
                }
            }
            v
        };
        let (plain, sub) = (raws(0), raws(1));
        let settings: [(&str, i32, Strategy, bool); 8] = [
            ("level 1", 1, Strategy::Default, false),
            ("level 2", 2, Strategy::Default, false),
            ("level 3", 3, Strategy::Default, false),
            ("level 4", 4, Strategy::Default, false),
            ("level 6", 6, Strategy::Default, false),
            ("RLE strategy", 1, Strategy::Rle, false),
            ("Huffman only", 1, Strategy::HuffmanOnly, false),
            ("level 3, Sub filter", 3, Strategy::Default, true),
        ];
        for (name, level, strategy, use_sub) in settings {
            let mut d = Deflate::new_with_config(DeflateConfig {
                level,
                method: Method::Deflated,
                window_bits: 15,
                mem_level: 8,
                strategy,
            });
            let input = if use_sub { &sub } else { &plain };
            let mut z = vec![0u8; zlib_rs::compress_bound(input[0].len())];
            let r = best_of_3(&mut || {
                let mut bytes = 0;
                for raw in input {
                    d.reset();
                    let _ = d.compress(raw, &mut z, DeflateFlush::Finish);
                    bytes += d.total_out() as usize + 57; // + signature, IHDR, IDAT and IEND framing
                }
                bytes
            });
            line(format!("zlib-rs one call: {name} (deflate only)"), r);
        }
    }
    Ok(out)
}

/// `n` with thousands separators (`2958` -> `2,958`).
fn thousands(n: f64) -> String {
    let digits = format!("{:.0}", n.max(0.0));
    let mut out = String::new();
    for (k, c) in digits.chars().enumerate() {
        if k > 0 && (digits.len() - k).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `items` joined by spaces into lines of at most `width` columns, each after `lead`.
fn wrapped(lead: &str, items: &[String], width: usize) -> String {
    let mut out = String::new();
    let mut line = lead.to_string();
    for it in items {
        if line.len() > lead.len() && line.len() + 1 + it.len() > width {
            out += &line;
            out.push('\n');
            line = " ".repeat(lead.len());
        }
        if line.len() > lead.len() && !line.ends_with(' ') {
            line.push(' ');
        }
        line += it;
    }
    out + &line + "\n"
}

/// The published dataset of the bench's family, for the conclusion's projection.
fn full_size(r: &Report) -> (&'static str, f64) {
    match r.workload["family"].as_str() {
        Some("rcdb") => ("RCDB-1k (1M images)", 1e6),
        Some("mvfdb") => ("MV-FractalDB-1k (1.74M images)", 1.74e6),
        _ => ("FractalDB-1k (1M images)", 1e6),
    }
}

/// One line: the fastest row end to end, and what the published dataset would take at that rate.
pub fn conclusion(r: &Report) -> String {
    let Some(best) = r
        .backends
        .iter()
        .max_by(|a, b| a.end_to_end.median.total_cmp(&b.end_to_end.median))
    else {
        return String::new();
    };
    let (name, n) = full_size(r);
    let secs = n / best.end_to_end.median.max(1e-9);
    let took = if secs >= 5400.0 {
        format!("{:.1} h", secs / 3600.0)
    } else {
        format!("{:.0} min", (secs / 60.0).max(1.0))
    };
    format!(
        "{}, {} thread{}: {} images/s (shards); {name} would take about {took} here.\n",
        best.backend,
        best.threads,
        if best.threads == 1 { "" } else { "s" },
        thousands(best.end_to_end.median)
    )
}

/// The readable report, at most 100 columns: the workload, one row per backend (end to end), the
/// stages per thread, and the conclusion. `--json` has every figure.
pub fn table(r: &Report) -> String {
    let items: Vec<String> = r
        .workload
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().map_or(v.to_string(), String::from)))
        .collect();
    let mut s = wrapped("workload: ", &items, 100);
    s += &format!("machine: {} cores, {}\n", r.cores, r.cpu);
    if let Some(b) = r.backends.first() {
        s += &format!("shards: {} of {} images\n", b.shards, b.images);
    }
    for b in &r.backends {
        s += &format!("  {}: {}\n", b.backend, b.device);
    }
    s += &format!(
        "\n{:<11}{:>4} {:>23} {:>12} {:>10} {:>8} {:>8} {:>8}\n",
        "backend",
        "thr",
        "shards img/s [min-max]",
        "folder img/s",
        "img/CPU-s",
        "cloud/im",
        "PNG KB",
        "peak RSS"
    );
    for b in &r.backends {
        let e = &b.end_to_end;
        let span = format!("{:.0} [{:.0}-{:.0}]", e.median, e.min, e.max);
        s += &format!(
            "{:<11}{:>4} {:>23} {:>12.0} {:>10.0} {:>8.3} {:>8.1} {:>5} MB\n",
            b.backend,
            b.threads,
            span,
            b.end_to_end_folder.median,
            b.per_core.median,
            b.clouds_per_image,
            b.png_bytes_per_image / 1000.0,
            b.peak_rss_bytes >> 20,
        );
    }
    let stages: Vec<String> = r
        .backends
        .iter()
        .flat_map(|b| b.stages.keys().cloned())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    s += &format!("\nimages/s per thread, by stage\n{:<11}", "backend");
    let width = |st: &str| st.len().max(7);
    for st in &stages {
        s += &format!(" {st:>w$}", w = width(st));
    }
    s.push('\n');
    for b in &r.backends {
        s += &format!("{:<11}", b.backend);
        for st in &stages {
            let cell = b
                .stages
                .get(st)
                .map_or("-".into(), |r| format!("{:.0}", r.median));
            s += &format!(" {cell:>w$}", w = width(st));
        }
        s.push('\n');
    }
    s + "\n" + &conclusion(r)
}

/// A plain SVG bar chart (hand-written: a few rectangles do not need a plotting crate).
pub fn svg(r: &Report) -> String {
    let mut bars: Vec<(String, f64)> = Vec::new();
    for b in &r.backends {
        for (st, rate) in &b.stages {
            bars.push((format!("{} {st}", b.backend), rate.median));
        }
        bars.push((format!("{} end-to-end", b.backend), b.end_to_end.median));
    }
    let max = bars.iter().map(|b| b.1).fold(1.0, f64::max);
    let (w, row) = (760.0, 22.0);
    let h = 50.0 + row * bars.len() as f64;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <text x=\"10\" y=\"20\" font-size=\"14\">fractaldb bench: images/s (stages per thread, end-to-end wall), log scale</text>\n"
    );
    let lmax = (max * 10.0).log10();
    for (i, (label, v)) in bars.iter().enumerate() {
        let y = 35.0 + row * i as f64;
        let len = ((v.max(1.0)).log10() / lmax * (w - 330.0)).max(1.0);
        let color = if label.ends_with("end-to-end") {
            "#d62728"
        } else {
            "#1f77b4"
        };
        s.push_str(&format!(
            "<text x=\"10\" y=\"{:.1}\">{}</text><rect x=\"220\" y=\"{:.1}\" width=\"{len:.1}\" height=\"16\" fill=\"{color}\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\">{v:.0}</text>\n",
            y + 12.0,
            xml_escape(label),
            y,
            225.0 + len,
            y + 12.0
        ));
    }
    s.push_str("</svg>\n");
    s
}

fn xml_escape(t: &str) -> String {
    t.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Resets the process's peak RSS (VmHWM) to its current RSS, so each backend's peak is its own.
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// The process's peak RSS (VmHWM) in bytes, 0 where /proc does not say.
fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kib| kib * 1024)
}

/// User + system CPU time of this process, from /proc/self/stat (clock ticks of 1/100 s).
fn process_cpu_seconds() -> f64 {
    let Ok(t) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    let Some(rest) = t.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the ')' the fields start at field 3 (state); utime and stime are fields 14 and 15.
    let tick = |i: usize| {
        f.get(i - 3)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (tick(14) + tick(15)) / 100.0
}

struct TempDir(PathBuf);

impl TempDir {
    /// Creates `fractaldb-bench-{pid}-{k}` in `parent`, with the first k whose name is free.
    fn new_in(parent: &std::path::Path) -> Result<TempDir> {
        for k in 0..1000 {
            let p = parent.join(format!("fractaldb-bench-{}-{k}", std::process::id()));
            match std::fs::create_dir(&p) {
                Ok(()) => return Ok(TempDir(p)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(Error::io(&p, "cannot create directory", e)),
            }
        }
        Err(Error::Other(format!(
            "{}: no free fractaldb-bench-* name",
            parent.display()
        )))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
