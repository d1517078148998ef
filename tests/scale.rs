//! Real-scale behaviour of the shard order: every point cloud is computed exactly once (summed over
//! ranks) at any shard count, thread count, rank count and backend, and shards at FractalDB-1k's
//! images-per-shard ratio mix the classes (read back with Python's tarfile).

mod common;
use common::*;
use fractaldb::plan::{Layout, Plan, load_classes};
use std::path::Path;
use std::process::Command;

const CLASSES: [&str; 3] = ["00020", "00021", "00022"];

fn small<'a>(cmd: &'a mut Command, classes: &Path, out: &Path) -> &'a mut Command {
    cmd.args(["render", "--image-size-x", "32", "--image-size-y", "32"])
        .args(["--iteration", "400", "--instance", "2", "--seed", "3"])
        .arg("--load-root")
        .arg(classes)
        .arg("--out")
        .arg(out)
}

/// The clouds one run reports on its `done:` line.
fn clouds_of(stderr: &str) -> u64 {
    let line = stderr
        .lines()
        .find(|l| l.starts_with("done:"))
        .unwrap_or_else(|| panic!("no done line in {stderr}"));
    let i = line.find(" clouds").expect("clouds in the done line");
    line[..i].rsplit(' ').next().unwrap().parse().unwrap()
}

/// The GL engine's bytes read back per image, from the `done:` line.
fn readback_of(stderr: &str) -> u64 {
    let line = stderr.lines().find(|l| l.starts_with("done:")).unwrap();
    let i = line
        .find(" bytes read back per image")
        .unwrap_or_else(|| panic!("no readback figure in {line}"));
    line[..i].rsplit(' ').next().unwrap().parse().unwrap()
}

/// The samples-per-shard whose shard count is nearest to `shards` with these classes, and that count.
fn per_shard_for(classes: &Path, shards: u64) -> (String, u64) {
    let plan = Plan::new(load_classes(classes).unwrap(), "builtin:0.4", 2).unwrap();
    let (p, n) = (1..=plan.total())
        .map(|p| (p, Layout::new(&plan, p, 3).shards))
        .min_by_key(|&(_, n)| n.abs_diff(shards))
        .unwrap();
    // Shards smaller than a cloud's images (100 shards of 75 clouds) round up a little.
    assert!(n.abs_diff(shards) * 5 <= shards, "{n} shards for {shards}");
    (p.to_string(), n)
}

/// Runs every rank of a render (one after the other, as separate processes) and returns the clouds
/// all of them computed, and the number of "backend gl" banners they printed.
fn run_ranks(classes: &Path, out: &Path, world: u64, extra: &[&str]) -> (u64, usize) {
    let (mut clouds, mut banners) = (0, 0);
    for rank in 0..world {
        let mut c = bin();
        small(&mut c, classes, out).args(extra).args([
            "--rank",
            &rank.to_string(),
            "--world-size",
            &world.to_string(),
        ]);
        let o = run_ok(&mut c);
        let err = String::from_utf8_lossy(&o.stderr);
        clouds += clouds_of(&err);
        banners += err.lines().filter(|l| l.starts_with("backend gl:")).count();
    }
    if world > 1 && extra.contains(&"wds") {
        run_ok(bin().args(["finalize", "--out"]).arg(out));
    }
    (clouds, banners)
}

/// Every shard of a directory: (name, bytes), by name.
type Shards = Vec<(String, Vec<u8>)>;

fn tars(dir: &Path) -> Shards {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "tar"))
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn every_cloud_is_computed_once_at_any_shard_count_threads_and_ranks_on_the_cpu() {
    let tmp = tempfile::tempdir().unwrap();
    let classes = class_dir(tmp.path(), &CLASSES);
    let expected = (CLASSES.len() * 25) as u64;
    let threads = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .max(2);
    let mut reference: Vec<Option<Shards>> = vec![None; 3];
    for (k, shards) in [1u64, 7, 100].into_iter().enumerate() {
        let (per, shards) = per_shard_for(&classes, shards);
        for t in [1, threads] {
            for world in [1u64, 3] {
                let out = tmp.path().join(format!("wds-{shards}-{t}-{world}"));
                let t = t.to_string();
                let args = [
                    "--backend",
                    "cpu",
                    "-j",
                    &t,
                    "--format",
                    "wds",
                    "--samples-per-shard",
                    &per,
                ];
                let (clouds, _) = run_ranks(&classes, &out, world, &args);
                assert_eq!(
                    clouds, expected,
                    "{shards} shards, {t} threads, {world} ranks"
                );
                let got = tars(&out);
                assert_eq!(got.len() as u64, shards);
                // Same bytes for any threads and ranks.
                match &reference[k] {
                    None => reference[k] = Some(got),
                    Some(r) => assert!(
                        r == &got,
                        "{shards} shards: bytes differ at {t} threads, {world} ranks"
                    ),
                }
            }
        }
    }
    for world in [1u64, 3] {
        let out = tmp.path().join(format!("folder-{world}"));
        let (clouds, _) = run_ranks(&classes, &out, world, &["--backend", "cpu", "-j", "3"]);
        assert_eq!(clouds, expected, "folder, {world} ranks");
    }
}

