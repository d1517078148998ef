//! The service's shards: a bounded cache of shard streams (least recently used first out, never
//! one a response still reads), the queue of shard groups the render stages take their work from,
//! and the sink that writes each shard into its stream in order.

use super::Dataset;
use crate::dataset::ShardWork;
use crate::error::{Error, Result};
use crate::pipeline::{self, Abort, Context, Job, Jobs, Sink, Stats, Target};
use crate::plan::{Layout, Sample};
use crate::sink::wds::{self, InOrderShard, SampleInfo, ShardWriter};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;
use tokio::sync::watch;

/// One shard's bytes as they are written, and whether it is complete.
pub(super) struct ShardStream {
    pub(super) data: Mutex<Vec<u8>>,
    pub(super) progress: watch::Sender<(usize, bool)>,
    pub(super) last_used: AtomicU64,
}

impl ShardStream {
    pub(super) fn new() -> Arc<Self> {
        Arc::new(ShardStream {
            data: Mutex::new(Vec::new()),
            progress: watch::channel((0, false)).0,
            last_used: AtomicU64::new(0),
        })
    }
    pub(super) fn done(&self) -> bool {
        self.progress.borrow().1
    }
}

/// The `Write` end of a [`ShardStream`]: appends and tells the readers.
pub(super) struct Appender(Arc<ShardStream>);

impl std::io::Write for Appender {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let len = {
            let mut d = self.0.data.lock().unwrap();
            d.extend_from_slice(b);
            d.len()
        };
        self.0.progress.send_replace((len, false));
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Counters of `/metrics`.
#[derive(Default)]
pub(super) struct Metrics {
    pub(super) images: AtomicU64,
    pub(super) shards: AtomicU64,
    pub(super) bytes_sent: AtomicU64,
    pub(super) hits: AtomicU64,
    pub(super) misses: AtomicU64,
    pub(super) in_flight: AtomicU64,
    pub(super) rejected: AtomicU64,
    /// Requests waiting for room in a cache full of pinned or unfinished shards.
    pub(super) waiting: AtomicU64,
}

/// The queue of shard groups (epoch, block) to render, read by the render stages.
pub(super) struct Queue {
    pub(super) inner: Mutex<QueueInner>,
    pub(super) cond: Condvar,
}

#[derive(Default)]
pub(super) struct QueueInner {
    pub(super) blocks: VecDeque<(u64, u64)>,
    /// The block being handed out: (epoch, next cloud, end cloud).
    pub(super) current: Option<(u64, u64, u64)>,
    pub(super) next_id: u64,
    pub(super) closed: bool,
}

pub(super) struct State {
    pub(super) encoding: crate::encode::Encoding,
    /// The dataset and its prepared shards: the service lives as long as the process, so both are
    /// leaked on purpose and every request handler may read them.
    pub(super) dataset: &'static dyn Dataset,
    pub(super) work: &'static dyn ShardWork,
    pub(super) layout: Layout,
    pub(super) fingerprint: serde_json::Value,
    pub(super) prefix: String,
    pub(super) public_url: Option<String>,
    pub(super) cache_bytes: u64,
    pub(super) prefetch: u64,
    pub(super) key_width: usize,
    /// Class names by label index.
    pub(super) class_names: Vec<String>,
    pub(super) cache: Mutex<HashMap<(u64, u64), Arc<ShardStream>>>,
    pub(super) clock: AtomicU64,
    pub(super) queue: Queue,
    pub(super) metrics: Metrics,
    pub(super) started: Instant,
    pub(super) clients: Arc<tokio::sync::Semaphore>,
    /// Why the render stage stopped, once it has: requests then get 503, `/healthz` too, bodies
    /// being sent are aborted, and the service stops (exit non-zero) so a supervisor restarts it.
    pub(super) failed: std::sync::OnceLock<String>,
    /// Wakes the server to stop after a render failure.
    pub(super) stop: tokio::sync::Notify,
}

impl State {
    /// Records a render failure and wakes everything that waits for a shard.
    pub(super) fn fail(&self, why: String) {
        let _ = self.failed.set(why);
        for s in self.cache.lock().unwrap().values() {
            s.progress.send_modify(|_| {});
        }
        self.stop.notify_one();
    }

