//! Bad input and faults: each case checks the exit code, the message (naming the file, line or flag)
//! and the files on disk before and after. (Issue: "no data loss, no silent partial datasets, no
//! panics or hangs on bad input".)

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const SMALL: [&str; 8] = [
    "--image-size-x",
    "48",
    "--image-size-y",
    "48",
    "--iteration",
    "3000",
    "--instance",
    "1",
];

fn render(classes: &Path, out: &Path) -> Command {
    let mut c = bin();
    c.arg("render")
        .args(SMALL)
        .args(["--backend", "cpu"])
        .arg("--load-root")
        .arg(classes)
        .arg("--out")
        .arg(out);
    c
}

/// The run lock of a one-rank folder render of these classes: its class set is its slice (the
/// first 12 hex digits of the SHA-256 of the names, each followed by a 0 byte), so a test can plant
/// something at that path first.
fn folder_lock_name(classes: &[&str]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for c in classes {
        h.update(c.as_bytes());
        h.update([0]);
    }
    let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    format!(
        ".fractaldb-fractaldb-classes-{}-rank-00000-of-00001.lock",
        &hex[..12]
    )
}

/// Every file under `dir` (relative), to compare before and after.
fn tree(dir: &Path) -> Vec<PathBuf> {
    files(dir)
}

/// Runs a command whose stderr reader goes away after the first byte (`2>&1 | head -1`): its exit code.
fn exit_with_stderr_closed_early(c: &mut Command) -> Option<i32> {
    use std::io::Read;
    let mut child = c
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = child.stderr.take().unwrap();
    let _ = err.read(&mut [0u8; 1]);
    drop(err);
    child.wait().unwrap().code()
}

fn status_code(c: &mut Command) -> i32 {
    c.status().unwrap().code().unwrap_or(-1)
}

#[test]
fn class_names_that_would_escape_or_hide_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let src = reference().join("categories/00000.csv");
    for name in ["...csv", "..csv", ".hidden.csv"] {
        let classes = tmp.path().join(format!("in-{}", name.len()));
        std::fs::create_dir_all(&classes).unwrap();
        std::fs::copy(&src, classes.join(name)).unwrap();
        let out = tmp.path().join(format!("out-{}", name.len()));
        let e = run_err(&mut render(&classes, &out));
        assert!(e.contains(name) && e.contains("rename the file"), "{e}");
        // Nothing written anywhere: not in the output, not beside it.
        assert!(tree(&out).is_empty(), "{:?}", tree(&out));
    }
    let siblings: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(
        siblings
            .iter()
            .all(|n| n.to_string_lossy().starts_with("in-")
                || n.to_string_lossy().starts_with("out-")),
        "{siblings:?}"
    );
}

#[test]
fn a_fifo_among_the_class_csvs_is_refused_not_waited_for() {
    let tmp = tempfile::tempdir().unwrap();
    let classes = class_dir(tmp.path(), &["00000"]);
    let fifo = classes.join("00001.csv");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let out2 = tmp.path().join("out2");
    let mut c2 = render(&classes, &out2);
    // Nobody ever writes to the FIFO: a render that opened it would hang until PATIENCE.
    let o = output_bounded(&mut c2);
    assert_eq!(o.status.code(), Some(1));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains("00001.csv") && e.contains("not a regular file"),
        "{e}"
    );
    assert!(tree(&out2).is_empty());
}

