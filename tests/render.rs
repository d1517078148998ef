//! End-to-end behaviour of `render` with the folder format: determinism, resume, every bad input.

mod common;
use common::*;
use std::path::Path;
use std::process::Command;

fn small<'a>(cmd: &'a mut Command, classes: &Path, out: &Path) -> &'a mut Command {
    cmd.args([
        "render",
        "-q",
        "--image-size-x",
        "64",
        "--image-size-y",
        "48",
        "--iteration",
        "3000",
    ])
    .args(["--instance", "2"])
    .arg("--load-root")
    .arg(classes)
    .arg("--out")
    .arg(out)
}

#[test]
fn output_is_the_same_with_one_thread_and_many() {
    let tmp = tempfile::tempdir().unwrap();
    let classes = class_dir(tmp.path(), &["00001", "00002", "00003"]);
    for mode in ["patch_gray", "patch_color", "point_color"] {
        let a = tmp.path().join(format!("{mode}-j1"));
        let b = tmp.path().join(format!("{mode}-j4"));
        run_ok(small(&mut bin(), &classes, &a).args([
            "--draw-type",
            mode,
            "-j",
            "1",
            "--encoders",
            "1",
        ]));
        run_ok(small(&mut bin(), &classes, &b).args([
            "--draw-type",
            mode,
            "-j",
            "4",
            "--writers",
            "3",
        ]));
        same_tree(&a, &b);
        let n = pngs(&a).len();
        let per = if mode.starts_with("patch") {
            25 * 2 * 4
        } else {
            25 * 4
        };
        assert_eq!(n, 3 * per, "{mode}: image count");
    }
}

#[test]
fn names_layout_and_png_format_are_the_originals() {
    let tmp = tempfile::tempdir().unwrap();
    let classes = class_dir(tmp.path(), &["00004"]);
    let out = tmp.path().join("out");
    run_ok(small(&mut bin(), &classes, &out).args(["--instance", "11"]));
    let f = out.join("00004/00004_24_count_10_flip3.png");
    assert!(f.exists());
    let bytes = std::fs::read(&f).unwrap();
    assert_eq!(bytes[25], 2, "colour type 2 (RGB)");
    let (w, h, px) = decode_rgb(&f);
    assert_eq!((w, h), (64, 48));
    assert!(px.iter().all(|&v| v == 0 || v == 127));
    assert!(px.contains(&127));
    // Flips: flip1 is flip0 upside down, flip2 is flip0 mirrored.
    let img = |t: u8| decode_rgb(&out.join(format!("00004/00004_02_count_0_flip{t}.png"))).2;
    let (f0, f1, f2) = (img(0), img(1), img(2));
    let row = |p: &Vec<u8>, r: usize| p[r * 64 * 3..(r + 1) * 64 * 3].to_vec();
    for r in 0..48 {
        assert_eq!(row(&f0, r), row(&f1, 47 - r));
        let mirrored: Vec<u8> = row(&f0, r).chunks(3).rev().flatten().copied().collect();
        assert_eq!(row(&f2, r), mirrored);
    }
    // 1-channel gray option.
    let g = tmp.path().join("gray");
    run_ok(small(&mut bin(), &classes, &g).arg("--png-gray"));
    let gb = std::fs::read(g.join("00004/00004_02_count_0_flip0.png")).unwrap();
    assert_eq!(gb[25], 0, "colour type 0 (gray)");
    assert_eq!(
        decode_rgb(&g.join("00004/00004_02_count_0_flip0.png")).2,
        f0
    );
}

#[test]
fn resume_skips_existing_images_and_completes_the_rest() {
    let tmp = tempfile::tempdir().unwrap();
    let classes = class_dir(tmp.path(), &["00005", "00006"]);
    let full = tmp.path().join("full");
    run_ok(small(&mut bin(), &classes, &full));
    let part = tmp.path().join("part");
    run_ok(small(&mut bin(), &classes, &part));
    let all = files(&part);
    for f in all.iter().step_by(3) {
        std::fs::remove_file(part.join(f)).unwrap();
    }
    // A stale temporary file, as a kill leaves it, is removed.
    std::fs::write(part.join("00005/x.png.123.fdbtmp"), b"junk").unwrap();
    let out = run_ok(
        small(&mut bin(), &classes, &part)
            .arg("--resume")
            .arg("--quiet"),
    );
    assert!(out.status.success());
    same_tree(&full, &part);
}

