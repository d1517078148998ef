//! `fractaldb bench` on a tiny workload: well-formed JSON with every backend and stage, and a valid SVG.
//! (No test asserts a speed.)

mod common;
use common::*;

#[test]
fn bench_reports_every_backend_and_stage_with_positive_rates() {
    let tmp = tempfile::tempdir().unwrap();
    let svg = tmp.path().join("bench.svg");
    let out = run_ok(
        bin()
            .args([
                "bench",
                "--json",
                "--backend",
                "cpu,gl",
                "--classes",
                "1",
                "--instance",
                "1",
            ])
            .args([
                "--iteration",
                "3000",
                "--image-size",
                "64",
                "--repeat",
                "2",
                "-j",
                "2",
                "--plot",
            ])
            .arg(&svg),
    );
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("bench --json prints JSON");
    let backends = v["backends"].as_array().unwrap();
    let names: Vec<&str> = backends
        .iter()
        .map(|b| b["backend"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["cpu-1t", "cpu-2t", "gl-compute", "gl-points"]);
    // The table (on stderr with --json): progress lines first, then at most 100 columns from the
    // workload to the one-line conclusion.
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        err.contains("bench: cpu-1t (1 threads), warm-up 0 of 2"),
        "{err}"
    );
    let table: Vec<&str> = err
        .lines()
        .skip_while(|l| !l.starts_with("workload: "))
        .collect();
    let last = table.iter().rev().find(|l| !l.is_empty()).unwrap();
    assert!(
        last.contains("images/s (shards); FractalDB-1k (1M images) would take about"),
        "{err}"
    );
    for l in &table {
        assert!(
            l.chars().count() <= 100,
            "{} columns: {l}",
            l.chars().count()
        );
    }
    for b in backends {
        assert_eq!(b["images"], 100, "25 rows x 1 instance x 4 flips");
        // The default keeps FractalDB-1k's 100 shards; every cloud computed once (1 per 4 images).
        assert!(b["shards"].as_u64().unwrap() >= 50, "{}", b["shards"]);
        assert_eq!(b["clouds_per_image"].as_f64().unwrap(), 0.25);
        assert!(b["end_to_end_folder"]["median"].as_f64().unwrap() > 0.0);
        assert!(b["wds_over_folder"].as_f64().unwrap() > 0.0);
        assert!(b["peak_rss_bytes"].as_u64().unwrap() > 1 << 20);
        let readback = b["readback_bytes_per_image"].as_f64().unwrap();
        if b["backend"].as_str().unwrap().starts_with("gl") {
            // Label canvases only (the points raster adds a 4-pixel guard band), shared by 4 flips.
            assert!(readback > 0.0 && readback <= (68.0 * 68.0), "{readback}");
        } else {
            assert_eq!(readback, 0.0);
        }
        assert!(!b["device"].as_str().unwrap().is_empty());
        let mut stages = vec![
            "chaos_game",
            "raster",
            "render_readback",
            "png_encode",
            "tar_write",
        ];
        if b["backend"].as_str().unwrap().starts_with("gl") {
            stages.push("readback");
        }
        for stage in stages {
            let r = &b["stages"][stage];
            let (lo, med, hi) = (
                r["min"].as_f64().unwrap(),
                r["median"].as_f64().unwrap(),
                r["max"].as_f64().unwrap(),
            );
            assert!(
                lo > 0.0 && lo <= med && med <= hi,
                "{} {stage}: {r}",
                b["backend"]
            );
        }
        assert!(b["end_to_end"]["median"].as_f64().unwrap() > 0.0);
        assert!(
            v["ratio_to_cpu_1t"][b["backend"].as_str().unwrap()]
                .as_f64()
                .unwrap()
                > 0.0
        );
    }
    assert!(v["cores"].as_u64().unwrap() > 0);
    // The PNG-encoder table's row for the encoder in use (level 1, one instance of every cloud,
    // every flip: the same 100 images) gives the average size the runs wrote.
    let png = backends[0]["png_bytes_per_image"].as_f64().unwrap();
    let table = run_ok(bin().args([
        "bench",
        "--png-candidates",
        "--classes",
        "1",
        "--iteration",
        "3000",
        "--image-size",
        "64",
    ]));
    let table = String::from_utf8(table.stdout).unwrap();
    let kb = |prefix: &str| -> f64 {
        let line = table
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} row in\n{table}"));
        line.split_whitespace().last().unwrap().parse().unwrap()
    };
    let in_use = format!("RGB: {} --png-level 1", fractaldb::render::ENCODER);
    assert!(
        (kb(&in_use) - png / 1000.0).abs() < 0.006,
        "{png} B vs\n{table}"
    );
    for row in [
        "RGB: zlib-rs one call: level 3",
        "gray: zlib-rs one call: RLE strategy",
    ] {
        assert!(kb(row) > 0.0, "{table}");
    }
    assert!(
        kb("RGB: zlib-rs one call: level 6") < kb("RGB: zlib-rs one call: level 1"),
        "{table}"
    );
    // The SVG parses as XML and has one bar per backend and stage.
    let check = std::process::Command::new("python3")
        .args(["-c", "import sys, xml.etree.ElementTree as E; r = E.parse(sys.argv[1]).getroot(); \
                      assert r.tag.endswith('svg'); print(len([e for e in r.iter() if e.tag.endswith('rect')]))"])
        .arg(&svg)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    // 5 stages + end-to-end for each CPU row, 6 + end-to-end for each GL row.
    assert_eq!(
        String::from_utf8_lossy(&check.stdout).trim(),
        (2 * 6 + 2 * 7).to_string()
    );
}