#[test]
fn orbits_the_original_cannot_render_are_errors_naming_class_and_row() {
    let tmp = tempfile::tempdir().unwrap();
    let weights = tmp.path().join("w.csv");
    std::fs::write(&weights, "1,1,1,1,1,1\n").unwrap();
    let cases = [
        // Diverges to inf - inf = NaN within 5 points: the NaN cut leaves nothing.
        ("1e308,1e308,1e308,-1e308,1,1,1\n", "diverges"),
        // Probabilities far below the first draw (0.5434...): no map at the first step.
        ("0.5,0,0,0.5,0,0,0.1\n", "no map is chosen"),
    ];
    for (k, (csv, what)) in cases.iter().enumerate() {
        let classes = tmp.path().join(format!("in{k}"));
        std::fs::create_dir_all(&classes).unwrap();
        std::fs::write(classes.join("bad.csv"), csv).unwrap();
        for backend in ["cpu", "gl"] {
            let out = tmp.path().join(format!("out{k}-{backend}"));
            let mut c = bin();
            c.arg("render")
                .args(SMALL)
                .args(["--backend", backend, "--weight-csv"])
                .arg(&weights)
                .arg("--load-root")
                .arg(&classes)
                .arg("--out")
                .arg(&out);
            let e = run_err(&mut c);
            assert!(
                e.contains("bad.csv") && e.contains("weight row 00") && e.contains(what),
                "{backend}: {e}"
            );
            assert!(
                !tree(&out)
                    .iter()
                    .any(|p| p.extension().is_some_and(|x| x == "png")),
                "{backend}: images written"
            );
        }
    }
}

#[test]
fn finalize_accepts_only_this_datasets_shard_names() {
    let tmp = tempfile::tempdir().unwrap();
    let classes = class_dir(tmp.path(), &["00003"]);
    let out = tmp.path().join("wds");
    run_ok(render(&classes, &out).args(["-q", "--format", "wds", "--samples-per-shard", "40"]));
    let part = out.join("fractaldb-manifest.part-00000-of-00001.json");
    let text = std::fs::read_to_string(&part).unwrap();
    std::fs::write(
        &part,
        text.replace("fractaldb-000001.tar", "../outside.tar"),
    )
    .unwrap();
    let before = std::fs::read(out.join("fractaldb-wids.json")).unwrap();
    let e = run_err(bin().args(["finalize", "--out"]).arg(&out));
    assert!(
        e.contains("part-00000-of-00001.json") && e.contains("../outside.tar"),
        "{e}"
    );
    assert_eq!(
        std::fs::read(out.join("fractaldb-wids.json")).unwrap(),
        before
    );
}

#[test]
fn a_full_or_closed_stdout_or_stderr_never_stops_the_work_or_panics() {
    let tmp = tempfile::tempdir().unwrap();
    let classes = class_dir(tmp.path(), &["00004"]);
    // --help into a full device: an error, not a silent success.
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let o = bin().arg("--help").stdout(full).output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    // stderr full: the render still renders everything.
    let out = tmp.path().join("full");
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let mut c = render(&classes, &out);
    assert_eq!(status_code(c.stderr(full)), 0);
    assert_eq!(
        tree(&out)
            .iter()
            .filter(|p| p.extension().is_some_and(|x| x == "png"))
            .count(),
        100
    );
    // stderr closed after the first line (`2>&1 | head -1`): exit 0, everything written.
    let out = tmp.path().join("head");
    assert_eq!(
        exit_with_stderr_closed_early(&mut render(&classes, &out)),
        Some(0)
    );
    // The search too (`search ... 2>&1 | head -3` aborted after the first class).
    let sout = tmp.path().join("search");
    let mut c = bin();
    c.args(["search", "--categories", "3", "--no-previews", "--out"])
        .arg(&sout);
    assert_eq!(exit_with_stderr_closed_early(&mut c), Some(0));
    assert_eq!(files(&sout.join("csv_rate0.2_category3")).len(), 3);
    assert_eq!(
        tree(&out)
            .iter()
            .filter(|p| p.extension().is_some_and(|x| x == "png"))
            .count(),
        100
    );
}

#[test]
fn world_size_without_rank_is_refused_before_any_output() {
    let tmp = tempfile::tempdir().unwrap();
    let classes = class_dir(tmp.path(), &["00005"]);
    let out = tmp.path().join("out");
    let e = run_err(
        render(&classes, &out)
            .env("WORLD_SIZE", "4")
            .env_remove("RANK"),
    );
    assert!(e.contains("WORLD_SIZE=4") && e.contains("RANK"), "{e}");
    assert!(!out.exists());
}

