//! `fractaldb serve` on loopback: served shards equal rendered shards byte for byte (CPU and GL on
//! llvmpipe, epochs too), clients we did not write read it (curl, Python webdataset, wids, the
//! Prometheus parser), a bounded load test, bad requests, too many clients, and SIGTERM mid-transfer.

mod common;
use common::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

const SMALL: [&str; 10] = [
    "--image-size-x",
    "64",
    "--image-size-y",
    "64",
    "--iteration",
    "5000",
    "--instance",
    "2",
    "--samples-per-shard",
    "40",
];

/// Many small shards (groups of several) of three classes: for caches smaller than the data.
const TINY: [&str; 10] = [
    "--image-size-x",
    "32",
    "--image-size-y",
    "32",
    "--iteration",
    "2000",
    "--instance",
    "3",
    "--samples-per-shard",
    "6",
];

struct Server {
    child: Child,
    base: String,
    /// Its stderr, line by line, after the address line.
    log: std::sync::Mutex<std::sync::mpsc::Receiver<String>>,
}

impl Server {
    fn start(classes: &Path, extra: &[&str]) -> Server {
        let mut child = bin()
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(extra)
            .arg("--load-root")
            .arg(classes)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let err = child.stderr.take().unwrap();
        // Owned by a Server from here, so a failure below still kills and reaps it.
        let (tx, rx) = std::sync::mpsc::channel();
        let mut srv = Server {
            child,
            base: String::new(),
            log: std::sync::Mutex::new(rx),
        };
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(|l| l.ok()) {
                let _ = tx.send(line);
            }
        });
        // The event: the line with the address (printed once the signal handlers are in place).
        let t0 = Instant::now();
        loop {
            let left = PATIENCE.saturating_sub(t0.elapsed());
            let line = srv
                .log
                .lock()
                .unwrap()
                .recv_timeout(left)
                .expect("serve printed its address");
            if let Some(i) = line.find("http://") {
                srv.base = line[i..].split_whitespace().next().unwrap().to_string();
                return srv;
            }
        }
    }
    /// Waits for a stderr line containing each of `want` in turn (the event: the line itself).
    fn expect_lines(&self, want: &[&str]) {
        for w in want {
            let t0 = Instant::now();
            loop {
                let left = PATIENCE.saturating_sub(t0.elapsed());
                let line = self
                    .log
                    .lock()
                    .unwrap()
                    .recv_timeout(left)
                    .unwrap_or_else(|_| panic!("no line with {w:?}"));
                if line.contains(w) {
                    break;
                }
            }
        }
    }
    fn port(&self) -> u16 {
        self.base.rsplit(':').next().unwrap().parse().unwrap()
    }
    /// Sends SIGTERM and returns the exit code (`None`, with the signal in the message, if a signal
    /// ended it: a test comparing with `Some(0)` then says which).
    fn stop(mut self) -> Option<i32> {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        let s = wait_exit(&mut self.child, "serve after SIGTERM");
        if s.code().is_none() {
            use std::os::unix::process::ExitStatusExt;
            eprintln!("serve ended by signal {:?}", s.signal());
        }
        s.code()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `curl` a URL into a file: (status, headers text).
fn curl(url: &str, out: &Path, extra: &[&str]) -> (u16, String) {
    let o = Command::new("curl")
        .args(["-s", "-D", "-", "-o"])
        .arg(out)
        .args(extra)
        .arg(url)
        .output()
        .unwrap();
    let head = String::from_utf8_lossy(&o.stdout).into_owned();
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, head)
}

fn render_wds(classes: &Path, out: &Path, extra: &[&str]) {
    run_ok(
        bin()
            .args(["render", "-q", "--backend", "cpu", "--format", "wds"])
            .args(extra)
            .arg("--load-root")
            .arg(classes)
            .arg("--out")
            .arg(out),
    );
}

fn shard_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "tar"))
        .collect();
    v.sort();
    v
}

fn metric(base: &str, name: &str) -> f64 {
    let o = Command::new("curl")
        .args(["-s", &format!("{base}/metrics")])
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .find(|l| l.starts_with(&format!("{name} ")))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or_else(|| panic!("no metric {name}"))
}

