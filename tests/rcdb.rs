//! RCDB end to end: the original's goldens pixel for pixel and its parameter files byte for byte,
//! the building blocks against the libraries the original calls (Pillow, `noise`), and the bytes
//! not depending on threads, ranks, `--thread_num` or resume.

mod common;
use common::*;
use std::path::Path;

fn rcdb(out: &Path, args: &[&str]) -> std::process::Command {
    let mut c = bin();
    c.arg("rcdb")
        .arg("--save_root")
        .arg(out)
        .arg("-q")
        .args(args);
    c
}

#[test]
fn d1_one_process_equals_the_goldens() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("d1");
    run_ok(&mut rcdb(
        &out,
        &[
            "--numof_classes",
            "3",
            "--numof_instances",
            "4",
            "--numof_thread",
            "1",
            "--thread_num",
            "0",
        ],
    ));
    assert_matches_golden(&reference().join("rcdb/d1"), &out, &["image", "param"]);
}

#[test]
fn d2_four_processes_equal_the_goldens_whatever_the_split() {
    let tmp = tempfile::tempdir().unwrap();
    let args = [
        "--numof_classes",
        "8",
        "--numof_instances",
        "2",
        "--numof_thread",
        "4",
    ];
    // All processes at once, on one thread.
    let one = tmp.path().join("one");
    run_ok(rcdb(&one, &args).args(["-j", "1"]));
    assert_matches_golden(&reference().join("rcdb/d2"), &one, &["image", "param"]);
    // Each process on its own (the original's way), three threads.
    let split = tmp.path().join("split");
    for t in 0..4 {
        run_ok(rcdb(&split, &args).args(["-j", "3", "--thread_num", &t.to_string()]));
    }
    same_tree(&one, &split);
    // Three ranks (stretches of classes that cut through processes).
    let ranks = tmp.path().join("ranks");
    for r in 0..3 {
        run_ok(rcdb(&ranks, &args).args(["--rank", &r.to_string(), "--world-size", "3"]));
    }
    same_tree(&one, &ranks);
}

#[test]
fn resume_draws_only_what_is_missing_and_gives_the_same_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let args = [
        "--numof_classes",
        "6",
        "--numof_instances",
        "5",
        "--numof_thread",
        "2",
        "--image_size",
        "128",
    ];
    let full = tmp.path().join("full");
    run_ok(&mut rcdb(&full, &args));
    let part = tmp.path().join("part");
    run_ok(&mut rcdb(&part, &args));
    // A lost image, a truncated one (a crash mid-write of an older tool), a lost parameter file.
    std::fs::remove_file(part.join("image/00004/00004_0003.png")).unwrap();
    let p = part.join("image/00001/00001_0000.png");
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    std::fs::remove_file(part.join("param/00005.csv")).unwrap();
    let out = run_ok(rcdb(&part, &args).args(["--resume"]).arg("--quiet"));
    assert!(out.status.success());
    same_tree(&full, &part);
    // The record refuses other settings, naming the one that differs, and writes nothing.
    let mut other = args.to_vec();
    other[5] = "3";
    let before = files(&part);
    let err = run_err(rcdb(&part, &other).args(["--resume"]));
    assert!(
        err.contains("rcdb.json") && err.contains("numof_thread"),
        "{err}"
    );
    assert_eq!(files(&part), before);
}

#[test]
fn bad_settings_name_the_flag_and_write_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("o");
    for (args, flag) in [
        (vec!["--image_size", "511"], "--image_size"),
        (vec!["--numof_classes", "10"], "--numof_thread"),
        (
            vec![
                "--numof_classes",
                "4",
                "--numof_thread",
                "2",
                "--thread_num",
                "2",
            ],
            "--thread_num",
        ),
        (vec!["--vertex_num", "2"], "--vertex_num"),
        (vec!["--numof_instances", "0"], "--numof_instances"),
    ] {
        let err = run_err(&mut rcdb(&out, &args));
        assert!(err.contains(flag), "{args:?}: {err}");
        assert!(!out.exists(), "{args:?} left {}", out.display());
    }
}

