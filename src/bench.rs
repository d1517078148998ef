//! `fractaldb bench`: images/s per stage and end to end, per backend, with median and spread over
//! repetitions (a warm-up run excluded): the CPU engine with 1 thread and with all threads, and the GL
//! backend with each raster path.

use crate::cluster::Rank;
use crate::error::{Error, Result};
use crate::generate::{self, RenderOptions, Summary};
use crate::pipeline::Threads;
use crate::progress;
use crate::render::{DrawMode, MaskRng, PngConfig, RenderConfig};
use crate::search::{self, SearchConfig};
use crate::sink::Format;
use serde::Serialize;
use std::path::PathBuf;

#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Backends: auto (cpu, plus gl on a hardware GPU), cpu, gl, or cpu,gl (gl also on a software renderer).
    #[arg(long, default_value = "auto")]
    pub backend: String,
    /// Class CSV directory; by default the first --classes published classes are made by the search.
    #[arg(long = "load-root")]
    pub load_root: Option<PathBuf>,
    /// Classes found by the built-in search when --load-root is not given.
    #[arg(long, default_value_t = 2)]
    pub classes: usize,
    #[arg(long = "image-size", default_value_t = 362)]
    pub image_size: u32,
    #[arg(long, default_value_t = 200_000)]
    pub iteration: usize,
    #[arg(long = "draw-type", default_value = "patch_gray")]
    pub draw_type: DrawMode,
    #[arg(long, default_value_t = 10)]
    pub instance: u32,
    #[arg(long = "weight-csv", default_value = "builtin:0.4")]
    pub weight_csv: String,
    /// Output format written during the run: wds or folder.
    #[arg(long, default_value = "wds")]
    pub format: Format,
    #[arg(long, default_value_t = 1)]
    pub png_level: u8,
    /// Timed repetitions per backend (after one warm-up).
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    /// Threads of the "all threads" CPU run (default: all cores).
    #[arg(long, short = 'j')]
    pub threads: Option<usize>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Also write an SVG bar chart of images/s by backend and stage.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Scratch directory (default: a temporary one, removed afterwards).
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
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
/// `end_to_end` is images/s of wall time; `per_core` is images per CPU-second of the whole process.
#[derive(Serialize, Debug, Clone)]
pub struct BackendResult {
    pub backend: String,
    pub device: String,
    pub threads: usize,
    pub images: u64,
    pub stages: std::collections::BTreeMap<String, Rate>,
    pub end_to_end: Rate,
    pub per_core: Rate,
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
    let report = measure(a)?;
    if let Some(p) = &a.plot {
        crate::fsutil::write_atomic(p, svg(&report).as_bytes(), false)?;
    }
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).map_err(|e| Error::Other(e.to_string()))?
        );
    } else {
        print!("{}", table(&report));
    }
    Ok(())
}