#[test]
fn served_shards_equal_rendered_shards_on_both_engines_and_in_every_epoch() {
    let tmp = tempfile::tempdir().unwrap();
    let classes = class_dir(tmp.path(), &["00030", "00031"]);
    let disk = tmp.path().join("disk");
    render_wds(&classes, &disk, &SMALL);
    let disk1 = tmp.path().join("disk-epoch1");
    render_wds(&classes, &disk1, &[&SMALL[..], &["--epoch", "1"]].concat());
    let shards = shard_files(&disk);
    assert!(shards.len() >= 5);
    for backend in ["cpu", "gl"] {
        let srv = Server::start(&classes, &[&SMALL[..], &["--backend", backend]].concat());
        let mut etags = std::collections::HashSet::new();
        for (epoch, dir) in [(0, &disk), (1, &disk1)] {
            for s in shard_files(dir) {
                let name = s.file_name().unwrap().to_str().unwrap();
                let path = if epoch == 0 {
                    format!("/{name}")
                } else {
                    format!("/epoch/{epoch}/{name}")
                };
                let got = tmp.path().join("got.tar");
                let (code, head) = curl(&format!("{}{path}", srv.base), &got, &[]);
                assert_eq!(code, 200, "{head}");
                assert!(
                    head.to_lowercase()
                        .contains("content-type: application/x-tar")
                );
                assert!(
                    std::fs::read(&got).unwrap() == std::fs::read(&s).unwrap(),
                    "{backend}: {path} differs from the rendered shard"
                );
                let (code, head) = curl(&format!("{}{path}", srv.base), &got, &["-I"]);
                assert_eq!(code, 200);
                let etag = head
                    .lines()
                    .find(|l| l.to_lowercase().starts_with("etag:"))
                    .unwrap()
                    .to_string();
                assert!(etags.insert(etag), "ETags must differ per shard and epoch");
            }
        }
        assert!(metric(&srv.base, "fractaldb_cache_misses_total") >= 1.0);
        assert_eq!(srv.stop(), Some(0));
    }
}

#[test]
fn python_webdataset_and_wids_read_the_service_and_metrics_parse() {
    let tmp = tempfile::tempdir().unwrap();
    let classes = class_dir(tmp.path(), &["00032", "00033"]);
    let srv = Server::start(&classes, &[&SMALL[..], &["--backend", "cpu"]].concat());
    let o = Command::new("curl")
        .args(["-s", &format!("{}/manifest.json", srv.base)])
        .output()
        .unwrap();
    let m: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let shards = m["shard_count"].as_u64().unwrap();
    let out = python_ok(
        "read_served.py",
        &[&srv.base, "fractaldb", &shards.to_string()],
    );
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["samples"], m["total_samples"]);
    assert_eq!(v["shards"].as_u64().unwrap(), shards);
    let names: Vec<&str> = v["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    for want in [
        "fractaldb_images_rendered",
        "fractaldb_bytes_sent",
        "fractaldb_cache_hits",
        "fractaldb_requests_in_flight",
        "fractaldb_queue_depth",
    ] {
        assert!(names.contains(&want), "{names:?}");
    }
}

