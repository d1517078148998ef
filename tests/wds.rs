//! WebDataset shards: read by Python's webdataset/tarfile/PIL, DALI index offsets, crash safety under
//! kill -9 with resume, and byte-identical output for any number of threads, writers and ranks.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

fn render<'a>(cmd: &'a mut Command, classes: &Path, out: &Path, fmt: &str) -> &'a mut Command {
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
    .args([
        "--instance",
        "2",
        "--seed",
        "11",
        "--format",
        fmt,
        "--samples-per-shard",
        "64",
    ])
    .arg("--load-root")
    .arg(classes)
    .arg("--out")
    .arg(out)
}

fn shards(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "tar"))
        .collect();
    v.sort();
    v
}

fn same_shards(a: &Path, b: &Path) {
    let (sa, sb) = (shards(a), shards(b));
    assert!(!sa.is_empty());
    assert_eq!(
        sa.iter()
            .map(|p| p.file_name().unwrap().to_owned())
            .collect::<Vec<_>>(),
        sb.iter()
            .map(|p| p.file_name().unwrap().to_owned())
            .collect::<Vec<_>>()
    );
    for (x, y) in sa.iter().zip(&sb) {
        assert!(
            std::fs::read(x).unwrap() == std::fs::read(y).unwrap(),
            "{} differs",
            x.display()
        );
    }
    for f in ["fractaldb-wids.json", "fractaldb-manifest.json"] {
        assert_eq!(
            std::fs::read(a.join(f)).unwrap(),
            std::fs::read(b.join(f)).unwrap(),
            "{f} differs"
        );
    }
}

#[test]
fn shards_are_read_by_webdataset_tarfile_and_dali_index_and_match_the_folder_output() {
    let tmp = tempfile::tempdir().unwrap();
    let classes = class_dir(tmp.path(), &["00010", "00011", "00012"]);
    let folder = tmp.path().join("folder");
    let wdsdir = tmp.path().join("wds");
    run_ok(render(&mut bin(), &classes, &folder, "folder"));
    run_ok(render(&mut bin(), &classes, &wdsdir, "wds").arg("--dali-index"));
    let list = shards(&wdsdir);
    assert_eq!(list.len(), 10, "600 samples / 64 per shard");
    let out = python_ok(
        "read_wds.py",
        &[
            wdsdir.to_str().unwrap(),
            "fractaldb",
            folder.to_str().unwrap(),
            "600",
        ],
    );
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    // The seeded global order mixes classes in every shard.
    for (_, n) in v["classes_per_shard"].as_object().unwrap() {
        assert_eq!(n.as_u64().unwrap(), 3);
    }
    for s in &list {
        let idx = s.with_extension("idx");
        python_ok(
            "check_dali_index.py",
            &[s.to_str().unwrap(), idx.to_str().unwrap()],
        );
        let tv = Command::new("tar").arg("-tvf").arg(s).output().unwrap();
        assert!(tv.status.success());
        let lines = String::from_utf8_lossy(&tv.stdout).lines().count();
        assert_eq!(lines % 3, 0);
        assert!(
            String::from_utf8_lossy(&tv.stdout)
                .lines()
                .all(|l| l.starts_with("-r--r--r--"))
        );
    }
    // wids index and manifest agree with the files.
    let wids: serde_json::Value =
        serde_json::from_slice(&std::fs::read(wdsdir.join("fractaldb-wids.json")).unwrap())
            .unwrap();
    assert_eq!(wids["__kind__"], "wids-shard-index-v1");
    let list_json = wids["shardlist"].as_array().unwrap();
    assert_eq!(list_json.len(), 10);
    let total: u64 = list_json
        .iter()
        .map(|s| s["nsamples"].as_u64().unwrap())
        .sum();
    assert_eq!(total, 600);
    for s in list_json {
        let p = wdsdir.join(s["url"].as_str().unwrap());
        assert_eq!(
            std::fs::metadata(&p).unwrap().len(),
            s["filesize"].as_u64().unwrap()
        );
    }
}

