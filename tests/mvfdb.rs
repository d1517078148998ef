//! MV-FractalDB: the goldens of tests/fixtures/reference/mvfdb (parameter files and PLY models byte for
//! byte, every view pixel for pixel on the CPU engine), and the bytes not depending on threads,
//! ranks or resume.

mod common;
use common::*;
use std::path::Path;

fn mvfdb(out: &Path, args: &[&str]) -> std::process::Command {
    let mut c = bin();
    c.arg("mvfdb")
        .arg("--save_root")
        .arg(out)
        .arg("-q")
        .args(args);
    // The builtin multipliers are the reference's weights_ins145.csv (a unit test checks the
    // bytes); the reference file is passed here so the goldens' inputs are explicit.
    c.arg("--weight-csv")
        .arg(reference().join("mvfdb/weights_ins145.csv"));
    c
}

const M1: [&str; 10] = [
    "--classes",
    "3",
    "--seed",
    "1",
    "--weight-rows",
    "0-3",
    "--model-seed",
    "7",
    "--view-seed",
    "11",
];
const M2: [&str; 14] = [
    "--classes",
    "2",
    "--seed",
    "2",
    "--weight-rows",
    "0-2",
    "--model-seed",
    "8",
    "--view-seed",
    "12",
    "--img_size",
    "160",
    "--view_point",
    "6",
];

#[test]
fn m1_and_m2_equal_the_goldens() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, args) in [("m1", &M1[..]), ("m2", &M2[..])] {
        let out = tmp.path().join(name);
        run_ok(mvfdb(&out, args).arg("--write-models"));
        assert_matches_golden(
            &reference().join("mvfdb").join(name),
            &out,
            &["params", "models", "images"],
        );
    }
}

/// The GL engine (GL_POINTS through EGL, llvmpipe here: the goldens' own rasteriser) gives every
/// golden view too, and the CPU engine's bytes.
#[test]
fn gl_engine_equals_the_goldens_and_the_cpu_engine() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, args) in [("m1", &M1[..]), ("m2", &M2[..])] {
        let gl = tmp.path().join(format!("{name}-gl"));
        run_ok(mvfdb(&gl, args).args(["--backend", "gl", "--write-models"]));
        assert_matches_golden(
            &reference().join("mvfdb").join(name),
            &gl,
            &["params", "models", "images"],
        );
        let cpu = tmp.path().join(format!("{name}-cpu"));
        run_ok(mvfdb(&cpu, args).args(["--backend", "cpu", "--write-models"]));
        same_tree(&cpu, &gl);
    }
}

/// Beyond the goldens: 2 classes x 145 models x 12 views at the defaults, where an earlier CPU rule
/// (the product matrix first, fused multiply-adds, `x / w`) differed from llvmpipe in 12 images; the
/// CPU engine's rule now gives the GL engine's bytes in every one.
#[test]
fn cpu_engine_equals_the_gl_engine_beyond_the_goldens() {
    let tmp = tempfile::tempdir().unwrap();
    let args = ["--classes", "2", "--model-seed", "3", "--view-seed", "4"];
    let gl = tmp.path().join("gl");
    run_ok(mvfdb(&gl, &args).args(["--backend", "gl"]));
    let cpu = tmp.path().join("cpu");
    run_ok(mvfdb(&cpu, &args).args(["--backend", "cpu"]));
    assert_eq!(pngs(&cpu.join("images")).len(), 2 * 145 * 12);
    same_tree(&cpu, &gl);
}