/// Pillow's `ImageDraw.line(width=1)` on thousands of random segments: on and off the canvas, every
/// octant, short, long and degenerate, negative coordinates near zero (truncation, not floor).
#[test]
fn line_raster_equals_pillow() {
    use fractaldb::rcdb::line::draw_line;
    let tmp = tempfile::tempdir().unwrap();
    let size = 48usize;
    let mut rng = fractaldb::rng::PyRandom::seed(7);
    let (mut segs, mut canvases) = (String::new(), Vec::new());
    for i in 0..4000 {
        let spread = [2.0, 30.0, 200.0, 3000.0][i % 4];
        let mut v: Vec<f64> = (0..4)
            .map(|_| rng.uniform(-spread, size as f64 + spread))
            .collect();
        match i % 9 {
            0 => (v[2], v[3]) = (v[0], v[1]),             // a point
            1 => (v[2], v[3]) = (v[0] + 0.3, v[1] - 0.4), // within one pixel
            2 => v[3] = v[1],                             // horizontal
            3 => v[2] = v[0],                             // vertical
            4 => v.iter_mut().for_each(|x| *x = rng.uniform(-1.5, 1.5)), // around zero
            _ => {}
        }
        let mut c = vec![255u8; size * size];
        draw_line(&mut c, size, (v[0], v[1]), (v[2], v[3]), 0);
        segs.push_str(&format!("{:?} {:?} {:?} {:?}\n", v[0], v[1], v[2], v[3]));
        canvases.extend_from_slice(&c);
    }
    let (sp, cp) = (tmp.path().join("segs.txt"), tmp.path().join("canvases.bin"));
    std::fs::write(&sp, segs).unwrap();
    std::fs::write(&cp, canvases).unwrap();
    let out = python_ok(
        "rcdb_oracle.py",
        &[
            "lines",
            sp.to_str().unwrap(),
            cp.to_str().unwrap(),
            &size.to_string(),
        ],
    );
    assert!(out.contains("4000 segments equal"), "{out}");
}

/// `pnoise1` against the `noise` package itself on random inputs (the table test is in the crate).
#[test]
fn pnoise1_equals_the_noise_package() {
    use fractaldb::rcdb::noise::pnoise1;
    let tmp = tempfile::tempdir().unwrap();
    let mut rng = fractaldb::rng::PyRandom::seed(11);
    let mut text = String::new();
    for i in 0..20000 {
        let x = match i % 4 {
            0 => rng.uniform(0.0, 10000.0),
            1 => rng.uniform(-3000.0, 3000.0),
            2 => rng.uniform(-2.0, 2.0),
            _ => rng.uniform(0.0, 1e6),
        };
        text.push_str(&format!("{x:?} {:?}\n", pnoise1(x)));
    }
    let p = tmp.path().join("pnoise.txt");
    std::fs::write(&p, text).unwrap();
    let out = python_ok("rcdb_oracle.py", &["pnoise", p.to_str().unwrap()]);
    assert!(out.contains("20000 pnoise1 values equal"), "{out}");
}

/// Shards: read by the webdataset package, every image once and byte-identical to the folder
/// output; two ranks plus finalize and a resume after a lost shard give the same shard bytes.
#[test]
fn shards_hold_the_folder_images_whatever_the_ranks() {
    let tmp = tempfile::tempdir().unwrap();
    let args = [
        "--numof_classes",
        "6",
        "--numof_instances",
        "12",
        "--numof_thread",
        "3",
        "--image_size",
        "96",
    ];
    let folder = tmp.path().join("folder");
    run_ok(&mut rcdb(&folder, &args));
    let wds_args = ["--format", "wds", "--samples-per-shard", "20"];
    let one = tmp.path().join("one");
    run_ok(rcdb(&one, &args).args(wds_args));
    let out = python_ok(
        "read_rcdb.py",
        &[one.to_str().unwrap(), folder.to_str().unwrap(), "6", "12"],
    );
    assert!(out.contains("72 samples, each once"), "{out}");
    assert_ranks_and_resume_keep_the_shards(&one, &tmp.path().join("ranks"), "rcdb", |d, extra| {
        run_ok(rcdb(d, &args).args(wds_args).args(extra));
    });
}

/// Classes split into groups of instances (few classes for many threads: each group replays its
/// class's stream up to its first instance) give the same bytes as whole classes on one thread.
#[test]
fn groups_of_instances_equal_whole_classes() {
    let tmp = tempfile::tempdir().unwrap();
    let args = [
        "--numof_classes",
        "4",
        "--numof_instances",
        "150",
        "--numof_thread",
        "2",
        "--image_size",
        "64",
    ];
    let whole = tmp.path().join("whole");
    run_ok(rcdb(&whole, &args).args(["-j", "1"]));
    let groups = tmp.path().join("groups");
    run_ok(rcdb(&groups, &args).args(["-j", "3"]));
    assert_eq!(pngs(&whole).len(), 600);
    same_tree(&whole, &groups);
}

