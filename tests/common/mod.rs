#![allow(dead_code)]
//! Helpers shared by the end-to-end tests: the real binary, the reference data, PNG decoding.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// How long a test waits for an event (a line, a file, an exit) before it calls it a hang. Generous:
/// CI shares a 2-core machine with other work, so this bounds a hang and is never a speed check.
pub const PATIENCE: Duration = Duration::from_secs(600);

/// Polls `cond` until it holds; panics naming `what` after [`PATIENCE`].
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !cond() {
        assert!(
            t0.elapsed() < PATIENCE,
            "still waiting for {what} after {PATIENCE:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits for `child` to exit; a child still running after [`PATIENCE`] is killed and the test fails.
pub fn wait_exit(child: &mut Child, what: &str) -> ExitStatus {
    let t0 = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if t0.elapsed() > PATIENCE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: still running after {PATIENCE:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs a command to its end with captured output; a hang (past [`PATIENCE`]) fails the test.
pub fn output_bounded(c: &mut Command) -> Output {
    let mut child = c
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Pipes are drained on threads, so a chatty child never blocks on a full pipe meanwhile.
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let o = std::thread::spawn(move || {
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut out, &mut v).unwrap();
        v
    });
    let e = std::thread::spawn(move || {
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut err, &mut v).unwrap();
        v
    });
    let status = wait_exit(&mut child, &format!("{c:?}"));
    Output {
        status,
        stdout: o.join().unwrap(),
        stderr: e.join().unwrap(),
    }
}

pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_fractaldb"))
}

/// The reference data the tests read: `tests/fixtures/reference`, byte-identical copies of the data
/// files of `../shared/reference` (tests/fixtures.rs checks their digests).
pub fn reference() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/reference");
    assert!(
        p.join("categories/00000.csv").exists(),
        "reference fixtures not found at {}",
        p.display()
    );
    p
}

pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("run fractaldb");
    assert!(
        out.status.success(),
        "command failed: {:?}\nstdout: {}\nstderr: {}",
        cmd,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn run_err(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run fractaldb");
    assert!(!out.status.success(), "command should have failed: {cmd:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Decodes a PNG to 8-bit RGB (gray expanded), returning (width, height, pixels).
pub fn decode_rgb(path: &Path) -> (u32, u32, Vec<u8>) {
    let f = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut dec = png::Decoder::new(std::io::BufReader::new(f))
        .read_info()
        .unwrap();
    let mut buf = vec![0; dec.output_buffer_size().unwrap()];
    let info = dec.next_frame(&mut buf).unwrap();
    buf.truncate(info.buffer_size());
    let px = match info.color_type {
        png::ColorType::Rgb => buf,
        png::ColorType::Grayscale => buf.iter().flat_map(|&g| [g, g, g]).collect(),
        png::ColorType::Rgba => buf.chunks(4).flat_map(|c| [c[0], c[1], c[2]]).collect(),
        t => panic!("unexpected colour type {t:?}"),
    };
    (info.width, info.height, px)
}

/// All files under `dir`, relative paths, sorted.
pub fn files(dir: &Path) -> Vec<PathBuf> {
    fn walk(base: &Path, d: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(base, &p, out);
            } else {
                out.push(p.strip_prefix(base).unwrap().to_path_buf());
            }
        }
    }
    let mut v = Vec::new();
    if dir.exists() {
        walk(dir, dir, &mut v);
    }
    v.sort();
    v
}

/// The PNG files under `dir` (relative paths, sorted): the images of a folder dataset, without its
/// record (`fractaldb-folder.json`).
pub fn pngs(dir: &Path) -> Vec<PathBuf> {
    files(dir)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|x| x == "png"))
        .collect()
}

/// A directory holding copies of the given published class CSVs.
pub fn class_dir(tmp: &Path, names: &[&str]) -> PathBuf {
    let d = tmp.join("classes");
    std::fs::create_dir_all(&d).unwrap();
    for n in names {
        std::fs::copy(
            reference().join("categories").join(format!("{n}.csv")),
            d.join(format!("{n}.csv")),
        )
        .unwrap();
    }
    d
}

pub fn python_ok(script: &str, args: &[&str]) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/py")
        .join(script);
    let out = Command::new("python3")
        .arg(&path)
        .args(args)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{script} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The checksum list and its per-run parts: derived from the other files, and present or not by
/// how a run was split until `finalize` (tests/inspect.rs checks them).
pub fn is_checksums(rel: &Path) -> bool {
    let name = rel.to_string_lossy();
    name == "SHA256SUMS" || name.starts_with(".SHA256SUMS.part-")
}

/// Two output trees hold the same files with the same bytes (and at least one file), their
/// checksum lists aside ([`is_checksums`]).
pub fn same_tree(a: &Path, b: &Path) {
    let tree =
        |d: &Path| -> Vec<PathBuf> { files(d).into_iter().filter(|p| !is_checksums(p)).collect() };
    let fa = tree(a);
    assert!(!fa.is_empty(), "{} is empty", a.display());
    assert_eq!(fa, tree(b));
    for f in &fa {
        assert!(
            std::fs::read(a.join(f)).unwrap() == std::fs::read(b.join(f)).unwrap(),
            "{} differs",
            f.display()
        );
    }
}

