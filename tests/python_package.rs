//! The Python package: the wheel is built with maturin from this repository, installed into a fresh
//! virtual environment (with the test requirements' numpy, Pillow, pytest and torch of the `python3`
//! that runs it visible: CI's virtual environment), and
//! tests/python/ runs there with pytest against this build's binary and the reference data.

mod common;
use common::*;
use std::path::Path;
use std::process::Command;

#[test]
fn the_wheel_passes_its_python_tests() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let tmp = tempfile::tempdir().unwrap();
    let wheels = tmp.path().join("wheels");
    let out = Command::new("python3")
        .args(["-m", "maturin", "build", "--release", "--quiet", "-o"])
        .arg(&wheels)
        .current_dir(root)
        .output()
        .expect("python3 -m maturin (pip install maturin)");
    assert!(
        out.status.success(),
        "maturin build failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let wheel = std::fs::read_dir(&wheels)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .expect("a wheel");
    let venv = tmp.path().join("venv");
    let ok = |c: &mut Command| {
        let o = c.output().unwrap();
        assert!(
            o.status.success(),
            "{c:?} failed:\n{}\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    ok(Command::new("python3").args(["-m", "venv"]).arg(&venv));
    let py = venv.join("bin/python");
    // The test requirements (numpy, Pillow, pytest, torch) come from the `python3` that runs this
    // test: CI's virtual environment, or the system's. A venv's `--system-site-packages` would see the
    // base interpreter's packages, not an enclosing venv's, so its site directories are added here.
    let outer = ok(Command::new("python3").args([
        "-c",
        "import site; print('\\n'.join(site.getsitepackages()))",
    ]));
    let purelib = ok(Command::new(&py).args([
        "-c",
        "import sysconfig; print(sysconfig.get_paths()['purelib'])",
    ]));
    let pth: String = outer
        .lines()
        .map(|d| format!("import site; site.addsitedir({d:?})\n"))
        .collect();
    std::fs::write(Path::new(purelib.trim()).join("_outer_site.pth"), pth).unwrap();
    ok(Command::new(&py)
        .args(["-m", "pip", "install", "-q", "--no-deps", "--no-index"])
        .arg(&wheel));
    let report = ok(Command::new(&py)
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider"])
        .arg(root.join("tests/python"))
        .current_dir(tmp.path())
        .env("FRACTALDB_BIN", env!("CARGO_BIN_EXE_fractaldb"))
        .env("FRACTALDB_REFERENCE", reference()));
    assert!(
        report.contains("passed") && !report.contains("skipped"),
        "{report}"
    );
}
