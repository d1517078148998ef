//! The streaming pipeline: render threads -> bounded channel -> PNG encoders -> sink writers.
//!
//! Work arrives as cloud jobs (one chaos game per class x weight row), each listing the instances and
//! flips wanted from it. Channels are bounded, so memory stays bounded whatever the dataset size; the
//! first error stops every stage and is returned.

use crate::error::{Error, Result};
use crate::ifs::Cloud;
use crate::plan::{Plan, Sample};
use crate::render::{self, PngConfig, RenderConfig, cpu};
use crossbeam_channel::{Receiver, Sender, bounded};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Where one encoded image goes: its sample, its global position in the dataset order, and its shard.
#[derive(Clone, Copy, Debug)]
pub struct Target {
    pub sample: Sample,
    pub pos: u64,
    pub shard: u64,
}

/// The images wanted from one instance of a cloud.
#[derive(Clone, Debug)]
pub struct InstanceJob {
    pub instance: u32,
    pub flips: Vec<(u8, Target)>,
}

/// One chaos game (class, weight row) and the images to draw from it.
#[derive(Clone, Debug)]
pub struct CloudJob {
    pub class: u32,
    pub row: u32,
    pub instances: Vec<InstanceJob>,
}

impl CloudJob {
    pub fn images(&self) -> u64 {
        self.instances.iter().map(|i| i.flips.len() as u64).sum()
    }
}

/// Groups targets into cloud jobs, sorted by (class, row, instance, flip).
pub fn group_jobs(mut targets: Vec<Target>) -> Vec<CloudJob> {
    targets.sort_by_key(|t| t.sample);
    let mut jobs: Vec<CloudJob> = Vec::new();
    for t in targets {
        let s = t.sample;
        match jobs.last_mut() {
            Some(j) if j.class == s.class && j.row == s.row => match j.instances.last_mut() {
                Some(i) if i.instance == s.instance => i.flips.push((s.flip, t)),
                _ => j.instances.push(InstanceJob {
                    instance: s.instance,
                    flips: vec![(s.flip, t)],
                }),
            },
            _ => jobs.push(CloudJob {
                class: s.class,
                row: s.row,
                instances: vec![InstanceJob {
                    instance: s.instance,
                    flips: vec![(s.flip, t)],
                }],
            }),
        }
    }
    jobs
}

/// Receives encoded images. `accept(w, ..)` is only ever called from writer thread `w`.
pub trait Sink: Sync {
    fn writers(&self) -> usize;
    fn route(&self, t: &Target) -> usize;
    fn accept(&self, writer: usize, t: Target, png: Vec<u8>) -> Result<()>;
}

/// Thread counts and queue depth.
#[derive(Clone, Copy, Debug)]
pub struct Threads {
    pub render: usize,
    pub encode: usize,
    /// Capacity of each bounded channel, in messages.
    pub queue: usize,
}

/// Counters shared with the progress display and the benchmark (nanoseconds summed over threads).
#[derive(Default, Debug)]
pub struct Stats {
    pub images: AtomicU64,
    pub clouds: AtomicU64,
    pub chaos_ns: AtomicU64,
    pub raster_ns: AtomicU64,
    pub encode_ns: AtomicU64,
    pub write_ns: AtomicU64,
    /// GL only: device-to-host copies of finished results (also inside chaos_ns/raster_ns).
    pub readback_ns: AtomicU64,
    pub png_bytes: AtomicU64,
}

impl Stats {
    fn add(counter: &AtomicU64, since: Instant) {
        counter.fetch_add(since.elapsed().as_nanos() as u64, Ordering::Relaxed);
    }
}

/// Which engine draws the images.
#[derive(Clone, Debug)]
pub enum Backend {
    Cpu,
    /// The GL engine: one thread per listed EGL device, each owning its context.
    Gl(Vec<render::gl::egl::Choice>, render::gl::RasterMethod),
}

/// Clouds per chaos-game dispatch of the GL engine: a GPU wants many invocations in flight; a
/// software renderer wants short dispatches.
const GL_BATCH: usize = 128;
const GL_BATCH_SOFTWARE: usize = 32;

/// Everything the render stage reads.
pub struct Context<'a> {
    pub backend: Backend,
    /// No messages from the render stage (the device line and the software-renderer warning).
    pub quiet: bool,
    pub plan: &'a Plan,
    pub cfg: &'a RenderConfig,
    pub png: PngConfig,
    /// The shared `np.random.seed(100)` sequence, `cfg.iterations` long.
    pub u: &'a [f64],
}

struct Raster {
    canvas: Arc<Vec<u8>>,
    flips: Vec<(u8, Target)>,
}

