//! SIGINT and SIGTERM stop every kind of run in the middle of one large unit: a FractalDB cloud of
//! 100,000 instances (both engines), an RCDB class of 20,000 instances, an MV-FractalDB class of
//! 145 models x 1,000 views, and a search. Each test waits for an event (the first finished file),
//! sends the signal, waits for the exit, and checks that the run stopped long before its unit was
//! done by counting what it wrote (never by the clock): exit code 128 + the signal, the message, no
//! temporary file left, only whole files. The chaos game itself stops inside its loop too.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const SIGINT: i32 = 2;
const SIGTERM: i32 = 15;

/// Files under `dir` whose name ends with `ext`.
fn count(dir: &Path, ext: &str) -> usize {
    files(dir)
        .iter()
        .filter(|p| p.to_str().unwrap().ends_with(ext))
        .count()
}

/// Starts `cmd`, waits until `dir` holds a finished `ext` file, sends `sig`, and returns its stderr
/// once it has exited with 128 + `sig`.
fn interrupt_once_started(cmd: &mut Command, dir: &Path, ext: &str, sig: i32) -> String {
    let err_path = dir.with_extension("stderr");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap();
    let mut exited_early = None;
    wait_until(&format!("a first {ext} file in {}", dir.display()), || {
        if let Some(s) = child.try_wait().unwrap() {
            exited_early = Some(s);
            return true;
        }
        count(dir, ext) > 0
    });
    let stderr = || std::fs::read_to_string(&err_path).unwrap();
    assert!(
        exited_early.is_none(),
        "{cmd:?} ended before the signal: {exited_early:?}\n{}",
        stderr()
    );
    let kill = Command::new("kill")
        .args([format!("-{sig}"), child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = wait_exit(&mut child, &format!("{cmd:?} after signal {sig}"));
    let e = stderr();
    assert_eq!(status.code(), Some(128 + sig), "{status:?}\n{e}");
    assert!(e.contains(&format!("interrupted by signal {sig}")), "{e}");
    assert!(
        !files(dir)
            .iter()
            .any(|p| p.to_str().unwrap().ends_with(".fdbtmp")),
        "a temporary file was left in {}",
        dir.display()
    );
    e
}

/// Every PNG under `dir` decodes whole.
fn all_pngs_whole(dir: &Path) {
    for p in pngs(dir) {
        decode_rgb(&dir.join(p));
    }
}

fn render(classes: &Path, out: &Path, backend: &str) -> Command {
    let mut c = bin();
    c.args(["render", "-q", "--backend", backend, "--load-root"])
        .arg(classes)
        .arg("--out")
        .arg(out)
        .args([
            "--weight-rows",
            "0",
            "--instance",
            "100000",
            "--image-size-x",
            "48",
            "--image-size-y",
            "48",
            "--iteration",
            "5000",
            "-j",
            "1",
        ]);
    c
}

/// A render of one unit (class `name`, weight row 0, 100,000 instances x 4 flips) stopped by `sig`.
fn render_stops_inside_its_one_unit(backend: &str, name: &str, sig: i32) {
    let tmp = tempfile::tempdir().unwrap();
    let classes = class_dir(tmp.path(), &[name]);
    let out = tmp.path().join("o");
    interrupt_once_started(&mut render(&classes, &out, backend), &out, ".png", sig);
    let n = count(&out, ".png");
    assert!(
        n < 400_000 / 2,
        "{backend}: {n} of the unit's 400,000 images"
    );
    all_pngs_whole(&out);
}

#[test]
fn sigint_stops_a_cpu_render_inside_its_one_unit() {
    render_stops_inside_its_one_unit("cpu", "00000", SIGINT);
}

#[test]
fn sigterm_stops_a_gl_render_inside_its_one_unit() {
    render_stops_inside_its_one_unit("gl", "00001", SIGTERM);
}

#[test]
fn sigint_stops_rcdb_inside_a_class() {
    let tmp = tempfile::tempdir().unwrap();
    for (backend, sig) in [("cpu", SIGINT), ("gl", SIGTERM)] {
        let out = tmp.path().join(backend);
        let mut c = bin();
        c.args(["rcdb", "-q", "--backend", backend, "--save_root"])
            .arg(&out)
            .args([
                "--numof_classes",
                "1",
                "--numof_instances",
                "20000",
                "--image_size",
                "48",
                "--numof_thread",
                "1",
                "-j",
                "1",
            ]);
        interrupt_once_started(&mut c, &out, ".png", sig);
        let n = count(&out.join("image"), ".png");
        assert!(
            n < 20_000 / 2,
            "{backend}: {n} of the class's 20,000 images"
        );
        all_pngs_whole(&out.join("image"));
    }
}

#[test]
fn sigint_stops_mvfdb_inside_a_class() {
    let tmp = tempfile::tempdir().unwrap();
    for (backend, sig) in [("cpu", SIGINT), ("gl", SIGTERM)] {
        let out = tmp.path().join(backend);
        let mut c = bin();
        c.args(["mvfdb", "-q", "--backend", backend, "--save_root"])
            .arg(&out)
            .args([
                "--classes",
                "1",
                "--views",
                "random:1000",
                "--img_size",
                "32",
                "-j",
                "1",
            ]);
        interrupt_once_started(&mut c, &out, ".png", sig);
        // One class: 145 models x 1,000 views (fewer where a model has a NaN).
        let n = count(&out, ".png");
        assert!(n < 145_000 / 2, "{backend}: {n} of the class's views");
        all_pngs_whole(&out);
    }
}

#[test]
fn sigint_stops_a_search() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("s");
    let mut c = bin();
    c.args([
        "search",
        "-q",
        "--backend",
        "cpu",
        "--categories",
        "1000",
        "--points",
        "1000000",
        "--no-previews",
        "-j",
        "1",
        "--out",
    ])
    .arg(&out);
    interrupt_once_started(&mut c, &out, ".csv", SIGINT);
    let csvs: Vec<PathBuf> = files(&out)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|x| x == "csv"))
        .collect();
    assert!(csvs.len() < 1000 / 2, "{} of 1,000 classes", csvs.len());
    // Each class file written is whole: rows of 7 numbers, ending with a newline.
    for p in &csvs {
        let text = std::fs::read_to_string(out.join(p)).unwrap();
        assert!(text.ends_with('\n'), "{}", p.display());
        for line in text.lines() {
            assert_eq!(line.split(',').count(), 7, "{}: {line}", p.display());
        }
    }
}