/// `--point_size`: GL's legacy square points (glPointSize on the GL engine, the GL 2.1 rule on the
/// CPU) give the same bytes on both engines, and an odd size is the size-1 image dilated by that
/// square (its pixels centred on the size-1 pixel).
#[test]
fn point_sizes_agree_on_both_engines() {
    let tmp = tempfile::tempdir().unwrap();
    let base = [
        "--classes",
        "1",
        "--weight-rows",
        "0-3",
        "--img_size",
        "64",
        "--views",
        "4",
    ];
    let run = |name: &str, extra: &[&str]| {
        let d = tmp.path().join(name);
        run_ok(mvfdb(&d, &base).args(extra));
        d
    };
    let one = run("one", &[]);
    for size in ["2", "3", "4"] {
        let cpu = run(
            &format!("cpu{size}"),
            &["--point_size", size, "--backend", "cpu"],
        );
        let gl = run(
            &format!("gl{size}"),
            &["--point_size", size, "--backend", "gl"],
        );
        same_tree(&cpu, &gl);
    }
    let images = pngs(&one.join("images"));
    assert_eq!(images.len(), 16);
    for f in &images {
        let (w, h, small) = decode_rgb(&one.join("images").join(f));
        let (_, _, big) = decode_rgb(&tmp.path().join("cpu3/images").join(f));
        let (w, h) = (w as i64, h as i64);
        let lit = |img: &[u8], x: i64, y: i64| img[((y * w + x) * 3) as usize] == 255;
        for y in 0..h {
            for x in 0..w {
                let dilated = (-1..=1).any(|dy| {
                    (-1..=1).any(|dx| {
                        let (sx, sy) = (x + dx, y + dy);
                        sx >= 0 && sy >= 0 && sx < w && sy < h && lit(&small, sx, sy)
                    })
                });
                assert_eq!(
                    lit(&big, x, y),
                    dilated,
                    "{}: pixel ({x}, {y})",
                    f.display()
                );
            }
        }
    }
}

#[test]
fn threads_ranks_and_resume_give_the_same_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let one = tmp.path().join("one");
    run_ok(mvfdb(&one, &M1).args(["-j", "1"]));
    // The label list beside the folders, as render writes it (and as the shards' .cls use it).
    assert_eq!(
        std::fs::read_to_string(one.join("classes.txt")).unwrap(),
        "000000\n000001\n000002\n"
    );
    let ranks = tmp.path().join("ranks");
    for r in ["1", "0"] {
        run_ok(mvfdb(&ranks, &M1).args(["-j", "2", "--rank", r, "--world-size", "2"]));
    }
    same_tree(&one, &ranks);
    // A lost view and a truncated one: --resume draws them again, the same bytes.
    std::fs::remove_file(ranks.join("images/000001/000001_00002_007.png")).unwrap();
    let p = ranks.join("images/000002/000002_00000_000.png");
    let b = std::fs::read(&p).unwrap();
    std::fs::write(&p, &b[..b.len() / 3]).unwrap();
    run_ok(mvfdb(&ranks, &M1).arg("--resume"));
    same_tree(&one, &ranks);
}

#[test]
fn bad_settings_name_the_flag() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("o");
    let err = run_err(
        bin()
            .args([
                "mvfdb",
                "--classes",
                "1",
                "--weight-csv",
                "/nonexistent/w.csv",
            ])
            .arg("--save_root")
            .arg(&out),
    );
    assert!(err.contains("/nonexistent/w.csv"), "{err}");
    assert!(
        !out.exists(),
        "a bad multipliers file left {}",
        out.display()
    );
    for bad in ["0", "65"] {
        let err = run_err(&mut mvfdb(&out, &["--classes", "1", "--point_size", bad]));
        assert!(err.contains("--point_size"), "{err}");
        assert!(!out.exists(), "--point_size {bad} left {}", out.display());
    }
    let err = run_err(&mut mvfdb(
        &out,
        &["--classes", "1", "--weight-rows", "0-200"],
    ));
    assert!(err.contains("--weight-rows"), "{err}");
    assert!(!out.exists(), "bad --weight-rows left {}", out.display());
    let bad = tmp.path().join("w.csv");
    std::fs::write(&bad, "1,1,1\n").unwrap();
    let err = run_err(
        bin()
            .args(["mvfdb", "-q", "--classes", "1", "--weight-csv"])
            .arg(&bad)
            .arg("--save_root")
            .arg(&out),
    );
    assert!(err.contains("w.csv:1"), "{err}");
}