    /// The shard's stream, from the cache or queued for rendering with its whole block (and the
    /// next `prefetch` blocks). Returns (stream, hit), or `None` when the cache is full of shards
    /// that are being rendered or read (nothing can be dropped): the caller waits and asks again.
    pub(super) fn shard(&self, epoch: u64, shard: u64) -> Option<(Arc<ShardStream>, bool)> {
        let mut cache = self.cache.lock().unwrap();
        let now = self.clock.fetch_add(1, Ordering::Relaxed);
        if let Some(s) = cache.get(&(epoch, shard)) {
            s.last_used.store(now, Ordering::Relaxed);
            self.metrics.hits.fetch_add(1, Ordering::Relaxed);
            return Some((s.clone(), true));
        }
        // A new group is admitted when what stays cached fits the budget (with nothing cached, one
        // group always is, whatever its size: a budget of 0 renders one group at a time).
        if self.evict(&mut cache) > self.cache_bytes {
            return None;
        }
        self.metrics.misses.fetch_add(1, Ordering::Relaxed);
        let g = self.layout.block_of(shard);
        let blocks = self.layout.blocks();
        let end = g
            .saturating_add(1)
            .saturating_add(self.prefetch)
            .min(blocks);
        for b in g..end {
            let r = self.layout.block_shard_range(b);
            if cache.contains_key(&(epoch, r.start)) {
                continue;
            }
            for s in r {
                let st = ShardStream::new();
                st.last_used.store(now, Ordering::Relaxed);
                cache.insert((epoch, s), st);
            }
            let mut q = self.queue.inner.lock().unwrap();
            q.blocks.push_back((epoch, b));
            self.queue.cond.notify_all();
        }
        // Whole groups are cached, so the requested shard's group is there now.
        cache.get(&(epoch, shard)).map(|s| (s.clone(), false))
    }

    /// Drops finished shard groups nobody reads, least recently used first, while over the budget;
    /// returns the bytes still cached. Groups are cached and dropped whole (a group is what one
    /// render writes), so a lookup never finds a group half there.
    pub(super) fn evict(&self, cache: &mut HashMap<(u64, u64), Arc<ShardStream>>) -> u64 {
        let mut total: u64 = cache
            .values()
            .map(|s| s.data.lock().unwrap().len() as u64)
            .sum();
        if total <= self.cache_bytes {
            return total;
        }
        // Per (epoch, group): droppable (every shard finished, none read), last use, bytes.
        let mut groups: HashMap<(u64, u64), (bool, u64, u64)> = HashMap::new();
        for (&(epoch, shard), s) in cache.iter() {
            let g = groups
                .entry((epoch, self.layout.block_of(shard)))
                .or_insert((true, 0, 0));
            g.0 &= s.done() && Arc::strong_count(s) == 1;
            g.1 = g.1.max(s.last_used.load(Ordering::Relaxed));
            g.2 += s.data.lock().unwrap().len() as u64;
        }
        let mut droppable: Vec<_> = groups.into_iter().filter(|(_, g)| g.0).collect();
        droppable.sort_by_key(|(_, g)| g.1);
        for ((epoch, block), (_, _, bytes)) in droppable {
            if total <= self.cache_bytes {
                break;
            }
            for s in self.layout.block_shard_range(block) {
                cache.remove(&(epoch, s));
            }
            total -= bytes;
        }
        total
    }

    pub(super) fn etag(&self, epoch: u64, shard: u64) -> String {
        let mut h = Sha256::new();
        h.update(self.fingerprint.to_string().as_bytes());
        h.update(format!("/{epoch}/{shard}").as_bytes());
        let d = h.finalize();
        format!("\"{}\"", wds::hex(&d[..12]))
    }
}

/// The render stages' side of the queue.
pub(super) struct ServeJobs<'a>(&'a State);

impl Jobs for ServeJobs<'_> {
    fn claim(&self, max: usize) -> Option<Vec<(u64, Job)>> {
        self.next(max, true)
    }
    fn try_claim(&self, max: usize) -> Option<Vec<(u64, Job)>> {
        self.next(max, false)
    }
    fn close(&self) {
        let mut q = self.0.queue.inner.lock().unwrap();
        q.closed = true;
        self.0.queue.cond.notify_all();
    }
}

impl ServeJobs<'_> {
    /// The next clouds of the queued groups; `wait`: block until a group is queued (or the
    /// server closes the queue).
    pub(super) fn next(&self, max: usize, wait: bool) -> Option<Vec<(u64, Job)>> {
        let st = self.0;
        let mut q = st.queue.inner.lock().unwrap();
        loop {
            if q.closed {
                return None;
            }
            if q.current.is_none_or(|(_, a, b)| a >= b) {
                if let Some((epoch, g)) = q.blocks.pop_front() {
                    let c = st.layout.block_clouds(g);
                    q.current = Some((epoch, c.start, c.end));
                } else if wait {
                    q = st.queue.cond.wait(q).unwrap();
                    continue;
                } else {
                    return None;
                }
            }
            let (epoch, a, b) = q.current.unwrap();
            let end = b.min(a + max as u64);
            q.current = Some((epoch, end, b));
            let first = q.next_id;
            q.next_id += end - a;
            drop(q);
            return Some(
                (a..end)
                    .enumerate()
                    .map(|(k, cloud)| {
                        let job = crate::sink::wds::cloud_job(&st.layout, cloud, |_| true, epoch);
                        (first + k as u64, job)
                    })
                    .collect(),
            );
        }
    }
}