/// In this process, so the only test here that sets the process-wide interrupt: the chaos game
/// (one lane, and four lanes as the render stage and the search run it) stops at the chunk after
/// the interrupt, not at the end of its points.
#[test]
fn a_chaos_game_stops_inside_its_loop() {
    let ifs = fractaldb::ifs::Ifs::read_csv(&reference().join("categories/00000.csv")).unwrap();
    let lane = fractaldb::ifs::Lane::new(&ifs).unwrap();
    let points = 10_000_000;
    let mut chunks = 0usize;
    let mut out = Vec::new();
    fractaldb::ifs::chaos_lane(&lane, points, &mut out, |_, buf| {
        chunks += 1;
        if chunks == 10 {
            fractaldb::interrupt(true);
        }
        buf.fill(0.5);
    });
    assert!(fractaldb::interrupted());
    fractaldb::interrupt(false);
    assert_eq!(chunks, 10, "one lane drew on after the interrupt");
    let mut pts: [Vec<f64>; 4] = Default::default();
    let mut calls = 0usize;
    fractaldb::ifs::chaos_lanes([&lane; 4], points, &mut pts, |_, _, buf| {
        calls += 1;
        if calls == 4 * 10 {
            fractaldb::interrupt(true);
        }
        buf.fill(0.5);
    });
    fractaldb::interrupt(false);
    assert_eq!(calls, 40, "four lanes drew on after the interrupt");
    // Without an interrupt, every chunk is drawn.
    let mut all = 0usize;
    fractaldb::ifs::chaos_lane(&lane, 100_000, &mut out, |_, buf| {
        all += 1;
        buf.fill(0.5);
    });
    assert_eq!(all, 99_999usize.div_ceil(256));
}