pub fn measure(a: &BenchArgs) -> Result<Report> {
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
    let gl_device = if want_gl {
        let all = crate::render::gl::egl::describe_all()?;
        all.into_iter()
            .find_map(|(_, r)| r.ok())
            .map(|i| format!("{} / {}", i.renderer, i.version))
            .ok_or_else(|| {
                Error::Other("bench: no EGL device could be opened for the GL backend".into())
            })?
    } else {
        String::new()
    };
    if a.repeat == 0 {
        return Err(Error::flag("--repeat", "must be at least 1"));
    }
    let tmp_holder;
    let work = match &a.work_dir {
        Some(d) => d.clone(),
        None => {
            tmp_holder = TempDir::new()?;
            tmp_holder.0.clone()
        }
    };
    crate::fsutil::create_dir(&work)?;
    let load_root = match &a.load_root {
        Some(p) => p.clone(),
        None => {
            let cfg = SearchConfig {
                rate: 0.2,
                categories: a.classes,
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
            };
            search::run(&cfg, |_, _| {})?;
            search::csv_dir(&cfg.out, cfg.rate, cfg.categories)
        }
    };
    let all = a.threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
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
    let mut backends = Vec::new();
    use crate::render::Backend;
    use crate::render::gl::GlOptions;
    use crate::render::gl::RasterMethod;
    let mut variants: Vec<(String, Backend, usize, String)> = Vec::new();
    if want_cpu {
        variants.push(("cpu-1t".into(), Backend::Cpu, 1, cpu_name()));
        if all > 1 {
            variants.push((format!("cpu-{all}t"), Backend::Cpu, all, cpu_name()));
        }
    }
    if want_gl {
        for (name, m) in [
            ("gl-compute", RasterMethod::Compute),
            ("gl-points", RasterMethod::Points),
        ] {
            variants.push((
                name.into(),
                Backend::Gl(
                    vec![Default::default()],
                    GlOptions {
                        raster: m,
                        cpu_rescale: false,
                    },
                ),
                all,
                gl_device.clone(),
            ));
        }
    }
    for (name, backend, t, device) in variants {
        let mut runs: Vec<Summary> = Vec::new();
        for rep in 0..=a.repeat {
            let out = work.join(format!("{name}-{rep}"));
            let opts = RenderOptions {
                load_root: load_root.clone(),
                out: out.clone(),
                weights: a.weight_csv.clone(),
                cfg: cfg.clone(),
                instances: a.instance,
                png: PngConfig {
                    level: a.png_level,
                    gray: false,
                },
                format: a.format,
                seed: 0,
                samples_per_shard: 10_000,
                prefix: "bench".into(),
                dali_index: false,
                resume: false,
                threads: Threads {
                    render: t,
                    encode: t,
                    queue: 2 * t,
                },
                writers: 1,
                rank: Rank {
                    rank: 0,
                    world: 1,
                    local_rank: 0,
                    source: "bench".into(),
                },
                progress: progress::Mode::Quiet,
                backend: backend.clone(),
            };
            let cpu0 = process_cpu_seconds();
            let mut s = generate::run(&opts)?;
            s.cpu_s = process_cpu_seconds() - cpu0;
            let _ = std::fs::remove_dir_all(&out);
            if rep > 0 {
                runs.push(s); // rep 0 is the warm-up (and, for GL, the shader compile)
            }
        }
        let stage = |f: &dyn Fn(&Summary) -> f64| Rate::of(runs.iter().map(f).collect());
        let mut stages = std::collections::BTreeMap::new();
        let per_img = |secs: f64, s: &Summary| s.images as f64 / secs.max(1e-12);
        stages.insert("chaos_game".to_string(), stage(&|s| per_img(s.chaos_s, s)));
        stages.insert("raster".to_string(), stage(&|s| per_img(s.raster_s, s)));
        // The render thread's whole rate: chaos game + raster (+ readback for GL), before PNG.
        stages.insert(
            "render_readback".to_string(),
            stage(&|s| per_img(s.chaos_s + s.raster_s, s)),
        );
        stages.insert("png_encode".to_string(), stage(&|s| per_img(s.encode_s, s)));
        if matches!(backend, Backend::Gl(..)) {
            // Device-to-host copies alone (after each fence signalled); the CPU engine has none.
            stages.insert("readback".to_string(), stage(&|s| per_img(s.readback_s, s)));
        }
        let write = if a.format == Format::Wds {
            "tar_write"
        } else {
            "file_write"
        };
        stages.insert(write.to_string(), stage(&|s| per_img(s.write_s, s)));
        backends.push(BackendResult {
            backend: name,
            device,
            threads: t,
            images: runs[0].images,
            stages,
            end_to_end: stage(&|s| s.images_per_second()),
            per_core: stage(&|s| s.images as f64 / s.cpu_s.max(1e-9)),
        });
    }
    if backends.is_empty() {
        return Err(Error::flag("--backend", "no backend to measure"));
    }
    let base = backends[0].end_to_end.median;
    let ratio = backends
        .iter()
        .map(|b| (b.backend.clone(), b.end_to_end.median / base))
        .collect();
    Ok(Report {
        workload: serde_json::json!({
            "load_root": load_root, "image_size": a.image_size, "iteration": a.iteration,
            "draw_type": a.draw_type.name(), "instance": a.instance, "weights": a.weight_csv,
            "format": format!("{:?}", a.format), "png_level": a.png_level, "repeat": a.repeat,
        }),
        cores: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        cpu: cpu_name(),
        backends,
        ratio_to_cpu_1t: ratio,
    })
}

/// The readable table.
pub fn table(r: &Report) -> String {
    let mut s = format!(
        "workload: {}\nmachine: {} cores, {}\n",
        r.workload, r.cores, r.cpu
    );
    for b in &r.backends {
        s.push_str(&format!("  {}: {}\n", b.backend, b.device));
    }
    s.push('\n');
    let stages: Vec<String> = r
        .backends
        .iter()
        .flat_map(|b| b.stages.keys().cloned())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    s.push_str(&format!("{:<10} {:>7}", "backend", "threads"));
    for st in &stages {
        s.push_str(&format!(" {:>16}", format!("{st}/thread")));
    }
    s.push_str(&format!(
        " {:>22} {:>14} {:>7}\n",
        "end-to-end img/s", "img/CPU-s", "ratio"
    ));
    for b in &r.backends {
        s.push_str(&format!("{:<10} {:>7}", b.backend, b.threads));
        for st in &stages {
            match b.stages.get(st) {
                Some(rate) => s.push_str(&format!(" {:>16.1}", rate.median)),
                None => s.push_str(&format!(" {:>16}", "-")),
            }
        }
        s.push_str(&format!(
            " {:>10.1} [{:.1}-{:.1}] {:>14.1} {:>6.2}x\n",
            b.end_to_end.median,
            b.end_to_end.min,
            b.end_to_end.max,
            b.per_core.median,
            r.ratio_to_cpu_1t[&b.backend]
        ));
    }
    s
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
    fn new() -> Result<TempDir> {
        let p = std::env::temp_dir().join(format!("fractaldb-bench-{}", std::process::id()));
        crate::fsutil::create_dir(&p)?;
        Ok(TempDir(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
