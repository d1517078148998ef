//! The command line: parse -> validate -> config -> run. The original's flag names are aliases.

use crate::cluster;
use crate::dataset::Run;
use crate::error::{Error, Result};
use crate::generate::{self, RenderOptions};
use crate::pipeline::Threads;
use crate::progress;
use crate::render::Backend;
use crate::render::gl::GlOptions;
use crate::render::gl::egl::Choice;
use crate::render::{DrawMode, MaskRng, PngConfig, RenderConfig};
use crate::search::{self, SearchConfig};
use crate::sink::Format;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "fractaldb",
    version,
    about = "Exact, fast FractalDB dataset generator: CPU or GPU (headless GL) engine; folders, WebDataset shards, or shards served over HTTP"
)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Command,
}

impl Cli {
    /// Parses a command line (`argv[0]` is the program) with every flag's other spelling too
    /// ([`with_spellings`]).
    pub fn try_parse_args<I, T>(argv: I) -> std::result::Result<Cli, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        use clap::{CommandFactory, FromArgMatches};
        let argv: Vec<std::ffi::OsString> = argv.into_iter().map(Into::into).collect();
        let argv = crate::preset::expand(argv);
        let mut m = with_spellings(Cli::command()).try_get_matches_from(argv)?;
        Cli::from_arg_matches_mut(&mut m)
    }

    /// Whether this runs the HTTP service, which handles SIGTERM/SIGINT itself (it drains its
    /// responses); every other command stops its work on them ([`crate::stop_on_signals`]).
    pub fn is_service(&self) -> bool {
        match &self.cmd {
            Command::Serve(_) => true,
            Command::Rcdb(a) => a.serve,
            Command::Mvfdb(a) => a.serve,
            _ => false,
        }
    }
}

/// A flag's long name and aliases.
fn flag_names(a: &clap::Arg) -> Vec<String> {
    let aliases = a.get_all_aliases().unwrap_or_default();
    a.get_long()
        .into_iter()
        .chain(aliases)
        .map(String::from)
        .collect()
}

/// `_` for `-`, or the reverse.
fn other_spelling(n: &str) -> String {
    if n.contains('_') {
        n.replace('_', "-")
    } else {
        n.replace('-', "_")
    }
}

/// `cmd` and its subcommands with every flag also under its other spelling: `--png-level` and
/// `--png_level`, `--numof_classes` and `--numof-classes`, each alias likewise, unless that name is
/// another flag's. The aliases are listed on the flag's own line of `--help`.
pub fn with_spellings(cmd: clap::Command) -> clap::Command {
    let cmd = cmd.mut_subcommands(with_spellings);
    let taken: std::collections::HashSet<String> =
        cmd.get_arguments().flat_map(flag_names).collect();
    cmd.mut_args(|mut a| {
        let mut have = flag_names(&a);
        for n in have.clone() {
            let o = other_spelling(&n);
            if !taken.contains(&o) && !have.contains(&o) {
                // clap keeps `&'static str` names: a few bytes per flag, once per process.
                a = a.visible_alias(&*Box::leak(o.clone().into_boxed_str()));
                have.push(o);
            }
        }
        a
    })
    .after_help("Every flag is also accepted with `_` for `-` (and the reverse).")
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Category search (the original `param_search/ifs_search.py`): writes class CSVs and previews.
    #[command(args_override_self = true)]
    Search(SearchArgs),
    /// Render a dataset (the original `fractal_renderer/make_fractaldb.py`), as folders or WebDataset shards.
    #[command(args_override_self = true)]
    Render(RenderArgs),
    /// Print the original's weights_S.csv (S = 0.0125 0.025 0.05 0.1 0.2 0.3 0.4 0.5), byte for byte.
    #[command(args_override_self = true)]
    Weights(WeightsArgs),
    /// Merge the per-rank manifests of a sharded run into the manifest and the wids index.
    #[command(args_override_self = true)]
    Finalize(FinalizeArgs),
    /// What a dataset directory holds: family, settings, counts, classes, complete or what is
    /// missing (for a multi-rank run, which ranks have written their part). --json for scripts.
    #[command(args_override_self = true)]
    Info(crate::inspect::InfoArgs),
    /// Checks a dataset directory's bytes: every shard re-hashed against its manifest, every image
    /// decoded (CRCs and zlib checksums), SHA256SUMS checked; exit 1 with the list of problems.
    #[command(args_override_self = true)]
    Verify(crate::inspect::VerifyArgs),
    /// List the EGL devices: index, CUDA ordinal, GL renderer, software or not.
    #[command(args_override_self = true)]
    Devices,
    /// Measure images/s per stage and end to end, on the CPU engine and the GL engine.
    #[command(args_override_self = true)]
    Bench(crate::bench::BenchArgs),
    /// RCDB, the Radial Contour DataBase (the original `rcdb_render/make_rcdb.py`, its flags and
    /// layout): pixel-identical images, byte-identical parameter files.
    #[command(args_override_self = true)]
    Rcdb(RcdbArgs),
    /// MV-FractalDB / ExFractalDB: the category search, 3D models and views (params/%06d.csv and
    /// models/{class}/{class}_{row:04d}.ply byte-identical to the original's, views pixel-identical),
    /// as folders, WebDataset shards or served shards.
    #[command(args_override_self = true)]
    Mvfdb(MvfdbArgs),
    /// Serve shards over HTTP, rendered on demand: byte-identical to `render --format wds` with the
    /// same flags. No authentication: listen on a private interface or behind a proxy.
    #[command(args_override_self = true)]
    Serve(ServeArgs),
}

#[derive(Args, Debug)]
#[command(
    mut_arg("out", |a| a.hide(true)),
    mut_arg("format", |a| a.hide(true)),
    mut_arg("resume", |a| a.hide(true))
)]
pub struct ServeArgs {
    #[command(flatten)]
    pub service: ServiceArgs,
    #[command(flatten)]
    pub render: RenderArgs,
}

/// The service's own flags (`serve`, `rcdb --serve`).
#[derive(Args, Debug, Clone)]
pub struct ServiceArgs {
    /// Address to listen on (port 0: any free port; the log says which)
    #[arg(long, default_value = "127.0.0.1:8470")]
    pub listen: String,
    /// Base URL of the shard URLs in the wids index (default: from the request's Host header)
    #[arg(long)]
    pub public_url: Option<String>,
    /// Memory for finished shards (bytes); shards being read are never dropped
    #[arg(long, default_value_t = 2 << 30)]
    pub cache_bytes: u64,
    /// Shard groups rendered ahead of demand, in index order (0: none)
    #[arg(long, default_value_t = 1)]
    pub prefetch: u64,
    /// Shard responses at once; more get 503 with Retry-After
    #[arg(long, default_value_t = 64)]
    pub max_clients: usize,
    /// Seconds in-flight responses get to finish after SIGTERM/SIGINT
    #[arg(long, default_value_t = 60)]
    pub drain_seconds: u64,
    /// Seconds a client may take to send a request, keep an idle connection open or leave a
    /// response unread before its connection is closed
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub idle_seconds: u64,
    /// One line per request on stderr: client, method and path, status, bytes, milliseconds to
    /// the response head (off by default)
    #[arg(long)]
    pub access_log: bool,
}