#[test]
fn csv_sub_folders_of_the_original_layout_are_read() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("csv_rate0.2_category1000");
    for (sub, n) in [("csv0", "00000"), ("csv1", "00025"), ("csv1", "00026")] {
        std::fs::create_dir_all(root.join(sub)).unwrap();
        std::fs::copy(
            reference().join(format!("categories/{n}.csv")),
            root.join(sub).join(format!("{n}.csv")),
        )
        .unwrap();
    }
    std::fs::write(root.join("README.txt"), "not a class").unwrap();
    let out = tmp.path().join("out");
    run_ok(small(&mut bin(), &root, &out).args(["--draw-type", "point_gray"]));
    let dirs: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    let mut dirs = dirs;
    dirs.sort();
    assert_eq!(
        dirs,
        [
            "00000",
            "00025",
            "00026",
            "SHA256SUMS",
            "classes.txt",
            "fractaldb-folder.json"
        ]
    );
}

fn bad_class(tmp: &Path, content: &str) -> (std::path::PathBuf, String) {
    let d = tmp.join(format!("bad{}", content.len()));
    std::fs::create_dir_all(&d).unwrap();
    std::fs::copy(
        reference().join("categories/00000.csv"),
        d.join("00000.csv"),
    )
    .unwrap();
    std::fs::write(d.join("00001.csv"), content).unwrap();
    let out = tmp.join(format!("out{}", content.len()));
    let err = run_err(small(&mut bin(), &d, &out));
    assert!(
        files(&out)
            .iter()
            .all(|f| !f.to_string_lossy().ends_with(".png")),
        "partial output left in {}",
        out.display()
    );
    (d, err)
}

#[test]
fn bad_class_csvs_name_the_file_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    let good = "0.5,0,0,0.5,0,0,0.5\n0.5,0,0,0.5,0.5,0.5,0.5\n";
    let cases = [
        (
            "0.5,0,0,0.5,0,0,0.5\n0.5,0,0,0.5,0.5,0.5\n",
            "00001.csv:2",
            "expected 7",
        ),
        (
            "0.5,0,0,0.5,0,0,0.5\n0.5,0,0,zero,0.5,0.5,0.5\n",
            "00001.csv:2",
            "column 4",
        ),
        ("", "00001.csv", "no rows"),
        ("0.5,0,0,0.5,nan,0,0.5\n", "00001.csv:1", "finite"),
        ("0.5,0,0,0.5,inf,0,0.5\n", "00001.csv:1", "finite"),
    ];
    for (content, place, what) in cases {
        let (_, err) = bad_class(tmp.path(), content);
        assert!(
            err.contains(place) && err.contains(what),
            "{content:?}: {err}"
        );
    }
    // A well-formed one renders.
    let d = tmp.path().join("good");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("x.csv"), good).unwrap();
    run_ok(small(&mut bin(), &d, &tmp.path().join("goodout")));
}

#[test]
fn bad_weights_directories_and_flags_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let classes = class_dir(tmp.path(), &["00000"]);
    let out = tmp.path().join("out");
    let w = tmp.path().join("w.csv");
    std::fs::write(&w, "1,1,1,1,1,1\r\n1,1,1,1,1\r\n").unwrap();
    let e = run_err(
        small(&mut bin(), &classes, &out)
            .arg("--weight-csv")
            .arg(&w),
    );
    assert!(e.contains("w.csv:2") && e.contains("expected 6"), "{e}");
    let e = run_err(small(&mut bin(), &classes, &out).args(["--weight-csv", "builtin:0.7"]));
    assert!(e.contains("--weight-csv"), "{e}");
    let e = run_err(small(&mut bin(), &tmp.path().join("missing"), &out));
    assert!(
        e.contains("missing") && e.contains("no such class directory"),
        "{e}"
    );
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let e = run_err(small(&mut bin(), &empty, &out));
    assert!(e.contains("no classes found"), "{e}");
    // An output path below a regular file cannot be created.
    let file = tmp.path().join("file");
    std::fs::write(&file, "x").unwrap();
    let e = run_err(small(&mut bin(), &classes, &file.join("sub")));
    assert!(
        e.contains("file/sub") && e.contains("cannot create directory"),
        "{e}"
    );
    // Geometry too small for the pad.
    let e = run_err(small(&mut bin(), &classes, &out).args([
        "--image-size-x",
        "12",
        "--pad-size-x",
        "6",
    ]));
    assert!(e.contains("--image-size-x") && e.contains("pad 6"), "{e}");
    let e = run_err(small(&mut bin(), &classes, &out).args(["--pad-size-y", "0"]));
    assert!(e.contains("pad >= 1"), "{e}");
    let e = run_err(small(&mut bin(), &classes, &out).args(["--draw-type", "patch_blue"]));
    assert!(e.contains("patch_blue"), "{e}");
    assert!(!out.exists(), "no output directory for rejected flags");
}

