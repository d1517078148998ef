//! Pixel equality with every golden image the original produced (tests/fixtures/reference/golden).

mod common;
use common::*;
use std::collections::HashSet;

#[test]
fn every_golden_file_matches_pixel_for_pixel() {
    let r = reference();
    let tmp = tempfile::tempdir().unwrap();
    let classes = class_dir(tmp.path(), &["00000"]);
    let manifest = std::fs::read_to_string(r.join("golden/manifest.csv")).unwrap();
    let mut lines = manifest.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), 16);
    let modes: HashSet<&str> = rows.iter().map(|r| r[col("mode")]).collect();
    for mode in &modes {
        run_ok(
            bin()
                .args([
                    "render",
                    "-q",
                    "--draw-type",
                    mode,
                    "--instance",
                    "1",
                    "--mask-rng",
                    "python:12345",
                ])
                .args([
                    "--iteration",
                    "200000",
                    "--image-size-x",
                    "362",
                    "--image-size-y",
                    "362",
                ])
                .arg("--load-root")
                .arg(&classes)
                .arg("--out")
                .arg(tmp.path().join(mode))
                .arg("--weight-csv")
                .arg(r.join("weights/weights_0.4.csv")),
        );
    }
    for row in &rows {
        let file = row[col("file")];
        let golden = decode_rgb(&r.join("golden").join(file));
        let ours = decode_rgb(&tmp.path().join(file));
        assert_eq!((ours.0, ours.1), (golden.0, golden.1), "{file}: size");
        let diff = ours
            .2
            .chunks(3)
            .zip(golden.2.chunks(3))
            .filter(|(a, b)| a != b)
            .count();
        assert_eq!(diff, 0, "{file}: {diff} pixels differ from the original");
    }
}

#[test]
fn search_reproduces_the_first_ten_published_classes() {
    let r = reference();
    let tmp = tempfile::tempdir().unwrap();
    run_ok(
        bin()
            .args(["search", "-q", "--categories", "10", "--out"])
            .arg(tmp.path()),
    );
    let dir = tmp.path().join("csv_rate0.2_category10");
    for k in 0..10 {
        let name = format!("{k:05}.csv");
        let ours = std::fs::read(dir.join(&name)).unwrap();
        let published = std::fs::read(r.join("categories").join(&name)).unwrap();
        assert!(ours == published, "{name} differs from the published CSV");
    }
    // The previews of the first three equal the original's, pixel for pixel.
    for k in 0..3 {
        let name = format!("{k:05}.png");
        let ours = decode_rgb(&tmp.path().join("rate0.2_category10").join(&name));
        let orig = decode_rgb(&r.join("search/rate0.2_category3").join(&name));
        assert!(ours == orig, "preview {name} differs");
    }
}

#[test]
fn search_does_not_depend_on_the_thread_count() {
    let tmp = tempfile::tempdir().unwrap();
    for j in ["1", "2", "5"] {
        run_ok(
            bin()
                .args([
                    "search",
                    "-q",
                    "--categories",
                    "3",
                    "--points",
                    "60000",
                    "--seed",
                    "7",
                    "--rate",
                    "0.15",
                    "-j",
                    j,
                    "--out",
                ])
                .arg(tmp.path().join(j)),
        );
    }
    let a = files(&tmp.path().join("1"));
    assert_eq!(a.len(), 6);
    for j in ["2", "5"] {
        assert_eq!(files(&tmp.path().join(j)), a);
        for f in &a {
            assert_eq!(
                std::fs::read(tmp.path().join("1").join(f)).unwrap(),
                std::fs::read(tmp.path().join(j).join(f)).unwrap(),
                "{} differs with -j {j}",
                f.display()
            );
        }
    }
}

#[test]
fn builtin_weights_equal_the_original_files_byte_for_byte() {
    let r = reference();
    for step in ["0.0125", "0.025", "0.05", "0.1", "0.2", "0.3", "0.4", "0.5"] {
        let out = run_ok(bin().args(["weights", "--step", step]));
        let orig = std::fs::read(r.join(format!("weights/weights_{step}.csv"))).unwrap();
        assert!(out.stdout == orig, "weights_{step}.csv differs");
    }
}