/// The GL engine (segments rasterised in a compute shader, llvmpipe here) gives the goldens and the
/// CPU engine's bytes, as folders and as shards.
#[test]
fn gl_engine_equals_the_goldens_and_the_cpu_engine() {
    let tmp = tempfile::tempdir().unwrap();
    let d1 = tmp.path().join("d1");
    run_ok(rcdb(&d1, &["--backend", "gl"]).args([
        "--numof_classes",
        "3",
        "--numof_instances",
        "4",
        "--numof_thread",
        "1",
    ]));
    assert_matches_golden(&reference().join("rcdb/d1"), &d1, &["image", "param"]);
    // 150 instances: units of 75 (groups) or 150 (whole classes) canvases overflow a 64-canvas batch.
    let args = [
        "--numof_classes",
        "4",
        "--numof_instances",
        "150",
        "--numof_thread",
        "2",
        "--image_size",
        "64",
        "--start_pos",
        "200",
    ];
    for format in ["folder", "wds"] {
        let (cpu, gl) = (
            tmp.path().join(format!("cpu-{format}")),
            tmp.path().join(format!("gl-{format}")),
        );
        run_ok(rcdb(&cpu, &args).args([
            "--backend",
            "cpu",
            "--format",
            format,
            "--samples-per-shard",
            "25",
        ]));
        run_ok(rcdb(&gl, &args).args([
            "--backend",
            "gl",
            "--format",
            format,
            "--samples-per-shard",
            "25",
        ]));
        same_tree(&cpu, &gl);
    }
}

/// `rcdb --serve`: every shard fetched with curl equals the one `--format wds` writes with the same
/// flags; epochs other than 0 are refused (RCDB has no instance key).
#[test]
fn served_shards_equal_written_shards() {
    let tmp = tempfile::tempdir().unwrap();
    let args = [
        "--numof_classes",
        "4",
        "--numof_instances",
        "10",
        "--numof_thread",
        "2",
        "--image_size",
        "64",
        "--samples-per-shard",
        "12",
    ];
    let written = tmp.path().join("written");
    run_ok(rcdb(&written, &args).args(["--format", "wds"]));
    let mut cmd = bin();
    cmd.args(["rcdb", "--serve", "--listen", "127.0.0.1:0"])
        .args(args);
    let (child, base) = start_service(cmd);
    let get = |path: &str| curl_get(&base, path);
    let tars = tars(&written);
    assert!(tars.len() >= 3);
    for t in &tars {
        let name = t.to_str().unwrap();
        let (code, body) = get(name);
        assert_eq!(code, "200", "{name}");
        assert!(
            body == std::fs::read(written.join(t)).unwrap(),
            "{name} differs"
        );
    }
    let (code, body) = get(&format!("epoch/1/{}", tars[0].to_str().unwrap()));
    assert_eq!(code, "400");
    assert!(String::from_utf8_lossy(&body).contains("RCDB"));
    stop_service(child);
}

/// The bytes of a tiny dataset (images and parameter files) pinned beside the version of RCDB's
/// bytes: a rule that changes them cannot land without bumping `fractaldb::rcdb::run::VERSION` (so
/// that resumes refuse the older output) and this digest.
#[test]
fn a_tiny_datasets_bytes_are_pinned_to_the_version() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("r");
    run_ok(&mut rcdb(
        &out,
        &[
            "--numof_classes",
            "3",
            "--numof_instances",
            "4",
            "--image_size",
            "64",
            "--numof_thread",
            "2",
            "--backend",
            "cpu",
        ],
    ));
    assert_eq!(
        (
            fractaldb::rcdb::run::VERSION,
            tree_digest(&out, &["rcdb.json", "classes.txt"])
        ),
        (
            1,
            "f2d4c551dccaa565aaa0e0c6997912c0a75500ecb2d270b20704f9db9c00f847".to_string()
        ),
        "RCDB's bytes changed: bump VERSION and pin the new digest"
    );
}