/// timm's WebDataset reader and Hugging Face `datasets` read finalized shards of every family by
/// their side files alone (`_info.json`, the dataset card), class names shown; a rerun with
/// `--resume` and `finalize` leave them be, and a user's own `README.md` is never replaced.
#[test]
fn timm_and_hugging_face_read_the_shards_of_every_family_with_class_names() {
    let tmp = tempfile::tempdir().unwrap();
    let classes = class_dir(tmp.path(), &["00010", "00011", "00012"]);
    let fdb = tmp.path().join("fdb");
    let fdb_args = |c: &mut Command| {
        render(c, &classes, &fdb, "wds");
    };
    let mut c = bin();
    fdb_args(&mut c);
    run_ok(&mut c);
    let rcdb = tmp.path().join("rcdb");
    let mut c = bin();
    c.args([
        "rcdb",
        "-q",
        "--backend",
        "cpu",
        "--format",
        "wds",
        "--numof_classes",
        "3",
    ]);
    c.args([
        "--numof_instances",
        "20",
        "--image_size",
        "32",
        "--numof_thread",
        "1",
    ]);
    c.args(["--samples-per-shard", "16", "--save_root"])
        .arg(&rcdb);
    run_ok(&mut c);
    let mv = tmp.path().join("mv");
    let mut c = bin();
    c.args([
        "mvfdb",
        "-q",
        "--backend",
        "cpu",
        "--format",
        "wds",
        "--classes",
        "2",
    ]);
    c.args(["--weight-rows", "0-2", "--views", "2", "--img_size", "32"]);
    c.args(["--samples-per-shard", "5", "--save_root"]).arg(&mv);
    run_ok(&mut c);
    for (dir, prefix, total) in [
        (&fdb, "fractaldb", 600),
        (&rcdb, "rcdb", 60),
        (&mv, "mvfdb", 12),
    ] {
        let info: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("_info.json")).unwrap()).unwrap();
        assert_eq!(info["splits"]["train"]["num_samples"], total, "{prefix}");
        let out = python_ok(
            "read_readers.py",
            &[dir.to_str().unwrap(), prefix, &total.to_string()],
        );
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(v["hf_rows"], total, "{prefix}: {v}");
        assert_eq!(v["timm_samples"], total, "{prefix}: {v}");
    }
    // Side files are not the dataset's: resume and finalize keep everything as it is.
    let before = std::fs::read(fdb.join("README.md")).unwrap();
    let mut c = bin();
    fdb_args(&mut c);
    run_ok(c.arg("--resume"));
    run_ok(bin().args(["finalize", "--out"]).arg(&fdb));
    assert_eq!(std::fs::read(fdb.join("README.md")).unwrap(), before);
    // A README.md the user wrote stays theirs.
    std::fs::write(rcdb.join("README.md"), "my notes\n").unwrap();
    run_ok(bin().args(["finalize", "--out"]).arg(&rcdb));
    assert_eq!(
        std::fs::read_to_string(rcdb.join("README.md")).unwrap(),
        "my notes\n"
    );
}

#[test]
fn shards_do_not_depend_on_threads_encoders_or_writers() {
    let tmp = tempfile::tempdir().unwrap();
    let classes = class_dir(tmp.path(), &["00013", "00014"]);
    let a = tmp.path().join("a");
    let b = tmp.path().join("b");
    run_ok(render(&mut bin(), &classes, &a, "wds").args([
        "-j",
        "1",
        "--encoders",
        "1",
        "--writers",
        "1",
    ]));
    run_ok(render(&mut bin(), &classes, &b, "wds").args([
        "-j",
        "3",
        "--writers",
        "3",
        "--encoders",
        "2",
    ]));
    same_shards(&a, &b);
}

#[test]
fn existing_output_needs_resume_and_the_same_settings() {
    let tmp = tempfile::tempdir().unwrap();
    let classes = class_dir(tmp.path(), &["00015"]);
    let a = tmp.path().join("a");
    run_ok(render(&mut bin(), &classes, &a, "wds"));
    let e = run_err(render(&mut bin(), &classes, &a, "wds"));
    assert!(e.contains("--resume"), "{e}");
    let e =
        run_err(render(&mut bin(), &classes, &a, "wds").args(["--resume", "--iteration", "2000"]));
    assert!(e.contains("other settings"), "{e}");
    // A part written by an older shard order (or another encoder) is refused too: its bytes would differ.
    let part = a.join("fractaldb-manifest.part-00000-of-00001.json");
    let text = std::fs::read_to_string(&part).unwrap();
    assert!(text.contains("fractaldb-order-v2") && text.contains("\"encoder\""));
    std::fs::write(
        &part,
        text.replace("fractaldb-order-v2", "fractaldb-order-v1"),
    )
    .unwrap();
    let e = run_err(render(&mut bin(), &classes, &a, "wds").arg("--resume"));
    assert!(e.contains("order: \"fractaldb-order-v1\" then"), "{e}");
    // The encoder before the one-shot zlib-rs stream (same pixels, other bytes).
    let encoder = format!("\"encoder\": \"{}\"", fractaldb::render::ENCODER);
    assert!(text.contains(&encoder), "{text}");
    std::fs::write(
        &part,
        text.replace(&encoder, "\"encoder\": \"png-0.18 nofilter\""),
    )
    .unwrap();
    let e = run_err(render(&mut bin(), &classes, &a, "wds").arg("--resume"));
    assert!(e.contains("encoder: \"png-0.18 nofilter\" then"), "{e}");
    std::fs::write(&part, text).unwrap();
    // Resume of a complete dataset renders nothing and changes nothing.
    let before = std::fs::read(shards(&a)[0].clone()).unwrap();
    run_ok(render(&mut bin(), &classes, &a, "wds").arg("--resume"));
    assert_eq!(std::fs::read(&shards(&a)[0]).unwrap(), before);
    // A shard whose bytes no longer match the manifest is rendered again.
    std::fs::write(&shards(&a)[1], b"corrupt").unwrap();
    run_ok(render(&mut bin(), &classes, &a, "wds").arg("--resume"));
    let fresh = tmp.path().join("fresh");
    run_ok(render(&mut bin(), &classes, &fresh, "wds"));
    same_shards(&fresh, &a);
}

