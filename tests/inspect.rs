//! `info`, `verify` and `SHA256SUMS` on the folders and shards of every family: what a directory
//! holds (also a partial multi-rank run), a flipped byte inside a PNG's IDAT that the structural
//! check passes and `verify` does not, and checksums that `sha256sum -c` accepts and that ranks
//! merged by `finalize` write byte for byte as one run does.

mod common;
use common::*;
use std::path::Path;
use std::process::Command;

fn fdb(classes: &Path, out: &Path, extra: &[&str]) -> Output {
    run_ok(
        bin()
            .args([
                "render",
                "-q",
                "--image-size-x",
                "32",
                "--image-size-y",
                "32",
            ])
            .args(["--iteration", "2000", "--instance", "2", "--load-root"])
            .arg(classes)
            .arg("--out")
            .arg(out)
            .args(extra),
    )
}
use std::process::Output;

fn info(dir: &Path) -> serde_json::Value {
    let o = run_ok(bin().args(["info", "--json"]).arg(dir));
    serde_json::from_slice(&o.stdout).unwrap()
}

fn sha256sum_ok(dir: &Path) -> bool {
    Command::new("sha256sum")
        .args(["-c", "--quiet", "SHA256SUMS"])
        .current_dir(dir)
        .output()
        .unwrap()
        .status
        .success()
}

#[test]
fn info_verify_and_sha256sums_on_every_familys_folders_and_shards() {
    let tmp = tempfile::tempdir().unwrap();
    let classes = class_dir(tmp.path(), &["00010", "00011"]);
    let (folder, shards) = (tmp.path().join("f"), tmp.path().join("w"));
    fdb(&classes, &folder, &[]);
    fdb(
        &classes,
        &shards,
        &["--format", "wds", "--samples-per-shard", "64"],
    );
    let rcdb = tmp.path().join("r");
    run_ok(
        bin()
            .args([
                "rcdb",
                "-q",
                "--numof_classes",
                "2",
                "--numof_instances",
                "5",
            ])
            .args(["--image_size", "32", "--numof_thread", "1", "--save_root"])
            .arg(&rcdb),
    );
    let mv = tmp.path().join("m");
    run_ok(
        bin()
            .args([
                "mvfdb",
                "-q",
                "--classes",
                "2",
                "--weight-rows",
                "0-2",
                "--views",
                "2",
            ])
            .args(["--img_size", "32", "--save_root"])
            .arg(&mv),
    );
    // RCDB's and MV-FractalDB's shards too.
    let (rcdb_w, mv_w) = (tmp.path().join("rw"), tmp.path().join("mw"));
    run_ok(
        bin()
            .args(["rcdb", "-q", "--format", "wds", "--samples-per-shard", "4"])
            .args([
                "--numof_classes",
                "2",
                "--numof_instances",
                "5",
                "--image_size",
                "32",
            ])
            .args(["--numof_thread", "1", "--save_root"])
            .arg(&rcdb_w),
    );
    run_ok(
        bin()
            .args([
                "mvfdb",
                "-q",
                "--format",
                "wds",
                "--samples-per-shard",
                "5",
                "--classes",
                "2",
            ])
            .args([
                "--weight-rows",
                "0-2",
                "--views",
                "2",
                "--img_size",
                "32",
                "--save_root",
            ])
            .arg(&mv_w),
    );
    for (dir, family, kind, images) in [
        (&folder, "fractaldb", "folder", 400),
        (&shards, "fractaldb", "shards", 400),
        (&rcdb, "rcdb", "folder", 10),
        (&mv, "mvfdb", "folder", 12),
        (&rcdb_w, "rcdb", "shards", 10),
        (&mv_w, "mvfdb", "shards", 12),
    ] {
        let v = info(dir);
        let d = &v["datasets"][0];
        assert_eq!(d["family"], family, "{v}");
        assert_eq!(d["kind"], kind, "{v}");
        assert_eq!(d["classes"], 2, "{v}");
        let n = if kind == "shards" {
            &d["samples"]
        } else {
            &d["images_present"]
        };
        assert_eq!(n, images, "{v}");
        assert_ne!(d["complete"], false, "{v}");
        assert!(sha256sum_ok(dir), "{}", dir.display());
        run_ok(bin().arg("verify").arg(dir));
        let text = run_ok(bin().arg("info").arg(dir));
        assert!(String::from_utf8_lossy(&text.stdout).contains("complete"));
    }
    // A flipped byte inside IDAT: the structural check (finalize) passes it; verify and sha256sum
    // do not, and verify names the file.
    let victim = "00011/00011_03_count_1_flip2.png";
    let p = folder.join(victim);
    let mut b = std::fs::read(&p).unwrap();
    let at = b.windows(4).position(|w| w == b"IDAT").unwrap() + 20;
    b[at] ^= 0x40;
    std::fs::write(&p, &b).unwrap();
    run_ok(bin().args(["finalize", "--out"]).arg(&folder));
    let err = run_err(bin().arg("verify").arg(&folder));
    assert!(err.contains(victim), "{err}");
    assert!(!sha256sum_ok(&folder));
    // Not a dataset: a clear error naming the directory.
    let err = run_err(bin().arg("info").arg(tmp.path()));
    assert!(err.contains("no fractaldb dataset"), "{err}");
}