/// A shard being written by the pipeline's writers: images held until their turn, and its samples'
/// metadata (one per shard, not per image).
pub(super) struct Writing {
    pub(super) meta: Arc<dyn wds::SampleMeta>,
    pub(super) order: InOrderShard<(Sample, Vec<u8>)>,
    /// Buffered: readers are woken per 64 KiB, not per tar header.
    pub(super) writer: Option<ShardWriter<std::io::BufWriter<Appender>>>,
}

pub(super) struct ServeSink<'a> {
    pub(super) st: &'a State,
    /// Shards being written, by (epoch, shard), per writer thread.
    pub(super) writers: Vec<Mutex<HashMap<(u64, u64), Writing>>>,
}

impl Sink for ServeSink<'_> {
    fn writers(&self) -> usize {
        self.writers.len()
    }
    fn route(&self, t: &Target) -> usize {
        ((t.shard + t.epoch) % self.writers.len() as u64) as usize
    }
    fn accept(&self, writer: usize, t: Target, png: Vec<u8>) -> Result<()> {
        let st = self.st;
        let (epoch, shard) = (t.epoch, t.shard);
        let mut map = self.writers[writer].lock().unwrap();
        let w = map.entry((epoch, shard)).or_insert_with(|| Writing {
            meta: st.work.meta(epoch),
            order: InOrderShard::new(st.layout.shard_range(shard)),
            writer: None,
        });
        w.order.push(shard, t.pos, (t.sample, png))?;
        let info = SampleInfo {
            classes: &st.class_names,
            layout: &st.layout,
            key_width: st.key_width,
            meta: &*w.meta,
            encoding: st.encoding,
        };
        while let Some((pos, (s, png))) = w.order.pop() {
            if w.writer.is_none() {
                // The stream the cache made for this shard (or a fresh one if it was evicted).
                let stream = st
                    .cache
                    .lock()
                    .unwrap()
                    .get(&(epoch, shard))
                    .cloned()
                    .unwrap_or_else(ShardStream::new);
                w.writer = Some(ShardWriter::new(std::io::BufWriter::with_capacity(
                    64 << 10,
                    Appender(stream),
                )));
            }
            info.write(w.writer.as_mut().unwrap(), pos, s, &png)
                .map_err(|e| Error::Other(format!("serve: shard {shard}: {e}")))?;
            st.metrics.images.fetch_add(1, Ordering::Relaxed);
        }
        if w.order.complete() {
            let sw = w.writer.take().expect("a complete shard has a writer");
            map.remove(&(epoch, shard));
            let io = |e: std::io::Error| Error::Other(format!("serve: shard {shard}: {e}"));
            let (buf, _) = sw.finish().map_err(io)?;
            let Appender(stream) = buf.into_inner().map_err(|e| io(e.into_error()))?;
            let len = stream.data.lock().unwrap().len();
            stream.progress.send_replace((len, true));
            st.metrics.shards.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }
}

/// The service's one pipeline, for its life: queued shard groups -> the family's render stages ->
/// the shard streams. A failure is logged and flagged (requests then get no new shards).
pub(super) fn serve_render(
    st: &State,
    stages: &dyn crate::render::Stages,
    image: crate::render::ImageFormat,
    threads: pipeline::Threads,
    png: crate::render::PngConfig,
    writers: usize,
    failed: &AtomicBool,
) {
    let ctx = Context {
        stages,
        image,
        png,
        encoding: st.encoding,
    };
    let sink = ServeSink {
        st,
        writers: (0..writers.max(1))
            .map(|_| Mutex::new(HashMap::new()))
            .collect(),
    };
    let r = pipeline::run(
        &ctx,
        &ServeJobs(st),
        &sink,
        threads,
        &Stats::default(),
        &Abort::default(),
    );
    if let Err(e) = r {
        failed.store(true, Ordering::Relaxed);
        crate::say!("serve: the render stage stopped: {e}");
        st.fail(e.to_string());
    }
}
