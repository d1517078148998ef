//! `fractaldb serve`: shards rendered on demand and streamed over HTTP, byte-identical to the files
//! `render --format wds` writes with the same settings.
//!
//! One render pipeline lives for the whole server (its stages, GL contexts included, are made once);
//! its jobs come from a queue of requested shard groups (the order's blocks: a cloud is computed once
//! per block). Each shard of a block streams into an in-memory buffer as the writers produce it in
//! order, so a response starts before the shard is finished; finished shards stay in a bounded cache
//! (least recently used first out, never one a response still reads).

use crate::dataset::{Dataset, Run, ShardWork};
use crate::error::{Error, Result};
use crate::pipeline::{self, Abort, Context, Job, Jobs, Sink, Stats, Target};
use crate::plan::{Layout, Sample};
use crate::sink::wds::{self, InOrderShard, SampleInfo, ShardWriter};
use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// What the service serves: any dataset's shards, byte-identical to its `--format wds` output with
/// the same settings (its shard settings, threads, writers and backend come with the run).
pub struct ServeOptions {
    pub dataset: Box<dyn Dataset + Send>,
    pub job: Run,
    pub listen: String,
    pub public_url: Option<String>,
    pub cache_bytes: u64,
    pub prefetch: u64,
    pub max_clients: usize,
    /// How long in-flight responses may take to finish after SIGTERM/SIGINT.
    pub drain: Duration,
    /// Told the bound address once the service accepts requests (an embedding program, a test:
    /// the command line prints it instead).
    pub ready: Option<std::sync::mpsc::Sender<std::net::SocketAddr>>,
}

/// One shard's bytes as they are written, and whether it is complete.
struct ShardStream {
    data: Mutex<Vec<u8>>,
    progress: watch::Sender<(usize, bool)>,
    last_used: AtomicU64,
}

impl ShardStream {
    fn new() -> Arc<Self> {
        Arc::new(ShardStream {
            data: Mutex::new(Vec::new()),
            progress: watch::channel((0, false)).0,
            last_used: AtomicU64::new(0),
        })
    }
    fn done(&self) -> bool {
        self.progress.borrow().1
    }
}

/// The `Write` end of a [`ShardStream`]: appends and tells the readers.
struct Appender(Arc<ShardStream>);

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
struct Metrics {
    images: AtomicU64,
    shards: AtomicU64,
    bytes_sent: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
    in_flight: AtomicU64,
    rejected: AtomicU64,
    /// Requests waiting for room in a cache full of pinned or unfinished shards.
    waiting: AtomicU64,
}

/// The queue of shard groups (epoch, block) to render, read by the render stages.
struct Queue {
    inner: Mutex<QueueInner>,
    cond: Condvar,
}

#[derive(Default)]
struct QueueInner {
    blocks: VecDeque<(u64, u64)>,
    /// The block being handed out: (epoch, next cloud, end cloud).
    current: Option<(u64, u64, u64)>,
    next_id: u64,
    closed: bool,
}

struct State {
    encoding: crate::encode::Encoding,
    /// The dataset and its prepared shards: the service lives as long as the process, so both are
    /// leaked on purpose and every request handler may read them.
    dataset: &'static dyn Dataset,
    work: &'static dyn ShardWork,
    layout: Layout,
    fingerprint: serde_json::Value,
    prefix: String,
    public_url: Option<String>,
    cache_bytes: u64,
    prefetch: u64,
    key_width: usize,
    /// Class names by label index.
    class_names: Vec<String>,
    cache: Mutex<HashMap<(u64, u64), Arc<ShardStream>>>,
    clock: AtomicU64,
    queue: Queue,
    metrics: Metrics,
    started: Instant,
    clients: Arc<tokio::sync::Semaphore>,
}