/// `--views random:N`: our ExFractalDB-style views, keyed by (seed, class, model, view): the same
/// bytes for any thread or rank count, other images than the ring of N, and other ones per seed.
#[test]
fn random_views_are_keyed_and_independent_of_threads_and_ranks() {
    let tmp = tempfile::tempdir().unwrap();
    let base = ["--classes", "2", "--weight-rows", "0-2", "--img_size", "64"];
    let one = tmp.path().join("one");
    run_ok(mvfdb(&one, &base).args(["--views", "random:4", "-j", "1"]));
    assert_eq!(pngs(&one.join("images")).len(), 2 * 3 * 4);
    let ranks = tmp.path().join("ranks");
    for r in ["0", "1"] {
        run_ok(mvfdb(&ranks, &base).args([
            "--views",
            "random:4",
            "--rank",
            r,
            "--world-size",
            "2",
        ]));
    }
    same_tree(&one, &ranks);
    // The GL engine draws the same random views (many per instanced draw).
    let gl = tmp.path().join("gl");
    run_ok(mvfdb(&gl, &base).args(["--views", "random:4", "--backend", "gl"]));
    same_tree(&one, &gl);
    let ring = tmp.path().join("ring");
    run_ok(mvfdb(&ring, &base).args(["--views", "4"]));
    let reseeded = tmp.path().join("reseeded");
    run_ok(mvfdb(&reseeded, &base).args(["--views", "random:4", "--view-seed", "5"]));
    for other in [&ring, &reseeded] {
        let same = pngs(&one.join("images"))
            .iter()
            .filter(|f| {
                std::fs::read(one.join("images").join(f)).unwrap()
                    == std::fs::read(other.join("images").join(f)).unwrap()
            })
            .count();
        assert_eq!(
            same,
            0,
            "{} images equal those of {}",
            same,
            other.display()
        );
    }
    let err = run_err(&mut mvfdb(&one, &["--views", "sometimes"]));
    assert!(err.contains("--views"), "{err}");
}

/// `--format wds`: every view once in shards read by the webdataset package, byte-identical to the
/// folder PNGs; two ranks plus finalize and a resume after a lost shard give the same shard bytes.
#[test]
fn shards_hold_the_folder_views_whatever_the_ranks() {
    let tmp = tempfile::tempdir().unwrap();
    let base = [
        "--classes",
        "3",
        "--weight-rows",
        "0-19",
        "--img_size",
        "64",
        "--views",
        "4",
    ];
    let folder = tmp.path().join("folder");
    run_ok(&mut mvfdb(&folder, &base));
    let wds_args = ["--format", "wds", "--samples-per-shard", "40"];
    let one = tmp.path().join("one");
    run_ok(mvfdb(&one, &base).args(wds_args));
    let n = pngs(&folder.join("images")).len();
    assert_eq!(n, 3 * 20 * 4, "no NaN model in these classes");
    let out = python_ok(
        "read_mvfdb.py",
        &[
            one.to_str().unwrap(),
            folder.to_str().unwrap(),
            &n.to_string(),
        ],
    );
    assert!(out.contains("of 3 classes, each once"), "{out}");
    // The GL engine's shards (models computed on the device in batches of claimed units, views
    // through the readback ring) are the same bytes.
    let gl = tmp.path().join("gl");
    run_ok(mvfdb(&gl, &base).args(wds_args).args(["--backend", "gl"]));
    assert_eq!(tars(&one), tars(&gl));
    for t in tars(&one) {
        assert!(
            std::fs::read(one.join(&t)).unwrap() == std::fs::read(gl.join(&t)).unwrap(),
            "{} differs on the GL engine",
            t.display()
        );
    }
    assert_ranks_and_resume_keep_the_shards(
        &one,
        &tmp.path().join("ranks"),
        "mvfdb",
        |d, extra| {
            run_ok(mvfdb(d, &base).args(wds_args).args(extra));
        },
    );
}

