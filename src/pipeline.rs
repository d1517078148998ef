//! The streaming pipeline: render stages -> bounded channel -> PNG encoders -> sink writers.
//!
//! The pipeline knows only jobs: a render unit (see [`render::Unit`]) and, for each of its canvases,
//! the images wanted from it (flip and where it goes). Jobs are made on demand from a [`Jobs`] source,
//! so memory does not grow with the dataset; channels are bounded; the first error of any stage stops
//! every stage and is returned. One call runs a whole render: each stage (and GL context) is made once.

use crate::error::{Error, Result};
use crate::plan::Sample;
use crate::render::{Canvas, Feed, ImageFormat, PngConfig, StageStats, Stages, Unit};
use crossbeam_channel::{Receiver, Sender, bounded};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Where one encoded image goes: its sample, its global position in the dataset order, its shard,
/// and the epoch of its instance key (the service's shards of several epochs are written at once).
#[derive(Clone, Copy, Debug)]
pub struct Target {
    pub sample: Sample,
    pub pos: u64,
    pub shard: u64,
    pub epoch: u64,
}

/// The images wanted from one canvas: flip, and where each goes.
pub type Flips = Vec<(u8, Target)>;
/// An encoded image on its way to a writer.
type Encoded = (Target, Vec<u8>);

/// A unit of render work and, per canvas of it (indexed like `unit.instances`), the images wanted.
#[derive(Clone, Debug)]
pub struct Job {
    pub unit: Unit,
    pub images: Vec<Flips>,
}

/// A fixed list of jobs, made on demand by index (in order, from any thread).
pub trait IndexedJobs: Sync {
    fn count(&self) -> u64;
    fn job(&self, i: u64) -> Job;
}

/// Where render stages take their work from: the next jobs, at most `max`, with their ids (unique
/// and increasing per source); `None` when there is no more. A source may block until work comes
/// (the service's queue of requested shard groups).
pub trait Jobs: Sync {
    fn claim(&self, max: usize) -> Option<Vec<(u64, Job)>>;
    /// Like [`claim`](Self::claim), but `None` as soon as no work is ready (never blocks): for a
    /// stage that claims its next batch while it still holds the current one.
    fn try_claim(&self, max: usize) -> Option<Vec<(u64, Job)>> {
        self.claim(max)
    }
    /// The run is failing: a source that blocks (the service's queue) wakes its waiters, which
    /// then get `None`.
    fn close(&self) {}
}

/// [`Jobs`] over an [`IndexedJobs`] list: claimed in order; jobs with nothing to draw (all kept on
/// `--resume`) are skipped and cost no chaos game.
pub struct InOrder<'a> {
    pub jobs: &'a dyn IndexedJobs,
    next: AtomicU64,
}

impl<'a> InOrder<'a> {
    pub fn new(jobs: &'a dyn IndexedJobs) -> Self {
        InOrder {
            jobs,
            next: AtomicU64::new(0),
        }
    }
}

impl Jobs for InOrder<'_> {
    fn claim(&self, max: usize) -> Option<Vec<(u64, Job)>> {
        let n = self.jobs.count();
        loop {
            let start = self.next.fetch_add(max as u64, Ordering::Relaxed);
            if start >= n {
                return None;
            }
            let got: Vec<(u64, Job)> = (start..(start + max as u64).min(n))
                .map(|i| (i, self.jobs.job(i)))
                .filter(|(_, j)| !j.images.is_empty())
                .collect();
            if !got.is_empty() {
                return Some(got);
            }
        }
    }
}

/// Groups images of one cloud by instance, in the order given: a job for the pipeline.
pub fn job_of(class: u32, row: u32, images: impl IntoIterator<Item = (u32, u8, Target)>) -> Job {
    let mut unit = Unit {
        class,
        row,
        epoch: 0,
        instances: vec![],
    };
    let mut wanted: Vec<Flips> = vec![];
    // Instance -> its slot: linear in the images, also for a unit of 100,000 instances.
    let mut slot: HashMap<u32, usize> = HashMap::new();
    for (instance, flip, t) in images {
        let k = *slot.entry(instance).or_insert_with(|| {
            unit.instances.push(instance);
            wanted.push(vec![]);
            wanted.len() - 1
        });
        wanted[k].push((flip, t));
    }
    Job {
        unit,
        images: wanted,
    }
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
    pub render: StageStats,
    pub encode_ns: AtomicU64,
    pub write_ns: AtomicU64,
    pub png_bytes: AtomicU64,
}

/// Everything the stages read: how to open the render stages (the dataset family's part), the
/// pixels a canvas becomes, and the PNG settings.
pub struct Context<'a> {
    pub stages: &'a dyn Stages,
    pub image: ImageFormat,
    pub png: PngConfig,
    pub encoding: crate::encode::Encoding,
}

struct Raster {
    canvas: Arc<Vec<u8>>,
    flips: Flips,
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

/// A render thread's side of the job queue: it claims jobs in order and keeps their targets until
/// their canvases come back.
struct ThreadFeed<'a> {
    jobs: &'a dyn Jobs,
    abort: &'a Abort,
    tx: &'a Sender<Raster>,
    waiting: HashMap<u64, (Vec<Flips>, usize)>,
}

impl ThreadFeed<'_> {
    /// The run is stopping: an error elsewhere, or an interrupt (which becomes the run's error).
    fn stopping(&self) -> bool {
        if crate::interrupted() {
            self.abort.set(Error::Interrupted);
        }
        self.abort.is_set()
    }

    fn take(&mut self, got: Vec<(u64, Job)>) -> Vec<(u64, Unit)> {
        got.into_iter()
            .map(|(i, j)| {
                let left = j.images.len();
                self.waiting.insert(i, (j.images, left));
                (i, j.unit)
            })
            .collect()
    }
}

