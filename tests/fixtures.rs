//! The reference fixtures (tests/fixtures/reference) are what the tests compare against, so they must
//! stay the original's bytes: every file matches its digest in tests/fixtures/SHA256SUMS, no file is
//! missing or unlisted, and where `../shared/reference` sits beside the checkout, every data file of it
//! is here byte for byte (its SPEC texts and README stay there).

mod common;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Every file under `dir`, as a path relative to it with `/` separators, sorted.
fn files(dir: &Path) -> Vec<String> {
    common::files(dir)
        .iter()
        .map(|p| p.to_str().unwrap().replace('\\', "/"))
        .collect()
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `SHA256SUMS` as path -> digest (the `sha256sum` format: digest, two spaces, path).
fn listed() -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(fixtures().join("SHA256SUMS")).unwrap();
    text.lines()
        .enumerate()
        .map(|(i, l)| {
            let (digest, path) = l
                .split_once("  ")
                .unwrap_or_else(|| panic!("SHA256SUMS:{}: not `digest  path`", i + 1));
            assert_eq!(digest.len(), 64, "SHA256SUMS:{}", i + 1);
            (path.to_string(), digest.to_string())
        })
        .collect()
}

#[test]
fn every_fixture_matches_its_digest_and_none_is_unlisted() {
    let want = listed();
    let root = common::reference();
    let have = files(&root);
    assert_eq!(
        have,
        want.keys().cloned().collect::<Vec<_>>(),
        "the files under tests/fixtures/reference and those in SHA256SUMS differ"
    );
    for (path, digest) in &want {
        let got = sha256_hex(&std::fs::read(root.join(path)).unwrap());
        assert_eq!(
            &got, digest,
            "{path}: changed (line ends? .gitattributes keeps them)"
        );
    }
    // The weights' published line ends survive the checkout: CRLF in all but weights_0.1.csv.
    let w04 = std::fs::read(root.join("weights/weights_0.4.csv")).unwrap();
    assert!(w04.windows(2).any(|w| w == b"\r\n"));
    assert!(!w04.ends_with(b"\n"));
    // The listed set is the whole reference: each family's goldens are here.
    for dir in [
        "categories",
        "golden",
        "weights",
        "search",
        "rcdb/d1",
        "rcdb/d2",
        "mvfdb/m1",
    ] {
        assert!(
            want.keys().any(|p| p.starts_with(&format!("{dir}/"))),
            "{dir}"
        );
    }
}

#[test]
fn fixtures_equal_the_shared_reference_where_it_is_beside_the_checkout() {
    let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/reference");
    if !shared.join("categories").is_dir() {
        // A clone on its own: the digests above are the check.
        eprintln!("no ../shared/reference beside the checkout: compared with SHA256SUMS only");
        return;
    }
    let root = common::reference();
    let data: Vec<String> = files(&shared)
        .into_iter()
        .filter(|p| !p.ends_with(".md"))
        .collect();
    assert_eq!(
        data,
        files(&root),
        "the shared reference's data files and the fixtures differ in their file lists"
    );
    for p in &data {
        assert!(
            std::fs::read(shared.join(p)).unwrap() == std::fs::read(root.join(p)).unwrap(),
            "{p}: the fixture differs from ../shared/reference/{p}"
        );
    }
}