#[test]
fn a_search_that_could_never_finish_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("s");
    for args in [
        vec!["--rate", "1", "--points", "300000", "--categories", "1"],
        vec!["--rate", "1.5"],
    ] {
        let e = run_err(bin().arg("search").args(&args).arg("--out").arg(&out));
        assert!(e.contains("--rate"), "{e}");
    }
    assert!(!out.exists());
}

fn wds_render(classes: &Path, out: &Path) -> Command {
    let mut c = render(classes, out);
    c.args([
        "-q",
        "--instance",
        "2",
        "--format",
        "wds",
        "--samples-per-shard",
        "50",
    ]);
    c
}

#[test]
fn resume_with_other_settings_is_refused_before_touching_another_world_sizes_shards() {
    let tmp = tempfile::tempdir().unwrap();
    let classes = class_dir(tmp.path(), &["00006", "00007"]);
    let out = tmp.path().join("o");
    run_ok(wds_render(&classes, &out).args(["--rank", "0", "--world-size", "3"]));
    let before = snapshot(&out);
    assert!(before.len() > 2);
    let e = run_err(wds_render(&classes, &out).args(["--seed", "5", "--resume"]));
    assert!(
        e.contains("part-00000-of-00003.json") && e.contains("seed: 0 then, 5 now"),
        "{e}"
    );
    assert!(snapshot(&out) == before, "files changed by a refused run");
    // Without --resume, the other world size's output is refused too, untouched.
    let e = run_err(&mut wds_render(&classes, &out));
    assert!(e.contains("--resume"), "{e}");
    assert!(snapshot(&out) == before);
    // With the same settings, a resume at another world size keeps the verified shards and
    // completes the rest, byte-identical to a single run.
    run_ok(wds_render(&classes, &out).arg("--resume"));
    let fresh = tmp.path().join("fresh");
    run_ok(&mut wds_render(&classes, &fresh));
    for (p, b) in snapshot(&fresh) {
        if p.extension().is_some_and(|x| x == "tar") {
            assert!(std::fs::read(out.join(&p)).unwrap() == b, "{}", p.display());
        }
    }
}

#[test]
fn bench_removes_only_what_it_created_in_its_work_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let wd = tmp.path().join("wd");
    for d in ["cpu-1t-0", "cpu-1t-1-Wds", "search"] {
        std::fs::create_dir_all(wd.join(d)).unwrap();
        std::fs::write(wd.join(d).join("mine.txt"), "user data").unwrap();
    }
    run_ok(
        bin()
            .args([
                "bench",
                "--backend",
                "cpu",
                "--classes",
                "1",
                "--instance",
                "1",
            ])
            .args([
                "--iteration",
                "2000",
                "--image-size",
                "32",
                "--repeat",
                "1",
                "-j",
                "1",
            ])
            .arg("--work-dir")
            .arg(&wd),
    );
    let left: Vec<PathBuf> = tree(&wd);
    assert_eq!(
        left,
        [
            "cpu-1t-0/mine.txt",
            "cpu-1t-1-Wds/mine.txt",
            "search/mine.txt"
        ]
        .iter()
        .map(PathBuf::from)
        .collect::<Vec<_>>()
    );
}

