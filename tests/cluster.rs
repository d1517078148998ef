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