#[test]
fn a_degenerate_bounding_box_is_an_error_naming_class_and_row() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("deg");
    std::fs::create_dir_all(&d).unwrap();
    // Every map sends every point to (0, y): zero x-extent.
    std::fs::write(
        d.join("flat.csv"),
        "0,0,0,0.5,0,0.5,0.5\n0,0,0,0.5,0,-0.5,0.5\n",
    )
    .unwrap();
    let out = tmp.path().join("out");
    let e = run_err(small(&mut bin(), &d, &out));
    assert!(e.contains("flat.csv") && e.contains("zero x-extent"), "{e}");
    assert!(
        files(&out)
            .iter()
            .all(|f| !f.to_string_lossy().contains(".fdbtmp"))
    );
}

#[test]
fn search_refuses_settings_that_can_never_accept() {
    let tmp = tempfile::tempdir().unwrap();
    let e = run_err(
        bin()
            .args([
                "search",
                "-q",
                "--categories",
                "1",
                "--points",
                "20000",
                "--out",
            ])
            .arg(tmp.path()),
    );
    assert!(
        e.contains("--points") && e.contains("no candidate could ever be accepted"),
        "{e}"
    );
    let e = run_err(
        bin()
            .args(["search", "-q", "--rate", "1.5", "--out"])
            .arg(tmp.path()),
    );
    assert!(e.contains("--rate"), "{e}");
    assert!(files(tmp.path()).is_empty());
}

#[test]
fn original_flag_names_are_accepted() {
    let tmp = tempfile::tempdir().unwrap();
    let classes = class_dir(tmp.path(), &["00007"]);
    let out = tmp.path().join("FractalDB");
    run_ok(
        bin()
            .args([
                "render",
                "-q",
                "--image_size_x",
                "40",
                "--image_size_y",
                "40",
                "--pad_size_x",
                "3",
                "--pad_size_y",
                "3",
            ])
            .args([
                "--iteration",
                "1000",
                "--draw_type",
                "point_gray",
                "--instance",
                "3",
            ])
            .arg("--load_root")
            .arg(&classes)
            .arg("--save_root")
            .arg(&out)
            .arg("--weight_csv")
            .arg(reference().join("weights/weights_0.1.csv")),
    );
    assert_eq!(pngs(&out).len(), 25 * 4, "point modes ignore --instance");
    let s = tmp.path().join("s");
    run_ok(
        bin()
            .args([
                "search",
                "-q",
                "--rate",
                "0.2",
                "--category",
                "1",
                "--numof_point",
                "100000",
                "--save_dir",
            ])
            .arg(&s),
    );
    assert_eq!(
        std::fs::read(s.join("csv_rate0.2_category1/00000.csv")).unwrap(),
        std::fs::read(reference().join("categories/00000.csv")).unwrap()
    );
}