impl State {
    /// The shard's stream, from the cache or queued for rendering with its whole block (and the
    /// next `prefetch` blocks). Returns (stream, hit), or `None` when the cache is full of shards
    /// that are being rendered or read (nothing can be dropped): the caller waits and asks again.
    fn shard(&self, epoch: u64, shard: u64) -> Option<(Arc<ShardStream>, bool)> {
        let mut cache = self.cache.lock().unwrap();
        let now = self.clock.fetch_add(1, Ordering::Relaxed);
        if let Some(s) = cache.get(&(epoch, shard)) {
            s.last_used.store(now, Ordering::Relaxed);
            self.metrics.hits.fetch_add(1, Ordering::Relaxed);
            return Some((s.clone(), true));
        }
        if self.evict(&mut cache) >= self.cache_bytes {
            return None;
        }
        self.metrics.misses.fetch_add(1, Ordering::Relaxed);
        let g = self.layout.block_of(shard);
        let blocks = self.layout.blocks();
        for b in g..(g + 1 + self.prefetch).min(blocks) {
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
        Some((cache[&(epoch, shard)].clone(), false))
    }

    /// Drops finished shards nobody reads, least recently used first, while over the budget;
    /// returns the bytes still cached.
    fn evict(&self, cache: &mut HashMap<(u64, u64), Arc<ShardStream>>) -> u64 {
        let mut total: u64 = cache
            .values()
            .map(|s| s.data.lock().unwrap().len() as u64)
            .sum();
        if total <= self.cache_bytes {
            return total;
        }
        let mut candidates: Vec<((u64, u64), u64, u64)> = cache
            .iter()
            .filter(|(_, s)| s.done() && Arc::strong_count(s) == 1)
            .map(|(k, s)| {
                (
                    *k,
                    s.last_used.load(Ordering::Relaxed),
                    s.data.lock().unwrap().len() as u64,
                )
            })
            .collect();
        candidates.sort_by_key(|c| c.1);
        for (k, _, len) in candidates {
            if total <= self.cache_bytes {
                break;
            }
            cache.remove(&k);
            total -= len;
        }
        total
    }

    fn etag(&self, epoch: u64, shard: u64) -> String {
        let mut h = Sha256::new();
        h.update(self.fingerprint.to_string().as_bytes());
        h.update(format!("/{epoch}/{shard}").as_bytes());
        let d = h.finalize();
        format!(
            "\"{}\"",
            d[..12]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        )
    }
}

/// The render stages' side of the queue.
struct ServeJobs<'a>(&'a State);

impl Jobs for ServeJobs<'_> {
    fn claim(&self, max: usize) -> Option<Vec<(u64, Job)>> {
        self.next(max, true)
    }
    fn try_claim(&self, max: usize) -> Option<Vec<(u64, Job)>> {
        self.next(max, false)
    }
}