#[test]
fn sixteen_clients_with_repeats_get_identical_bytes_and_a_dropped_client_disturbs_nobody() {
    let tmp = tempfile::tempdir().unwrap();
    let classes = class_dir(tmp.path(), &["00034", "00035", "00036"]);
    let disk = tmp.path().join("disk");
    render_wds(&classes, &disk, &SMALL);
    let shards = shard_files(&disk);
    let srv = Server::start(&classes, &[&SMALL[..], &["--backend", "cpu"]].concat());
    // A client that goes away after 1 KB.
    {
        let mut c = std::net::TcpStream::connect(("127.0.0.1", srv.port())).unwrap();
        write!(c, "GET /fractaldb-000000.tar HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut buf = [0u8; 1024];
        c.read_exact(&mut buf).unwrap();
    }
    let t0 = Instant::now();
    let handles: Vec<_> = (0..16)
        .map(|client| {
            let base = srv.base.clone();
            let shards = shards.clone();
            let dir = tmp.path().join(format!("c{client}"));
            std::fs::create_dir_all(&dir).unwrap();
            std::thread::spawn(move || {
                for k in 0..4 {
                    let s = &shards[(client * 4 + k) % shards.len()];
                    let name = s.file_name().unwrap().to_str().unwrap();
                    let got = dir.join(name);
                    let (code, head) = curl(&format!("{base}/{name}"), &got, &[]);
                    assert_eq!(code, 200, "{head}");
                    assert!(
                        std::fs::read(&got).unwrap() == std::fs::read(s).unwrap(),
                        "{name}"
                    );
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("a client failed");
    }
    let secs = t0.elapsed().as_secs_f64();
    assert!(metric(&srv.base, "fractaldb_cache_hits_total") >= 1.0);
    let status = std::fs::read_to_string(format!("/proc/{}/status", srv.child.id())).unwrap();
    let hwm_kib: u64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap();
    println!(
        "64 requests by 16 clients in {secs:.2} s; server peak RSS {} MB",
        hwm_kib / 1024
    );
    assert!(hwm_kib < 1 << 20, "peak RSS {hwm_kib} KiB");
    assert_eq!(srv.stop(), Some(0));
}

#[test]
fn bad_requests_get_their_status_and_the_server_keeps_serving() {
    let tmp = tempfile::tempdir().unwrap();
    let classes = class_dir(tmp.path(), &["00037"]);
    let srv = Server::start(&classes, &[&SMALL[..], &["--backend", "cpu"]].concat());
    let out = tmp.path().join("o");
    let cases: Vec<(String, Vec<&str>, u16)> = vec![
        ("/fractaldb-999999.tar".into(), vec![], 404),
        ("/../../etc/passwd".into(), vec!["--path-as-is"], 400),
        (
            "/%2e%2e/%2e%2e/etc/passwd".into(),
            vec!["--path-as-is"],
            400,
        ),
        ("//etc/passwd".into(), vec!["--path-as-is"], 400),
        (format!("/{}", "a".repeat(5000)), vec![], 400),
        ("/fractaldb-000000.tar".into(), vec!["-X", "POST"], 405),
        ("/fractaldb-000000.tar".into(), vec!["-X", "DELETE"], 405),
        ("/nothing-here".into(), vec![], 404),
        ("/epoch/x/fractaldb-000000.tar".into(), vec![], 400),
    ];
    for (path, extra, want) in &cases {
        let (code, head) = curl(&format!("{}{path}", srv.base), &out, extra);
        assert_eq!(code, *want, "{path}: {head}");
    }
    let body = std::fs::read_to_string({
        curl(&format!("{}/fractaldb-999999.tar", srv.base), &out, &[]);
        &out
    })
    .unwrap();
    assert!(body.contains("fractaldb-000000.tar to"), "{body}");
    let (code, _) = curl(&format!("{}/fractaldb-000000.tar", srv.base), &out, &[]);
    assert_eq!(code, 200);
    assert_eq!(srv.stop(), Some(0));
    // Epochs of a draw type without per-instance randomness: 400 with the reason.
    let srv = Server::start(
        &classes,
        &[
            &SMALL[..],
            &["--backend", "cpu", "--draw-type", "point_gray"],
        ]
        .concat(),
    );
    let (code, _) = curl(
        &format!("{}/epoch/1/fractaldb-000000.tar", srv.base),
        &out,
        &[],
    );
    assert_eq!(code, 400);
    assert!(
        std::fs::read_to_string(&out)
            .unwrap()
            .contains("randomness")
    );
}

const HEAVY: [&str; 10] = [
    "--image-size-x",
    "256",
    "--image-size-y",
    "256",
    "--iteration",
    "200000",
    "--instance",
    "10",
    "-j",
    "1",
];

#[test]
fn too_many_clients_get_503_and_sigterm_lets_a_transfer_finish() {
    let tmp = tempfile::tempdir().unwrap();
    let classes = class_dir(tmp.path(), &["00038", "00039"]);
    let disk = tmp.path().join("disk");
    render_wds(&classes, &disk, &HEAVY);
    let first = shard_files(&disk)[0].clone();
    let srv = Server::start(
        &classes,
        &[
            &HEAVY[..],
            // The transfer in flight finishes however slow this machine is today.
            &[
                "--backend",
                "cpu",
                "--max-clients",
                "1",
                "--prefetch",
                "0",
                "--drain-seconds",
                "3600",
            ],
        ]
        .concat(),
    );
    let got = tmp.path().join("got.tar");
    let mut slow = Command::new("curl")
        .args(["-s", "-o"])
        .arg(&got)
        .args(["-w", "%{http_code}"])
        .arg(format!("{}/fractaldb-000000.tar", srv.base))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("the slow request in flight", || {
        metric(&srv.base, "fractaldb_requests_in_flight") >= 1.0
    });
    let (code, head) = curl(
        &format!("{}/fractaldb-000000.tar", srv.base),
        &tmp.path().join("busy"),
        &[],
    );
    assert_eq!(code, 503, "{head}");
    assert!(head.to_lowercase().contains("retry-after"));
    // SIGTERM while the first transfer runs: it finishes whole, then the server exits 0.
    assert_eq!(srv.stop(), Some(0));
    let mut code = String::new();
    slow.stdout
        .take()
        .unwrap()
        .read_to_string(&mut code)
        .unwrap();
    slow.wait().unwrap();
    assert_eq!(code, "200");
    assert!(std::fs::read(&got).unwrap() == std::fs::read(&first).unwrap());
}

#[test]
fn a_tiny_cache_makes_new_groups_wait_but_never_deadlocks() {
    let tmp = tempfile::tempdir().unwrap();
    let classes = class_dir(tmp.path(), &["00040", "00041"]);
    let disk = tmp.path().join("disk");
    render_wds(&classes, &disk, &SMALL);
    let shards = shard_files(&disk);
    let srv = Server::start(
        &classes,
        &[
            &SMALL[..],
            &["--backend", "cpu", "--cache-bytes", "1", "--prefetch", "0"],
        ]
        .concat(),
    );
    let handles: Vec<_> = (0..4)
        .map(|client| {
            let base = srv.base.clone();
            let shards = shards.clone();
            let dir = tmp.path().join(format!("t{client}"));
            std::fs::create_dir_all(&dir).unwrap();
            std::thread::spawn(move || {
                for k in 0..3 {
                    let s = &shards[(client * 3 + k) % shards.len()];
                    let name = s.file_name().unwrap().to_str().unwrap();
                    let got = dir.join(name);
                    let (code, head) = curl(&format!("{base}/{name}"), &got, &["-m", "600"]);
                    assert_eq!(code, 200, "{head}");
                    assert!(std::fs::read(&got).unwrap() == std::fs::read(s).unwrap());
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("a client failed");
    }
    assert_eq!(
        metric(&srv.base, "fractaldb_requests_waiting_for_cache"),
        0.0
    );
    assert_eq!(srv.stop(), Some(0));
}

/// The hostile requests and small caches of the third reliability review: a huge epoch, a cache
/// smaller than the data revisited in a wandering order, a prefetch of u64::MAX. The service keeps
/// serving the same bytes under the same ETag, and HEAD tells the length GET sends.
#[test]
fn huge_epochs_and_a_small_cache_never_change_what_a_shard_is() {
    let tmp = tempfile::tempdir().unwrap();
    let classes = class_dir(tmp.path(), &["00040", "00041", "00042"]);
    let small = TINY;
    let disk = tmp.path().join("disk");
    render_wds(&classes, &disk, &small);
    let shards = shard_files(&disk);
    assert!(shards.len() >= 16, "{}", shards.len());
    let srv = Server::start(
        &classes,
        &[
            &small[..],
            &["--backend", "cpu", "--cache-bytes", "20000"],
            &["--prefetch", "18446744073709551615"],
        ]
        .concat(),
    );
    let get = |path: &str, k: usize| {
        let got = tmp.path().join(format!("got-{k}"));
        let (code, head) = curl(&format!("{}/{path}", srv.base), &got, &["-m", "600"]);
        (code, head, std::fs::read(&got).unwrap_or_default())
    };
    let name = |s: usize| shards[s].file_name().unwrap().to_str().unwrap().to_string();
    let (code, head0, first) = get(&name(0), 0);
    assert_eq!(code, 200, "{head0}");
    assert!(first == std::fs::read(&shards[0]).unwrap());
    let etag = |h: &str| {
        h.lines()
            .find(|l| l.to_ascii_lowercase().starts_with("etag:"))
            .map(|l| l.to_string())
    };
    // Epochs at the top of u64 are served (or refused) without touching epoch 0's shards.
    for e in ["9223372036854775808", "18446744073709551615"] {
        let (code, head, _) = get(&format!("epoch/{e}/{}", name(0)), 1);
        assert!(code == 200 || (400..500).contains(&code), "{code} {head}");
    }
    // A wandering order over more groups than the cache holds.
    let n = shards.len();
    for (k, s) in [0, n / 2, n - 1, 0, n / 3, 2 * n / 3, 0, 5, 6, n - 2]
        .into_iter()
        .enumerate()
    {
        let (code, head, bytes) = get(&name(s), 10 + k);
        assert_eq!(code, 200, "shard {s}: {head}");
        assert!(
            bytes == std::fs::read(&shards[s]).unwrap(),
            "shard {s} changed"
        );
        if s == 0 {
            assert_eq!(etag(&head), etag(&head0), "shard 0's ETag changed");
        }
    }
    // HEAD: the length GET sends.
    let out = Command::new("curl")
        .args([
            "-s",
            "-I",
            "-m",
            "600",
            &format!("{}/{}", srv.base, name(3)),
        ])
        .output()
        .unwrap();
    let head = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
    let len = std::fs::metadata(&shards[3]).unwrap().len();
    assert!(head.contains(&format!("content-length: {len}")), "{head}");
    assert_eq!(srv.stop(), Some(0));
    // A prefix a URL cannot carry is refused at start-up.
    for p in ["a b", "x#y", "é"] {
        let e = run_err(
            bin()
                .args(["serve", "--listen", "127.0.0.1:0", "--prefix", p])
                .args(small)
                .arg("--load-root")
                .arg(&classes),
        );
        assert!(e.contains("--prefix"), "{p}: {e}");
    }
}

/// A render failure (a class whose clouds are degenerate) used to leave every request waiting for
/// bytes forever while /healthz said ok. Now the request fails (503, or an aborted transfer, never
/// a short tar), and the service stops with a non-zero exit that names the failure.
#[test]
fn a_failed_render_stage_fails_requests_and_stops_the_service() {
    let tmp = tempfile::tempdir().unwrap();
    let classes = class_dir(tmp.path(), &["00040"]);
    std::fs::write(
        classes.join("00002.csv"),
        "0,0,0,0,0,0,0.5\n0,0,0,0,0,0,0.5\n",
    )
    .unwrap();
    let mut child = bin()
        .args(["serve", "--listen", "127.0.0.1:0", "--backend", "cpu"])
        .args([
            "--image-size-x",
            "32",
            "--image-size-y",
            "32",
            "--iteration",
            "2000",
        ])
        .args([
            "--instance",
            "1",
            "--samples-per-shard",
            "4",
            "--prefetch",
            "0",
        ])
        .arg("--load-root")
        .arg(&classes)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let err = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(|l| l.ok()) {
            let _ = tx.send(line);
        }
    });
    let base = loop {
        let line = rx
            .recv_timeout(PATIENCE)
            .expect("serve printed its address");
        if let Some(i) = line.find("http://") {
            break line[i..].split_whitespace().next().unwrap().to_string();
        }
    };
    // Every shard holds images of the degenerate class (shards mix the classes).
    let got = tmp.path().join("got");
    let (code, head) = curl(
        &format!("{base}/fractaldb-000000.tar"),
        &got,
        &["-m", "600"],
    );
    let short_tar = code == 200 && std::fs::metadata(&got).is_ok_and(|m| m.len() % 512 == 0);
    assert!(code == 503 || code == 0 || !short_tar, "{code} {head}");
    let status = wait_exit(&mut child, "serve after its render stage failed");
    assert!(!status.success(), "{status:?}");
    // The rest of the log, up to its end (the reader ends at the closed pipe).
    let log: Vec<String> = rx.iter().collect();
    assert!(
        log.iter()
            .any(|l| l.contains("render stage") && l.contains("00002.csv")),
        "{log:?}"
    );
}

/// Reads until the server closes the connection; panics if it is still open after [`PATIENCE`].
fn read_until_closed(s: &mut std::net::TcpStream) -> Vec<u8> {
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return got,
            Err(e) => panic!("the server kept the connection open ({e}); got {got:?}"),
        }
    }
}

#[test]
fn idle_slow_and_stalled_clients_are_dropped_and_free_their_slot() {
    use std::net::TcpStream;
    let tmp = tempfile::tempdir().unwrap();
    let classes = class_dir(tmp.path(), &["00042", "00043"]);
    // Shards far larger than the loopback socket buffers (so a client that stops reading
    // stalls the server's writes).
    let big = [
        &SMALL[..],
        &[
            "--image-size-x",
            "1024",
            "--image-size-y",
            "1024",
            "--encoding",
            "npy",
        ],
    ]
    .concat();
    let disk = tmp.path().join("disk");
    render_wds(&classes, &disk, &big);
    let first = shard_files(&disk)[0].clone();
    assert!(std::fs::metadata(&first).unwrap().len() > 32 << 20);
    let srv = Server::start(
        &classes,
        &[
            &big[..],
            &[
                "--backend",
                "cpu",
                "--max-clients",
                "1",
                "--idle-seconds",
                "1",
            ],
        ]
        .concat(),
    );
    let addr = format!("127.0.0.1:{}", srv.port());
    // Connected and silent; a request head never finished; an idle keep-alive connection.
    let mut silent = TcpStream::connect(&addr).unwrap();
    assert!(read_until_closed(&mut silent).is_empty());
    let mut slow = TcpStream::connect(&addr).unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let got = read_until_closed(&mut slow);
    assert!(!got.starts_with(b"HTTP/1.1 200"), "{got:?}");
    let mut kept = TcpStream::connect(&addr).unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let got = String::from_utf8(read_until_closed(&mut kept)).unwrap();
    assert!(
        got.starts_with("HTTP/1.1 200") && got.ends_with("ok\n"),
        "{got}"
    );
    // A client that reads the status line of a shard and then nothing holds the only client
    // slot until its writes have stalled for the idle time; then the slot is free again.
    let mut stalled = TcpStream::connect(&addr).unwrap();
    stalled
        .write_all(b"GET /fractaldb-000000.tar HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut status = [0u8; 12];
    stalled.read_exact(&mut status).unwrap();
    assert_eq!(&status, b"HTTP/1.1 200");
    let got = tmp.path().join("got.tar");
    wait_until("the stalled client's slot to be freed", || {
        curl(&format!("{}/fractaldb-000000.tar", srv.base), &got, &[]).0 == 200
    });
    assert!(std::fs::read(&got).unwrap() == std::fs::read(&first).unwrap());
    drop(stalled);
    assert_eq!(srv.stop(), Some(0));
}

/// A small deterministic generator for the random requests (the seed is printed with every
/// failure; FRACTALDB_SERVE_SEED replays another sequence).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.next() as usize % v.len()]
    }
}

/// One random request and what it must get: `Some(bytes)` a 200 with exactly these bytes (for
/// HEAD: their length), `None` a 4xx.
struct Probe {
    method: &'static str,
    path: String,
    range: Option<String>,
    want: Option<Vec<u8>>,
}

fn random_probe(rng: &mut Lcg, refs: &[(&str, Vec<Vec<u8>>)]) -> Probe {
    let n = refs[0].1.len() as u64;
    let method = *rng.pick(&[
        "GET", "GET", "GET", "HEAD", "HEAD", "POST", "DELETE", "OPTIONS",
    ]);
    // An epoch segment: a rendered epoch (with its reference shards) or a number the service
    // must refuse.
    let (epoch, known) = match rng.next() % 3 {
        0 => (String::new(), Some(&refs[0].1)),
        1 => {
            let (e, shards) = rng.pick(refs);
            (format!("/epoch/{e}"), Some(shards))
        }
        _ => {
            let e = rng.pick(&[
                "18446744073709551616",
                "-1",
                "x",
                "",
                "1e3",
                "+1",
                "01",
                "00000000000000000000001",
            ]);
            (format!("/epoch/{e}"), None)
        }
    };
    let s = rng.next() % (n + 2);
    let (file, shard) = match rng.next() % 8 {
        0 => (
            format!("fractaldb-{:06}.tar", n + rng.next() % 1_000_000),
            None,
        ),
        1 => (
            rng.pick(&[
                "other-000000.tar",
                "fractaldb-0.tar",
                "..%2f",
                "fractaldb-000000.tar/..",
                "a//b",
            ])
            .to_string(),
            None,
        ),
        _ => (format!("fractaldb-{s:06}.tar"), Some(s)),
    };
    let want = match (known, shard) {
        (Some(shards), Some(s)) if s < n && ["GET", "HEAD"].contains(&method) => {
            Some(shards[s as usize].clone())
        }
        _ => None,
    };
    let range = rng
        .next()
        .is_multiple_of(4)
        .then(|| format!("bytes={}-{}", rng.next() % 100, 100 + rng.next() % 1000));
    Probe {
        method,
        path: format!("{epoch}/{file}"),
        range,
        want,
    }
}

/// Random paths, epochs, shard numbers, methods and ranges from 4 clients at once against a cache
/// smaller than one shard group: every answer is the right shard byte for byte, or a 4xx; the
/// service stays healthy and exits 0.
#[test]
fn random_requests_with_a_small_cache_get_a_correct_shard_or_a_4xx() {
    let tmp = tempfile::tempdir().unwrap();
    let classes = class_dir(tmp.path(), &["00040", "00041", "00042"]);
    let small = TINY;
    let epochs = ["0", "1", "9223372036854775808", "18446744073709551615"];
    let refs: Vec<(&str, Vec<Vec<u8>>)> = epochs
        .iter()
        .map(|e| {
            let disk = tmp.path().join(format!("disk-{e}"));
            render_wds(&classes, &disk, &[&small[..], &["--epoch", e]].concat());
            let shards = shard_files(&disk)
                .iter()
                .map(|p| std::fs::read(p).unwrap())
                .collect();
            (*e, shards)
        })
        .collect();
    let srv = Server::start(
        &classes,
        &[&small[..], &["--backend", "cpu", "--cache-bytes", "20000"]].concat(),
    );
    let seed: u64 = std::env::var("FRACTALDB_SERVE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2026);
    std::thread::scope(|scope| {
        for client in 0..4u64 {
            let (refs, srv, tmp) = (&refs, &srv, tmp.path());
            scope.spawn(move || {
                let mut rng = Lcg(seed ^ (client << 32));
                for k in 0..40 {
                    let p = random_probe(&mut rng, refs);
                    let got = tmp.join(format!("probe-{client}-{k}"));
                    let mut extra = vec!["-m", "600"];
                    let range;
                    if let Some(r) = &p.range {
                        range = format!("Range: {r}");
                        extra.extend(["-H", &range]);
                    }
                    match p.method {
                        "HEAD" => extra.push("-I"),
                        "GET" => {}
                        m => extra.extend(["-X", m]),
                    }
                    let url = format!("{}{}", srv.base, p.path);
                    let (code, head) = curl(&url, &got, &extra);
                    let what = format!(
                        "seed {seed}, client {client}, request {k}: {} {} (range {:?}) -> {code}\n{head}",
                        p.method, p.path, p.range
                    );
                    let body = std::fs::read(&got).unwrap_or_default();
                    match (&p.want, &p.range) {
                        // HEAD ignores Range (RFC 9110): the whole shard's length.
                        (Some(bytes), _) if p.method == "HEAD" => {
                            assert_eq!(code, 200, "{what}");
                            let len = format!("content-length: {}", bytes.len());
                            assert!(head.to_ascii_lowercase().contains(&len), "{what}");
                        }
                        (Some(bytes), None) => {
                            assert_eq!(code, 200, "{what}");
                            assert!(body == *bytes, "wrong bytes: {what}");
                        }
                        // The probes' ranges are `bytes=A-B` with A < 100 <= B: always satisfiable.
                        (Some(bytes), Some(r)) => {
                            assert_eq!(code, 206, "{what}");
                            let (a, b) = r["bytes=".len()..].split_once('-').unwrap();
                            let a: usize = a.parse().unwrap();
                            let b = (b.parse::<usize>().unwrap() + 1).min(bytes.len());
                            assert!(body == bytes[a..b], "wrong part: {what}");
                        }
                        (None, _) => assert!((400..500).contains(&code), "{what}"),
                    }
                }
            });
        }
    });
    // Still healthy, and the first shard still the same bytes.
    let got = tmp.path().join("after");
    assert_eq!(curl(&format!("{}/healthz", srv.base), &got, &[]).0, 200);
    let (code, _) = curl(&format!("{}/fractaldb-000000.tar", srv.base), &got, &[]);
    assert_eq!(code, 200);
    assert!(std::fs::read(&got).unwrap() == refs[0].1[0]);
    assert_eq!(srv.stop(), Some(0));
}

/// What HTTP clients (fsspec, browsers, caches) rely on: Range gets 206 with Content-Range (416
/// past the end, the whole shard for several ranges), If-None-Match with the shard's ETag gets
/// 304 and no body, HEAD the length and Accept-Ranges. curl is the client.
#[test]
fn ranges_etags_and_head_answer_as_http_clients_expect() {
    let tmp = tempfile::tempdir().unwrap();
    let classes = class_dir(tmp.path(), &["00040", "00041"]);
    let disk = tmp.path().join("disk");
    render_wds(&classes, &disk, &SMALL);
    let want = std::fs::read(&shard_files(&disk)[0]).unwrap();
    let srv = Server::start(
        &classes,
        &[&SMALL[..], &["--backend", "cpu", "--access-log"]].concat(),
    );
    let url = format!("{}/fractaldb-000000.tar", srv.base);
    let got = tmp.path().join("got");
    let body = || std::fs::read(&got).unwrap_or_default();
    let header = |head: &str, name: &str| {
        head.lines()
            .find(|l| l.to_ascii_lowercase().starts_with(&format!("{name}:")))
            .map(|l| l.split_once(':').unwrap().1.trim().to_string())
    };
    let (code, head) = curl(&url, &got, &[]);
    assert_eq!(code, 200);
    assert!(body() == want);
    assert_eq!(header(&head, "accept-ranges").as_deref(), Some("bytes"));
    let etag = header(&head, "etag").expect("an ETag");
    // (curl leaves its output file alone when there is no body.)
    std::fs::remove_file(&got).unwrap();
    let (code, head) = curl(&url, &got, &["-H", &format!("If-None-Match: {etag}")]);
    assert_eq!(code, 304, "{head}");
    assert!(body().is_empty());
    let (code, _) = curl(&url, &got, &["-H", "If-None-Match: \"other\""]);
    assert_eq!(code, 200);
    assert!(body() == want);
    let (code, head) = curl(&url, &got, &["-r", "10-99"]);
    assert_eq!(code, 206, "{head}");
    assert!(body() == want[10..100]);
    let span = format!("bytes 10-99/{}", want.len());
    assert_eq!(header(&head, "content-range"), Some(span));
    let (code, head) = curl(&url, &got, &["-r", "-100"]);
    assert_eq!(code, 206, "{head}");
    assert!(body() == want[want.len() - 100..]);
    let (code, head) = curl(&url, &got, &["-r", &format!("{}-", want.len())]);
    assert_eq!(code, 416, "{head}");
    let span = format!("bytes */{}", want.len());
    assert_eq!(header(&head, "content-range"), Some(span));
    let (code, _) = curl(&url, &got, &["-r", "0-1,5-9"]);
    assert_eq!(code, 200);
    assert!(body() == want);
    // If-Range with another tag: the whole shard, as the range might be of other bytes.
    let (code, _) = curl(&url, &got, &["-r", "0-9", "-H", "If-Range: \"other\""]);
    assert_eq!(code, 200);
    assert!(body() == want);
    let out = Command::new("curl")
        .args(["-s", "-I", &url])
        .output()
        .unwrap();
    let head = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(
        header(&head, "content-length"),
        Some(want.len().to_string())
    );
    // --access-log: a line per response, in order (the first shard was streamed as it was
    // rendered: its length unknown at the head, `-`).
    let n = want.len();
    srv.expect_lines(&[
        "\"GET /fractaldb-000000.tar\" 200 ",
        "\"GET /fractaldb-000000.tar\" 304 ",
        "\"GET /fractaldb-000000.tar\" 206 90 ",
        "\"GET /fractaldb-000000.tar\" 416 ",
        &format!("\"HEAD /fractaldb-000000.tar\" 200 {n} "),
    ]);
    assert_eq!(srv.stop(), Some(0));
}

/// `serve` writes no files: render's --out and --resume are hidden from its help and, when given,
/// said to be unused (never silently taken); nothing is created there.
#[test]
fn render_output_flags_are_hidden_from_serve_and_warned_about() {
    let tmp = tempfile::tempdir().unwrap();
    let classes = class_dir(tmp.path(), &["00040"]);
    let help = run_ok(bin().args(["serve", "--help"]));
    let help = String::from_utf8_lossy(&help.stdout).to_string();
    assert!(
        !help.contains("--out") && !help.contains("--resume"),
        "{help}"
    );
    assert!(help.contains("--samples-per-shard"));
    let out = tmp.path().join("unused");
    let mut child = bin()
        .args(["serve", "--listen", "127.0.0.1:0", "--resume", "--out"])
        .arg(&out)
        .args(SMALL)
        .arg("--load-root")
        .arg(&classes)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = Vec::new();
    for line in BufReader::new(child.stderr.take().unwrap()).lines() {
        let line = line.unwrap();
        let listening = line.contains("listening on");
        lines.push(line);
        if listening {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let text = lines.join("\n");
    for flag in ["--out", "--resume"] {
        assert!(
            text.contains(&format!("warning: {flag} is not used")),
            "{text}"
        );
    }
    assert!(!out.exists());
}