/// The bytes of a tiny dataset (every draw mode, flips, one weight file) pinned beside the version of
/// FractalDB's bytes: a rule that changes them cannot land without bumping
/// `fractaldb::generate::VERSION` (so that resumes refuse the older output) and this digest.
#[test]
fn a_tiny_datasets_bytes_are_pinned_to_the_version() {
    let tmp = tempfile::tempdir().unwrap();
    let classes = class_dir(tmp.path(), &["00000", "00001"]);
    let mut digests = vec![];
    for mode in ["patch_gray", "patch_color", "point_gray", "point_color"] {
        let out = tmp.path().join(mode);
        run_ok(small(&mut bin(), &classes, &out).args([
            "--draw-type",
            mode,
            "--weight-rows",
            "0-2",
            "--backend",
            "cpu",
        ]));
        digests.push(tree_digest(&out, &["fractaldb-folder.json"]));
    }
    assert_eq!(
        (fractaldb::generate::VERSION, digests),
        (
            1,
            [
                "03b8f7e8678fedc165db239e26713fa267cccb97eaa14e28655178858e49836c",
                "8d1b1a68ff97f8bb753026c7d1f85f50aa61a6595154f32be985320e784a5cef",
                "5810955a1e5427c35286ecc47334646f341c09932a85a6848ba11cbfefed2e60",
                "e2df4c191b26c546484f0f9c9c2b293f96e0504b271c1daee260a54cd07da7a4",
            ]
            .map(String::from)
            .to_vec()
        ),
        "FractalDB's bytes changed: bump VERSION and pin the new digest"
    );
}

/// `--resume` after changing any one setting that decides the bytes is refused, naming it, and
/// changes no file, in folders and in shards; so is a class or weights file edited in place.
#[test]
fn a_resume_with_any_other_setting_is_refused_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let classes = class_dir(tmp.path(), &["00020", "00041"]);
    let weights = tmp.path().join("w.csv");
    std::fs::copy(reference().join("weights/weights_0.2.csv"), &weights).unwrap();
    let base = [
        "--image-size-x",
        "32",
        "--image-size-y",
        "32",
        "--iteration",
        "1500",
        "--instance",
        "2",
        "--weight-rows",
        "0-2",
        "--backend",
        "cpu",
        "-q",
    ];
    let run = |out: &Path, fmt: &[&str], extra: &[&str]| {
        let mut c = bin();
        c.arg("render")
            .arg("--load-root")
            .arg(&classes)
            .arg("--out")
            .arg(out)
            .arg("--weight-csv")
            .arg(&weights)
            .args(base)
            .args(fmt)
            .args(extra);
        c
    };
    let mut changes: Vec<(&[&str], &str)> = vec![
        (&["--image-size-x", "40"], "width"),
        (&["--pad-size-y", "5"], "pad_y"),
        (&["--iteration", "1400"], "iterations"),
        (&["--draw-type", "patch_color"], "draw_type"),
        (&["--weight-rows", "0-1"], "weight_rows"),
        (&["--flips", "0,1"], "flips"),
        (&["--instance", "3"], "instances"),
        (&["--mask-rng", "python:3"], "masks"),
        (&["--epoch", "2"], "masks"),
        (&["--png-level", "6"], "png_level"),
        (&["--png-gray"], "png_gray"),
    ];
    for fmt in [
        &[][..],
        &["--format", "wds", "--samples-per-shard", "5"][..],
    ] {
        if !fmt.is_empty() {
            changes.push((&["--seed", "4"], "seed"));
            changes.push((&["--prefix", "x"], "prefix"));
        }
        let out = tmp
            .path()
            .join(if fmt.is_empty() { "folder" } else { "wds" });
        // Another prefix is another dataset beside this one, not a resume of it.
        changes.retain(|(extra, _)| *extra != ["--prefix", "x"]);
        let before = assert_each_change_is_refused(&out, &|extra| run(&out, fmt, extra), &changes);
        // Input files edited in place: a weights row that is drawn, then a class's maps.
        for (file, key) in [
            (weights.clone(), "weights"),
            (classes.join("00020.csv"), "classes_sha256"),
        ] {
            let text = std::fs::read_to_string(&file).unwrap();
            let first = text.lines().next().unwrap();
            let edited = first.replacen(first.split(',').next().unwrap(), "0.5", 1);
            std::fs::write(&file, text.replacen(first, &edited, 1)).unwrap();
            let e = run_err(run(&out, fmt, &[]).arg("--resume"));
            // A folder names the class whose maps changed (a folder takes other classes beside
            // its own, not the same class with other maps).
            let named = key == "classes_sha256" && e.contains("class 00020 with other maps");
            assert!(e.contains(key) || named, "{fmt:?} {file:?}: {e}");
            assert!(snapshot(&out) == before, "{fmt:?}: {file:?} changed files");
            std::fs::write(&file, &text).unwrap();
        }
        run_ok(run(&out, fmt, &[]).arg("--resume"));
        assert!(snapshot(&out) == before);
    }
}