impl ServiceArgs {
    /// The service of `dataset`: its shards as `job` would write them.
    pub fn serve(&self, dataset: Box<dyn crate::dataset::Dataset + Send>, job: Run) -> Result<()> {
        crate::serve::run(crate::serve::ServeOptions {
            dataset,
            job,
            listen: self.listen.clone(),
            public_url: self.public_url.clone(),
            cache_bytes: self.cache_bytes,
            prefetch: self.prefetch,
            max_clients: self.max_clients,
            drain: std::time::Duration::from_secs(self.drain_seconds),
            idle: std::time::Duration::from_secs(self.idle_seconds),
            access_log: self.access_log,
            ready: None,
        })
    }
}

/// The images' encoding (a flag group of every command that writes or serves images).
#[derive(Args, Debug, Clone)]
pub struct EncodingArgs {
    /// Image encoding of the files and tar members (png: the originals'; see docs/usage.md)
    #[arg(long, value_enum, default_value = "png")]
    pub encoding: crate::encode::Encoding,
    /// zlib level of the PNGs: 0 (stored) .. 9; 1 is the fastest (FractalDB's RGB files ~2x the
    /// original's at 362x362), 3 makes them no larger than the original's at ~0.65x the images per
    /// CPU-second (`bench --png-candidates` compares the levels)
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=9))]
    pub png_level: u8,
}

/// Where and how a dataset is written (a flag group of every dataset command): the output, folders
/// or shards, resume, writers.
#[derive(Args, Debug, Clone)]
pub struct OutputArgs {
    /// Output directory [original: --save_root]
    #[arg(long = "out", visible_alias = "save_root", visible_alias = "save-root")]
    pub out: Option<PathBuf>,
    /// folder (the original's layout) or wds (WebDataset shards, classes mixed in each)
    #[arg(long, default_value = "folder")]
    pub format: Format,
    /// Most samples per shard (wds)
    #[arg(long, default_value_t = 10_000)]
    pub samples_per_shard: u64,
    /// Shard name prefix: {prefix}-{%06d}.tar (wds; default: the family's name)
    #[arg(long)]
    pub prefix: Option<String>,
    /// Also write DALI wds2idx index files ({prefix}-{%06d}.idx) (wds)
    #[arg(long)]
    pub dali_index: bool,
    /// Keep finished output (whole images, or verified shards) and make the rest; output made with
    /// other settings is refused
    #[arg(long)]
    pub resume: bool,
    /// Writer threads (default: one per 4 threads, 1 to 4, for wds; 2 for folder). A wds writer owns
    /// the shards it writes
    #[arg(long)]
    pub writers: Option<usize>,
}

impl OutputArgs {
    fn out(&self, default: &str) -> PathBuf {
        self.out.clone().unwrap_or_else(|| PathBuf::from(default))
    }
    fn prefix(&self, default: &str) -> String {
        self.prefix.clone().unwrap_or_else(|| default.to_string())
    }
    fn writers(&self, threads: usize) -> usize {
        let default = match self.format {
            Format::Wds => (threads / 4).clamp(1, 4),
            Format::Folder => 2,
        };
        self.writers.unwrap_or(default).max(1)
    }
}

/// A dataset command's flag groups, resolved into how its run goes in one place; `defaults`: the
/// family's output directory and shard prefix; `seed`: the shards' order seed.
struct Job<'a> {
    output: &'a OutputArgs,
    encoding: &'a EncodingArgs,
    common: &'a Common,
    defaults: (&'a str, &'a str),
    seed: u64,
}

impl Job<'_> {
    fn resolve(&self, rank: cluster::Rank, backend: Backend) -> Run {
        let (o, threads) = (self.output, self.common.threads());
        Run {
            out: o.out(self.defaults.0),
            format: o.format,
            shards: crate::dataset::ShardSettings {
                per_shard: o.samples_per_shard,
                seed: self.seed,
                prefix: o.prefix(self.defaults.1),
                dali_index: o.dali_index,
            },
            resume: o.resume,
            threads: Threads {
                render: threads,
                encode: threads,
                queue: 2 * threads,
            },
            writers: o.writers(threads),
            rank,
            progress: self.common.progress(),
            backend,
            encoding: self.encoding.encoding,
        }
    }
}

/// Which engine draws the images, on which GPU (a flag group of every dataset command).
#[derive(Args, Debug, Clone)]
pub struct DeviceArgs {
    /// Engine: cpu, gl (headless EGL/OpenGL) or auto (gl on a hardware GPU, else cpu); the same
    /// bytes either way
    #[arg(long, default_value = "auto")]
    pub backend: BackendArg,
    /// CUDA ordinal of the GPU for --backend gl (default: the local rank, respecting CUDA_VISIBLE_DEVICES)
    #[arg(long)]
    pub gpu: Option<i64>,
    /// EGL device index (`fractaldb devices`) for --backend gl, overriding --gpu
    #[arg(long)]
    pub egl_device: Option<usize>,
    /// Video memory (MiB) a GL context may size its batches by (default: a quarter of the free
    /// memory the driver reports); FractalDB's point buffers, the part that grows
    #[arg(long, value_name = "MIB", value_parser = clap::value_parser!(u64).range(64..))]
    pub gl_memory: Option<u64>,
}

impl DeviceArgs {
    /// The engine on this rank's device (`quiet`: no note when auto falls back to the CPU).
    fn backend(&self, rank: &cluster::Rank, gl: GlOptions, quiet: bool) -> Result<Backend> {
        let choice = gl_choice(self.gpu, self.egl_device, rank);
        let gl = GlOptions {
            memory_mib: self.gl_memory,
            ..gl
        };
        resolve_backend(self.backend, vec![choice], gl, quiet)
    }
}