#[test]
fn kill_9_at_random_moments_then_resume_gives_the_uninterrupted_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let classes = class_dir(tmp.path(), &["00016", "00017", "00018"]);
    let heavy = |c: &mut Command| {
        c.args([
            "--iteration",
            "30000",
            "--image-size-x",
            "128",
            "--image-size-y",
            "128",
            "--instance",
            "4",
        ])
        .args(["--samples-per-shard", "50"]);
    };
    let full = tmp.path().join("full");
    let mut c = bin();
    render(&mut c, &classes, &full, "wds");
    heavy(&mut c);
    run_ok(&mut c);
    // 1,200 samples at most 50 per shard: each shard holds whole clouds here (one block per shard,
    // 16 images per cloud), so 3 clouds (48 images) per shard, 25 shards.
    let total_shards = shards(&full).len();
    assert_eq!(total_shards, 25);
    // Deterministic "random" kill moments: each run is killed after a pseudo-random number of its
    // shards has appeared, plus a pseudo-random few milliseconds, so the kill lands while it works
    // (between shards, inside one, or during the manifest update) however fast the machine is.
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for trial in 0..3 {
        let out = tmp.path().join(format!("killed{trial}"));
        let mut killed_midway = 0;
        for attempt in 0..4 {
            let have = if out.exists() { shards(&out).len() } else { 0 };
            let left = total_shards.saturating_sub(have).max(1);
            let wait_for = have + (next() as usize % left);
            let extra = std::time::Duration::from_millis(next() % 40);
            let mut c = bin();
            render(&mut c, &classes, &out, "wds");
            heavy(&mut c);
            if attempt > 0 {
                c.arg("--resume");
            }
            let mut child = c.spawn().unwrap();
            loop {
                if child.try_wait().unwrap().is_some() {
                    break;
                }
                if out.exists() && shards(&out).len() >= wait_for {
                    std::thread::sleep(extra);
                    if child.try_wait().unwrap().is_none() {
                        child.kill().unwrap(); // SIGKILL
                        killed_midway += 1;
                    }
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            child.wait().unwrap();
            // Never a partial shard under a final name: every .tar present is a whole, readable tar.
            for s in shards(&out) {
                let tv = Command::new("tar").arg("-tf").arg(&s).output().unwrap();
                assert!(tv.status.success(), "{} is not a complete tar", s.display());
            }
        }
        assert!(
            killed_midway > 0,
            "trial {trial}: the run always finished before the kill"
        );
        let mut c = bin();
        render(&mut c, &classes, &out, "wds");
        heavy(&mut c);
        run_ok(c.arg("--resume"));
        same_shards(&full, &out);
        let left: Vec<String> = std::fs::read_dir(&out)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".fdbtmp"))
            .collect();
        assert!(left.is_empty(), "temporary files left behind: {left:?}");
    }
}

