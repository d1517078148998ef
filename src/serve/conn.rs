//! Connections: HTTP/1.1 served with hyper directly (not `axum::serve`, which sets no timer), so
//! that a client is dropped after `idle` when it sends no complete request head (slowloris, an
//! idle keep-alive connection) or stops reading a response, and SIGTERM drains the connections
//! gracefully (idle ones close at once, responses in flight get `drain` to finish).

use super::cache::State;
use super::routes::handle;
use crate::error::{Error, Result};
use axum::body::Body;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;

/// Accepts and serves connections until `stop` completes; then drains them for at most `drain`.
/// `log`: one line per response on stderr ([`access_line`]).
pub(super) async fn serve_until(
    listener: TcpListener,
    st: Arc<State>,
    (idle, drain, log): (Duration, Duration, bool),
    stop: impl Future<Output = ()>,
) -> Result<()> {
    let graceful = GracefulShutdown::new();
    let mut stop = std::pin::pin!(stop);
    loop {
        let tcp = tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok(ok) => ok,
                Err(e) => {
                    // Out of descriptors and the like: the connections open now still finish;
                    // accept again shortly.
                    crate::say!("serve: cannot accept a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let (tcp, peer) = tcp;
        let _ = tcp.set_nodelay(true);
        let st = st.clone();
        let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            let st = st.clone();
            async move {
                let t0 = std::time::Instant::now();
                let line = log.then(|| (req.method().clone(), req.uri().clone()));
                let r = handle(st, req.map(Body::new)).await;
                if let Some((method, uri)) = line {
                    crate::say!("{}", access_line(peer, &method, &uri, &r, t0.elapsed()));
                }
                Ok::<_, std::convert::Infallible>(r)
            }
        });
        let conn = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(idle)
            .serve_connection(TokioIo::new(StallLimit::new(tcp, idle)), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            // A client's broken or timed-out connection is that client's business.
            let _ = conn.await;
        });
    }
    drop(listener);
    crate::say!("serve: stopping: finishing the responses in flight");
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        crate::say!("serve: responses still running after {drain:?}: stopping anyway");
    }
    Ok(())
}

/// A response's access-log line: `serve: PEER "METHOD PATH" STATUS BYTES MS` (BYTES: the
/// response's length, `-` when unknown; MS: until the response head).
pub(super) fn access_line(
    peer: std::net::SocketAddr,
    method: &hyper::Method,
    uri: &hyper::Uri,
    r: &hyper::Response<Body>,
    took: Duration,
) -> String {
    let header = r.headers().get(hyper::header::CONTENT_LENGTH);
    let len = match header.and_then(|v| v.to_str().ok()) {
        Some(v) => v.to_string(),
        // A body of known length streamed: hyper writes its Content-Length from this.
        None => match hyper::body::Body::size_hint(r.body()).exact() {
            Some(n) => n.to_string(),
            None => "-".into(),
        },
    };
    format!(
        "serve: {peer} \"{method} {}\" {} {len} {:.1}ms",
        uri.path().escape_debug(),
        r.status().as_u16(),
        took.as_secs_f64() * 1e3
    )
}

/// A connection whose writes fail with `TimedOut` once one has waited `limit` for the client to
/// read (a client that stops reading a response would otherwise hold its slot forever). Reads
/// are not limited here: hyper's header-read timeout covers a client that sends nothing, and a
/// response may take long to render while the connection is rightly silent.
struct StallLimit<T> {
    io: T,
    limit: Duration,
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<T> StallLimit<T> {
    fn new(io: T, limit: Duration) -> Self {
        StallLimit {
            io,
            limit,
            stalled: None,
        }
    }

    /// The outcome of one write attempt: `Pending` starts (or continues) the stall clock,
    /// anything else stops it.
    fn watch<R>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<R>>) -> Poll<io::Result<R>> {
        if r.is_ready() {
            self.stalled = None;
            return r;
        }
        let limit = self.limit;
        let clock = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match clock.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the client read nothing for {limit:?}"),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for StallLimit<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for StallLimit<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        self.watch(cx, r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.watch(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.io).poll_flush(cx);
        self.watch(cx, r)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The listener, for the runtime.
pub(super) fn listener(std: std::net::TcpListener) -> Result<TcpListener> {
    TcpListener::from_std(std).map_err(|e| Error::Other(format!("serve: {e}")))
}
