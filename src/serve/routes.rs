//! The service's routes: what a request path names (only this dataset's files), the responses, and
//! `/metrics`.

use super::cache::State;
use crate::sink::wds;
use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// What a request path names.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Resource {
    Shard {
        epoch: u64,
        shard: u64,
    },
    /// timm's `_info.json` (at the root and under each epoch: the shards beside it).
    Info,
    /// The Hugging Face dataset card, `README.md` (class names for `cls`).
    Card,
    Wids,
    Manifest,
    Health,
    Metrics,
}

/// Parses a request path; `Err((status, reason))` for anything else. Only this dataset's names are
/// served: no directory, no percent-encoding, no dots beyond the extension.
pub(super) fn parse_path(
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
        // One spelling per epoch (no sign, no leading zeros): one URL per shard.
        ["epoch", e, f] => match e.parse::<u64>() {
            Ok(n) if n.to_string() == *e => (n, *f),
            _ => {
                return Err((
                    StatusCode::BAD_REQUEST,
                    format!("epoch {e:?} is not a number from 0 to {}", u64::MAX),
                ));
            }
        },
        _ => return Err((StatusCode::NOT_FOUND, format!("no such path {path:?}"))),
    };
    match file {
        "healthz" if epoch == 0 && parts.len() == 1 => return Ok(Resource::Health),
        "metrics" if parts.len() == 1 => return Ok(Resource::Metrics),
        "manifest.json" if parts.len() == 1 => return Ok(Resource::Manifest),
        "_info.json" => return Ok(Resource::Info),
        "README.md" if parts.len() == 1 => return Ok(Resource::Card),
        _ => {}
    }
    if parts.len() == 1 && file == format!("{prefix}-wids.json") {
        return Ok(Resource::Wids);
    }
    let n = file
        .strip_prefix(prefix)
        .and_then(|r| r.strip_prefix('-'))
        .and_then(|r| r.strip_suffix(".tar"))
        .filter(|d| d.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|d| d.parse::<u64>().ok())
        // The shard's one name (six digits or more, as the files are named).
        .filter(|s| wds::shard_name(prefix, *s) == file);
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

pub(super) fn text(status: StatusCode, body: String) -> Response<Body> {
    let mut r = Response::new(Body::from(body + "\n"));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

pub(super) fn json(v: &serde_json::Value) -> Response<Body> {
    let mut r = Response::new(Body::from(
        serde_json::to_string_pretty(v).unwrap_or_default() + "\n",
    ));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

pub(super) fn base_url(st: &State, headers: &HeaderMap) -> String {
    if let Some(u) = &st.public_url {
        return u.trim_end_matches('/').to_string();
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    format!("http://{host}")
}

pub(super) fn metrics_text(st: &State) -> String {
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
pub(super) struct InFlight(Arc<State>, Option<tokio::sync::OwnedSemaphorePermit>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.metrics.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.1.take();
    }
}

pub(super) async fn handle(st: Arc<State>, req: Request<Body>) -> Response<Body> {
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
        Resource::Health => match st.failed.get() {
            Some(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the render stage failed: {why}"),
            ),
            None => text(StatusCode::OK, "ok".into()),
        },
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
        Resource::Info => {
            let shards: Vec<(String, u64)> = (0..st.layout.shards)
                .map(|s| {
                    let n = st.layout.shard_range(s).count() as u64;
                    (wds::shard_name(&st.prefix, s), n)
                })
                .collect();
            json(&crate::sink::readers::timm_info(
                &st.prefix,
                st.class_names.len(),
                &shards,
            ))
        }
        Resource::Card => {
            let m = wds::Manifest {
                kind: "fractaldb-serve-manifest-v1".into(),
                config: st.fingerprint.clone(),
                total_samples: st.layout.total,
                samples_per_shard: st.layout.per_shard,
                shard_count: st.layout.shards,
                rank: 0,
                world_size: 1,
                shards: vec![],
                classes: st.class_names.clone(),
            };
            let mut r = Response::new(Body::from(crate::sink::readers::hf_card(
                &st.prefix, &m, None,
            )));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/markdown; charset=utf-8"),
            );
            r
        }
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
            shard_response(st, req.headers(), head, epoch, shard).await
        }
    }
}