/// Starts a service command (`... --serve --listen 127.0.0.1:0`) and returns it with its base URL,
/// read from its log; the rest of its log is drained in the background.
pub fn start_service(mut cmd: Command) -> (std::process::Child, String) {
    use std::io::BufRead;
    use std::process::Stdio;
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let base = loop {
        let line = lines
            .next()
            .expect("the service printed its address")
            .unwrap();
        if let Some(i) = line.find("http://") {
            break line[i..].split_whitespace().next().unwrap().to_string();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    (child, base)
}

/// GET `{base}/{path}` with curl: (HTTP status, body).
pub fn curl_get(base: &str, path: &str) -> (String, Vec<u8>) {
    let out = Command::new("curl")
        .args(["-s", "-w", "\n%{http_code}", &format!("{base}/{path}")])
        .output()
        .unwrap();
    let mut body = out.stdout;
    let nl = body.iter().rposition(|&b| b == b'\n').unwrap();
    let code = String::from_utf8(body[nl + 1..].to_vec()).unwrap();
    body.truncate(nl);
    (code, body)
}

/// Sends SIGTERM and waits: the service must exit cleanly.
pub fn stop_service(mut child: std::process::Child) {
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success());
}

/// The `.tar` files under `dir` (relative, sorted).
pub fn tars(dir: &Path) -> Vec<PathBuf> {
    files(dir)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|x| x == "tar"))
        .collect()
}

/// A sharded run's bytes do not depend on ranks or resume: `run(dir, extra)` makes the shards of one
/// dataset into `dir` (`extra`: rank flags or `--resume`); `one` already holds a 1-rank run. Two
/// ranks plus `finalize` give the same shards, and a resume after a lost shard writes it again.
pub fn assert_ranks_and_resume_keep_the_shards(
    one: &Path,
    ranks: &Path,
    prefix: &str,
    run: impl Fn(&Path, &[&str]),
) {
    for r in ["1", "0"] {
        run(ranks, &["--rank", r, "--world-size", "2"]);
    }
    run_ok(
        bin()
            .args(["finalize", "--prefix", prefix, "--out"])
            .arg(ranks),
    );
    assert!(tars(one).len() >= 3, "{:?}", tars(one));
    assert_eq!(tars(one), tars(ranks));
    for t in tars(one) {
        assert!(std::fs::read(one.join(&t)).unwrap() == std::fs::read(ranks.join(&t)).unwrap());
    }
    let lost = tars(one)[1].clone();
    let before = std::fs::read(one.join(&lost)).unwrap();
    std::fs::remove_file(one.join(&lost)).unwrap();
    run(one, &["--resume"]);
    assert!(std::fs::read(one.join(&lost)).unwrap() == before);
}

/// A family's output against its goldens: the same files under `dirs` (nothing more, nothing less),
/// every PNG equal pixel for pixel (decoded as RGB), every other file byte for byte.
pub fn assert_matches_golden(golden: &Path, out: &Path, dirs: &[&str]) {
    let want = files(golden);
    assert!(!want.is_empty());
    let got: Vec<_> = files(out)
        .into_iter()
        .filter(|p| dirs.iter().any(|d| p.starts_with(d)))
        .collect();
    assert_eq!(got, want, "file lists differ");
    for f in &want {
        if f.extension().is_some_and(|x| x == "png") {
            let (a, b) = (decode_rgb(&golden.join(f)), decode_rgb(&out.join(f)));
            assert_eq!((a.0, a.1), (b.0, b.1), "{}: size", f.display());
            let diff =
                a.2.chunks(3)
                    .zip(b.2.chunks(3))
                    .filter(|(x, y)| x != y)
                    .count();
            assert_eq!(diff, 0, "{}: {diff} pixels differ", f.display());
        } else {
            assert!(
                std::fs::read(out.join(f)).unwrap() == std::fs::read(golden.join(f)).unwrap(),
                "{} differs",
                f.display()
            );
        }
    }
}

/// SHA-256 (hex) over the files under `dir` (relative name, a NUL, the bytes; in name order),
/// leaving out locks and settings records (names starting with `.`, or in `skip`): the dataset's
/// bytes, which a family's guard test pins beside its version constant.
pub fn tree_digest(dir: &Path, skip: &[&str]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for p in files(dir) {
        let name = p.to_str().unwrap().to_string();
        if name.starts_with('.') || skip.contains(&name.as_str()) || is_checksums(&p) {
            continue;
        }
        h.update(name.as_bytes());
        h.update([0]);
        h.update(std::fs::read(dir.join(&p)).unwrap());
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Every file under `dir` (relative paths, sorted) with its bytes: to check that a refused run
/// changed nothing.
pub fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    files(dir)
        .into_iter()
        .map(|p| {
            let b = std::fs::read(dir.join(&p)).unwrap();
            (p, b)
        })
        .collect()
}

/// Makes a dataset in `out` with `run(&[])`, then asks `run(change) --resume` for each change:
/// each is refused naming its field (the settings record's or manifest's key), and no file
/// changes. Returns the snapshot of the dataset.
pub fn assert_each_change_is_refused(
    out: &Path,
    run: &dyn Fn(&[&str]) -> Command,
    changes: &[(&[&str], &str)],
) -> Vec<(PathBuf, Vec<u8>)> {
    run_ok(&mut run(&[]));
    let before = snapshot(out);
    assert!(!before.is_empty(), "{} is empty", out.display());
    for (extra, field) in changes {
        let e = run_err(run(extra).arg("--resume"));
        assert!(
            e.contains(field) && e.contains("other settings"),
            "{extra:?}: {e}"
        );
        assert!(snapshot(out) == before, "{extra:?} changed files");
    }
    before
}