#[test]
fn dali_index_added_on_resume_covers_the_kept_shards() {
    let tmp = tempfile::tempdir().unwrap();
    let classes = class_dir(tmp.path(), &["00008"]);
    let a = tmp.path().join("a");
    run_ok(&mut wds_render(&classes, &a));
    run_ok(wds_render(&classes, &a).args(["--resume", "--dali-index"]));
    let b = tmp.path().join("b");
    run_ok(wds_render(&classes, &b).arg("--dali-index"));
    let idx: Vec<PathBuf> = tree(&b)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|x| x == "idx"))
        .collect();
    let tars = tree(&b)
        .iter()
        .filter(|p| p.extension().is_some_and(|x| x == "tar"))
        .count();
    assert!(
        tars > 1 && idx.len() == tars,
        "{} indexes, {tars} shards",
        idx.len()
    );
    for p in idx {
        assert_eq!(
            std::fs::read(a.join(&p)).unwrap_or_default(),
            std::fs::read(b.join(&p)).unwrap(),
            "{}",
            p.display()
        );
    }
}

#[test]
fn a_folder_dataset_refuses_other_settings_before_writing() {
    let tmp = tempfile::tempdir().unwrap();
    let classes = class_dir(tmp.path(), &["00009"]);
    let out = tmp.path().join("f");
    run_ok(render(&classes, &out).arg("-q"));
    let before = snapshot(&out);
    for extra in [
        vec!["--resume", "--image-size-x", "40", "--image-size-y", "40"],
        vec!["--iteration", "2000"],
    ] {
        let e = run_err(render(&classes, &out).args(&extra));
        assert!(
            e.contains("fractaldb-folder.json")
                && e.contains("other settings")
                && e.contains("then"),
            "{e}"
        );
        assert!(snapshot(&out) == before, "files changed by a refused run");
    }
}

#[test]
fn folder_resume_redraws_broken_images_and_keeps_whole_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let classes = class_dir(tmp.path(), &["00010"]);
    let out = tmp.path().join("f");
    run_ok(render(&classes, &out).arg("-q"));
    let want = snapshot(&out);
    let list = pngs(&out);
    let (a, b) = (out.join(&list[3]), out.join(&list[7]));
    let len = std::fs::metadata(&a).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&a)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    std::fs::write(&b, b"").unwrap();
    let o = run_ok(render(&classes, &out).arg("--resume"));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("done: 2 images (98 kept from before)"), "{e}");
    assert!(
        snapshot(&out) == want,
        "the resumed dataset differs from the original run"
    );
}

#[test]
fn an_inherited_launcher_environment_is_announced_and_finalize_checks_folders() {
    let tmp = tempfile::tempdir().unwrap();
    let classes = class_dir(tmp.path(), &["00011", "00012", "00013", "00014", "00015"]);
    let out = tmp.path().join("f");
    let o = run_ok(
        render(&classes, &out)
            .arg("-q")
            .env("RANK", "0")
            .env("WORLD_SIZE", "4"),
    );
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains("rank 0 of 4") && e.contains("only its part") && e.contains("finalize"),
        "{e}"
    );
    assert_eq!(pngs(&out).len(), 200, "classes 0 and 4 of 5");
    let e = run_err(bin().args(["finalize", "--out"]).arg(&out));
    assert!(e.contains("300 of 500 images missing"), "{e}");
    for rank in 1..4 {
        run_ok(
            render(&classes, &out)
                .arg("-q")
                .env("RANK", rank.to_string())
                .env("WORLD_SIZE", "4"),
        );
    }
    let o = run_ok(bin().args(["finalize", "--out"]).arg(&out));
    assert!(String::from_utf8_lossy(&o.stderr).contains("complete: 500 images"));
}

