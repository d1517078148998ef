//! Crash-safe file writes: a temporary name in the same directory, then an atomic rename.

use crate::error::{Error, Result};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The suffix of every temporary file we write; a rerun removes stale ones.
pub const TMP_SUFFIX: &str = ".fdbtmp";

/// The final name of the writability probe (it never gets one: the probe is removed).
const PROBE: &str = ".fractaldb-probe";

pub fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().expect("file name").to_os_string();
    name.push(format!(".{}{TMP_SUFFIX}", std::process::id()));
    path.with_file_name(name)
}

/// Writes `data` to `path` so that `path` is either absent, its old content, or all of `data`.
pub fn write_atomic(path: &Path, data: &[u8], sync: bool) -> Result<()> {
    let tmp = tmp_path(path);
    let res = (|| {
        let mut f = fs::File::create(&tmp).map_err(|e| Error::io(&tmp, "cannot create", e))?;
        f.write_all(data)
            .map_err(|e| Error::io(&tmp, "cannot write", e))?;
        if sync {
            f.sync_all()
                .map_err(|e| Error::io(&tmp, "cannot sync", e))?;
        }
        drop(f);
        fs::rename(&tmp, path).map_err(|e| Error::io(path, "cannot rename into place", e))
    })();
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res
}

/// Creates a directory and its parents, with the error naming it.
pub fn create_dir(path: &Path) -> Result<()> {
    fs::create_dir_all(path).map_err(|e| Error::io(path, "cannot create directory", e))
}

/// Removes temporary files that an interrupted run left in `dir` (not recursive).
pub fn remove_stale_tmp(dir: &Path) {
    remove_stale_tmp_of(dir, |_| true);
}

/// Removes the temporary files in `dir` whose final name (the part before `.{pid}.fdbtmp`) passes
/// `mine`, so that concurrent ranks sharing a directory leave each other's files alone. Leftover
/// writability probes go too (whoever made them is done with them).
pub fn remove_stale_tmp_of(dir: &Path, mine: impl Fn(&str) -> bool) {
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(stem) = name.strip_suffix(TMP_SUFFIX) {
                let final_name = stem.rsplit_once('.').map(|(f, _pid)| f).unwrap_or(stem);
                if mine(final_name) || final_name == PROBE {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
    }
}

/// Checks that a directory can be written, by creating and removing a probe file.
pub fn check_writable(dir: &Path) -> Result<()> {
    let probe = dir.join(format!("{PROBE}.{}{TMP_SUFFIX}", std::process::id()));
    fs::write(&probe, b"").map_err(|e| Error::io(dir, "output directory is not writable", e))?;
    let _ = fs::remove_file(&probe);
    Ok(())
}