/// `mvfdb --serve`: every shard fetched with curl equals the one `--format wds` writes with the
/// same flags, and the service writes nothing.
#[test]
fn served_shards_equal_written_shards() {
    let tmp = tempfile::tempdir().unwrap();
    let args = [
        "--classes",
        "2",
        "--weight-rows",
        "0-5",
        "--img_size",
        "48",
        "--views",
        "3",
        "--samples-per-shard",
        "10",
    ];
    let written = tmp.path().join("written");
    run_ok(mvfdb(&written, &args).args(["--format", "wds"]));
    let served_root = tmp.path().join("served");
    let mut cmd = mvfdb(&served_root, &args);
    cmd.args(["--serve", "--listen", "127.0.0.1:0"]);
    let (child, base) = start_service(cmd);
    let tars = tars(&written);
    assert!(tars.len() >= 3);
    for t in &tars {
        let (code, body) = curl_get(&base, t.to_str().unwrap());
        assert_eq!(code, "200", "{}", t.display());
        assert!(
            body == std::fs::read(written.join(t)).unwrap(),
            "{} differs",
            t.display()
        );
    }
    let (code, _) = curl_get(&base, &format!("epoch/1/{}", tars[0].display()));
    assert_eq!(code, "400");
    stop_service(child);
    assert!(
        !served_root.exists(),
        "the service wrote {}",
        served_root.display()
    );
}

/// `--resume` with any one setting changed, or the multipliers file edited in place, is refused
/// with the setting's name, in folders and shards, and leaves every file as it was; the same
/// settings resume. (It used to keep the old images: the MV-FractalDB record lacked point size,
/// held the weights file's path, and folders had no record at all.)
#[test]
fn a_resume_with_any_other_setting_is_refused_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let weights = tmp.path().join("w.csv");
    std::fs::copy(reference().join("mvfdb/weights_ins145.csv"), &weights).unwrap();
    let base = [
        "--classes",
        "1",
        "--weight-rows",
        "0-3",
        "--views",
        "2",
        "--img_size",
        "32",
        "--view-seed",
        "11",
    ];
    let run = |out: &Path, fmt: &[&str], extra: &[&str]| {
        let mut c = bin();
        c.arg("mvfdb")
            .arg("--save_root")
            .arg(out)
            .arg("-q")
            .arg("--weight-csv")
            .arg(&weights)
            .args(base)
            .args(fmt)
            .args(extra);
        c
    };
    let changes: [(&[&str], &str); 7] = [
        (&["--point_size", "3"], "point_size"),
        (&["--view-seed", "7"], "view_seed"),
        (&["--model-seed", "9"], "model_seed"),
        (&["--views", "3"], "views"),
        (&["--img_size", "48"], "img_size"),
        (&["--weight-rows", "0-2"], "weight_rows"),
        (&["--variance", "0.06"], "variance"),
    ];
    for fmt in [
        &[][..],
        &["--format", "wds", "--samples-per-shard", "3"][..],
    ] {
        let out = tmp
            .path()
            .join(if fmt.is_empty() { "folder" } else { "wds" });
        let before = assert_each_change_is_refused(&out, &|extra| run(&out, fmt, extra), &changes);
        assert!(before.iter().any(|(p, _)| {
            let s = p.to_str().unwrap();
            s.ends_with(".png") || s.ends_with(".tar")
        }));
        // The multipliers file edited in place (a row that is drawn): another dataset.
        let text = std::fs::read_to_string(&weights).unwrap();
        let first = text.lines().next().unwrap();
        let edited = first.replacen(first.split(',').next().unwrap(), "0.5", 1);
        std::fs::write(&weights, text.replacen(first, &edited, 1)).unwrap();
        let e = run_err(run(&out, fmt, &[]).arg("--resume"));
        assert!(e.contains("multipliers_sha256"), "{fmt:?}: {e}");
        assert!(
            snapshot(&out) == before,
            "{fmt:?}: an edited file changed files"
        );
        std::fs::write(&weights, &text).unwrap();
        // The same settings resume, keeping everything.
        run_ok(run(&out, fmt, &[]).arg("--resume"));
        assert!(snapshot(&out) == before);
    }
}