#[test]
fn runs_that_cannot_fit_in_memory_are_refused_up_front_with_the_figures() {
    let tmp = tempfile::tempdir().unwrap();
    let classes = class_dir(tmp.path(), &["00016"]);
    let out = tmp.path().join("o");
    for extra in [
        vec!["--iteration", "18446744073709551615"],
        vec!["--iteration", "1000000000000"],
        vec!["--instance", "4294967295", "--format", "wds"],
    ] {
        let mut c = bin();
        c.args(["render", "--backend", "cpu", "--load-root"])
            .arg(&classes)
            .arg("--out")
            .arg(&out)
            .args(&extra);
        // Refused up front: the message has the estimate and nothing was written (the run itself
        // would take days, so output_bounded's limit also catches a run that started).
        let o = output_bounded(&mut c);
        assert_eq!(o.status.code(), Some(1), "{extra:?}: {o:?}");
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(e.contains("needs about") && e.contains("available"), "{e}");
        assert!(!out.exists(), "{extra:?} wrote output");
    }
    let e = run_err(
        bin()
            .args(["search", "--points", "18446744073709551615", "--out"])
            .arg(&out),
    );
    assert!(e.contains("--points") && e.contains("needs about"), "{e}");
    // Under an address-space limit (ulimit -v), huge images get the figure instead of an abort.
    let o = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -v 3000000; exec \"$0\" render --backend cpu --image-size-x 16384 \
             --image-size-y 16384 --iteration 1000 --load-root {} --out {}",
            classes.display(),
            out.display()
        ))
        .arg(env!("CARGO_BIN_EXE_fractaldb"))
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(e.contains("RLIMIT_AS") && e.contains("needs about"), "{e}");
    assert!(!out.exists());
}

fn search_rank(out: &Path, rank: u64, world: u64, extra: &[&str]) -> Command {
    let mut c = bin();
    c.args([
        "search",
        "-q",
        "--categories",
        "2",
        "-j",
        "1",
        "--no-previews",
    ])
    .args([
        "--rank",
        &rank.to_string(),
        "--world-size",
        &world.to_string(),
    ])
    .args(extra)
    .arg("--out")
    .arg(out);
    c
}

#[test]
fn a_multi_rank_search_never_waits_forever() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("s");
    // Two ranks complete a search.
    let mut a = search_rank(&out, 0, 2, &[]);
    let mut b = search_rank(&out, 1, 2, &[]);
    let (ca, cb) = (a.spawn().unwrap(), b.spawn().unwrap());
    assert!(ca.wait_with_output().unwrap().status.success());
    assert!(cb.wait_with_output().unwrap().status.success());
    let parts = out.join(".fractaldb-search");
    let before = snapshot(&parts);
    // Rerun with another seed: both ranks refuse at once, whichever starts first; nothing changes.
    for rank in [1, 0] {
        let o = output_bounded(&mut search_rank(&out, rank, 2, &["--seed", "5"]));
        assert_eq!(o.status.code(), Some(1));
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(e.contains("other settings"), "{e}");
    }
    assert!(snapshot(&parts) == before);
    // A rank whose partner never comes stops after --wait-timeout with a message.
    let lone = tmp.path().join("lone");
    let o = output_bounded(&mut search_rank(
        &lone,
        0,
        2,
        &["--categories", "400", "--wait-timeout", "2"],
    ));
    assert_eq!(o.status.code(), Some(1));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("is that rank running"), "{e}");
    // A rank that failed leaves a marker: the waiting rank stops at once with its message.
    let failed = tmp.path().join("failed");
    let mut waiting = search_rank(&failed, 0, 2, &["--categories", "400"]);
    let child = waiting
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let part = failed.join(".fractaldb-search/rank-00000-of-00002.jsonl");
    // The event: rank 0's part file has its whole header line.
    let mut header = String::new();
    wait_until("rank 0's header line", || {
        let text = std::fs::read_to_string(&part).unwrap_or_default();
        match text.split_once('\n') {
            Some((h, _)) => {
                header = h.to_string();
                true
            }
            None => false,
        }
    });
    std::fs::write(
        failed.join(".fractaldb-search/failed-rank-00001-of-00002"),
        format!("{header}\ndisk on fire\n"),
    )
    .unwrap();
    // It stops on the marker, not after its hour-long --wait-timeout: the message says which.
    let mut child = child;
    let status = wait_exit(&mut child, "the waiting rank");
    let o = child.wait_with_output().unwrap();
    assert_eq!(status.code(), Some(1));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains("rank 1 failed") && e.contains("disk on fire"),
        "{e}"
    );
}