#[derive(Args, Debug, Clone)]
pub struct Common {
    /// Worker threads (default: all cores).
    #[arg(long, short = 'j')]
    pub threads: Option<usize>,
    /// No progress output.
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

impl Common {
    pub fn threads(&self) -> usize {
        self.threads
            .unwrap_or_else(|| {
                std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(1)
            })
            .max(1)
    }
    fn progress(&self) -> progress::Mode {
        if self.quiet {
            progress::Mode::Quiet
        } else {
            progress::Mode::Auto
        }
    }
}

/// `--rank/--world-size`, else the launcher's environment (docs/cluster.md).
#[derive(Args, Debug, Clone)]
pub struct RankArgs {
    /// This process's rank (default: from the launcher's environment)
    #[arg(long)]
    pub rank: Option<u64>,
    /// Number of ranks (default: from the launcher's environment)
    #[arg(long = "world-size")]
    pub world_size: Option<u64>,
}

impl RankArgs {
    fn resolve(&self) -> Result<cluster::Rank> {
        cluster::from_env(self.rank, self.world_size)
    }
}

#[derive(Args, Debug)]
pub struct SearchArgs {
    /// A published dataset's settings (docs/usage.md, "Presets"); any flag given overrides them
    #[arg(long, value_parser = crate::preset::parser("search"))]
    pub preset: Option<String>,
    /// Fill-rate threshold (non-zero pixels / 512^2) [original: --rate, 0.2]
    #[arg(long, default_value_t = 0.2)]
    pub rate: f64,
    /// Number of categories to find [original: --category, 1000]
    #[arg(
        long = "categories",
        visible_alias = "category",
        default_value_t = 1000
    )]
    pub categories: usize,
    /// Digits of the class names: 5 gives the original's 00000.csv; the 21k-300k variants use 7
    #[arg(long = "class-digits", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=12))]
    pub class_digits: u32,
    /// Points per candidate [original: --numof_point, 100000]
    #[arg(
        long = "points",
        visible_alias = "numof_point",
        default_value_t = 100_000
    )]
    pub points: usize,
    /// numpy seed of the search stream (the original hard-codes 1)
    #[arg(long, default_value_t = 1)]
    pub seed: u32,
    /// Output directory [original: --save_dir, '.']
    #[arg(
        long = "out",
        visible_alias = "save_dir",
        visible_alias = "save-dir",
        default_value = "./data"
    )]
    pub out: PathBuf,
    /// Skip the 512x512 preview PNGs.
    #[arg(long)]
    pub no_previews: bool,
    /// A line per class found (the original's `save:` lines) instead of the progress bar
    #[arg(long, short = 'v')]
    pub verbose: bool,
    /// Multi-rank search: seconds a rank waits for the others without any of them finishing a
    /// block before it stops with a message (a rank that fails stops the others at once)
    #[arg(long, default_value_t = 3600)]
    pub wait_timeout: u64,
    /// Engine for the candidates' chaos games: cpu, gl or auto (gl on a hardware GPU)
    #[arg(long, default_value = "auto")]
    pub backend: BackendArg,
    /// EGL device index for --backend gl
    #[arg(long)]
    pub egl_device: Option<usize>,
    /// Ranks split the candidate evaluation through files in --out; the classes are those of a
    /// single-process search.
    #[command(flatten)]
    pub ranks: RankArgs,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Args, Debug)]
pub struct RenderArgs {
    /// A published dataset's settings (docs/usage.md, "Presets"); any flag given overrides them
    #[arg(long, value_parser = crate::preset::parser("render"))]
    pub preset: Option<String>,
    /// Directory of class CSVs (also its csvK/ sub-folders) [original: --load_root, ./data]
    #[arg(
        long = "load-root",
        visible_alias = "load_root",
        default_value = "./data/csv_rate0.2_category1000"
    )]
    pub load_root: PathBuf,
    /// Image width [original: --image_size_x, 512; exe.sh 362]
    #[arg(
        long = "image-size-x",
        visible_alias = "image_size_x",
        default_value_t = 362
    )]
    pub image_size_x: u32,
    /// Image height [original: --image_size_y, 512; exe.sh 362]
    #[arg(
        long = "image-size-y",
        visible_alias = "image_size_y",
        default_value_t = 362
    )]
    pub image_size_y: u32,
    /// Horizontal pad [original: --pad_size_x, 6]
    #[arg(long = "pad-size-x", visible_alias = "pad_size_x", default_value_t = 6)]
    pub pad_size_x: u32,
    /// Vertical pad [original: --pad_size_y, 6]
    #[arg(long = "pad-size-y", visible_alias = "pad_size_y", default_value_t = 6)]
    pub pad_size_y: u32,
    /// Points per image, the origin included [original: --iteration, 100000; exe.sh 200000]
    #[arg(
        long = "iteration",
        visible_alias = "iterations",
        default_value_t = 200_000
    )]
    pub iteration: usize,
    /// point_gray | point_color | patch_gray | patch_color [original: --draw_type, patch_gray]
    #[arg(
        long = "draw-type",
        visible_alias = "draw_type",
        default_value = "patch_gray"
    )]
    pub draw_type: DrawMode,
    /// Weights CSV, or builtin:S for the original's weights_S.csv [original: --weight_csv, ./weights/weights_0.1.csv; exe.sh weights_0.4.csv]
    #[arg(
        long = "weight-csv",
        visible_alias = "weight_csv",
        default_value = "builtin:0.4"
    )]
    pub weight_csv: String,
    /// Patch instances per weight row (ignored by point modes) [original: --instance, 10]
    #[arg(long, default_value_t = 10)]
    pub instance: u32,
    /// Seed of the sample order and of the default patch masks.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Which weight rows of the weights file to draw: `0`, `0-24`, `3-5,7` (default: all). File names
    /// keep the file's row number
    #[arg(long = "weight-rows")]
    pub weight_rows: Option<String>,
    /// Which flip variants to write: `0`, `0,1`, ... of 0..3 (default: all four). 2D-OFDB is
    /// `--instance 1 --weight-rows 0 --flips 0`
    #[arg(long)]
    pub flips: Option<String>,
    /// Which split to draw: train, or val (the same classes and rows, instances whose masks never
    /// coincide with train's); patch draw types with counter masks only
    #[arg(long, default_value = "train")]
    pub split: crate::render::Split,
    /// Epoch of the instance key (seed, split, epoch): 0 gives the same images as always; another
    /// epoch draws new instances (patch draw types with counter masks only)
    #[arg(long, default_value_t = 0)]
    pub epoch: u64,
    /// Patch masks: counter[:SEED] (default, keyed by seed/class/row/instance/point) or python:S
    /// (CPython random seeded with S+n before instance n, as a seeded original run)
    #[arg(long = "mask-rng")]
    pub mask_rng: Option<MaskRng>,
    /// 1-channel gray PNGs instead of the original's RGB (gray draw modes only)
    #[arg(long)]
    pub png_gray: bool,
    /// PNG encoder threads (default: --threads)
    #[arg(long)]
    pub encoders: Option<usize>,
    /// No longer used: every point cloud is computed once whatever the shard count (order v2), so there
    /// is no window of shards to size. Accepted for old scripts
    #[arg(long, hide = true)]
    pub window: Option<usize>,
    /// GL raster path: compute (atomicMax splat + resolve) or points (GL_POINTS into an integer FBO)
    #[arg(long, default_value = "compute")]
    pub raster: crate::render::gl::RasterMethod,
    /// GL: where the clouds are rescaled to pixels: gpu (glsl/rescale.comp, only label canvases come
    /// back) or cpu (the fp64 points are read back and rescaled by the CPU engine's code)
    #[arg(long, default_value = "gpu")]
    pub rescale: RescaleArg,
    /// Drive several GPUs from this process, one GL thread each: `all`, or EGL device indices `0,1,3`
    #[arg(long, value_parser = parse_gpus)]
    pub gpus: Option<String>,
    #[command(flatten)]
    pub output: OutputArgs,
    #[command(flatten)]
    pub device: DeviceArgs,
    #[command(flatten)]
    pub ranks: RankArgs,
    #[command(flatten)]
    pub encoding: EncodingArgs,
    #[command(flatten)]
    pub common: Common,
}