impl Feed for ThreadFeed<'_> {
    fn try_claim(&mut self, max: usize) -> Option<Vec<(u64, Unit)>> {
        if self.stopping() {
            return None;
        }
        let got = self.jobs.try_claim(max.max(1))?;
        Some(self.take(got))
    }

    fn claim(&mut self, max: usize) -> Option<Vec<(u64, Unit)>> {
        if self.stopping() {
            return None;
        }
        let got = self.jobs.claim(max.max(1))?;
        Some(
            got.into_iter()
                .map(|(i, j)| {
                    let left = j.images.len();
                    self.waiting.insert(i, (j.images, left));
                    (i, j.unit)
                })
                .collect(),
        )
    }

    fn emit(&mut self, c: Canvas) -> bool {
        let Some((images, left)) = self.waiting.get_mut(&c.unit) else {
            self.abort.set(Error::Other(format!(
                "internal: canvas of unknown unit {}",
                c.unit
            )));
            return false;
        };
        let flips = std::mem::take(&mut images[c.slot]);
        *left -= 1;
        if *left == 0 {
            self.waiting.remove(&c.unit);
        }
        !self.stopping()
            && self
                .tx
                .send(Raster {
                    canvas: Arc::new(c.pixels),
                    flips,
                })
                .is_ok()
    }
}

/// Runs the jobs through render -> encode -> sink. Returns the first error of any stage.
pub fn run(
    ctx: &Context,
    jobs: &dyn Jobs,
    sink: &dyn Sink,
    threads: Threads,
    stats: &Stats,
    abort: &Abort,
) -> Result<()> {
    let (raster_tx, raster_rx) = bounded::<Raster>(threads.queue.max(1));
    let writers = sink.writers().max(1);
    let (write_txs, write_rxs): (Vec<Sender<Encoded>>, Vec<Receiver<Encoded>>) = (0..writers)
        .map(|_| bounded(threads.queue.max(1) * 4))
        .unzip();
    std::thread::scope(|s| {
        for worker in 0..ctx.stages.workers(threads.render) {
            let tx = raster_tx.clone();
            s.spawn(move || {
                let r = ctx
                    .stages
                    .open(worker, &stats.render)
                    .and_then(|mut stage| {
                        let mut feed = ThreadFeed {
                            jobs,
                            abort,
                            tx: &tx,
                            waiting: HashMap::new(),
                        };
                        stage.run(&mut feed)
                    });
                if let Err(e) = r {
                    abort.set(e);
                    jobs.close();
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
                    jobs.close();
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
                        jobs.close();
                        break;
                    }
                    StageStats::add(&stats.write_ns, t0);
                    stats.images.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    });
    // A stage that saw the interrupt inside a unit may have stopped without asking the feed again.
    if crate::interrupted() {
        abort.set(Error::Interrupted);
    }
    match abort.take() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn encode_worker(
    ctx: &Context,
    rx: &Receiver<Raster>,
    txs: &[Sender<Encoded>],
    sink: &dyn Sink,
    stats: &Stats,
    abort: &Abort,
) -> Result<()> {
    let mut scratch = crate::encode::Scratch::default();
    for msg in rx.iter() {
        if abort.is_set() {
            return Ok(());
        }
        for &(flip, t) in &msg.flips {
            let t0 = Instant::now();
            let mut png = Vec::new();
            ctx.encoding.encode(
                &msg.canvas,
                &ctx.image,
                flip,
                ctx.png,
                &mut scratch,
                &mut png,
            )?;
            StageStats::add(&stats.encode_ns, t0);
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

/// What a run did: its counts, times and bytes (every family's commands and the benchmark).
#[derive(Clone, Debug, Default)]
pub struct Summary {
    pub images: u64,
    pub skipped: u64,
    pub shards: u64,
    pub bytes: u64,
    pub seconds: f64,
    pub clouds: u64,
    /// Thread-seconds spent per stage (summed over the threads of that stage).
    pub chaos_s: f64,
    pub raster_s: f64,
    pub encode_s: f64,
    pub write_s: f64,
    /// GL only: seconds of device-to-host copies, and their bytes.
    pub readback_s: f64,
    pub readback_bytes: u64,
    /// CPU-seconds of the process during the run (filled in by the benchmark).
    pub cpu_s: f64,
    /// Bytes of the PNGs encoded (the files' size without tar headers).
    pub png_bytes: u64,
}

impl Summary {
    /// Takes the run's counters: images, clouds, stage seconds (added to any already counted, e.g.
    /// a replay before the pipeline), readback, and the PNG bytes when no sink counted bytes.
    pub fn add_stats(&mut self, stats: &Stats) {
        let secs = |c: &AtomicU64| c.load(Ordering::Relaxed) as f64 / 1e9;
        self.images = stats.images.load(Ordering::Relaxed);
        self.clouds = stats.render.clouds.load(Ordering::Relaxed);
        self.chaos_s += secs(&stats.render.chaos_ns);
        self.raster_s = secs(&stats.render.raster_ns);
        self.encode_s = secs(&stats.encode_ns);
        self.write_s = secs(&stats.write_ns);
        self.readback_s = secs(&stats.render.readback_ns);
        self.readback_bytes = stats.render.readback_bytes.load(Ordering::Relaxed);
        self.png_bytes = stats.png_bytes.load(Ordering::Relaxed);
        if self.bytes == 0 {
            self.bytes = self.png_bytes;
        }
    }

    pub fn images_per_second(&self) -> f64 {
        self.images as f64 / self.seconds.max(1e-9)
    }
}