#[test]
fn a_second_run_into_the_same_place_fails_at_once_and_the_first_completes() {
    let tmp = tempfile::tempdir().unwrap();
    let classes = class_dir(tmp.path(), &["00017", "00018"]);
    let out = tmp.path().join("o");
    std::fs::create_dir_all(&out).unwrap();
    // Another run holds this rank's lock (this test process plays it, so no timing is involved).
    let lock = out.join(".fractaldb-fractaldb-rank-00000-of-00001.lock");
    let held = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock)
        .unwrap();
    held.try_lock().unwrap();
    std::fs::write(&lock, "gpu-node-3 pid 777\n").unwrap();
    // The lock stays held until this test releases it: a run that waited for it would hang here.
    let o = output_bounded(&mut wds_render(&classes, &out));
    assert!(!o.status.success(), "it ran while the lock was held");
    let e = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(
        e.contains("another fractaldb run") && e.contains("gpu-node-3 pid 777"),
        "{e}"
    );
    assert!(
        !tree(&out)
            .iter()
            .any(|p| p.extension().is_some_and(|x| x == "tar")),
        "a refused run wrote shards"
    );
    // The holder goes: the run proceeds, and its own lock is gone at the end.
    held.unlock().unwrap();
    drop(held);
    run_ok(&mut wds_render(&classes, &out));
    assert!(!lock.exists(), "the lock is removed at the end");
    run_ok(wds_render(&classes, &out).arg("--resume"));
}

#[test]
fn without_flock_a_lock_file_names_its_owner_and_a_dead_owner_is_cleared() {
    let tmp = tempfile::tempdir().unwrap();
    let classes = class_dir(tmp.path(), &["00020"]);
    let out = tmp.path().join("o");
    std::fs::create_dir_all(&out).unwrap();
    let lock = folder_lock_name(&["00020"]);
    let owner = out.join(format!("{lock}.owner"));
    std::fs::write(&owner, "gpu-node-17 pid 4242").unwrap();
    let e = run_err(render(&classes, &out).env("FRACTALDB_LOCK", "file"));
    assert!(
        e.contains("gpu-node-17 pid 4242") && e.contains("remove this file"),
        "{e}"
    );
    assert!(pngs(&out).is_empty());
    // This host, a pid that is gone: a stale lock, taken over.
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    std::fs::write(&owner, format!("{} pid 4294967", host.trim())).unwrap();
    run_ok(
        render(&classes, &out)
            .env("FRACTALDB_LOCK", "file")
            .arg("-q"),
    );
    assert_eq!(pngs(&out).len(), 100);
    assert!(!owner.exists());
}

#[test]
fn errors_and_help_say_what_to_do_next() {
    let tmp = tempfile::tempdir().unwrap();
    let e = run_err(
        bin()
            .args(["render", "--load-root"])
            .arg(tmp.path().join("no-such"))
            .arg("--out")
            .arg(tmp.path().join("o")),
    );
    assert!(
        e.contains("fractaldb search --categories N") && e.contains("--load-root"),
        "{e}"
    );
    // A missing input is the first thing said (before the backend and run lines), with its next
    // step: the original's weights paths name the built-in files, for both families.
    assert!(e.starts_with("fractaldb: error:"), "{e}");
    let classes = class_dir(tmp.path(), &["00021"]);
    let e = run_err(
        bin()
            .args([
                "render",
                "--weight_csv",
                "./fractal_renderer/weights/weights_0.4.csv",
            ])
            .arg("--load-root")
            .arg(&classes)
            .arg("--out")
            .arg(tmp.path().join("o")),
    );
    assert!(
        e.starts_with("fractaldb: error:") && e.contains("builtin:0.4"),
        "{e}"
    );
    let e = run_err(
        bin()
            .args(["mvfdb", "--weight_csv", "weights_ins145.csv", "--save_root"])
            .arg(tmp.path().join("m")),
    );
    assert!(e.contains("--weight-csv builtin"), "{e}");
    assert!(!tmp.path().join("o").exists() && !tmp.path().join("m").exists());
    let help = String::from_utf8(run_ok(bin().arg("--help")).stdout).unwrap();
    assert!(
        help.contains("CPU or GPU") && !help.contains("(CPU engine;"),
        "{help}"
    );
    let help = String::from_utf8(run_ok(bin().args(["bench", "--help"])).stdout).unwrap();
    assert!(help.contains("GL engine"), "{help}");
    let help = String::from_utf8(run_ok(bin().args(["serve", "--help"])).stdout).unwrap();
    assert!(help.contains("No authentication"), "{help}");
    // The run's first line reads as a sentence, not as internal names.
    let o = run_ok(&mut render(&classes, &tmp.path().join("f")));
    let err = String::from_utf8_lossy(&o.stderr);
    let first = err.lines().next().unwrap();
    assert!(
        first.contains("one process")
            && first.contains("class folders")
            && !first.contains("Folder"),
        "{first}"
    );
}