/// The bytes of a tiny dataset (parameter files, models, views) pinned beside the version of
/// MV-FractalDB's bytes: a rule that changes them cannot land without bumping
/// `fractaldb::mvfdb::run::VERSION` (so that resumes refuse the older output) and this digest.
#[test]
fn a_tiny_datasets_bytes_are_pinned_to_the_version() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("m");
    run_ok(
        mvfdb(
            &out,
            &["--classes", "2", "--weight-rows", "0-2", "--views", "3"],
        )
        .args(["--img_size", "40", "--write-models", "--backend", "cpu"]),
    );
    let digest = tree_digest(&out, &["mvfdb.json", "classes.txt"]);
    assert_eq!(
        (fractaldb::mvfdb::run::VERSION, digest.as_str()),
        (
            2,
            "56cf2e275c52b5b1b6d3c13445f291c9334461b0da527a6fd29ab9a44fca9322"
        ),
        "MV-FractalDB's bytes changed: bump VERSION and pin the new digest"
    );
}

/// The original's three scripts, each with its own roots, as `mvfdb search|models|render` with the
/// scripts' own (underscore) flags: the golden sets' params and PLY models byte for byte and views
/// pixel for pixel, each step reading the previous step's files; the kebab spellings make the same.
#[test]
fn the_three_original_steps_make_the_goldens_from_each_others_files() {
    let tmp = tempfile::tempdir().unwrap();
    let g = reference().join("mvfdb");
    for (set, search, models, render) in [
        (
            "m1",
            ["--numof_classes", "3", "--seed", "1"],
            ["--weight_rows", "0-3", "--model_seed", "7"],
            vec!["--view_seed", "11"],
        ),
        (
            "m2",
            ["--numof_classes", "2", "--seed", "2"],
            ["--weight_rows", "0-2", "--model_seed", "8"],
            vec![
                "--view_seed",
                "12",
                "--img_size",
                "160",
                "--view_point",
                "6",
            ],
        ),
    ] {
        let root = tmp.path().join(set);
        let (params, models_dir, images) = (
            root.join("3DIFS_params"),
            root.join("3Dmodels"),
            root.join("images"),
        );
        run_ok(
            bin()
                .args(["mvfdb", "search", "-q"])
                .args(search)
                .arg("--save_root")
                .arg(&params),
        );
        run_ok(
            bin()
                .args(["mvfdb", "models", "-q", "--load_root"])
                .arg(&params)
                .arg("--save_root")
                .arg(&models_dir)
                .args(models),
        );
        run_ok(
            bin()
                .args(["mvfdb", "render", "-q", "--load_root"])
                .arg(&models_dir)
                .arg("--save_root")
                .arg(&images)
                .args(&render),
        );
        for (mine, golden) in [(&params, "params"), (&models_dir, "models")] {
            let (a, b) = (files(mine), files(&g.join(set).join(golden)));
            assert!(!a.is_empty() && a == b, "{set} {golden}: {a:?} vs {b:?}");
            for f in &a {
                assert!(
                    std::fs::read(mine.join(f)).unwrap()
                        == std::fs::read(g.join(set).join(golden).join(f)).unwrap(),
                    "{set} {f:?}"
                );
            }
        }
        let want = files(&g.join(set).join("images"));
        assert_eq!(files(&images), want, "{set}");
        for f in &want {
            assert!(
                decode_rgb(&images.join(f)) == decode_rgb(&g.join(set).join("images").join(f)),
                "{set} {f:?}"
            );
        }
        // The kebab spellings: the same files.
        let kebab = root.join("kebab");
        let kebab_render: Vec<String> = render.iter().map(|a| a.replace('_', "-")).collect();
        run_ok(
            bin()
                .args(["mvfdb", "render", "-q", "--load-root"])
                .arg(&models_dir)
                .arg("--save-root")
                .arg(&kebab)
                .args(&kebab_render),
        );
        same_tree(&images, &kebab);
    }
}
