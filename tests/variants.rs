//! Dataset variants: weight-row and flip selections (2D-OFDB), 7-digit class names, the class list,
//! and a held-out split drawn from the same classes.

mod common;
use common::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

fn render(classes: &Path, out: &Path, extra: &[&str]) -> Command {
    let mut c = bin();
    c.args(["render", "-q", "--backend", "cpu", "--image-size-x", "48"])
        .args(["--image-size-y", "48", "--iteration", "3000"])
        .args(extra)
        .arg("--load-root")
        .arg(classes)
        .arg("--out")
        .arg(out);
    c
}

fn images(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    pngs(dir)
        .into_iter()
        .map(|p| {
            let b = std::fs::read(dir.join(&p)).unwrap();
            (p, b)
        })
        .collect()
}

#[test]
fn row_and_flip_selections_write_exactly_those_images_equal_to_a_full_run() {
    let tmp = tempfile::tempdir().unwrap();
    let names = ["00001", "00002", "00003"];
    let classes = class_dir(tmp.path(), &names);
    let full = tmp.path().join("full");
    run_ok(&mut render(&classes, &full, &["--instance", "2"]));
    let full = images(&full);
    // 2D-OFDB: one instance, the first weight row, flip0 only: one image per class.
    let ofdb = tmp.path().join("2d-ofdb");
    run_ok(&mut render(
        &classes,
        &ofdb,
        &["--instance", "1", "--weight-rows", "0", "--flips", "0"],
    ));
    let got = images(&ofdb);
    let want: Vec<PathBuf> = names
        .iter()
        .map(|n| PathBuf::from(n).join(format!("{n}_00_count_0_flip0.png")))
        .collect();
    assert_eq!(got.keys().cloned().collect::<Vec<_>>(), want);
    for (p, b) in &got {
        assert!(full[p] == *b, "{} differs from the full run", p.display());
    }
    // Rows 3-5, flips 1 and 3: exactly those files (the weights file's row numbers), same bytes.
    let sel = tmp.path().join("sel");
    run_ok(&mut render(
        &classes,
        &sel,
        &["--instance", "2", "--weight-rows", "3-5", "--flips", "1,3"],
    ));
    let got = images(&sel);
    let mut want = Vec::new();
    for n in names {
        for row in 3..=5 {
            for inst in 0..2 {
                for flip in [1, 3] {
                    want.push(
                        PathBuf::from(n).join(format!("{n}_{row:02}_count_{inst}_flip{flip}.png")),
                    );
                }
            }
        }
    }
    want.sort();
    assert_eq!(got.keys().cloned().collect::<Vec<_>>(), want);
    for (p, b) in &got {
        assert!(full[p] == *b, "{} differs from the full run", p.display());
    }
    // A changed selection is another dataset: resume refuses it.
    let e = run_err(&mut render(
        &classes,
        &sel,
        &[
            "--instance",
            "2",
            "--weight-rows",
            "3-5",
            "--flips",
            "1",
            "--resume",
        ],
    ));
    assert!(e.contains("flips"), "{e}");
    // Out-of-range selections name the flag.
    let e = run_err(&mut render(
        &classes,
        &tmp.path().join("x"),
        &["--flips", "4"],
    ));
    assert!(e.contains("--flips"), "{e}");
    let e = run_err(&mut render(
        &classes,
        &tmp.path().join("x"),
        &["--weight-rows", "0-25"],
    ));
    assert!(e.contains("--weight-rows") && e.contains("25"), "{e}");
}