#[test]
fn a_killed_runs_temporaries_of_the_shared_files_are_cleared_by_the_next_run() {
    // A kill while classes.txt or the folder record was being written leaves NAME.PID.fdbtmp.
    let tmp = tempfile::tempdir().unwrap();
    let classes = class_dir(tmp.path(), &["00022"]);
    for (fmt, names) in [
        ("folder", vec!["classes.txt", "fractaldb-folder.json"]),
        ("wds", vec!["classes.txt"]),
    ] {
        let out = tmp.path().join(fmt);
        std::fs::create_dir_all(&out).unwrap();
        for n in &names {
            std::fs::write(out.join(format!("{n}.999999.fdbtmp")), "partial").unwrap();
        }
        run_ok(render(&classes, &out).args(["-q", "--format", fmt]));
        let left: Vec<PathBuf> = tree(&out)
            .into_iter()
            .filter(|p| p.to_string_lossy().ends_with(".fdbtmp"))
            .collect();
        assert!(left.is_empty(), "{fmt}: {left:?}");
        for n in &names {
            assert!(out.join(n).is_file(), "{fmt}: {n}");
        }
    }
}

/// Every family's run is fitted to the memory it may use before anything is written: an image size
/// no machine holds is refused with the figure and the flag, and no output directory appears.
#[test]
fn every_family_checks_its_memory_before_writing() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("o");
    let weights = reference().join("mvfdb/weights_ins145.csv");
    let huge = "300000";
    let w = weights.to_str().unwrap();
    let runs: [(Vec<&str>, &str); 2] = [
        (
            vec![
                "rcdb",
                "--numof_classes",
                "1",
                "--numof_instances",
                "1",
                "--numof_thread",
                "1",
            ],
            "--image_size",
        ),
        (
            vec![
                "mvfdb",
                "--classes",
                "1",
                "--weight-rows",
                "0",
                "--weight-csv",
                w,
            ],
            "--img_size",
        ),
    ];
    for (args, flag) in runs {
        let mut c = bin();
        c.args(&args)
            .args([flag, huge, "--backend", "cpu", "--save_root"])
            .arg(&out);
        let e = run_err(&mut c);
        assert!(e.contains(flag) && e.contains("needs about"), "{e}");
        assert!(!out.exists(), "{args:?} wrote output");
    }
}