impl ServeJobs<'_> {
    /// The next clouds of the queued groups; `wait`: block until a group is queued (or the
    /// server closes the queue).
    fn next(&self, max: usize, wait: bool) -> Option<Vec<(u64, Job)>> {
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
struct Writing {
    meta: Arc<dyn wds::SampleMeta>,
    order: InOrderShard<(Sample, Vec<u8>)>,
    /// Buffered: readers are woken per 64 KiB, not per tar header.
    writer: Option<ShardWriter<std::io::BufWriter<Appender>>>,
}

struct ServeSink<'a> {
    st: &'a State,
    /// Shards being written, by (epoch, shard), per writer thread.
    writers: Vec<Mutex<HashMap<(u64, u64), Writing>>>,
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

/// What a request path names.
#[derive(Debug, PartialEq, Eq)]
enum Resource {
    Shard { epoch: u64, shard: u64 },
    Wids,
    Manifest,
    Health,
    Metrics,
}

/// Parses a request path; `Err((status, reason))` for anything else. Only this dataset's names are
/// served: no directory, no percent-encoding, no dots beyond the extension.
fn parse_path(
    path: &str,
    prefix: &str,
    shards: u64,
) -> std::result::Result<Resource, (StatusCode, String)> {
    if path.len() > 256 {
        return Err((StatusCode::BAD_REQUEST, "path too long".into()));
    }
    if path.contains('%') || path.contains("..") || path.contains("//") || !path.starts_with('/') {
        return Err((
            StatusCode::BAD_REQUEST,
            "malformed path (no percent-encoding, '..' or empty segments)".into(),
        ));
    }
    let parts: Vec<&str> = path[1..].split('/').collect();
    let (epoch, file) = match parts.as_slice() {
        [f] => (0, *f),
        ["epoch", e, f] => match e.parse::<u64>() {
            Ok(e) => (e, *f),
            Err(_) => {
                return Err((
                    StatusCode::BAD_REQUEST,
                    format!("epoch {e:?} is not a number"),
                ));
            }
        },
        _ => return Err((StatusCode::NOT_FOUND, format!("no such path {path:?}"))),
    };
    match file {
        "healthz" if epoch == 0 && parts.len() == 1 => return Ok(Resource::Health),
        "metrics" if parts.len() == 1 => return Ok(Resource::Metrics),
        "manifest.json" if parts.len() == 1 => return Ok(Resource::Manifest),
        _ => {}
    }
    if parts.len() == 1 && file == format!("{prefix}-wids.json") {
        return Ok(Resource::Wids);
    }
    let n = file
        .strip_prefix(prefix)
        .and_then(|r| r.strip_prefix('-'))
        .and_then(|r| r.strip_suffix(".tar"))
        .filter(|d| d.len() >= 6 && d.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|d| d.parse::<u64>().ok());
    match n {
        Some(s) if s < shards => Ok(Resource::Shard { epoch, shard: s }),
        Some(s) => Err((
            StatusCode::NOT_FOUND,
            format!(
                "shard {s} is out of range: this dataset has shards {} to {}",
                wds::shard_name(prefix, 0),
                wds::shard_name(prefix, shards - 1)
            ),
        )),
        None => Err((StatusCode::NOT_FOUND, format!("no such file {file:?}"))),
    }
}

fn text(status: StatusCode, body: String) -> Response<Body> {
    let mut r = Response::new(Body::from(body + "\n"));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn json(v: &serde_json::Value) -> Response<Body> {
    let mut r = Response::new(Body::from(
        serde_json::to_string_pretty(v).unwrap_or_default() + "\n",
    ));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn base_url(st: &State, headers: &HeaderMap) -> String {
    if let Some(u) = &st.public_url {
        return u.trim_end_matches('/').to_string();
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    format!("http://{host}")
}

fn metrics_text(st: &State) -> String {
    let m = &st.metrics;
    let queue = st.queue.inner.lock().unwrap().blocks.len();
    let images = m.images.load(Ordering::Relaxed);
    let secs = st.started.elapsed().as_secs_f64().max(1e-9);
    let mut s = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, v: String| {
        s.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}\n"
        ));
    };
    metric(
        "fractaldb_images_rendered_total",
        "counter",
        "Images rendered.",
        images.to_string(),
    );
    metric(
        "fractaldb_shards_rendered_total",
        "counter",
        "Shards rendered.",
        m.shards.load(Ordering::Relaxed).to_string(),
    );
    metric(
        "fractaldb_bytes_sent_total",
        "counter",
        "Shard bytes sent.",
        m.bytes_sent.load(Ordering::Relaxed).to_string(),
    );
    metric(
        "fractaldb_cache_hits_total",
        "counter",
        "Shard requests served from the cache.",
        m.hits.load(Ordering::Relaxed).to_string(),
    );
    metric(
        "fractaldb_cache_misses_total",
        "counter",
        "Shard requests that queued a render.",
        m.misses.load(Ordering::Relaxed).to_string(),
    );
    metric(
        "fractaldb_requests_in_flight",
        "gauge",
        "Shard responses being sent.",
        m.in_flight.load(Ordering::Relaxed).to_string(),
    );
    metric(
        "fractaldb_requests_rejected_total",
        "counter",
        "Requests refused with 503 (too many clients).",
        m.rejected.load(Ordering::Relaxed).to_string(),
    );
    metric(
        "fractaldb_requests_waiting_for_cache",
        "gauge",
        "Requests waiting because the cache is full of shards being rendered or read.",
        m.waiting.load(Ordering::Relaxed).to_string(),
    );
    metric(
        "fractaldb_queue_depth",
        "gauge",
        "Shard groups waiting to be rendered.",
        queue.to_string(),
    );
    metric(
        "fractaldb_render_images_per_second",
        "gauge",
        "Images rendered per second since the start.",
        format!("{:.1}", images as f64 / secs),
    );
    s
}

/// Releases the in-flight count when a response body ends or is dropped (client gone).
struct InFlight(Arc<State>, Option<tokio::sync::OwnedSemaphorePermit>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.metrics.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.1.take();
    }
}