#[test]
fn shards_of_a_selection_compute_each_cloud_once_and_list_the_classes() {
    let tmp = tempfile::tempdir().unwrap();
    let names = ["00004", "00005", "00006"];
    let classes = class_dir(tmp.path(), &names);
    let out = tmp.path().join("wds");
    run_ok(
        render(
            &classes,
            &out,
            &["--instance", "2", "--weight-rows", "0-9", "--flips", "0,2"],
        )
        .args(["--format", "wds", "--samples-per-shard", "24"]),
    );
    // classes.txt: label -> name; every sample's .cls and .json agree with it.
    let list: Vec<String> = std::fs::read_to_string(out.join("classes.txt"))
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(list, names);
    let mut samples = 0;
    let mut per_cloud: BTreeMap<(u64, u64), u32> = BTreeMap::new();
    for e in std::fs::read_dir(&out).unwrap().flatten() {
        if e.path().extension().is_none_or(|x| x != "tar") {
            continue;
        }
        let mut ar = tar::Archive::new(std::fs::File::open(e.path()).unwrap());
        let mut cls = None;
        for m in ar.entries().unwrap() {
            let mut m = m.unwrap();
            let name = m.path().unwrap().to_string_lossy().into_owned();
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut m, &mut data).unwrap();
            if name.ends_with(".cls") {
                cls = Some(String::from_utf8(data).unwrap().parse::<usize>().unwrap());
            } else if name.ends_with(".json") {
                let v: serde_json::Value = serde_json::from_slice(&data).unwrap();
                let c = cls.unwrap();
                assert_eq!(v["class"].as_str().unwrap(), list[c]);
                assert_eq!(v["class_index"].as_u64().unwrap(), c as u64);
                let row = v["weight_row"].as_u64().unwrap();
                assert!(row < 10);
                assert!([0, 2].contains(&v["flip"].as_u64().unwrap()));
                *per_cloud.entry((c as u64, row)).or_default() += 1;
                samples += 1;
            }
        }
    }
    assert_eq!(samples, 3 * 10 * 2 * 2);
    assert!(per_cloud.values().all(|&n| n == 4));
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("fractaldb-manifest.json")).unwrap())
            .unwrap();
    assert_eq!(m["classes"], serde_json::json!(names));
}

#[test]
fn search_names_classes_with_the_digits_asked_for() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("s");
    run_ok(
        bin()
            .args(["search", "-q", "--categories", "2", "--no-previews"])
            .args(["--class-digits", "7", "--out"])
            .arg(&out),
    );
    assert_eq!(
        files(&out.join("csv_rate0.2_category2")),
        [PathBuf::from("0000000.csv"), PathBuf::from("0000001.csv")]
    );
    let e = run_err(
        bin()
            .args([
                "search",
                "--categories",
                "10000000",
                "--class-digits",
                "5",
                "--out",
            ])
            .arg(tmp.path().join("t")),
    );
    assert!(
        e.contains("--class-digits") && e.contains("10000000"),
        "{e}"
    );
    assert!(!tmp.path().join("t").exists());
}

#[test]
fn a_validation_split_draws_other_instances_of_the_same_classes_reproducibly() {
    let tmp = tempfile::tempdir().unwrap();
    let classes = class_dir(tmp.path(), &["00007"]);
    let train = tmp.path().join("train");
    let val = tmp.path().join("val");
    let val2 = tmp.path().join("val2");
    run_ok(&mut render(&classes, &train, &["--instance", "2"]));
    run_ok(&mut render(
        &classes,
        &val,
        &["--instance", "2", "--split", "val"],
    ));
    run_ok(&mut render(
        &classes,
        &val2,
        &["--instance", "2", "--split", "val"],
    ));
    let (t, v, v2) = (images(&train), images(&val), images(&val2));
    assert_eq!(t.keys().collect::<Vec<_>>(), v.keys().collect::<Vec<_>>());
    // Same names, other masks: every image differs; the split is reproducible.
    assert!(
        t.iter().all(|(p, b)| v[p] != *b),
        "a val image equals its train image"
    );
    assert!(v == v2);
    // An epoch draws other instances too; epoch 0 of train is the default.
    let e1 = tmp.path().join("e1");
    run_ok(&mut render(
        &classes,
        &e1,
        &["--instance", "2", "--epoch", "1"],
    ));
    assert!(images(&e1).iter().all(|(p, b)| t[p] != *b));
    let e0 = tmp.path().join("e0");
    run_ok(&mut render(
        &classes,
        &e0,
        &["--instance", "2", "--epoch", "0", "--split", "train"],
    ));
    assert!(images(&e0) == t);
    // No per-instance randomness to vary: refused.
    for extra in [
        vec!["--split", "val", "--draw-type", "point_gray"],
        vec!["--split", "val", "--mask-rng", "python:1"],
        vec!["--epoch", "2", "--draw-type", "point_color"],
    ] {
        let e = run_err(&mut render(&classes, &tmp.path().join("bad"), &extra));
        assert!(e.contains("--split/--epoch"), "{extra:?}: {e}");
    }
}