/// The original's way: all `--numof_thread` processes started at once into one `--save_root` (each
/// its `--thread_num`), and ranks started at once, succeed and give the one-run bytes; a second run
/// of a slice that is running is refused.
#[test]
fn slices_and_ranks_started_together_succeed_and_a_slice_twice_does_not() {
    let tmp = tempfile::tempdir().unwrap();
    let args = [
        "--numof_classes",
        "8",
        "--numof_instances",
        "2",
        "--numof_thread",
        "4",
        "-j",
        "1",
    ];
    let one = tmp.path().join("one");
    run_ok(&mut rcdb(&one, &args));
    // The label list beside the folders, as render writes it; every slice writes the same.
    let labels: String = (0..8).map(|c| format!("{c:05}\n")).collect();
    assert_eq!(
        std::fs::read_to_string(one.join("classes.txt")).unwrap(),
        labels
    );
    for (name, splits) in [
        (
            "slices",
            (0..4)
                .map(|t| vec!["--thread_num".to_string(), t.to_string()])
                .collect::<Vec<_>>(),
        ),
        (
            "ranks",
            (0..3)
                .map(|r| {
                    ["--rank", &r.to_string(), "--world-size", "3"]
                        .map(String::from)
                        .to_vec()
                })
                .collect(),
        ),
    ] {
        let out = tmp.path().join(name);
        let children: Vec<_> = splits
            .iter()
            .map(|extra| {
                rcdb(&out, &args)
                    .args(extra)
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for c in children {
            let o = c.wait_with_output().unwrap();
            assert!(
                o.status.success(),
                "{name}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        same_tree(&one, &out);
    }
    // A slice that is running holds its lock: this test process plays the running one.
    let busy = tmp.path().join("busy");
    std::fs::create_dir_all(&busy).unwrap();
    let held = std::fs::File::create(
        busy.join(".fractaldb-rcdb-thread-00002-of-00004-rank-00000-of-00001.lock"),
    )
    .unwrap();
    held.try_lock().unwrap();
    let o = output_bounded(rcdb(&busy, &args).args(["--thread_num", "2"]));
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("another fractaldb run"),
        "{o:?}"
    );
    // Another slice is not held up by it.
    run_ok(rcdb(&busy, &args).args(["--thread_num", "1"]));
}

/// `--resume` after changing any one RCDB setting is refused, naming it, and changes no file, in
/// folders and in shards.
#[test]
fn a_resume_with_any_other_setting_is_refused_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let base = [
        "--image_size",
        "32",
        "--numof_classes",
        "4",
        "--numof_instances",
        "2",
        "--numof_thread",
        "2",
        "--backend",
        "cpu",
        "-q",
    ];
    let run = |out: &Path, fmt: &[&str], extra: &[&str]| {
        let mut c = bin();
        c.arg("rcdb")
            .arg("--save_root")
            .arg(out)
            .args(base)
            .args(fmt)
            .args(extra);
        c
    };
    let changes: [(&[&str], &str); 13] = [
        (&["--image_size", "40"], "image_size"),
        (&["--vertex_num", "300"], "vertex_num"),
        (&["--perlin_min", "2"], "perlin_min"),
        (&["--line_width", "0.2"], "line_width"),
        (&["--radius_min", "1"], "radius_min"),
        (&["--line_num_min", "3"], "line_num_min"),
        (&["--oval_rate", "3"], "oval_rate"),
        (&["--start_pos", "100"], "start_pos"),
        (&["--numof_classes", "6"], "numof_classes"),
        (&["--numof_instances", "3"], "numof_instances"),
        (&["--numof_thread", "1"], "numof_thread"),
        (&["--png-level", "6"], "png_level"),
        (&["--seed", "3"], "seed"),
    ];
    for fmt in [
        &[][..],
        &["--format", "wds", "--samples-per-shard", "3"][..],
    ] {
        let out = tmp
            .path()
            .join(if fmt.is_empty() { "folder" } else { "wds" });
        // The order's seed is a shard setting.
        let changes: Vec<_> = changes
            .iter()
            .filter(|(_, field)| !fmt.is_empty() || *field != "seed")
            .copied()
            .collect();
        let before = assert_each_change_is_refused(&out, &|extra| run(&out, fmt, extra), &changes);
        run_ok(run(&out, fmt, &[]).arg("--resume"));
        assert!(snapshot(&out) == before);
    }
}
