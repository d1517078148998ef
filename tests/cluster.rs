//! Search split across ranks (separate processes given launcher variables) finds exactly the classes of a
//! single-process search.

mod common;
use common::*;

#[test]
fn search_across_three_ranks_equals_the_single_process_search() {
    let tmp = tempfile::tempdir().unwrap();
    let single = tmp.path().join("single");
    run_ok(
        bin()
            .args(["search", "-q", "--categories", "8", "--out"])
            .arg(&single),
    );
    let multi = tmp.path().join("multi");
    let mut kids = Vec::new();
    for r in 0..3 {
        // Open MPI's variables, inside a Slurm step that says rank 0 of 1 to everyone.
        kids.push(
            bin()
                .args(["search", "-q", "--categories", "8", "-j", "1", "--out"])
                .arg(&multi)
                .env("OMPI_COMM_WORLD_RANK", r.to_string())
                .env("OMPI_COMM_WORLD_SIZE", "3")
                .env("SLURM_PROCID", "0")
                .env("SLURM_NTASKS", "1")
                .spawn()
                .unwrap(),
        );
    }
    for mut k in kids {
        assert!(k.wait().unwrap().success());
    }
    for sub in ["csv_rate0.2_category8", "rate0.2_category8"] {
        let a = files(&single.join(sub));
        assert_eq!(a.len(), 8);
        assert_eq!(a, files(&multi.join(sub)));
        for f in &a {
            assert_eq!(
                std::fs::read(single.join(sub).join(f)).unwrap(),
                std::fs::read(multi.join(sub).join(f)).unwrap()
            );
        }
    }
    // Every rank evaluated some blocks.
    for r in 0..3 {
        let part = std::fs::read_to_string(
            multi.join(format!(".fractaldb-search/rank-{r:05}-of-00003.jsonl")),
        )
        .unwrap();
        assert!(part.lines().count() >= 2, "rank {r} did no block");
    }
    // A rerun (resume) of one rank finds the search complete and changes nothing.
    run_ok(
        bin()
            .args([
                "search",
                "-q",
                "--categories",
                "8",
                "--rank",
                "0",
                "--world-size",
                "3",
                "--out",
            ])
            .arg(&multi),
    );
    assert_eq!(
        std::fs::read(multi.join("csv_rate0.2_category8/00007.csv")).unwrap(),
        std::fs::read(reference().join("categories/00007.csv")).unwrap()
    );
}

/// The cluster scripts' own command lines (scripts/cluster/*), run with stand-in launchers that
/// start 2 processes with the variables the real ones set (srun: SLURM_*; mpirun: OMPI_COMM_WORLD_*;
/// torchrun-env.sh sets RANK/WORLD_SIZE itself): each finalizes a complete dataset whose shards are
/// a single process's, and whose SHA256SUMS `sha256sum -c` accepts.
#[test]
fn the_cluster_scripts_run_as_written_under_stand_in_launchers() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let classes = class_dir(t, &["00010", "00011"]);
    let stubs = t.join("stubs");
    std::fs::create_dir_all(&stubs).unwrap();
    let launch = |vars: &str| {
        format!(
            "n=${{NP:-2}}; pids=(); for r in $(seq 0 $((n - 1))); do \
             {vars} \"$@\" & pids+=($!); done; fail=0; \
             for p in \"${{pids[@]}}\"; do wait \"$p\" || fail=1; done; exit $fail\n"
        )
    };
    let srun = "#!/bin/bash\nwhile [ $# -gt 0 ]; do case \"$1\" in --*) shift;; *) break;; esac; done\nNP=${SLURM_NTASKS:-2}\n".to_string()
        + &launch("SLURM_PROCID=$r SLURM_NTASKS=$n SLURM_LOCALID=$r");
    let mpirun = "#!/bin/bash\nwhile [ $# -gt 0 ]; do case \"$1\" in -np) NP=$2; shift 2;; -hostfile|-x) shift 2;; *) break;; esac; done\n".to_string()
        + &launch("OMPI_COMM_WORLD_RANK=$r OMPI_COMM_WORLD_SIZE=$n OMPI_COMM_WORLD_LOCAL_RANK=$r");
    for (name, text) in [("srun", srun), ("mpirun", mpirun)] {
        let p = stubs.join(name);
        std::fs::write(&p, text).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let hosts = t.join("hosts");
    std::fs::write(&hosts, "node1\nnode2\n").unwrap();
    let small = "--image-size-x 32 --image-size-y 32 --iteration 2000 --instance 1 --samples-per-shard 20 --backend cpu";
    let one = t.join("one");
    run_ok(
        bin()
            .args(["render", "-q", "--format", "wds", "--load-root"])
            .arg(&classes)
            .arg("--out")
            .arg(&one)
            .args(small.split(' ')),
    );
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for (script, args) in [
        ("slurm.sbatch", vec![]),
        ("pbs.sh", vec![]),
        ("mpirun.sh", vec![hosts.to_str().unwrap(), "2"]),
        ("torchrun-env.sh", vec!["2"]),
    ] {
        let out = t.join(format!("out-{script}"));
        let path = format!(
            "{}:{}",
            stubs.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let o = std::process::Command::new("bash")
            .arg(root.join("scripts/cluster").join(script))
            .args(&args)
            .env("PATH", path)
            .env("BIN", env!("CARGO_BIN_EXE_fractaldb"))
            .env("CLASSES", &classes)
            .env("OUT", &out)
            .env("FRACTALDB_ARGS", small)
            .env("SLURM_NTASKS", "2")
            .env("PBS_NODEFILE", &hosts)
            .env("PBS_O_WORKDIR", t)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{script}: {err}");
        // Two ranks each rendered their part (the launcher's variables reached them).
        assert!(err.contains("rank 1 of 2"), "{script}: {err}");
        let shards = |d: &std::path::Path| -> Vec<(String, Vec<u8>)> {
            tars(d)
                .iter()
                .map(|p| {
                    (
                        p.file_name().unwrap().to_string_lossy().into_owned(),
                        std::fs::read(d.join(p)).unwrap(),
                    )
                })
                .collect()
        };
        assert!(
            shards(&out) == shards(&one),
            "{script}: other shards than one process's"
        );
        let check = std::process::Command::new("sha256sum")
            .args(["-c", "--quiet", "SHA256SUMS"])
            .current_dir(&out)
            .status()
            .unwrap();
        assert!(check.success(), "{script}");
    }
}
