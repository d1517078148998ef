//! `fractaldb serve`: shards rendered on demand and streamed over HTTP, byte-identical to the files
//! `render --format wds` writes with the same settings.
//!
//! One render pipeline lives for the whole server (its stages, GL contexts included, are made once);
//! its jobs come from a queue of requested shard groups (the order's blocks: a cloud is computed once
//! per block). Each shard of a block streams into an in-memory buffer as the writers produce it in
//! order, so a response starts before the shard is finished; finished shards stay in a bounded cache
//! (least recently used first out, never one a response still reads).
mod cache;
mod conn;
mod routes;

use crate::dataset::{Dataset, Run, ShardWork};
use crate::error::{Error, Result};
use crate::render::Stages;
use crate::sink::wds;
use cache::{Metrics, Queue, QueueInner, State, serve_render};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

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
    /// How long a client may take to send a request head (or keep an idle connection open, or
    /// leave a response unread) before its connection is closed.
    pub idle: Duration,
    /// One line per response on stderr (`--access-log`).
    pub access_log: bool,
    /// Told the bound address once the service accepts requests (an embedding program, a test:
    /// the command line prints it instead).
    pub ready: Option<std::sync::mpsc::Sender<std::net::SocketAddr>>,
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

/// Runs the service until SIGTERM/SIGINT.
pub fn run(opts: ServeOptions) -> Result<()> {
    let ServeOptions {
        dataset,
        job,
        listen,
        public_url,
        cache_bytes,
        prefetch,
        max_clients,
        drain,
        idle,
        access_log,
        ready,
    } = opts;
    // See `State::dataset`: leaked on purpose, for the life of the process.
    let dataset: &'static dyn Dataset = Box::leak(dataset);
    let job = crate::dataset::fit_memory(dataset, &job)?;
    let cache = (cache_bytes, prefetch, max_clients);
    let (st, stages) = prepare(dataset, &job, public_url, cache)?;
    let listener =
        std::net::TcpListener::bind(&listen).map_err(|e| Error::io(&listen, "cannot listen", e))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| Error::io(&listen, "cannot listen", e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::io(&listen, "cannot listen", e))?;
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
    if let Some(tx) = &ready {
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
    let served = rt.block_on(serve_until_stopped(
        st.clone(),
        listener,
        signals,
        (idle, drain, access_log),
    ));
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

/// The dataset, prepared once for every shard (nothing written), and the service's state around
/// it (`cache`: its bytes, the groups prefetched, the clients at once); the render stages for
/// every cloud.
fn prepare(
    dataset: &'static dyn Dataset,
    job: &Run,
    public_url: Option<String>,
    (cache_bytes, prefetch, max_clients): (u64, u64, usize),
) -> Result<(Arc<State>, Box<dyn Stages + Send>)> {
    let sh = &job.shards;
    if sh.per_shard == 0 {
        return Err(Error::flag("--samples-per-shard", "must be at least 1"));
    }
    let prefix = &sh.prefix;
    wds::check_prefix(prefix)?;
    // The prefix goes into URLs as it is: only characters a URL path carries unescaped.
    if let Some(c) = prefix
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "-_.".contains(*c)))
    {
        return Err(Error::flag(
            "--prefix",
            format!(
                "{c:?} cannot go into a shard URL unescaped: use letters, digits, '-', '_' or '.'"
            ),
        ));
    }
    let t0 = Instant::now();
    let work: &'static dyn ShardWork = Box::leak(dataset.shards(sh, &job.env(false))?);
    let stages = work.stages(None)?;
    if job.progress != crate::progress::Mode::Quiet {
        crate::say!(
            "serve: {} prepared in {:.1}s",
            dataset.title(),
            t0.elapsed().as_secs_f64()
        );
    }
    let layout = work.layout().clone();
    let mut fingerprint = dataset.shard_fingerprint(sh);
    job.encoding.record(&mut fingerprint);
    let st = Arc::new(State {
        fingerprint,
        key_width: wds::key_width(layout.total),
        class_names: dataset.class_names(),
        prefix: prefix.clone(),
        public_url,
        cache_bytes,
        prefetch,
        cache: Mutex::new(HashMap::new()),
        clock: AtomicU64::new(0),
        queue: Queue {
            inner: Mutex::new(QueueInner::default()),
            cond: Condvar::new(),
        },
        metrics: Metrics::default(),
        started: Instant::now(),
        clients: Arc::new(tokio::sync::Semaphore::new(max_clients.max(1))),
        failed: std::sync::OnceLock::new(),
        stop: tokio::sync::Notify::new(),
        dataset,
        work,
        encoding: job.encoding,
        layout,
    });
    Ok((st, stages))
}

/// Serves requests until SIGTERM/SIGINT or the render stage failing (nothing more could be
/// served); then the responses in flight get `drain` to finish.
async fn serve_until_stopped(
    st: Arc<State>,
    listener: std::net::TcpListener,
    signals: StopSignals,
    (idle, drain, log): (Duration, Duration, bool),
) -> Result<()> {
    let listener = conn::listener(listener)?;
    let stop = {
        let st = st.clone();
        async move {
            tokio::select! {
                _ = signals.recv() => {}
                _ = st.stop.notified() => {}
            }
        }
    };
    conn::serve_until(listener, st, (idle, drain, log), stop).await
}