#[test]
fn a_partial_multi_rank_run_says_which_ranks_and_shards_are_missing() {
    let tmp = tempfile::tempdir().unwrap();
    let classes = class_dir(tmp.path(), &["00010", "00011"]);
    let out = tmp.path().join("w");
    let sh = [
        "--format",
        "wds",
        "--samples-per-shard",
        "64",
        "--world-size",
        "3",
    ];
    fdb(&classes, &out, &[&sh[..], &["--rank", "1"]].concat());
    let v = info(&out);
    let d = &v["datasets"][0];
    assert_eq!(d["complete"], false, "{v}");
    assert_eq!(d["finalized"], false, "{v}");
    assert_eq!(d["ranks"][0]["world_size"], 3, "{v}");
    assert_eq!(d["ranks"][0]["parts"], serde_json::json!([1]), "{v}");
    assert_eq!(d["ranks"][0]["no_part"], serde_json::json!([0, 2]), "{v}");
    assert!(d["missing_shards"]["count"].as_u64().unwrap() > 0, "{v}");
    let err = run_err(bin().arg("verify").arg(&out));
    assert!(err.contains("not made yet"), "{err}");
}

#[test]
fn ranks_merged_by_finalize_write_the_sha256sums_of_one_run() {
    let tmp = tempfile::tempdir().unwrap();
    let classes = class_dir(tmp.path(), &["00010", "00011", "00012"]);
    let one = tmp.path().join("one");
    fdb(&classes, &one, &[]);
    let ranks = tmp.path().join("ranks");
    for r in ["0", "1"] {
        fdb(&classes, &ranks, &["--rank", r, "--world-size", "2"]);
    }
    assert!(
        !ranks.join("SHA256SUMS").exists(),
        "a rank alone does not finalize"
    );
    run_ok(bin().args(["finalize", "--out"]).arg(&ranks));
    assert_eq!(
        std::fs::read(ranks.join("SHA256SUMS")).unwrap(),
        std::fs::read(one.join("SHA256SUMS")).unwrap()
    );
    assert!(sha256sum_ok(&ranks));
    // The parts are merged and gone; a resume of the finalized folder keeps the sums.
    let parts: Vec<_> = std::fs::read_dir(&ranks)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(".SHA256SUMS.part")
        })
        .collect();
    assert!(parts.is_empty());
    fdb(&classes, &one, &["--resume"]);
    assert_eq!(
        std::fs::read(ranks.join("SHA256SUMS")).unwrap(),
        std::fs::read(one.join("SHA256SUMS")).unwrap()
    );
}