async fn handle(st: Arc<State>, req: Request<Body>) -> Response<Body> {
    let head = req.method() == Method::HEAD;
    if req.method() != Method::GET && !head {
        let mut r = text(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("method {} not allowed: GET or HEAD", req.method()),
        );
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let target = match parse_path(req.uri().path(), &st.prefix, st.layout.shards) {
        Ok(t) => t,
        Err((code, why)) => return text(code, why),
    };
    match target {
        Resource::Health => text(StatusCode::OK, "ok".into()),
        Resource::Metrics => {
            let mut r = Response::new(Body::from(metrics_text(&st)));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            r
        }
        Resource::Manifest => json(&serde_json::json!({
            "kind": "fractaldb-serve-manifest-v1",
            "config": st.fingerprint,
            "total_samples": st.layout.total,
            "samples_per_shard": st.layout.per_shard,
            "shard_count": st.layout.shards,
            "classes": st.class_names,
        })),
        Resource::Wids => {
            let base = base_url(&st, req.headers());
            let list = (0..st.layout.shards).map(|s| wds::WidsShard {
                url: format!("{base}/{}", wds::shard_name(&st.prefix, s)),
                nsamples: st.layout.shard_range(s).count() as u64,
                filesize: None,
            });
            json(&wds::wids_index(&st.prefix, list))
        }
        Resource::Shard { epoch, shard } => {
            if let Some(why) = st.dataset.epoch_refusal(epoch) {
                return text(StatusCode::BAD_REQUEST, why);
            }
            let permit = match st.clients.clone().try_acquire_owned() {
                Ok(p) => p,
                Err(_) => {
                    st.metrics.rejected.fetch_add(1, Ordering::Relaxed);
                    let mut r = text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "too many clients: retry shortly".into(),
                    );
                    r.headers_mut()
                        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                    return r;
                }
            };
            let mut builder = Response::builder()
                .status(StatusCode::OK)
                .header(header::CONTENT_TYPE, "application/x-tar")
                .header(header::ETAG, st.etag(epoch, shard));
            if head {
                return builder.body(Body::empty()).unwrap();
            }
            // A cache full of shards being rendered or read: this new group waits (visible in
            // /metrics), holding its client slot.
            let stream = loop {
                if let Some((s, _hit)) = st.shard(epoch, shard) {
                    break s;
                }
                st.metrics.waiting.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
                st.metrics.waiting.fetch_sub(1, Ordering::Relaxed);
            };
            if stream.done() {
                let len = stream.data.lock().unwrap().len();
                builder = builder.header(header::CONTENT_LENGTH, len);
            }
            st.metrics.in_flight.fetch_add(1, Ordering::Relaxed);
            let guard = InFlight(st.clone(), Some(permit));
            let rx = stream.progress.subscribe();
            let body = futures_util::stream::unfold(
                (stream, rx, 0usize, guard),
                |(stream, mut rx, off, guard)| async move {
                    loop {
                        let (len, done) = *rx.borrow_and_update();
                        if off < len {
                            let end = len.min(off + (1 << 20));
                            let chunk = axum::body::Bytes::copy_from_slice(
                                &stream.data.lock().unwrap()[off..end],
                            );
                            guard
                                .0
                                .metrics
                                .bytes_sent
                                .fetch_add((end - off) as u64, Ordering::Relaxed);
                            return Some((
                                Ok::<_, std::io::Error>(chunk),
                                (stream, rx, end, guard),
                            ));
                        }
                        if done {
                            return None;
                        }
                        if rx.changed().await.is_err() {
                            return None;
                        }
                    }
                },
            );
            builder.body(Body::from_stream(body)).unwrap()
        }
    }
}

