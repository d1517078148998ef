//! Ranks started together into one output succeed and make the single process's bytes, in every
//! family and both formats; a second process of the same slice is refused while the first holds its
//! lock. (RCDB's `--thread_num` slices are tested in tests/rcdb.rs.)

mod common;
use common::*;
use std::path::Path;
use std::process::{Command, Stdio};

/// Runs `cmd(rank args)` for ranks 0..world at once and waits for all of them.
fn ranks_at_once(world: u64, cmd: &dyn Fn(&[String]) -> Command) {
    let kids: Vec<_> = (0..world)
        .map(|r| {
            let args =
                ["--rank", &r.to_string(), "--world-size", &world.to_string()].map(String::from);
            cmd(&args)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for k in kids {
        let o = k.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
}

/// The files a dataset's bytes are: images or shards, and the side files (not records, manifests,
/// indexes or locks, whose shape depends on the rank count).
fn bytes_of(dir: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    snapshot(dir)
        .into_iter()
        .filter(|(p, _)| {
            let s = p.to_string_lossy();
            !(s.ends_with(".json") || s.ends_with(".lock") || s.ends_with(".owner"))
        })
        .collect()
}

fn check_family(tmp: &Path, name: &str, cmd: &dyn Fn(&Path, &[&str]) -> Command) {
    for fmt in [
        &[][..],
        &["--format", "wds", "--samples-per-shard", "4"][..],
    ] {
        let tag = if fmt.is_empty() { "folder" } else { "wds" };
        let one = tmp.join(format!("{name}-{tag}-one"));
        run_ok(cmd(&one, fmt).args(["-j", "1"]));
        let many = tmp.join(format!("{name}-{tag}-ranks"));
        ranks_at_once(3, &|rank| {
            let mut c = cmd(&many, fmt);
            c.args(rank).args(["-j", "1"]);
            c
        });
        // Finalized, the ranks' folder or shards equal one process's, SHA256SUMS included.
        run_ok(
            bin()
                .args(["finalize", "--prefix", name, "--out"])
                .arg(&many),
        );
        let (a, b) = (bytes_of(&one), bytes_of(&many));
        assert!(!a.is_empty());
        assert!(
            a == b,
            "{name} {tag}: the ranks' bytes differ from one process's"
        );
    }
}

#[test]
fn ranks_started_together_make_one_process_bytes_in_every_family() {
    let tmp = tempfile::tempdir().unwrap();
    let classes = class_dir(tmp.path(), &["00020", "00041", "00052"]);
    let render = |out: &Path, fmt: &[&str]| {
        let mut c = bin();
        c.args(["render", "-q", "--backend", "cpu", "--iteration", "800"])
            .args([
                "--image-size-x",
                "24",
                "--image-size-y",
                "24",
                "--instance",
                "1",
            ])
            .args(["--weight-rows", "0-1", "--load-root"])
            .arg(&classes)
            .arg("--out")
            .arg(out)
            .args(fmt);
        c
    };
    check_family(tmp.path(), "fractaldb", &render);
    let weights = reference().join("mvfdb/weights_ins145.csv");
    let mvfdb = |out: &Path, fmt: &[&str]| {
        let mut c = bin();
        c.args([
            "mvfdb",
            "-q",
            "--backend",
            "cpu",
            "--classes",
            "3",
            "--views",
            "2",
        ])
        .args(["--img_size", "24", "--weight-rows", "0-2", "--write-models"])
        .arg("--weight-csv")
        .arg(&weights)
        .arg("--out")
        .arg(out)
        .args(fmt);
        c
    };
    check_family(tmp.path(), "mvfdb", &mvfdb);
    // The same slice twice: while this test process holds rank 0's lock, a run of it is refused.
    let busy = tmp.path().join("busy");
    std::fs::create_dir_all(&busy).unwrap();
    let held =
        std::fs::File::create(busy.join(".fractaldb-mvfdb-rank-00000-of-00001.lock")).unwrap();
    held.try_lock().unwrap();
    let e = run_err(&mut mvfdb(&busy, &[]));
    assert!(e.contains("another fractaldb run"), "{e}");
    assert!(!busy.join("images").exists() && !busy.join("params").exists());
}