/// What a `Range` header asks of a shard of `len` bytes.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Want {
    /// No usable range (none, several, or one this service does not parse): the whole shard.
    Whole,
    /// Bytes `start..end` (end exclusive).
    Part(usize, usize),
    /// A range that starts past the end: 416.
    Unsatisfiable,
}

/// One `bytes=` range of RFC 9110 (`a-b`, `a-`, `-n`) against `len` bytes; anything else is
/// `Whole` (a server may ignore a Range it does not support).
pub(super) fn want(range: Option<&str>, len: usize) -> Want {
    let Some(spec) = range.and_then(|r| r.trim().strip_prefix("bytes=")) else {
        return Want::Whole;
    };
    let Some((a, b)) = spec.split_once('-').filter(|_| !spec.contains(',')) else {
        return Want::Whole;
    };
    let num = |t: &str| {
        (!t.is_empty() && t.bytes().all(|c| c.is_ascii_digit()))
            .then(|| t.parse::<u64>().ok())
            .flatten()
    };
    let clamp = |v: u64| v.min(len as u64) as usize;
    match (num(a), num(b), a.is_empty(), b.is_empty()) {
        (Some(a), Some(b), _, _) if a <= b => match a >= len as u64 {
            true => Want::Unsatisfiable,
            false => Want::Part(a as usize, clamp(b.saturating_add(1))),
        },
        (Some(a), None, _, true) => match a >= len as u64 {
            true => Want::Unsatisfiable,
            false => Want::Part(a as usize, len),
        },
        (None, Some(n), true, _) if n > 0 => Want::Part(len - clamp(n), len),
        (None, Some(0), true, _) => Want::Unsatisfiable,
        _ => Want::Whole,
    }
}

/// A shard: 304 for a matching `If-None-Match`, 206/416 for a `Range` (once the shard is whole),
/// HEAD's headers (once its length is known), or the body streamed while it renders.
async fn shard_response(
    st: Arc<State>,
    headers: &HeaderMap,
    head: bool,
    epoch: u64,
    shard: u64,
) -> Response<Body> {
    if let Some(why) = st.dataset.epoch_refusal(epoch) {
        return text(StatusCode::BAD_REQUEST, why);
    }
    let etag = st.etag(epoch, shard);
    let header = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    // A client holding this shard's bytes (same settings, same shard) needs nothing rendered.
    if let Some(inm) = header(header::IF_NONE_MATCH)
        && inm.split(',').any(|t| t.trim() == etag || t.trim() == "*")
    {
        let mut r = Response::new(Body::empty());
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r.headers_mut()
            .insert(header::ETAG, HeaderValue::from_str(&etag).unwrap());
        return r;
    }
    // Only GET honours Range (RFC 9110), and only when an If-Range names this shard.
    let range = header(header::RANGE)
        .filter(|_| !head)
        .filter(|_| header(header::IF_RANGE).is_none_or(|t| t.trim() == etag));
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
    let failed = |why: &String| {
        text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the render stage failed: {why}"),
        )
    };
    // A cache full of shards being rendered or read: this new group waits (visible in
    // /metrics), holding its client slot.
    let stream = loop {
        if let Some(why) = st.failed.get() {
            return failed(why);
        }
        if let Some((s, _hit)) = st.shard(epoch, shard) {
            break s;
        }
        st.metrics.waiting.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(50)).await;
        st.metrics.waiting.fetch_sub(1, Ordering::Relaxed);
    };
    let builder = Response::builder()
        .header(header::CONTENT_TYPE, "application/x-tar")
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::ETAG, &etag);
    if head || range.is_some() {
        // The whole shard first: HEAD answers its length, a range is cut from it.
        let mut rx = stream.progress.subscribe();
        while !rx.borrow_and_update().1 {
            if let Some(why) = st.failed.get() {
                return failed(why);
            }
            if rx.changed().await.is_err() {
                break;
            }
        }
        let data = stream.data.lock().unwrap();
        let len = data.len();
        let (status, body, span) = match (head, want(range, len)) {
            (true, _) | (false, Want::Whole) => (StatusCode::OK, (0, len), None),
            (false, Want::Part(a, b)) => (
                StatusCode::PARTIAL_CONTENT,
                (a, b),
                Some(format!("bytes {a}-{}/{len}", b - 1)),
            ),
            (false, Want::Unsatisfiable) => (
                StatusCode::RANGE_NOT_SATISFIABLE,
                (0, 0),
                Some(format!("bytes */{len}")),
            ),
        };
        let mut b = builder.status(status).header(
            header::CONTENT_LENGTH,
            if head { len } else { body.1 - body.0 },
        );
        if let Some(span) = span {
            b = b.header(header::CONTENT_RANGE, span);
        }
        let bytes = if head {
            Body::empty()
        } else {
            let part = axum::body::Bytes::copy_from_slice(&data[body.0..body.1]);
            st.metrics
                .bytes_sent
                .fetch_add(part.len() as u64, Ordering::Relaxed);
            Body::from(part)
        };
        drop(permit);
        return b.body(bytes).unwrap();
    }
    stream_body(st, builder.status(StatusCode::OK), stream, permit)
}

