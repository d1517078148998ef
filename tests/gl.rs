//! The GL backend (headless EGL; Mesa llvmpipe in CI) against the golden files and the CPU engine.

mod common;
use common::*;
use std::process::Command;

#[test]
fn gl_reproduces_every_golden_file() {
    let r = reference();
    let tmp = tempfile::tempdir().unwrap();
    let classes = class_dir(tmp.path(), &["00000"]);
    let manifest = std::fs::read_to_string(r.join("golden/manifest.csv")).unwrap();
    for (raster, rescale) in [("compute", "gpu"), ("points", "gpu"), ("compute", "cpu")] {
        let dir = tmp.path().join(format!("{raster}-{rescale}"));
        for mode in ["patch_gray", "point_gray"] {
            let out = run_ok(
                bin()
                    .args([
                        "render",
                        "--backend",
                        "gl",
                        "--raster",
                        raster,
                        "--rescale",
                        rescale,
                        "--draw-type",
                        mode,
                    ])
                    .args([
                        "--instance",
                        "1",
                        "--mask-rng",
                        "python:12345",
                        "--iteration",
                        "200000",
                    ])
                    .arg("--load-root")
                    .arg(&classes)
                    .arg("--out")
                    .arg(dir.join(mode))
                    .arg("--weight-csv")
                    .arg(r.join("weights/weights_0.4.csv")),
            );
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                err.contains("backend gl:")
                    && err.to_lowercase().contains(raster)
                    && err.contains(&format!("rescale {rescale}")),
                "{err}"
            );
        }
        let mut n = 0;
        for line in manifest.lines().skip(1) {
            let file = line.split(',').next().unwrap();
            let g = decode_rgb(&r.join("golden").join(file));
            let o = decode_rgb(&dir.join(file));
            assert!(
                g == o,
                "{file}: GL ({raster}, rescale {rescale}) output differs from the original"
            );
            n += 1;
        }
        assert_eq!(n, 16);
    }
}

#[test]
fn gl_equals_cpu_for_every_mode_and_odd_sizes() {
    let tmp = tempfile::tempdir().unwrap();
    let classes = class_dir(tmp.path(), &["00031", "00047", "00058"]);
    // 70,000 points: more than one llvmpipe dispatch can iterate, so the chain is split.
    let cases = [
        ("patch_gray", "100", "80", "70000", "counter:5"),
        ("patch_color", "57", "131", "9000", "counter:0"),
        ("point_gray", "64", "64", "9000", "counter:0"),
        ("point_color", "91", "33", "9000", "counter:0"),
        ("patch_gray", "40", "40", "5000", "python:7"),
    ];
    for (i, (mode, w, h, it, masks)) in cases.iter().enumerate() {
        let mut outs = Vec::new();
        for (backend, raster) in [("cpu", "compute"), ("gl", "compute"), ("gl", "points")] {
            let out = tmp.path().join(format!("{i}-{backend}-{raster}"));
            run_ok(
                bin()
                    .args(["render", "-q", "--backend", backend, "--raster", raster])
                    .args(["--draw-type", mode, "--instance", "2", "--mask-rng", masks])
                    .args(["--image-size-x", w, "--image-size-y", h, "--iteration", it])
                    .args(["--pad-size-x", "3"])
                    .arg("--load-root")
                    .arg(&classes)
                    .arg("--out")
                    .arg(&out),
            );
            outs.push(out);
        }
        same_tree(&outs[0], &outs[1]);
        same_tree(&outs[0], &outs[2]);
    }
}

#[test]
fn gl_shards_equal_cpu_shards() {
    let tmp = tempfile::tempdir().unwrap();
    let classes = class_dir(tmp.path(), &["00061", "00062"]);
    let mut dirs = Vec::new();
    for backend in ["cpu", "gl"] {
        let out = tmp.path().join(backend);
        run_ok(
            bin()
                .args([
                    "render",
                    "-q",
                    "--backend",
                    backend,
                    "--format",
                    "wds",
                    "--samples-per-shard",
                    "100",
                ])
                .args([
                    "--image-size-x",
                    "64",
                    "--image-size-y",
                    "64",
                    "--iteration",
                    "4000",
                    "--instance",
                    "2",
                ])
                .arg("--load-root")
                .arg(&classes)
                .arg("--out")
                .arg(&out),
        );
        dirs.push(out);
    }
    same_tree(&dirs[0], &dirs[1]);
}