/// `fractaldb rcdb`: the original's flags (underscored names, hyphenated aliases) and ours.
#[derive(Args, Debug)]
pub struct RcdbArgs {
    /// A published dataset's settings (docs/usage.md, "Presets"); any flag given overrides them
    #[arg(long, value_parser = crate::preset::parser("rcdb"))]
    pub preset: Option<String>,
    /// Classes C [original: --numof_classes, 1000]
    #[arg(
        long = "numof_classes",
        visible_alias = "numof-classes",
        default_value_t = 1000
    )]
    pub numof_classes: u32,
    /// Images per class [original: --numof_instances, 1000]
    #[arg(
        long = "numof_instances",
        visible_alias = "numof-instances",
        default_value_t = 1000
    )]
    pub numof_instances: u32,
    /// Image side in pixels (even) [original: --image_size, 512]
    #[arg(
        long = "image_size",
        visible_alias = "image-size",
        default_value_t = 512
    )]
    pub image_size: u32,
    /// Most vertices of a contour [original: --vertex_num, 200]
    #[arg(
        long = "vertex_num",
        visible_alias = "vertex-num",
        default_value_t = 200
    )]
    pub vertex_num: u32,
    /// Least Perlin noise amplitude [original: --perlin_min, 0]
    #[arg(
        long = "perlin_min",
        visible_alias = "perlin-min",
        default_value_t = 0.0
    )]
    pub perlin_min: f64,
    /// Upper bound of the line-width term [original: --line_width, 0.1]
    #[arg(
        long = "line_width",
        visible_alias = "line-width",
        default_value_t = 0.1
    )]
    pub line_width: f64,
    /// Least radius [original: --radius_min, 0]
    #[arg(
        long = "radius_min",
        visible_alias = "radius-min",
        default_value_t = 0,
        allow_negative_numbers = true
    )]
    pub radius_min: i64,
    /// Least number of contours per image [original: --line_num_min, 1]
    #[arg(
        long = "line_num_min",
        visible_alias = "line-num-min",
        default_value_t = 1
    )]
    pub line_num_min: i64,
    /// Largest oval stretch [original: --oval_rate, 2]
    #[arg(long = "oval_rate", visible_alias = "oval-rate", default_value_t = 2.0)]
    pub oval_rate: f64,
    /// Largest centre offset, in pixels x2 [original: --start_pos, 400]
    #[arg(long = "start_pos", visible_alias = "start-pos", default_value_t = 400)]
    pub start_pos: i64,
    /// The original's PROCESS count T (not our threads: see -j). Process t draws classes
    /// [t*q, t*q+q), q = C/T, from random.seed(t+1), so T defines the dataset: keep the original's
    /// (40 in its 1k/21k scripts) to get its images [original: --numof_thread]
    #[arg(
        long = "numof_thread",
        visible_alias = "numof-thread",
        default_value_t = 40
    )]
    pub numof_thread: u32,
    /// Make only process t's classes (0-based); default: every process's [original: --thread_num]
    #[arg(long = "thread_num", visible_alias = "thread-num")]
    pub thread_num: Option<u32>,
    /// Seed of the sample order in the shards (wds)
    #[arg(long, visible_alias = "shard-seed", default_value_t = 0)]
    pub seed: u64,
    /// Serve the shards over HTTP instead of writing them (the bytes of --format wds with the same
    /// flags; see `fractaldb serve` for the service's routes): --listen, --prefetch, ... apply
    #[arg(long)]
    pub serve: bool,
    #[command(flatten)]
    pub service: ServiceArgs,
    #[command(flatten)]
    pub output: OutputArgs,
    #[command(flatten)]
    pub device: DeviceArgs,
    #[command(flatten)]
    pub ranks: RankArgs,
    #[command(flatten)]
    pub encoding: EncodingArgs,
    #[command(flatten)]
    pub common: Common,
}

impl RcdbArgs {
    pub fn to_options(&self) -> Result<crate::rcdb::run::RcdbOptions> {
        let settings = crate::rcdb::Settings {
            image_size: self.image_size,
            vertex_num: self.vertex_num,
            perlin_min: self.perlin_min,
            line_width: self.line_width,
            radius_min: self.radius_min,
            line_num_min: self.line_num_min,
            oval_rate: self.oval_rate,
            start_pos: self.start_pos,
            classes: self.numof_classes,
            instances: self.numof_instances,
            processes: self.numof_thread,
        };
        settings.validate()?;
        crate::rcdb::run::run_classes(&settings, self.thread_num)?;
        let rank = self.ranks.resolve()?;
        let backend = self.device.backend(&rank, GlOptions::default(), true)?;
        let job = Job {
            output: &self.output,
            encoding: &self.encoding,
            common: &self.common,
            defaults: ("./rcdb", "rcdb"),
            seed: self.seed,
        };
        Ok(crate::rcdb::run::RcdbOptions {
            settings,
            thread_num: self.thread_num,
            png: PngConfig {
                level: self.encoding.png_level,
                gray: false,
            },
            job: job.resolve(rank, backend),
        })
    }
}

/// `fractaldb mvfdb`: the original's search and model settings, and the model stream's seed it leaves open.
#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct MvfdbArgs {
    /// One of the original's three scripts alone, with its own roots (default: all three at once)
    #[command(subcommand)]
    pub step: Option<crate::mvfdb::steps::Step>,
    /// A published dataset's settings (docs/usage.md, "Presets"); any flag given overrides them
    #[arg(long, value_parser = crate::preset::parser("mvfdb"))]
    pub preset: Option<String>,
    /// Classes to find [original: category_search.py --numof_classes, instance.py --classes, 1000]
    #[arg(long, visible_alias = "numof_classes", default_value_t = 1000)]
    pub classes: usize,
    /// numpy seed of the search [original: --seed]
    #[arg(long, default_value_t = 1)]
    pub seed: u32,
    /// Variance threshold of every axis [original: 0.05]
    #[arg(long, default_value_t = 0.05)]
    pub variance: f64,
    /// The instance multipliers: `builtin` (the original's weights_ins145.csv, rebuilt byte for byte)
    /// or a CSV file of rows of 12 numbers
    #[arg(
        long = "weight-csv",
        visible_alias = "weight_csv",
        default_value = "builtin"
    )]
    pub weight_csv: PathBuf,
    /// Rows of the multipliers file to draw: `0-3`, `0,5` (as if the file held only these rows)
    #[arg(long = "weight-rows")]
    pub weight_rows: Option<String>,
    /// numpy seed before the model step (the original leaves it unseeded)
    #[arg(long = "model-seed", default_value_t = 0)]
    pub model_seed: u32,
    /// Also write the models as the original's PLY files (240 KB each)
    #[arg(long = "write-models")]
    pub write_models: bool,
    /// Views per model, 0 for none [original: --view_point, 12]; `random` or `random:N` for
    /// ExFractalDB-style random views (12 or N; azimuth uniform in [0, 2pi), elevation in [-30, 30]
    /// degrees, keyed by --view-seed, class, model and view: our definition, the original has none)
    #[arg(long = "views", visible_alias = "view_point", visible_alias = "view-point", default_value = "12", value_parser = parse_views)]
    pub views: (u32, bool),
    /// CPython random seed before the render step (the original leaves it unseeded)
    #[arg(long = "view-seed", default_value_t = 0)]
    pub view_seed: i64,
    /// Image side [original: --img_size, 224]
    #[arg(
        long = "img_size",
        visible_alias = "img-size",
        visible_alias = "image_size",
        default_value_t = 224
    )]
    pub img_size: u32,
    /// Point size in pixels [original: --point_size, 1]: each point a square of this side (GL's
    /// non-antialiased points), 1..=64
    #[arg(long = "point_size", visible_alias = "point-size", default_value_t = 1)]
    pub point_size: u32,
    /// Seed of the sample order in the shards (wds)
    #[arg(long = "shard-seed", default_value_t = 0)]
    pub shard_seed: u64,
    /// Serve the shards over HTTP instead of writing them (the bytes of --format wds with the same
    /// flags; the routes of `fractaldb serve`); nothing is written
    #[arg(long)]
    pub serve: bool,
    #[command(flatten)]
    pub service: ServiceArgs,
    #[command(flatten)]
    pub output: OutputArgs,
    #[command(flatten)]
    pub device: DeviceArgs,
    #[command(flatten)]
    pub ranks: RankArgs,
    #[command(flatten)]
    pub encoding: EncodingArgs,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Args, Debug)]
