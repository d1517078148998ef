//! What a newcomer sees: progress lines with an estimate when stderr is not a terminal, and the
//! README's contact sheet, made by its script from a real run.

mod common;
use common::*;

#[test]
fn progress_lines_and_an_estimate_when_stderr_is_not_a_terminal() {
    let tmp = tempfile::tempdir().unwrap();
    let out = run_ok(
        bin()
            .args(["rcdb", "--numof_classes", "4", "--numof_instances", "600"])
            .args([
                "--numof_thread",
                "1",
                "--image_size",
                "256",
                "-j",
                "1",
                "--save_root",
            ])
            .arg(tmp.path().join("r"))
            .env("FRACTALDB_PROGRESS_INTERVAL", "0.2"),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    let estimate = err
        .lines()
        .find(|l| l.starts_with("estimate: "))
        .unwrap_or_else(|| panic!("no estimate line in:\n{err}"));
    assert!(
        estimate.contains("images/s here: the 2400 images take about")
            && estimate.contains("left)"),
        "{estimate}"
    );
    let lines: Vec<&str> = err.lines().filter(|l| l.contains(" ETA ")).collect();
    assert!(!lines.is_empty(), "no progress lines in:\n{err}");
    for l in &lines {
        assert!(l.contains("/2400 images (") && l.len() < 80, "{l}");
    }
}

#[test]
fn the_contact_sheet_script_makes_its_sheet_from_a_real_run() {
    let tmp = tempfile::tempdir().unwrap();
    let sheet = tmp.path().join("sheet.png");
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/contact-sheet.py");
    let status = std::process::Command::new("python3")
        .arg(script)
        .args(["--bin", env!("CARGO_BIN_EXE_fractaldb"), "--out"])
        .arg(&sheet)
        .args([
            "--classes",
            "2",
            "--size",
            "48",
            "--iteration",
            "3000",
            "--thumb",
            "40",
            "--work",
        ])
        .arg(tmp.path().join("work"))
        .status()
        .unwrap();
    assert!(status.success());
    // 2 classes x 11 columns of 40-pixel cells, with the title row and the class-name column.
    let f = std::fs::File::open(&sheet).unwrap();
    let info = png::Decoder::new(std::io::BufReader::new(f))
        .read_info()
        .unwrap();
    assert_eq!(
        (info.info().width, info.info().height),
        (52 + 11 * 40, 18 + 2 * 40)
    );
    // Its cells are the run's images: the work folder holds every draw mode and RCDB.
    for d in [
        "point_gray",
        "point_color",
        "patch_gray",
        "patch_color",
        "rcdb",
    ] {
        assert!(!pngs(&tmp.path().join("work").join(d)).is_empty(), "{d}");
    }
}

/// `search` off a terminal: summary lines, not a line per class (FractalDB-300k would print
/// 300,000); `-v` gives the original's `save:` line per class.
#[test]
fn search_prints_a_summary_and_a_line_per_class_only_with_verbose() {
    let tmp = tempfile::tempdir().unwrap();
    let search = |dir: &str, extra: &[&str]| {
        let o = run_ok(
            bin()
                .args(["search", "--categories", "3", "--no-previews", "--out"])
                .arg(tmp.path().join(dir))
                .args(extra),
        );
        String::from_utf8_lossy(&o.stderr).to_string()
    };
    let plain = search("a", &[]);
    assert!(!plain.contains("save:"), "{plain}");
    assert!(plain.contains("search: 3 classes from"), "{plain}");
    let verbose = search("b", &["-v"]);
    assert_eq!(verbose.matches("save: 0000").count(), 3, "{verbose}");
}
