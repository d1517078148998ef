//! `--encoding npy`: every family's folders and shards as `.npy`, read back by `numpy.load` and
//! Python `webdataset`, equal to the PNG pixels of the same settings.

mod common;
use common::*;
use std::path::Path;
use std::process::Command;

/// Runs `cmd` four times (PNG and npy, folders and shards) under `dir` and compares them in Python.
fn check(dir: &Path, cmd: impl Fn(&Path) -> Command, shards: &[&str], shape: &str) {
    let d = |n: &str| dir.join(n);
    run_ok(&mut cmd(&d("png")));
    run_ok(cmd(&d("npy")).args(["--encoding", "npy"]));
    run_ok(cmd(&d("png-wds")).args(shards));
    run_ok(cmd(&d("npy-wds")).args(shards).args(["--encoding", "npy"]));
    let s = |n: &str| d(n).to_str().unwrap().to_string();
    let out = python_ok(
        "npy_equal.py",
        &[&s("png"), &s("npy"), &s("png-wds"), &s("npy-wds")],
    );
    assert!(out.contains(shape), "{out}");
    // A resume keeps whole .npy files and refuses the PNG dataset's settings record.
    let before = snapshot(&d("npy"));
    run_ok(cmd(&d("npy")).args(["--encoding", "npy", "--resume"]));
    assert!(snapshot(&d("npy")) == before);
    let e = run_err(cmd(&d("png")).args(["--encoding", "npy", "--resume"]));
    assert!(e.contains("encoding"), "{e}");
}

#[test]
fn every_family_writes_npy_that_numpy_and_webdataset_read_as_the_png_pixels() {
    let tmp = tempfile::tempdir().unwrap();
    let classes = class_dir(tmp.path(), &["00020", "00041"]);
    let wds = ["--format", "wds", "--samples-per-shard", "7"];
    for (mode, shape) in [("patch_gray", "(24, 20)"), ("point_color", "(24, 20, 3)")] {
        let dir = tmp.path().join(mode);
        let render = |out: &Path| {
            let mut c = bin();
            c.args(["render", "-q", "--backend", "cpu", "--weight-rows", "0-1"])
                .args(["--image-size-x", "20", "--image-size-y", "24"])
                .args(["--iteration", "800", "--instance", "2", "--draw-type", mode])
                .arg("--load-root")
                .arg(&classes)
                .arg("--out")
                .arg(out);
            c
        };
        check(&dir, render, &wds, shape);
        // finalize checks .npy folders by their own rule: whole, then one missing.
        let npy = dir.join("npy");
        run_ok(bin().args(["finalize", "--out"]).arg(&npy));
        let f = npy.join("00041/00041_01_count_0_flip3.npy");
        std::fs::write(&f, b"\x93NUMPY").unwrap();
        let e = run_err(bin().args(["finalize", "--out"]).arg(&npy));
        assert!(e.contains("1 of ") && e.contains("flip3.npy"), "{e}");
    }
    let rcdb = |out: &Path| {
        let mut c = bin();
        c.args(["rcdb", "-q", "--backend", "cpu", "--image_size", "24"])
            .args(["--numof_classes", "3", "--numof_instances", "2"])
            .args(["--numof_thread", "1", "--save_root"])
            .arg(out);
        c
    };
    check(&tmp.path().join("rcdb"), rcdb, &wds, "(24, 24)");
    let weights = reference().join("mvfdb/weights_ins145.csv");
    let mvfdb = |out: &Path| {
        let mut c = bin();
        c.args(["mvfdb", "-q", "--backend", "cpu", "--classes", "1"])
            .args(["--weight-rows", "0-2", "--views", "2", "--img_size", "24"])
            .arg("--weight-csv")
            .arg(&weights)
            .arg("--save_root")
            .arg(out);
        c
    };
    check(&tmp.path().join("mvfdb"), mvfdb, &wds, "(24, 24)");
}