pub struct WeightsArgs {
    /// Step S of weights_S.csv
    #[arg(long, default_value = "0.4")]
    pub step: String,
}

#[derive(Args, Debug)]
pub struct FinalizeArgs {
    /// Output directory of the run: shards (merges the manifests) or folders (checks every image)
    #[arg(long)]
    pub out: PathBuf,
    /// Shard name prefix (default: the one whose manifest parts are in --out: fractaldb, rcdb,
    /// mvfdb or a --prefix of the run)
    #[arg(long)]
    pub prefix: Option<String>,
}

impl FinalizeArgs {
    /// The prefix given, or the only one with manifest parts in `out` (`fractaldb` when none has).
    fn prefix(&self) -> Result<String> {
        if let Some(p) = &self.prefix {
            return Ok(p.clone());
        }
        let mut found: Vec<String> = std::fs::read_dir(&self.out)
            .map_err(|e| Error::io(&self.out, "cannot list output directory", e))?
            .filter_map(|e| {
                let name = e.ok()?.file_name().into_string().ok()?;
                let (prefix, rest) = name.split_once("-manifest.part-")?;
                rest.ends_with(".json").then(|| prefix.to_string())
            })
            .collect();
        found.sort();
        found.dedup();
        match found.len() {
            0 => Ok("fractaldb".into()),
            1 => Ok(found.remove(0)),
            _ => Err(Error::flag(
                "--prefix",
                format!(
                    "{} holds the shards of several runs ({}): say which",
                    self.out.display(),
                    found.join(", ")
                ),
            )),
        }
    }
}