#[test]
fn one_rank_and_three_ranks_give_the_same_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let classes = class_dir(tmp.path(), &["00019", "00020", "00021", "00022"]);
    let one = tmp.path().join("one");
    run_ok(render(&mut bin(), &classes, &one, "wds"));
    let three = tmp.path().join("three");
    let mut kids = Vec::new();
    for r in 0..3 {
        let mut c = bin();
        render(&mut c, &classes, &three, "wds");
        // torchrun-style variables, inside a Slurm step that says otherwise.
        c.env("RANK", r.to_string())
            .env("WORLD_SIZE", "3")
            .env("SLURM_PROCID", "0")
            .env("SLURM_NTASKS", "1");
        kids.push(c.spawn().unwrap());
    }
    for mut k in kids {
        assert!(k.wait().unwrap().success());
    }
    assert!(
        !three.join("fractaldb-wids.json").exists(),
        "ranks of a multi-rank run do not finalize"
    );
    run_ok(bin().args(["finalize", "--out"]).arg(&three));
    same_shards(&one, &three);

    // Folder format: disjoint classes per rank, the same files in the end.
    let f1 = tmp.path().join("f1");
    run_ok(render(&mut bin(), &classes, &f1, "folder"));
    let f3 = tmp.path().join("f3");
    for r in 0..3 {
        run_ok(render(&mut bin(), &classes, &f3, "folder").args([
            "--rank",
            &r.to_string(),
            "--world-size",
            "3",
        ]));
    }
    // Finalized, the ranks' folder is one run's, SHA256SUMS included.
    run_ok(bin().args(["finalize", "--out"]).arg(&f3));
    let (a, b) = (files(&f1), files(&f3));
    assert_eq!(a, b);
    for f in &a {
        assert_eq!(
            std::fs::read(f1.join(f)).unwrap(),
            std::fs::read(f3.join(f)).unwrap()
        );
    }
}

#[test]
fn finalize_lists_missing_shards_and_fails() {
    let tmp = tempfile::tempdir().unwrap();
    let classes = class_dir(tmp.path(), &["00023"]);
    let out = tmp.path().join("out");
    // 400 samples in 7 shards; only ranks 0 and 2 of 3 run, so shards 1 and 4 are missing.
    for r in [0, 2] {
        run_ok(render(&mut bin(), &classes, &out, "wds").args([
            "--instance",
            "4",
            "--rank",
            &r.to_string(),
            "--world-size",
            "3",
        ]));
    }
    let e = run_err(bin().args(["finalize", "--out"]).arg(&out));
    assert!(
        e.contains("2 shard(s) missing") && e.contains("fractaldb-000001.tar fractaldb-000004.tar"),
        "{e}"
    );
    assert!(!out.join("fractaldb-wids.json").exists());
    run_ok(render(&mut bin(), &classes, &out, "wds").args([
        "--instance",
        "4",
        "--rank",
        "1",
        "--world-size",
        "3",
    ]));
    run_ok(bin().args(["finalize", "--out"]).arg(&out));
    assert!(out.join("fractaldb-wids.json").exists());
}

/// Runs `f` with a 1 MiB tmpfs mounted at a fresh directory (needs root, as CI has).
fn with_small_disk(f: impl FnOnce(&Path)) {
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("small");
    std::fs::create_dir_all(&mnt).unwrap();
    let uid = Command::new("id").arg("-u").output().unwrap();
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        eprintln!("SKIPPED disk-full test: mounting a tmpfs needs root (CI runs as root)");
        return;
    }
    let m = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&mnt)
        .status()
        .unwrap();
    assert!(m.success(), "mount tmpfs failed");
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&mnt)));
    let _ = Command::new("umount").arg(&mnt).status();
    if let Err(e) = r {
        std::panic::resume_unwind(e);
    }
}

#[test]
fn disk_full_is_a_clear_error_and_leaves_no_corrupt_shard() {
    with_small_disk(|mnt| {
        let tmp = tempfile::tempdir().unwrap();
        let classes = class_dir(tmp.path(), &["00024"]);
        let out = mnt.join("out");
        let e = run_err(
            render(&mut bin(), &classes, &out, "wds")
                .args([
                    "--image-size-x",
                    "128",
                    "--image-size-y",
                    "128",
                    "--iteration",
                    "20000",
                ])
                .args(["--instance", "4", "--samples-per-shard", "20"]),
        );
        assert!(
            e.contains("No space left on device")
                && (e.contains("fractaldb-0") || e.contains("fractaldb-manifest.part")),
            // the file named: a shard, or the manifest part written after one
            "{e}"
        );
        let part = out.join("fractaldb-manifest.part-00000-of-00001.json");
        let m: serde_json::Value = serde_json::from_slice(&std::fs::read(&part).unwrap()).unwrap();
        let recorded: Vec<String> = m["shards"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["url"].as_str().unwrap().to_string())
            .collect();
        for s in shards(&out) {
            let name = s.file_name().unwrap().to_string_lossy().into_owned();
            let tv = Command::new("tar").arg("-tf").arg(&s).output().unwrap();
            assert!(tv.status.success(), "{name} is not a complete tar");
            assert!(
                recorded.contains(&name) || recorded.len() + 1 >= shards(&out).len(),
                "{name}"
            );
        }
        let leftovers: Vec<_> = std::fs::read_dir(&out)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".fdbtmp"))
            .collect();
        assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    });
}