#[test]
fn bench_measures_rcdb_on_both_engines() {
    let out = run_ok(bin().args([
        "bench",
        "--json",
        "--family",
        "rcdb",
        "--backend",
        "cpu,gl",
        "--classes",
        "2",
        "--rcdb-instances",
        "6",
        "--repeat",
        "1",
        "-j",
        "2",
    ]));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["workload"]["family"], "rcdb");
    let backends = v["backends"].as_array().unwrap();
    let names: Vec<&str> = backends
        .iter()
        .map(|b| b["backend"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["cpu-1t", "cpu-2t", "gl-compute"]);
    for b in backends {
        assert_eq!(b["images"], 12);
        for stage in ["stream_replay", "raster", "png_encode", "tar_write"] {
            assert!(
                b["stages"][stage]["median"].as_f64().unwrap() > 0.0,
                "{stage}"
            );
        }
        assert!(b["per_core"]["median"].as_f64().unwrap() > 0.0);
    }
    // The GL row reads back one gray byte per pixel (512x512).
    assert_eq!(backends[2]["readback_bytes_per_image"], 262144.0);
}

#[test]
fn bench_measures_mvfdb_on_both_engines() {
    let out = run_ok(bin().args([
        "bench",
        "--json",
        "--family",
        "mvfdb",
        "--backend",
        "cpu,gl",
        "--classes",
        "1",
        "--mvfdb-models",
        "2",
        "--repeat",
        "1",
        "-j",
        "2",
    ]));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["workload"]["family"], "mvfdb");
    let backends = v["backends"].as_array().unwrap();
    let names: Vec<&str> = backends
        .iter()
        .map(|b| b["backend"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["cpu-1t", "cpu-2t", "gl-points"]);
    for b in backends {
        assert_eq!(b["images"], 24, "1 class x 2 models x 12 views");
        assert!(b["per_core"]["median"].as_f64().unwrap() > 0.0);
        assert!(b["stages"]["model"]["median"].as_f64().unwrap() > 0.0);
    }
    // 24 canvases of 224 x 224 (one byte a pixel), plus one 4-byte NaN flag per model.
    let expected = (24.0 * 50176.0 + 2.0 * 4.0) / 24.0;
    assert_eq!(
        backends[2]["readback_bytes_per_image"], expected,
        "224 x 224 one byte a pixel, and a 4-byte flag per model"
    );
}