/// `--gpus all` (every hardware EGL device; every device when there is none) or `--gpus 0,2` (EGL indices).
fn gpu_list(list: &str) -> Vec<Choice> {
    let idx: Vec<usize> = if list == "all" {
        let devs = crate::render::gl::egl::load()
            .map(|e| crate::render::gl::egl::devices(&e))
            .unwrap_or_default();
        let hw: Vec<usize> = devs
            .iter()
            .filter(|d| !d.software)
            .map(|d| d.index)
            .collect();
        if hw.is_empty() {
            devs.iter().map(|d| d.index).collect()
        } else {
            hw
        }
    } else {
        list.split(',')
            .filter_map(|v| v.trim().parse().ok())
            .collect()
    };
    idx.into_iter()
        .map(|i| Choice {
            cuda_ordinal: None,
            egl_index: Some(i),
        })
        .collect()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum RescaleArg {
    Gpu,
    Cpu,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendArg {
    Cpu,
    Gl,
    Auto,
}

/// The engine of `--backend` for any family: `auto` takes the GL engine where a hardware EGL device
/// is usable; a GL engine fails here, before any output, when libEGL is missing.
fn resolve_backend(
    arg: BackendArg,
    devices: Vec<crate::render::gl::egl::Choice>,
    gl: GlOptions,
    quiet: bool,
) -> Result<Backend> {
    let backend = match arg {
        BackendArg::Cpu => Backend::Cpu,
        BackendArg::Gl => Backend::Gl(devices, gl),
        BackendArg::Auto if crate::render::gl::egl::hardware_usable(&devices) => {
            Backend::Gl(devices, gl)
        }
        BackendArg::Auto => {
            if !quiet {
                crate::say!("backend auto: no usable hardware EGL device, using the CPU engine");
            }
            Backend::Cpu
        }
    };
    if let Backend::Gl(..) = backend {
        crate::render::gl::egl::load()?;
    }
    Ok(backend)
}

fn parse_gpus(v: &str) -> std::result::Result<String, String> {
    if v == "all" || (!v.is_empty() && v.split(',').all(|x| x.trim().parse::<usize>().is_ok())) {
        Ok(v.to_string())
    } else {
        Err(format!(
            "{v:?}: expected `all` or comma-separated EGL device indices such as 0,1"
        ))
    }
}

impl RenderArgs {
    fn gl_options(&self) -> GlOptions {
        GlOptions {
            raster: self.raster,
            cpu_rescale: self.rescale == RescaleArg::Cpu,
            memory_mib: self.device.gl_memory,
        }
    }

    fn backend(&self, rank: &cluster::Rank) -> Result<Backend> {
        let d = &self.device;
        let devices = match self.gpus.as_deref() {
            None => vec![gl_choice(d.gpu, d.egl_device, rank)],
            Some(list) => gpu_list(list),
        };
        resolve_backend(d.backend, devices, self.gl_options(), self.common.quiet)
    }

    pub fn to_options(&self) -> Result<RenderOptions> {
        let cfg = RenderConfig {
            width: self.image_size_x,
            height: self.image_size_y,
            pad_x: self.pad_size_x,
            pad_y: self.pad_size_y,
            iterations: self.iteration,
            mode: self.draw_type,
            masks: match self
                .mask_rng
                .unwrap_or(MaskRng::Counter { seed: self.seed })
            {
                MaskRng::Counter { seed } => MaskRng::Counter {
                    seed: crate::rng::instance_seed(seed, self.split.index(), self.epoch),
                },
                python => python,
            },
        };
        if self.split != crate::render::Split::Train || self.epoch > 0 {
            let why = if !self.draw_type.is_patch() {
                Some(format!(
                    "draw type {} has no per-instance randomness: its images are the same in every split and epoch",
                    self.draw_type
                ))
            } else if matches!(self.mask_rng, Some(MaskRng::Python { .. })) {
                Some(
                    "--mask-rng python:S follows the original's seeds (S + instance): it has no split or epoch"
                        .to_string(),
                )
            } else {
                None
            };
            if let Some(why) = why {
                return Err(Error::flag("--split/--epoch", why));
            }
        }
        cfg.validate()?;
        if self.png_gray && self.draw_type.is_color() {
            return Err(Error::flag(
                "--png-gray",
                format!("cannot be used with --draw-type {}", self.draw_type),
            ));
        }
        // A missing input is said first, with its next step, before the backend or run lines
        // (the run reads them again; reading a folder of CSVs and a weights file is cheap).
        crate::plan::discover_classes(&self.load_root)?;
        crate::ifs::load_weights(&self.weight_csv)?;
        // The memory the run needs is checked by the run (dataset::fit_memory), before anything
        // is allocated or written.
        let rank = self.ranks.resolve()?;
        // Fails before any output when libEGL is missing; the context is made in the render thread.
        let backend = self.backend(&rank)?;
        let job = Job {
            output: &self.output,
            encoding: &self.encoding,
            common: &self.common,
            defaults: ("./data/FractalDB-1000", "fractaldb"),
            seed: self.seed,
        };
        let mut job = job.resolve(rank, backend);
        if let Some(e) = self.encoders {
            job.threads.encode = e.clamp(1, job.threads.render * 4);
        }
        Ok(RenderOptions {
            load_root: self.load_root.clone(),
            weights: self.weight_csv.clone(),
            cfg,
            instances: self.instance,
            png: PngConfig {
                level: self.encoding.png_level,
                gray: self.png_gray,
            },
            weight_rows: self.weight_rows.clone(),
            flips: self.flips.clone(),
            job,
        })
    }
}

/// `--views`: `N` (the original's ring of N views), `random` (12 random views) or `random:N`.
fn parse_views(s: &str) -> std::result::Result<(u32, bool), String> {
    let n = |t: &str| {
        t.parse::<u32>()
            .map_err(|_| format!("{s:?}: expected a count, `random` or `random:N`"))
    };
    match s.split_once(':') {
        None if s == "random" => Ok((12, true)),
        Some(("random", c)) => Ok((n(c)?, true)),
        None => Ok((n(s)?, false)),
        _ => Err(format!("{s:?}: expected a count, `random` or `random:N`")),
    }
}

/// The GPU of `--gpu` (a CUDA ordinal) or `--egl-device`; by default the local rank's, respecting
/// CUDA_VISIBLE_DEVICES.
pub(crate) fn gl_choice(
    gpu: Option<i64>,
    egl_device: Option<usize>,
    rank: &cluster::Rank,
) -> Choice {
    let gpu = gpu.unwrap_or_else(|| {
        let visible = std::env::var("CUDA_VISIBLE_DEVICES").ok();
        crate::render::gl::egl::cuda_ordinal_for(rank.local_rank, visible.as_deref(), usize::MAX)
    });
    Choice {
        cuda_ordinal: Some(gpu),
        egl_index: egl_device,
    }
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Command::Search(a) => run_search(a),
        Command::Render(a) => run_render(a),
        Command::Rcdb(a) if a.serve => run_rcdb_service(a),
        Command::Rcdb(a) => run_rcdb(a),
        Command::Mvfdb(a) => run_mvfdb(a),
        Command::Weights(a) => run_weights(a),
        Command::Finalize(a) => {
            let prefix = a.prefix()?;
            let folder = [crate::sink::folder::RECORD, "rcdb.json", "mvfdb.json"]
                .iter()
                .any(|r| a.out.join(r).exists());
            if crate::sink::wds::list_parts(&a.out, &prefix)?.is_empty() && folder {
                crate::inspect::finalize_folders(&a.out)
            } else {
                finalize_shards(&a.out, &prefix)
            }
        }
        Command::Bench(a) => crate::bench::run(&a),
        Command::Info(a) => crate::inspect::run_info(&a),
        Command::Verify(a) => crate::inspect::run_verify(&a),
        Command::Serve(a) => run_serve(a),
        Command::Devices => run_devices(),
    }
}

fn run_search(a: SearchArgs) -> Result<()> {
    if !(a.rate.is_finite() && (0.0..1.0).contains(&a.rate)) {
        return Err(Error::flag(
            "--rate",
            format!(
                "{} is not a fraction in [0, 1): a rate of 1 needs every pixel of the preview lit, \
                 which no IFS does, so the search would never end",
                a.rate
            ),
        ));
    }
    if a.points < 2 {
        return Err(Error::flag("--points", "need at least 2 points"));
    }
    let needed = (a.rate * (search::PREVIEW * search::PREVIEW) as f64).ceil();
    if (a.points as f64) < needed {
        return Err(Error::flag(
            "--points",
            format!(
                "{} points can light at most {} of the 512x512 preview's pixels, below the fill rate {} \
                 ({needed} pixels): no candidate could ever be accepted",
                a.points, a.points, a.rate
            ),
        ));
    }
    if (a.categories as u128) > 10u128.pow(a.class_digits) {
        return Err(Error::flag(
            "--class-digits",
            format!(
                "{} classes do not fit in {} digits (00..0 to {}): use --class-digits {}",
                a.categories,
                a.class_digits,
                "9".repeat(a.class_digits as usize),
                (a.categories.saturating_sub(1)).to_string().len()
            ),
        ));
    }
    let rank = a.ranks.resolve()?;
    // Each search thread holds a candidate's points and its own u sequence (24 bytes a
    // point) and a preview canvas; the GL form holds a batch of them.
    let est = crate::memory::Estimate {
        fixed: 64 << 20,
        per_thread: (a.points as u64)
            .saturating_mul(24)
            .saturating_add((search::PREVIEW * search::PREVIEW * 4) as u64),
    };
    let avail = crate::memory::available();
    let threads = crate::memory::fit_threads(est, a.common.threads(), &avail, "--points")?;
    let cfg = SearchConfig {
        rank: rank.rank,
        wait_timeout: std::time::Duration::from_secs(a.wait_timeout),
        progress: !a.common.quiet,
        class_digits: a.class_digits as usize,
        world: rank.world,
        rate: a.rate,
        categories: a.categories,
        points: a.points,
        seed: a.seed,
        out: a.out.clone(),
        threads,
        write_previews: !a.no_previews,
        png_level: 6,
        gl: match a.backend {
            BackendArg::Cpu => None,
            BackendArg::Gl => {
                crate::render::gl::egl::load()?;
                Some(Choice {
                    cuda_ordinal: None,
                    egl_index: a.egl_device,
                })
            }
            BackendArg::Auto => {
                let c = Choice {
                    cuda_ordinal: None,
                    egl_index: a.egl_device,
                };
                crate::render::gl::egl::hardware_usable(&[c]).then_some(c)
            }
        },
    };
    let (quiet, verbose) = (a.common.quiet, a.verbose);
    let t0 = std::time::Instant::now();
    // A bar with an ETA on a terminal, a summary line every few seconds otherwise; a line per
    // class (the original's `save:`) only with -v.
    let found = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let tried = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (f, t) = (found.clone(), tried.clone());
    let _bar = (!quiet && !verbose).then(|| {
        let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        progress::Reporter::start(
            progress::Mode::Auto,
            "classes",
            cfg.categories as u64,
            Box::new(move || load(&f)),
            Box::new(move || format!("from {} candidates", load(&t))),
        )
    });
    let stats = search::run(
        &SearchConfig {
            progress: verbose,
            ..cfg.clone()
        },
        |k, cands| {
            found.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tried.store(cands as u64, std::sync::atomic::Ordering::Relaxed);
            if verbose {
                crate::say!(
                    "save: {k:05} (candidate {cands}, {:.1}s)",
                    t0.elapsed().as_secs_f64()
                );
            }
        },
    )?;
    drop(_bar);
    if !quiet {
        crate::say!(
            "search: {} classes from {} candidates in {:.1}s -> {}",
            stats.accepted,
            stats.candidates,
            t0.elapsed().as_secs_f64(),
            search::csv_dir(&cfg.out, cfg.rate, cfg.categories).display()
        );
    }
    Ok(())
}

fn run_render(a: RenderArgs) -> Result<()> {
    let opts = a.to_options()?;
    if a.window.is_some() && !a.common.quiet {
        crate::say!(
            "note: --window is no longer used: every point cloud is computed once whatever the shard count"
        );
    }
    if !a.common.quiet {
        let who = if opts.job.rank.world == 1 {
            "one process".to_string()
        } else {
            format!(
                "rank {} of {} ({})",
                opts.job.rank.rank, opts.job.rank.world, opts.job.rank.source
            )
        };
        crate::say!(
            "render: {who}, {} threads, {} encoders, writing {} to {}",
            opts.job.threads.render,
            opts.job.threads.encode,
            match opts.job.format {
                Format::Folder => "the original's class folders",
                Format::Wds => "WebDataset shards",
            },
            opts.job.out.display()
        );
    }
    if opts.job.rank.world > 1 {
        // Not the whole dataset: say so, whatever --quiet says (an inherited launcher
        // environment must not pass for a complete run).
        crate::say!(
            "NOTE: rank {} of {} ({}): this run renders only its part of the dataset \
             ({}); run every rank, then `fractaldb finalize --out {}`",
            opts.job.rank.rank,
            opts.job.rank.world,
            opts.job.rank.source,
            match opts.job.format {
                Format::Folder => format!(
                    "classes c with c % {} == {}",
                    opts.job.rank.world, opts.job.rank.rank
                ),
                Format::Wds => format!(
                    "shard blocks g with g % {} == {}",
                    opts.job.rank.world, opts.job.rank.rank
                ),
            },
            opts.job.out.display()
        );
    }
    let s = generate::run(&opts)?;
    if !a.common.quiet {
        let readback = if matches!(opts.job.backend, Backend::Gl(..)) {
            format!(
                ", {} bytes read back per image",
                s.readback_bytes / s.images.max(1)
            )
        } else {
            String::new()
        };
        crate::say!(
            "done: {} images ({} kept from before), {} shards, {:.1} MB, {} clouds{readback}, {:.2}s, {:.1} images/s",
            s.images,
            s.skipped,
            s.shards,
            s.bytes as f64 / 1e6,
            s.clouds,
            s.seconds,
            s.images_per_second()
        );
    }
    Ok(())
}

fn run_rcdb_service(a: RcdbArgs) -> Result<()> {
    let mut opts = a.to_options()?;
    if opts.thread_num.is_some() {
        return Err(Error::flag(
            "--thread_num",
            "the service serves the whole dataset's shards",
        ));
    }
    opts.job.format = Format::Wds;
    let (ds, job) = opts.split()?;
    a.service.serve(Box::new(ds), job)
}

fn run_rcdb(a: RcdbArgs) -> Result<()> {
    let opts = a.to_options()?;
    let st = &opts.settings;
    if !a.common.quiet {
        let all = crate::rcdb::run::run_classes(st, opts.thread_num)?;
        let mine = crate::rcdb::run::rank_classes(all, opts.job.rank.rank, opts.job.rank.world);
        let what = match opts.job.format {
            Format::Folder => {
                format!("classes {}..{} of {}", mine.start, mine.end, st.classes)
            }
            Format::Wds => format!(
                "WebDataset shards of {} classes (this rank: blocks g with g % {} == {})",
                st.made_classes(),
                opts.job.rank.world,
                opts.job.rank.rank
            ),
        };
        crate::say!(
            "rcdb: {what} ({} processes T, {} classes each), {} images each, {} threads, writing {}",
            st.processes,
            st.per_process(),
            st.instances,
            opts.job.threads.render,
            opts.job.out.display()
        );
        if st.made_classes() < st.classes {
            crate::say!(
                "note: as in the original, classes {}..{} are never made ({} classes do not split into {} processes)",
                st.made_classes(),
                st.classes,
                st.classes,
                st.processes
            );
        }
    }
    if opts.job.rank.world > 1 {
        crate::say!(
            "NOTE: rank {} of {} ({}): this run makes only its part of the dataset; run every rank{}",
            opts.job.rank.rank,
            opts.job.rank.world,
            opts.job.rank.source,
            if opts.job.format == Format::Wds {
                format!(
                    ", then `fractaldb finalize --prefix {} --out {}`",
                    opts.job.shards.prefix,
                    opts.job.out.display()
                )
            } else {
                String::new()
            }
        );
    }
    let s = crate::rcdb::run::run(&opts)?;
    if !a.common.quiet {
        crate::say!(
            "done: {} images ({} kept from before), {:.1} MB, {:.2}s, {:.1} images/s",
            s.images,
            s.skipped,
            s.bytes as f64 / 1e6,
            s.seconds,
            s.images_per_second()
        );
    }
    Ok(())
}

impl MvfdbArgs {
    pub fn to_options(&self) -> Result<crate::mvfdb::run::MvfdbOptions> {
        let rank = self.ranks.resolve()?;
        let backend = self.device.backend(&rank, GlOptions::default(), true)?;
        let job = Job {
            output: &self.output,
            encoding: &self.encoding,
            common: &self.common,
            defaults: ("./mvfdb", "mvfdb"),
            seed: self.shard_seed,
        };
        let mut job = job.resolve(rank, backend);
        if self.serve {
            job.format = Format::Wds;
        }
        Ok(crate::mvfdb::run::MvfdbOptions {
            classes: self.classes,
            seed: self.seed,
            variance: self.variance,
            weights: Some(self.weight_csv.clone()),
            rows: self.weight_rows.clone(),
            model_seed: self.model_seed,
            write_models: self.write_models,
            views: self.views.0,
            random_views: self.views.1,
            view_seed: self.view_seed,
            size: self.img_size,
            point_size: self.point_size,
            png: PngConfig {
                level: self.encoding.png_level,
                gray: false,
            },
            job,
            prepared: None,
        })
    }
}

fn run_mvfdb(a: MvfdbArgs) -> Result<()> {
    if let Some(step) = &a.step {
        return crate::mvfdb::steps::run(step);
    }
    let opts = a.to_options()?;
    if a.serve {
        let Some((ds, job)) = opts.split()? else {
            return Err(Error::flag(
                "--views",
                "the service serves views: at least 1",
            ));
        };
        return a.service.serve(Box::new(ds), job);
    }
    let s = crate::mvfdb::run::run(&opts)?;
    if !a.common.quiet {
        crate::say!(
            "done: {} classes, {} models ({} skipped: NaN), {} images ({} kept from before), in {}",
            s.classes,
            s.models,
            s.skipped,
            s.images,
            s.kept,
            opts.job.out.display()
        );
    }
    Ok(())
}

fn run_weights(a: WeightsArgs) -> Result<()> {
    let text = crate::ifs::builtin_weights_csv(&a.step).ok_or_else(|| {
        Error::flag(
            "--step",
            format!("expected one of {}", crate::ifs::WEIGHT_STEPS.join(", ")),
        )
    })?;
    use std::io::Write;
    std::io::stdout()
        .write_all(text.as_bytes())
        .map_err(|e| Error::io("<stdout>", "cannot write", e))
}

fn finalize_shards(out: &std::path::Path, prefix: &str) -> Result<()> {
    match crate::sink::wds::finalize(out, prefix)? {
        Ok(m) => {
            crate::say!(
                "finalized {} shards, {} samples",
                m.shards.len(),
                m.total_samples
            );
            Ok(())
        }
        Err(missing) => {
            let list: Vec<String> = missing
                .iter()
                .map(|s| crate::sink::wds::shard_name(prefix, *s))
                .collect();
            Err(Error::Other(format!(
                "{}: {} shard(s) missing or not matching their manifest: {}",
                out.display(),
                missing.len(),
                list.join(" ")
            )))
        }
    }
}

fn run_serve(a: ServeArgs) -> Result<()> {
    // Render's output flags mean nothing to the service (it writes no file): hidden from its help,
    // and said so when given, never silently taken.
    let o = &a.render.output;
    for (flag, given) in [("--out", o.out.is_some()), ("--resume", o.resume)] {
        if given {
            crate::say!("serve: warning: {flag} is not used: the service writes no files");
        }
    }
    let mut render = a.render.to_options()?;
    render.job.format = Format::Wds;
    let (ds, job) = render.split()?;
    a.service.serve(Box::new(ds), job)
}

fn run_devices() -> Result<()> {
    use std::fmt::Write as _;
    let all = crate::render::gl::egl::describe_all()?;
    let mut text = String::new();
    if all.is_empty() {
        text.push_str(
            "no EGL devices listed (the driver lacks EGL_EXT_device_enumeration, or none is visible)\n",
        );
    }
    for (d, r) in all {
        let _ = writeln!(
            text,
            "EGL device {}: cuda={} software={} drm={}",
            d.index,
            d.cuda_ordinal.map(|c| c.to_string()).unwrap_or("-".into()),
            d.software,
            d.drm_file.as_deref().unwrap_or("-")
        );
        let _ = match r {
            Ok(i) => writeln!(
                text,
                "  GL_VENDOR   {}\n  GL_RENDERER {}\n  GL_VERSION  {}",
                i.vendor, i.renderer, i.version
            ),
            Err(e) => writeln!(text, "  cannot open: {e}"),
        };
        let _ = writeln!(text, "  extensions  {}", d.extensions);
    }
    crate::fsutil::write_stdout(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parses(args: &[&str]) -> Cli {
        let argv = std::iter::once("fractaldb").chain(args.iter().copied());
        Cli::try_parse_args(argv).unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    /// Every flag of every command answers to its other spelling (`_` for `-` and the reverse),
    /// aliases included, unless that name is another flag's; the examples parse.
    #[test]
    fn every_flag_takes_both_spellings() {
        use clap::CommandFactory;
        let root = with_spellings(Cli::command());
        let mut checked = 0;
        // Every command and its steps (`mvfdb search|models|render`).
        let subs = root
            .get_subcommands()
            .flat_map(|c| std::iter::once(c).chain(c.get_subcommands()));
        for sub in subs {
            let all: Vec<Vec<String>> = sub.get_arguments().map(flag_names).collect();
            for names in &all {
                for n in names {
                    let o = other_spelling(n);
                    let elsewhere = all.iter().any(|other| other != names && other.contains(&o));
                    assert!(
                        names.contains(&o) || elsewhere,
                        "{} --{n}: no --{o}",
                        sub.get_name()
                    );
                    checked += 1;
                }
            }
        }
        assert!(checked > 200, "{checked}");
        for args in [
            &["search", "--numof-point", "10", "--numof_point", "10"][..],
            &[
                "render",
                "--png_level",
                "3",
                "--samples_per_shard",
                "5",
                "--load-root",
                "x",
            ],
            &[
                "mvfdb",
                "--view_seed",
                "1",
                "--image-size",
                "8",
                "--numof_classes",
                "4",
            ],
            &[
                "mvfdb",
                "--weight_rows",
                "0-1",
                "--model_seed",
                "2",
                "--write_models",
            ],
            &[
                "rcdb",
                "--numof_thread",
                "4",
                "--thread_num",
                "0",
                "--png_level",
                "2",
            ],
            &["bench", "--image_size", "64"],
            &[
                "mvfdb",
                "render",
                "--load-root",
                "m",
                "--view-point",
                "6",
                "--img-size",
                "32",
            ],
            &["serve", "--idle_seconds", "5", "--max_clients", "3"],
        ] {
            parses(args);
        }
        match parses(&["mvfdb", "--numof_classes", "4"]).cmd {
            Command::Mvfdb(a) => assert_eq!(a.classes, 4),
            _ => unreachable!(),
        }
        // RCDB's process slices never alias the thread count.
        match parses(&["rcdb", "--numof_thread", "4", "--thread_num", "1"]).cmd {
            Command::Rcdb(a) => assert_eq!(a.common.threads, None),
            _ => unreachable!(),
        }
    }

    /// The shared flag groups take the same names in every dataset command (docs/usage.md, "One
    /// name per idea"), and every spelling that worked before stays an alias.
    #[test]
    fn every_dataset_command_takes_the_shared_groups_and_the_old_spellings() {
        let shared = [
            "--format",
            "wds",
            "--samples-per-shard",
            "5",
            "--prefix",
            "p",
            "--dali-index",
            "--resume",
            "--writers",
            "2",
            "--backend",
            "cpu",
            "--gpu",
            "0",
            "--egl-device",
            "0",
            "--encoding",
            "npy",
            "--png-level",
            "3",
            "--rank",
            "0",
            "--world-size",
            "1",
            "-j",
            "2",
            "-q",
        ];
        for cmd in ["render", "rcdb", "mvfdb"] {
            for out in ["--out", "--save_root", "--save-root"] {
                let mut args = vec![cmd, out, "o"];
                args.extend(shared);
                let o = match parses(&args).cmd {
                    Command::Render(a) => a.output,
                    Command::Rcdb(a) => a.output,
                    Command::Mvfdb(a) => a.output,
                    _ => unreachable!(),
                };
                assert_eq!(o.out, Some(PathBuf::from("o")), "{cmd} {out}");
                assert_eq!(o.prefix.as_deref(), Some("p"));
            }
        }
        // Each family's own spellings, the originals' underscores and ours.
        for args in [
            &[
                "render",
                "--image_size_x",
                "8",
                "--draw_type",
                "point_gray",
                "--weight_csv",
                "w",
            ][..],
            &[
                "render",
                "--load_root",
                "x",
                "--iterations",
                "9",
                "--seed",
                "3",
            ],
            &[
                "rcdb",
                "--numof-classes",
                "2",
                "--image-size",
                "8",
                "--thread-num",
                "0",
            ],
            &["rcdb", "--seed", "3"],
            &["rcdb", "--shard-seed", "3"],
            &[
                "mvfdb",
                "--img-size",
                "8",
                "--point-size",
                "2",
                "--view_point",
                "3",
            ],
            &["mvfdb", "--weight_csv", "w", "--shard-seed", "3"],
        ] {
            parses(args);
        }
    }
}