/// A lock path that is a planted symbolic link (or anything but a regular file) is refused: the run
/// writes nothing, and the link's target keeps its bytes.
#[test]
fn a_lock_never_follows_a_planted_link() {
    let tmp = tempfile::tempdir().unwrap();
    let classes = class_dir(tmp.path(), &["00020"]);
    let victim = tmp.path().join("victim.txt");
    std::fs::write(&victim, "keep me\n").unwrap();
    let folder_lock = folder_lock_name(&["00020"]);
    for format in ["folder", "wds"] {
        let out = tmp.path().join(format!("o-{format}"));
        std::fs::create_dir_all(&out).unwrap();
        let lock = out.join(match format {
            "folder" => folder_lock.as_str(),
            _ => ".fractaldb-fractaldb-rank-00000-of-00001.lock",
        });
        std::os::unix::fs::symlink(&victim, &lock).unwrap();
        let e = run_err(render(&classes, &out).args(["--format", format]));
        assert!(e.contains("symbolic link") && e.contains(".lock"), "{e}");
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep me\n");
        assert!(pngs(&out).is_empty() && tars(&out).is_empty());
        assert!(
            std::fs::symlink_metadata(&lock)
                .unwrap()
                .file_type()
                .is_symlink()
        );
    }
}

/// Inputs the newer families once took silently or forever: a FIFO as weights (blocks), a variance
/// no model reaches (never ends), an empty or NaN multipliers file (no images, exit 0). Each is
/// refused at once, naming the flag or the file and line, with nothing written.
#[test]
fn newer_families_refuse_fifos_unreachable_variances_and_bad_multipliers() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("o");
    let fifo = tmp.path().join("w.fifo");
    run_ok(Command::new("mkfifo").arg(&fifo));
    let classes = class_dir(tmp.path(), &["00020"]);
    let e = run_err(render(&classes, &out).arg("--weight-csv").arg(&fifo));
    assert!(
        e.contains("w.fifo") && e.contains("not a regular file"),
        "{e}"
    );
    let mv = |extra: &[&str]| {
        let mut c = bin();
        c.args([
            "mvfdb",
            "-q",
            "--classes",
            "1",
            "--views",
            "1",
            "--save_root",
        ])
        .arg(&out)
        .args(extra);
        c
    };
    let e = run_err(&mut mv(&["--weight-csv", fifo.to_str().unwrap()]));
    assert!(
        e.contains("w.fifo") && e.contains("not a regular file"),
        "{e}"
    );
    for v in ["1", "1e9"] {
        let e = run_err(&mut mv(&["--variance", v]));
        assert!(
            e.contains("--variance") && e.contains("never be reached"),
            "{e}"
        );
    }
    let empty = tmp.path().join("empty.csv");
    std::fs::write(&empty, "\n").unwrap();
    let e = run_err(&mut mv(&["--weight-csv", empty.to_str().unwrap()]));
    assert!(e.contains("empty.csv") && e.contains("no rows"), "{e}");
    let nan = tmp.path().join("nan.csv");
    std::fs::write(
        &nan,
        format!("{}\n{}\n", ["1"; 12].join(","), ["nan"; 12].join(",")),
    )
    .unwrap();
    let e = run_err(&mut mv(&["--weight-csv", nan.to_str().unwrap()]));
    assert!(e.contains("nan.csv:2") && e.contains("finite"), "{e}");
    assert!(!out.exists(), "a refused run wrote output");
}

/// The original's README runs the renderer with `--weight_csv ./fractal_renderer/weights/...`, a
/// folder a drop-in user does not have: the error says the file is built in and how to name it,
/// and nothing is written.
#[test]
fn a_missing_weights_file_of_the_originals_points_at_the_builtin_one() {
    let tmp = tempfile::tempdir().unwrap();
    let classes = class_dir(tmp.path(), &["00000"]);
    let out = tmp.path().join("out");
    let e = run_err(
        bin()
            .args(["render", "--load-root"])
            .arg(&classes)
            .arg("--save_root")
            .arg(&out)
            .args(["--weight_csv", "./fractal_renderer/weights/weights_0.4.csv"]),
    );
    assert!(
        e.contains("--weight-csv") && e.contains("builtin:0.4") && e.contains("no such file"),
        "{e}"
    );
    assert!(!out.exists());
}