#[test]
fn every_cloud_is_computed_once_on_the_gl_engine_with_one_context_per_run() {
    let tmp = tempfile::tempdir().unwrap();
    let classes = class_dir(tmp.path(), &CLASSES);
    let expected = (CLASSES.len() * 25) as u64;
    for shards in [1u64, 7, 100] {
        let (per, shards) = per_shard_for(&classes, shards);
        let cpu = tmp.path().join(format!("cpu-{shards}"));
        let common = ["--format", "wds", "--samples-per-shard", per.as_str()];
        let (clouds, _) = run_ranks(
            &classes,
            &cpu,
            1,
            &[&["--backend", "cpu"][..], &common].concat(),
        );
        assert_eq!(clouds, expected);
        for world in [1u64, 3] {
            let gl = tmp.path().join(format!("gl-{shards}-{world}"));
            let (clouds, banners) = run_ranks(
                &classes,
                &gl,
                world,
                &[&["--backend", "gl"][..], &common].concat(),
            );
            assert_eq!(clouds, expected, "GL, {shards} shards, {world} ranks");
            assert_eq!(banners as u64, world, "one GL context per run");
            assert!(
                tars(&cpu) == tars(&gl),
                "GL shards differ from CPU shards ({shards} shards, {world} ranks)"
            );
        }
    }
    let out = tmp.path().join("gl-folder");
    let (clouds, banners) = run_ranks(&classes, &out, 1, &["--backend", "gl"]);
    assert_eq!((clouds, banners), (expected, 1));
}

#[test]
fn the_gl_engine_reads_back_at_most_one_canvas_per_image() {
    // Only label canvases (and 16 bytes per cloud) come back with the GPU rescale; the fp64 points
    // too with --rescale cpu.
    let tmp = tempfile::tempdir().unwrap();
    let classes = class_dir(tmp.path(), &CLASSES);
    let (w, h) = (32u64, 32u64);
    for raster in ["compute", "points"] {
        let o = run_ok(small(&mut bin(), &classes, &tmp.path().join(raster)).args([
            "--backend",
            "gl",
            "--raster",
            raster,
        ]));
        let b = readback_of(&String::from_utf8_lossy(&o.stderr));
        assert!(b > 0 && b <= w * h, "{raster}: {b} bytes per image");
    }
    let o = run_ok(
        small(&mut bin(), &classes, &tmp.path().join("cpu-rescale")).args([
            "--backend",
            "gl",
            "--rescale",
            "cpu",
        ]),
    );
    let b = readback_of(&String::from_utf8_lossy(&o.stderr));
    assert!(b > w * h, "the CPU rescale reads the points back: {b}");
}

#[test]
fn shards_at_the_fractaldb_1k_ratio_mix_the_classes() {
    // 100 classes, 10 instances, 1,000 samples per shard: FractalDB-1k's images-per-shard ratio.
    let tmp = tempfile::tempdir().unwrap();
    let names: Vec<String> = (0..100).map(|i| format!("{i:05}")).collect();
    let refs: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
    let classes = class_dir(tmp.path(), &refs);
    let out = tmp.path().join("wds");
    let o = run_ok(
        bin()
            .args([
                "render",
                "--backend",
                "cpu",
                "--image-size-x",
                "16",
                "--image-size-y",
                "16",
            ])
            .args([
                "--pad-size-x",
                "2",
                "--pad-size-y",
                "2",
                "--iteration",
                "50",
            ])
            .args([
                "--instance",
                "10",
                "--format",
                "wds",
                "--samples-per-shard",
                "1000",
            ])
            .arg("--load-root")
            .arg(&classes)
            .arg("--out")
            .arg(&out),
    );
    assert_eq!(clouds_of(&String::from_utf8_lossy(&o.stderr)), 2500);
    let report = python_ok("class_mix.py", &[out.to_str().unwrap(), "fractaldb", "100"]);
    let v: serde_json::Value = serde_json::from_str(report.trim()).unwrap();
    assert_eq!(v["shards"], 100);
    assert_eq!(v["samples"], 100_000);
    assert!(v["min_classes"].as_u64().unwrap() >= 30, "{report}");
    assert!(
        v["max_share_over_fair"].as_f64().unwrap() <= 10.0,
        "{report}"
    );
}