/// `--preset`: a published dataset's flags, overridden by any flag given, for each command; a
/// preset of another command is refused with the list of this one's.
#[test]
fn presets_set_the_published_flags_and_any_flag_overrides_them() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    run_ok(
        bin()
            .args([
                "search",
                "-q",
                "--preset",
                "2D-OFDB-1k",
                "--categories",
                "2",
                "--no-previews",
                "--out",
            ])
            .arg(t.join("s")),
    );
    let classes = t.join("s/csv_rate0.2_category2");
    assert!(classes.join("00001.csv").exists());
    let out = t.join("ofdb");
    run_ok(
        bin()
            .args([
                "render",
                "-q",
                "--preset",
                "2D-OFDB-1k",
                "--iteration",
                "3000",
                "--load-root",
            ])
            .arg(&classes)
            .arg("--out")
            .arg(&out),
    );
    // 2D-OFDB: instance 0 of weight row 0, flip 0: one image per class, at 362 x 362.
    let got = pngs(&out);
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(
        got[0].ends_with("00000/00000_00_count_0_flip0.png"),
        "{got:?}"
    );
    assert_eq!(decode_rgb(&out.join(&got[0])).0, 362);
    let rcdb = t.join("rcdb");
    run_ok(
        bin()
            .args([
                "rcdb",
                "-q",
                "--preset",
                "RCDB-1k",
                "--numof_classes",
                "2",
                "--numof_instances",
                "2",
            ])
            .args(["--numof_thread", "1", "--save_root"])
            .arg(&rcdb),
    );
    let rec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(rcdb.join("rcdb.json")).unwrap()).unwrap();
    assert_eq!(
        (rec["image_size"].as_u64(), rec["numof_classes"].as_u64()),
        (Some(512), Some(2)),
        "{rec}"
    );
    let mv = t.join("mv");
    run_ok(
        bin()
            .args([
                "mvfdb",
                "-q",
                "--preset",
                "ExFractalDB-1k",
                "--classes",
                "2",
                "--weight-rows",
                "0-1",
                "--img_size",
                "32",
                "--save_root",
            ])
            .arg(&mv),
    );
    let rec = std::fs::read_to_string(mv.join("mvfdb.json")).unwrap();
    assert!(rec.contains("random"), "{rec}");
    let e = run_err(bin().args(["rcdb", "--preset", "FractalDB-1k"]));
    assert!(e.contains("RCDB-1k") && e.contains("RCDB-21k"), "{e}");
}

/// The originals' own command lines (FractalDB's two scripts with `=` and underscores as their
/// README writes them, RCDB's) make the same files as our kebab spellings.
#[test]
fn the_originals_command_lines_make_the_files_of_the_kebab_spellings() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let orig = |p: &str| format!("--save_dir={}", t.join(p).display());
    run_ok(bin().args([
        "search",
        "-q",
        "--rate=0.2",
        "--category=2",
        "--numof_point=100000",
        &orig("so"),
    ]));
    run_ok(
        bin()
            .args([
                "search",
                "-q",
                "--rate",
                "0.2",
                "--categories",
                "2",
                "--points",
                "100000",
                "--no-previews",
                "--out",
            ])
            .arg(t.join("sk")),
    );
    same_tree(
        &t.join("so/csv_rate0.2_category2"),
        &t.join("sk/csv_rate0.2_category2"),
    );
    let classes = t.join("so/csv_rate0.2_category2");
    let weights = reference().join("weights/weights_0.4.csv");
    let small = ["--instance", "1", "--weight-rows", "0-1"];
    run_ok(
        bin()
            .args([
                "render",
                "-q",
                &format!("--load_root={}", classes.display()),
            ])
            .arg(format!("--save_root={}", t.join("ro").display()))
            .args([
                "--image_size_x=40",
                "--image_size_y=40",
                "--iteration=3000",
                "--draw_type=patch_gray",
            ])
            .arg(format!("--weight_csv={}", weights.display()))
            .args(small),
    );
    run_ok(
        bin()
            .args(["render", "-q", "--load-root"])
            .arg(&classes)
            .arg("--save-root")
            .arg(t.join("rk"))
            .args([
                "--image-size-x",
                "40",
                "--image-size-y",
                "40",
                "--iteration",
                "3000",
                "--draw-type",
                "patch_gray",
                "--weight-csv",
                "builtin:0.4",
            ])
            .args(small),
    );
    assert_eq!(pngs(&t.join("ro")).len(), 16);
    same_tree(&t.join("ro"), &t.join("rk"));
    let rcdb =
        |dir: &str, flags: &[&str]| run_ok(bin().args(["rcdb", "-q"]).args(flags).arg(t.join(dir)));
    rcdb(
        "co",
        &[
            "--numof_classes",
            "2",
            "--numof_instances",
            "3",
            "--image_size",
            "32",
            "--numof_thread",
            "1",
            "--thread_num",
            "0",
            "--save_root",
        ],
    );
    rcdb(
        "ck",
        &[
            "--numof-classes",
            "2",
            "--numof-instances",
            "3",
            "--image-size",
            "32",
            "--numof-thread",
            "1",
            "--thread-num",
            "0",
            "--save-root",
        ],
    );
    same_tree(&t.join("co"), &t.join("ck"));
}