/// The whole shard, sent as the writers produce it; the client slot is held until the body ends.
fn stream_body(
    st: Arc<State>,
    mut builder: axum::http::response::Builder,
    stream: Arc<super::cache::ShardStream>,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> Response<Body> {
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
                    let chunk =
                        axum::body::Bytes::copy_from_slice(&stream.data.lock().unwrap()[off..end]);
                    guard
                        .0
                        .metrics
                        .bytes_sent
                        .fetch_add((end - off) as u64, Ordering::Relaxed);
                    return Some((Ok::<_, std::io::Error>(chunk), (stream, rx, end, guard)));
                }
                if done {
                    return None;
                }
                if let Some(why) = guard.0.failed.get() {
                    // The shard will never be finished: abort the body (the client sees a broken
                    // transfer, never a short tar).
                    let e = std::io::Error::other(format!("render stage failed: {why}"));
                    return Some((Err(e), (stream, rx, off, guard)));
                }
                if rx.changed().await.is_err() {
                    return None;
                }
            }
        },
    );
    builder.body(Body::from_stream(body)).unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_follow_rfc_9110_or_are_ignored() {
        let w = |r: &str| want(Some(r), 1000);
        assert_eq!(want(None, 1000), Want::Whole);
        assert_eq!(w("bytes=0-99"), Want::Part(0, 100));
        assert_eq!(w("bytes=990-5000"), Want::Part(990, 1000));
        assert_eq!(w("bytes=500-"), Want::Part(500, 1000));
        assert_eq!(w("bytes=-100"), Want::Part(900, 1000));
        assert_eq!(w("bytes=-5000"), Want::Part(0, 1000));
        assert_eq!(w("bytes=1000-1001"), Want::Unsatisfiable);
        assert_eq!(w("bytes=1000-"), Want::Unsatisfiable);
        assert_eq!(w("bytes=-0"), Want::Unsatisfiable);
        assert_eq!(w("bytes=18446744073709551615-"), Want::Unsatisfiable);
        assert_eq!(w("bytes=0-18446744073709551615"), Want::Part(0, 1000));
        for ignored in [
            "bytes=5-1",
            "bytes=0-1,5-9",
            "items=0-9",
            "bytes=x-9",
            "bytes=+1-9",
            "bytes=-",
            "bytes=18446744073709551616-",
        ] {
            assert_eq!(w(ignored), Want::Whole, "{ignored}");
        }
    }

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
        assert_eq!(p("/_info.json"), Ok(Resource::Info));
        assert_eq!(p("/README.md"), Ok(Resource::Card));
        assert_eq!(p("/epoch/3/_info.json"), Ok(Resource::Info));
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
            "/epoch/+1/fractaldb-000003.tar",
            "/epoch/01/fractaldb-000003.tar",
            "/epoch/18446744073709551616/fractaldb-000003.tar",
            "/fractaldb-0000003.tar",
            "/fractaldb-+00003.tar",
        ] {
            assert!(p(missing).is_err(), "{missing}");
        }
        assert_eq!(
            p(&format!("/{}", "a".repeat(300))).unwrap_err().0,
            StatusCode::BAD_REQUEST
        );
    }
}