/// SIGTERM and SIGINT, caught from the moment this is made: made before the service says it is
/// listening, so a signal sent as soon as the address is known stops it gracefully (exit 0), never
/// by the default action.
struct StopSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl StopSignals {
    /// Installs the handlers; needs the runtime's context (`rt.enter()`).
    fn install() -> Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        let err = |e| Error::Other(format!("serve: cannot catch SIGTERM/SIGINT: {e}"));
        Ok(StopSignals {
            term: signal(SignalKind::terminate()).map_err(err)?,
            int: signal(SignalKind::interrupt()).map_err(err)?,
        })
    }

    async fn recv(mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

/// The service's one pipeline, for its life: queued shard groups -> the family's render stages ->
/// the shard streams. A failure is logged and flagged (requests then get no new shards).
fn serve_render(
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
    }
}

/// Runs the service until SIGTERM/SIGINT.
pub fn run(opts: ServeOptions) -> Result<()> {
    let job = &opts.job;
    let sh = &job.shards;
    if sh.per_shard == 0 {
        return Err(Error::flag("--samples-per-shard", "must be at least 1"));
    }
    let prefix = &sh.prefix;
    wds::check_prefix(prefix)?;
    if prefix.contains('%') {
        return Err(Error::flag(
            "--prefix",
            "must not contain '%' (it goes into URLs)",
        ));
    }
    // The dataset, prepared once for every shard (nothing written); see `State::dataset`.
    let t0 = Instant::now();
    let dataset: &'static dyn Dataset = Box::leak(opts.dataset);
    let work: &'static dyn ShardWork = Box::leak(dataset.shards(sh, &job.env(false))?);
    let stages = work.stages(None)?;
    let quiet = job.progress == crate::progress::Mode::Quiet;
    if !quiet {
        crate::say!(
            "serve: {} prepared in {:.1}s",
            dataset.title(),
            t0.elapsed().as_secs_f64()
        );
    }
    let layout = work.layout().clone();
    let mut fingerprint = dataset.shard_fingerprint(sh);
    job.encoding.record(&mut fingerprint);
    let class_names = dataset.class_names();
    let listener = std::net::TcpListener::bind(&opts.listen)
        .map_err(|e| Error::io(&opts.listen, "cannot listen", e))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| Error::io(&opts.listen, "cannot listen", e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::io(&opts.listen, "cannot listen", e))?;
    let st = Arc::new(State {
        fingerprint,
        key_width: wds::key_width(layout.total),
        class_names,
        prefix: prefix.clone(),
        public_url: opts.public_url.clone(),
        cache_bytes: opts.cache_bytes,
        prefetch: opts.prefetch,
        cache: Mutex::new(HashMap::new()),
        clock: AtomicU64::new(0),
        queue: Queue {
            inner: Mutex::new(QueueInner::default()),
            cond: Condvar::new(),
        },
        metrics: Metrics::default(),
        started: Instant::now(),
        clients: Arc::new(tokio::sync::Semaphore::new(opts.max_clients.max(1))),
        dataset,
        work,
        encoding: job.encoding,
        layout,
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::Other(format!("serve: cannot start the runtime: {e}")))?;
    let signals = {
        let _in_runtime = rt.enter();
        StopSignals::install()?
    };
    crate::say!(
        "serve: listening on http://{addr} ({} shards of at most {} samples, {} per shard group; \
         no authentication: bind to a private interface or put it behind a proxy)",
        st.layout.shards,
        st.layout.per_shard,
        st.layout.block_shards
    );
    if let Some(tx) = &opts.ready {
        let _ = tx.send(addr);
    }
    let render_failed = Arc::new(AtomicBool::new(false));
    let render = {
        let st = st.clone();
        let failed = render_failed.clone();
        let (threads, writers) = (job.threads, job.writers);
        std::thread::spawn(move || {
            let (image, png) = (st.dataset.image(), st.dataset.png());
            serve_render(&st, &*stages, image, threads, png, writers, &failed)
        })
    };
    let drain = opts.drain;
    let served = rt.block_on(async {
        let listener = tokio::net::TcpListener::from_std(listener)
            .map_err(|e| Error::Other(format!("serve: {e}")))?;
        let app = axum::Router::new().fallback({
            let st = st.clone();
            move |req: Request<Body>| handle(st.clone(), req)
        });
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = axum::serve(listener, app).with_graceful_shutdown(async move {
            signals.recv().await;
            crate::say!("serve: stopping: finishing the responses in flight");
            let _ = stop_tx.send(());
        });
        let server = tokio::spawn(async move { server.await });
        // After the signal, in-flight responses get `drain` to finish.
        let _ = stop_rx.await;
        match tokio::time::timeout(drain, server).await {
            Ok(r) => r
                .map_err(|e| Error::Other(format!("serve: {e}")))?
                .map_err(|e| Error::Other(format!("serve: {e}"))),
            Err(_) => {
                crate::say!("serve: responses still running after {drain:?}: stopping anyway");
                Ok(())
            }
        }
    });
    {
        let mut q = st.queue.inner.lock().unwrap();
        q.closed = true;
        q.blocks.clear();
        st.queue.cond.notify_all();
    }
    let _ = render.join();
    served?;
    if render_failed.load(Ordering::Relaxed) {
        return Err(Error::Other(
            "serve: the render stage failed (see above)".into(),
        ));
    }
    crate::say!("serve: stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_only_this_datasets_files() {
        let p = |s| parse_path(s, "fractaldb", 10);
        assert_eq!(
            p("/fractaldb-000003.tar"),
            Ok(Resource::Shard { epoch: 0, shard: 3 })
        );
        assert_eq!(
            p("/epoch/2/fractaldb-000009.tar"),
            Ok(Resource::Shard { epoch: 2, shard: 9 })
        );
        assert_eq!(p("/fractaldb-wids.json"), Ok(Resource::Wids));
        assert_eq!(p("/manifest.json"), Ok(Resource::Manifest));
        assert_eq!(p("/healthz"), Ok(Resource::Health));
        assert_eq!(p("/metrics"), Ok(Resource::Metrics));
        assert_eq!(
            p("/fractaldb-000010.tar").unwrap_err().0,
            StatusCode::NOT_FOUND
        );
        for bad in [
            "/../etc/passwd",
            "/%2e%2e/x",
            "//etc/passwd",
            "/fractaldb-000003.tar/..",
        ] {
            assert_eq!(p(bad).unwrap_err().0, StatusCode::BAD_REQUEST, "{bad}");
        }
        for missing in [
            "/etc/passwd",
            "/fractaldb-3.tar",
            "/other-000001.tar",
            "/epoch/x/y/z",
        ] {
            assert!(p(missing).is_err(), "{missing}");
        }
        assert_eq!(
            p(&format!("/{}", "a".repeat(300))).unwrap_err().0,
            StatusCode::BAD_REQUEST
        );
    }
}