/// A folder's record lists each class with the SHA-256 of its file (the maps as read), so a later run
/// can tell a disjoint class subset from another dataset.
#[test]
fn the_folder_record_lists_each_class_with_its_digest() {
    use sha2::Digest;
    let tmp = tempfile::tempdir().unwrap();
    let classes = class_dir(tmp.path(), &["00020", "00041"]);
    let out = tmp.path().join("o");
    run_ok(
        bin()
            .args(["render", "-q", "--backend", "cpu", "--iteration", "500"])
            .args([
                "--image-size-x",
                "16",
                "--image-size-y",
                "16",
                "--instance",
                "1",
            ])
            .args(["--weight-rows", "0", "--flips", "0", "--load-root"])
            .arg(&classes)
            .arg("--out")
            .arg(&out),
    );
    let rec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("fractaldb-folder.json")).unwrap()).unwrap();
    let want: Vec<String> = ["00020", "00041"]
        .iter()
        .map(|c| {
            let bytes = std::fs::read(classes.join(format!("{c}.csv"))).unwrap();
            sha2::Sha256::digest(&bytes)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect()
        })
        .collect();
    assert_eq!(rec["classes"], serde_json::json!(["00020", "00041"]));
    assert_eq!(rec["class_sha256"], serde_json::json!(want));
}

/// The originals' way of splitting a folder by hand: runs of disjoint class subsets with the same
/// settings into one folder, one after another or at the same time, give the images, `classes.txt`
/// and `SHA256SUMS` of one run of all the classes; a class already there with other maps is refused,
/// naming it, and changes nothing.
#[test]
fn class_subsets_rendered_into_one_folder_make_one_runs_dataset() {
    let tmp = tempfile::tempdir().unwrap();
    let all = class_dir(tmp.path(), &["00010", "00011", "00012"]);
    let subset = |name: &str, classes: &[&str]| {
        let d = tmp.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        for c in classes {
            std::fs::copy(all.join(format!("{c}.csv")), d.join(format!("{c}.csv"))).unwrap();
        }
        d
    };
    let (c12, c3) = (subset("c12", &["00010", "00011"]), subset("c3", &["00012"]));
    let one = tmp.path().join("one");
    run_ok(small(&mut bin(), &all, &one));
    let same_as_one = |dir: &Path| {
        for f in ["classes.txt", "SHA256SUMS"] {
            assert_eq!(
                std::fs::read_to_string(dir.join(f)).unwrap(),
                std::fs::read_to_string(one.join(f)).unwrap(),
                "{f}"
            );
        }
        assert_eq!(pngs(dir), pngs(&one));
        for p in pngs(&one) {
            assert!(std::fs::read(dir.join(&p)).unwrap() == std::fs::read(one.join(&p)).unwrap());
        }
        run_ok(bin().args(["finalize", "--out"]).arg(dir));
        run_ok(bin().arg("verify").arg(dir));
    };
    // In turn.
    let turn = tmp.path().join("turn");
    run_ok(small(&mut bin(), &c12, &turn));
    run_ok(small(&mut bin(), &c3, &turn));
    same_as_one(&turn);
    // At once.
    let once = tmp.path().join("once");
    let a = small(&mut bin(), &c12, &once).spawn().unwrap();
    let b = small(&mut bin(), &c3, &once).spawn().unwrap();
    for c in [a, b] {
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    same_as_one(&once);
    // A class of the same name with other maps: refused, naming it; nothing changes.
    let other = tmp.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::copy(all.join("00012.csv"), other.join("00010.csv")).unwrap();
    let before = snapshot(&turn);
    let e = run_err(small(&mut bin(), &other, &turn));
    assert!(e.contains("class 00010 with other maps"), "{e}");
    assert!(snapshot(&turn) == before);
}
