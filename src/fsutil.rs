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

/// Runs `f`, which may create the output directory `dir`; when `f` fails and `dir` did not exist
/// before, `dir` is removed if it is still empty, so a refused or failed run leaves no empty folder
/// behind (`remove_dir` removes nothing else: a folder with any file in it stays).
pub fn tidy_on_error<T>(dir: &Path, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let existed = fs::symlink_metadata(dir).is_ok();
    let r = f();
    if r.is_err() && !existed {
        let _ = fs::remove_dir(dir);
    }
    r
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

/// An advisory lock on one rank's part of an output directory: a second run into the same place
/// fails at once instead of deleting the first one's temporary files. `flock` on
/// `.fractaldb-{name}.lock`; where the filesystem has no `flock` (Lustre without the flock mount
/// option, some NFS) or `FRACTALDB_LOCK=file`, a lock file created exclusively, naming host and pid.
pub struct OutputLock {
    path: PathBuf,
    _file: Option<fs::File>,
}

fn hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown-host".into())
}

impl OutputLock {
    pub fn acquire(dir: &Path, name: &str) -> Result<OutputLock> {
        let path = dir.join(format!(".fractaldb-{name}.lock"));
        let busy = |who: &str| {
            Error::input(
                &path,
                None,
                format!(
                    "another fractaldb run ({who}) is writing this part of the output; wait for it, or \
                     use another --out. If no run is active (a crashed node), remove this file"
                ),
            )
        };
        if std::env::var("FRACTALDB_LOCK").as_deref() != Ok("file") {
            // The lock may have been unlinked by its holder between our open and our flock (we
            // would then hold a deleted file while a third run creates and locks a new one): the
            // lock counts only if the path still names the file we locked.
            for attempt in 0..100 {
                if attempt == 99 {
                    return Err(busy("the lock file is being replaced again and again"));
                }
                let f = open_lock_file(&path)?;
                match f.try_lock() {
                    Ok(()) if !same_file(&f, &path) => continue,
                    Ok(()) => {
                        // Truncated only now that it is held (and known to be a regular file).
                        let me = format!("{} pid {}\n", hostname(), std::process::id());
                        let _ = f.set_len(0);
                        let _ = (&f).write_all(me.as_bytes());
                        return Ok(OutputLock {
                            path,
                            _file: Some(f),
                        });
                    }
                    Err(fs::TryLockError::WouldBlock) => {
                        let who = fs::read_to_string(&path).unwrap_or_default();
                        return Err(busy(who.trim()));
                    }
                    // No flock here: the exclusive-create fallback below.
                    Err(fs::TryLockError::Error(_)) => break,
                }
            }
        }
        let owner = path.with_extension("lock.owner");
        let me = format!("{} pid {}", hostname(), std::process::id());
        for _ in 0..2 {
            match fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&owner)
            {
                Ok(mut f) => {
                    let _ = f.write_all(me.as_bytes());
                    return Ok(OutputLock {
                        path: owner,
                        _file: None,
                    });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let who = fs::read_to_string(&owner).unwrap_or_default();
                    // A holder on this host whose process is gone left it: take it over.
                    let stale = who
                        .strip_prefix(&format!("{} pid ", hostname()))
                        .and_then(|p| p.trim().parse::<u32>().ok())
                        .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists());
                    if stale {
                        let _ = fs::remove_file(&owner);
                        continue;
                    }
                    return Err(Error::input(
                        &owner,
                        None,
                        format!(
                            "another fractaldb run ({}) holds this part of the output (lock file; this \
                             filesystem has no flock); wait for it, or use another --out. If no run is \
                             active (a crashed node), remove this file",
                            who.trim()
                        ),
                    ));
                }
                Err(e) => return Err(Error::io(&owner, "cannot create lock file", e)),
            }
        }
        Err(Error::io(
            &owner,
            "cannot create lock file",
            std::io::Error::other("it keeps coming back"),
        ))
    }
}

/// Opens (creating) a lock file without following a symbolic link, and refuses anything but a
/// regular file: a planted link or FIFO must not make a run write (or block) elsewhere.
fn open_lock_file(path: &Path) -> Result<fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => Error::input(
                path,
                None,
                "is a symbolic link where a lock file belongs: nothing was written; remove it",
            ),
            _ => Error::io(path, "cannot create lock file", e),
        })?;
    let regular = f.metadata().is_ok_and(|m| m.file_type().is_file());
    if !regular {
        return Err(Error::input(
            path,
            None,
            "is not a regular file where a lock file belongs: nothing was written; remove it",
        ));
    }
    Ok(f)
}

/// Whether `path` (not followed) still names the open file `f`.
fn same_file(f: &fs::File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (f.metadata(), fs::symlink_metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

impl Drop for OutputLock {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// Writes to stdout, a write error (a closed pipe, a full disk) being an error, not a panic.
pub fn write_stdout(text: &str) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|_| out.flush())
        .map_err(|e| Error::io("<stdout>", "cannot write", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_run_removes_only_the_empty_folder_it_made() {
        let tmp = tempfile::tempdir().unwrap();
        let fail = |d: &Path, file: bool| {
            tidy_on_error(d, || -> Result<()> {
                create_dir(d)?;
                if file {
                    fs::write(d.join("made.txt"), "x").unwrap();
                }
                Err(Error::Other("failed".into()))
            })
        };
        let fresh = tmp.path().join("fresh");
        assert!(fail(&fresh, false).is_err());
        assert!(!fresh.exists(), "the empty folder it made is gone");
        let written = tmp.path().join("written");
        assert!(fail(&written, true).is_err());
        assert!(
            written.join("made.txt").exists(),
            "a folder with files stays"
        );
        let users = tmp.path().join("users");
        fs::create_dir(&users).unwrap();
        assert!(fail(&users, false).is_err());
        assert!(users.exists(), "a folder that was there stays");
        let ok = tmp.path().join("ok");
        tidy_on_error(&ok, || create_dir(&ok)).unwrap();
        assert!(ok.exists());
    }
}