#[test]
fn devices_lists_the_software_device() {
    let out = run_ok(bin().arg("devices"));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("EGL device 0") && text.contains("GL_RENDERER") && text.contains("GL_VENDOR"),
        "{text}"
    );
    assert!(
        text.contains("software=true"),
        "llvmpipe is listed as software: {text}"
    );
}

#[test]
fn missing_libegl_names_the_packages_and_leaves_no_output() {
    let tmp = tempfile::tempdir().unwrap();
    let classes = class_dir(tmp.path(), &["00000"]);
    let empty = tmp.path().join("empty-lib-dir");
    std::fs::create_dir_all(&empty).unwrap();
    let out = tmp.path().join("out");
    let e = run_err(
        Command::new(env!("CARGO_BIN_EXE_fractaldb"))
            .env("FRACTALDB_EGL_LIBRARY", empty.join("libEGL.so.1"))
            .args(["render", "-q", "--backend", "gl", "--load-root"])
            .arg(&classes)
            .arg("--out")
            .arg(&out),
    );
    assert!(
        e.contains("libegl1") && e.contains("libegl-mesa0") && e.contains("--backend cpu"),
        "{e}"
    );
    assert!(!out.exists());
    // auto falls back to the CPU engine.
    run_ok(
        Command::new(env!("CARGO_BIN_EXE_fractaldb"))
            .env("FRACTALDB_EGL_LIBRARY", empty.join("libEGL.so.1"))
            .args([
                "render",
                "-q",
                "--backend",
                "auto",
                "--iteration",
                "2000",
                "--image-size-x",
                "32",
            ])
            .args([
                "--image-size-y",
                "32",
                "--draw-type",
                "point_gray",
                "--load-root",
            ])
            .arg(&classes)
            .arg("--out")
            .arg(&out),
    );
    let pngs = files(&out)
        .iter()
        .filter(|p| p.extension().is_some_and(|x| x == "png"))
        .count();
    assert_eq!(pngs, 100);
}

#[test]
fn gl_search_equals_cpu_search_and_the_published_classes() {
    let tmp = tempfile::tempdir().unwrap();
    for backend in ["cpu", "gl"] {
        let out = run_ok(
            bin()
                .args(["search", "--categories", "5", "--backend", backend, "--out"])
                .arg(tmp.path().join(backend)),
        );
        if backend == "gl" {
            assert!(String::from_utf8_lossy(&out.stderr).contains("search: chaos games on"));
        }
    }
    same_tree(&tmp.path().join("cpu"), &tmp.path().join("gl"));
    for k in 0..5 {
        let name = format!("{k:05}.csv");
        assert_eq!(
            std::fs::read(tmp.path().join("gl/csv_rate0.2_category5").join(&name)).unwrap(),
            std::fs::read(reference().join("categories").join(&name)).unwrap(),
            "{name}"
        );
    }
}

#[test]
fn several_gl_threads_split_the_work_and_give_the_same_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let classes = class_dir(tmp.path(), &["00070", "00071", "00072"]);
    let mut outs = Vec::new();
    for (name, extra) in [
        ("cpu", vec!["--backend", "cpu"]),
        ("gl2", vec!["--backend", "gl", "--gpus", "0,0"]),
    ] {
        let out = tmp.path().join(name);
        let o = run_ok(
            bin()
                .args([
                    "render",
                    "--image-size-x",
                    "80",
                    "--image-size-y",
                    "80",
                    "--iteration",
                    "5000",
                ])
                .args(["--instance", "2"])
                .args(&extra)
                .arg("--load-root")
                .arg(&classes)
                .arg("--out")
                .arg(&out),
        );
        if name == "gl2" {
            // 75 clouds in batches of 32: both GL threads open a context.
            assert_eq!(
                String::from_utf8_lossy(&o.stderr)
                    .matches("backend gl:")
                    .count(),
                2
            );
        }
        outs.push(out);
    }
    same_tree(&outs[0], &outs[1]);
    let e = run_err(bin().args(["render", "--backend", "gl", "--gpus", "zero"]));
    assert!(e.contains("--gpus") && e.contains("zero"), "{e}");
}