/// Failure state shared by all stages: the first error wins, everyone stops.
#[derive(Default)]
pub struct Abort {
    flag: AtomicBool,
    error: Mutex<Option<Error>>,
}

impl Abort {
    pub fn set(&self, e: Error) {
        let mut g = self.error.lock().unwrap();
        if g.is_none() {
            *g = Some(e);
        }
        self.flag.store(true, Ordering::SeqCst);
    }
    pub fn is_set(&self) -> bool {
        self.flag.load(Ordering::Relaxed)
    }
    pub fn take(&self) -> Option<Error> {
        self.error.lock().unwrap().take()
    }
}

/// Runs the jobs through render -> encode -> sink. Returns the first error of any stage.
pub fn run(
    ctx: &Context,
    jobs: &[CloudJob],
    sink: &dyn Sink,
    threads: Threads,
    stats: &Stats,
    abort: &Abort,
) -> Result<()> {
    let next = AtomicU64::new(0);
    let (raster_tx, raster_rx) = bounded::<Raster>(threads.queue.max(1));
    let writers = sink.writers().max(1);
    let (write_txs, write_rxs): (
        Vec<Sender<(Target, Vec<u8>)>>,
        Vec<Receiver<(Target, Vec<u8>)>>,
    ) = (0..writers)
        .map(|_| bounded(threads.queue.max(1) * 4))
        .unzip();
    std::thread::scope(|s| {
        let renderers = match &ctx.backend {
            Backend::Cpu => threads.render.max(1),
            Backend::Gl(devices, _) => devices.len().max(1),
        };
        for worker in 0..renderers {
            let tx = raster_tx.clone();
            let next = &next;
            s.spawn(move || {
                let r = match &ctx.backend {
                    Backend::Cpu => render_worker(ctx, jobs, next, &tx, stats, abort),
                    Backend::Gl(devices, method) => {
                        let choice = devices.get(worker).copied().unwrap_or_default();
                        gl_render_worker(ctx, choice, *method, jobs, next, &tx, stats, abort)
                    }
                };
                if let Err(e) = r {
                    abort.set(e);
                }
            });
        }
        drop(raster_tx);
        for _ in 0..threads.encode.max(1) {
            let rx = raster_rx.clone();
            let txs = write_txs.clone();
            s.spawn(move || {
                if let Err(e) = encode_worker(ctx, &rx, &txs, sink, stats, abort) {
                    abort.set(e);
                }
            });
        }
        drop(raster_rx);
        drop(write_txs);
        for (w, rx) in write_rxs.into_iter().enumerate() {
            s.spawn(move || {
                for (t, png) in rx.iter() {
                    if abort.is_set() {
                        break;
                    }
                    let t0 = Instant::now();
                    if let Err(e) = sink.accept(w, t, png) {
                        abort.set(e);
                        break;
                    }
                    Stats::add(&stats.write_ns, t0);
                    stats.images.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    });
    match abort.take() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn render_worker(
    ctx: &Context,
    jobs: &[CloudJob],
    next: &AtomicU64,
    tx: &Sender<Raster>,
    stats: &Stats,
    abort: &Abort,
) -> Result<()> {
    let mut scratch = cpu::Scratch::default();
    let mut cloud = Cloud::default();
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed) as usize;
        if i >= jobs.len() || abort.is_set() {
            return Ok(());
        }
        let job = &jobs[i];
        let class = &ctx.plan.classes[job.class as usize];
        let t0 = Instant::now();
        cpu::compute_cloud(
            &class.ifs,
            &ctx.plan.weights[job.row as usize],
            ctx.u,
            ctx.cfg,
            &mut scratch,
            &mut cloud,
        )
        .map_err(|axis| cpu::degenerate_error(&class.path, job.row as usize, axis))?;
        Stats::add(&stats.chaos_ns, t0);
        stats.clouds.fetch_add(1, Ordering::Relaxed);
        for inst in &job.instances {
            let t0 = Instant::now();
            let mut canvas = Vec::new();
            cpu::raster(
                &cloud,
                ctx.cfg,
                class.key,
                job.row,
                inst.instance,
                &mut canvas,
            );
            Stats::add(&stats.raster_ns, t0);
            let msg = Raster {
                canvas: Arc::new(canvas),
                flips: inst.flips.clone(),
            };
            if tx.send(msg).is_err() {
                return Ok(()); // downstream stopped: its error is already recorded
            }
        }
    }
}

/// The GL render stage: one thread owns the context; clouds are computed a batch at a time.
fn gl_render_worker(
    ctx: &Context,
    choice: render::gl::egl::Choice,
    method: render::gl::RasterMethod,
    jobs: &[CloudJob],
    next: &AtomicU64,
    tx: &Sender<Raster>,
    stats: &Stats,
    abort: &Abort,
) -> Result<()> {
    let mut engine = render::gl::GlEngine::new(choice, ctx.u, method)?;
    let c = &engine.ctx;
    if !ctx.quiet {
        eprintln!(
            "backend gl: {} -> {} ({}), raster {:?}",
            c.device, c.renderer, c.version, method
        );
        if c.software {
            eprintln!(
                "WARNING: the GL backend is running on a SOFTWARE renderer ({}): about 100x slower than a GPU; \
             --backend cpu is faster on this machine",
                c.renderer
            );
        }
    }
    // Canvases come back asynchronously (a ring of fenced readbacks), tagged with their flips.
    let mut waiting: std::collections::HashMap<usize, Vec<(u8, Target)>> = Default::default();
    let mut next_tag = 0usize;
    let forward =
        |done: Vec<(usize, Vec<u8>)>,
         waiting: &mut std::collections::HashMap<usize, Vec<(u8, Target)>>| {
            for (tag, canvas) in done {
                let flips = waiting.remove(&tag).expect("a tag we gave");
                if tx
                    .send(Raster {
                        canvas: Arc::new(canvas),
                        flips,
                    })
                    .is_err()
                {
                    return false;
                }
            }
            true
        };
    loop {
        // Batches are claimed from the shared queue, so several GPUs split the work.
        let size = if engine.ctx.software {
            GL_BATCH_SOFTWARE
        } else {
            GL_BATCH
        };
        let start = next.fetch_add(size as u64, Ordering::Relaxed) as usize;
        if start >= jobs.len() || abort.is_set() {
            break;
        }
        let batch = &jobs[start..(start + size).min(jobs.len())];
        let t0 = Instant::now();
        let ifss: Vec<_> = batch
            .iter()
            .map(|j| {
                ctx.plan.classes[j.class as usize]
                    .ifs
                    .weighted(&ctx.plan.weights[j.row as usize])
            })
            .collect();
        let clouds = engine.clouds(&ifss, ctx.cfg)?;
        Stats::add(&stats.chaos_ns, t0);
        for (job, cloud) in batch.iter().zip(clouds) {
            let class = &ctx.plan.classes[job.class as usize];
            let cloud =
                cloud.map_err(|axis| cpu::degenerate_error(&class.path, job.row as usize, axis))?;
            stats.clouds.fetch_add(1, Ordering::Relaxed);
            let t0 = Instant::now();
            let insts: Vec<u32> = job.instances.iter().map(|i| i.instance).collect();
            let tags: Vec<usize> = (next_tag..next_tag + insts.len()).collect();
            next_tag += insts.len();
            for (t, inst) in tags.iter().zip(&job.instances) {
                waiting.insert(*t, inst.flips.clone());
            }
            let draw = render::gl::Draw {
                cloud: &cloud,
                cfg: ctx.cfg,
                class_key: class.key,
                row: job.row,
            };
            engine.submit(draw, &insts, &tags)?;
            let done = engine.collect(false)?;
            Stats::add(&stats.raster_ns, t0);
            if !forward(done, &mut waiting) {
                return Ok(());
            }
        }
    }
    let t0 = Instant::now();
    let done = engine.collect(true)?;
    Stats::add(&stats.raster_ns, t0);
    forward(done, &mut waiting);
    stats
        .readback_ns
        .fetch_add(engine.take_readback_ns(), Ordering::Relaxed);
    Ok(())
}

fn encode_worker(
    ctx: &Context,
    rx: &Receiver<Raster>,
    txs: &[Sender<(Target, Vec<u8>)>],
    sink: &dyn Sink,
    stats: &Stats,
    abort: &Abort,
) -> Result<()> {
    let pal = render::palette(ctx.cfg.mode);
    let (w, h) = (ctx.cfg.width, ctx.cfg.height);
    let mut pixels = Vec::new();
    for msg in rx.iter() {
        if abort.is_set() {
            return Ok(());
        }
        for &(flip, t) in &msg.flips {
            let t0 = Instant::now();
            render::write_flip(
                &msg.canvas,
                w as usize,
                h as usize,
                flip,
                &pal,
                ctx.png.channels(),
                &mut pixels,
            );
            let mut png = Vec::with_capacity(32 * 1024);
            render::encode_png(&pixels, w, h, ctx.png, &mut png)?;
            Stats::add(&stats.encode_ns, t0);
            stats
                .png_bytes
                .fetch_add(png.len() as u64, Ordering::Relaxed);
            if txs[sink.route(&t)].send((t, png)).is_err() {
                return Ok(());
            }
        }
    }
    Ok(())
}
