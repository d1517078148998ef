//! `SHA256SUMS`: the standard checksum list (`sha256sum -c SHA256SUMS` in the dataset directory),
//! so two sites can compare what they generated with standard tools. Folder images are hashed as
//! they are written, into this run's part (`.SHA256SUMS.part-{lock name}`); `finalize` merges the
//! parts (hashing only images no part lists: those kept from a run older than the parts, or whose
//! line a crash lost) and removes them. Shards' sums come from their verified manifest.

use crate::error::{Error, Result};
use crate::fsutil;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

pub const SUMS: &str = "SHA256SUMS";
const PART: &str = ".SHA256SUMS.part-";

/// This run's part: a line per image written, appended (a resumed run adds to it).
pub struct SumsPart {
    path: PathBuf,
    file: Mutex<std::io::BufWriter<std::fs::File>>,
}

impl SumsPart {
    /// The part of the run holding lock `name` in `out`.
    pub fn open(out: &Path, name: &str) -> Result<Self> {
        let path = out.join(format!("{PART}{name}"));
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| Error::io(&path, "cannot open", e))?;
        Ok(SumsPart {
            path,
            file: Mutex::new(std::io::BufWriter::new(f)),
        })
    }

    /// Records the bytes of the image written at `rel` (relative to the dataset directory).
    pub fn add(&self, rel: &Path, bytes: &[u8]) -> Result<()> {
        let line = format!("{}  {}\n", hex(&Sha256::digest(bytes)), rel.display());
        let mut f = self.file.lock().unwrap();
        f.write_all(line.as_bytes())
            .map_err(|e| Error::io(&self.path, "cannot write", e))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn flush(&self) -> Result<()> {
        let mut f = self.file.lock().unwrap();
        f.flush()
            .map_err(|e| Error::io(&self.path, "cannot write", e))
    }
}

fn hex(b: &[u8]) -> String {
    crate::sink::wds::hex(b)
}

/// `path -> hash` of `SHA256SUMS`-style text (malformed lines are skipped: a part cut by a crash).
fn parse(text: &str) -> impl Iterator<Item = (String, String)> + '_ {
    text.lines().filter_map(|l| {
        let (h, name) = l.split_once("  ")?;
        (h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| (name.to_string(), h.to_string()))
    })
}

/// Adds `files` (relative paths, all present) to `SHA256SUMS`, keeping its other lines (class
/// subsets rendered into one folder by other runs): hashes from the runs' parts and the lines
/// already there (recorded as the images were written), the rest hashed now. Then removes the
/// parts it read: `only` this run's (a run finalizing itself while others may still write theirs),
/// or all of them (`finalize`). The caller holds the folder's short lock.
pub fn merge_folder(out: &Path, files: &[PathBuf], only: Option<&Path>) -> Result<()> {
    // What earlier merges recorded stands: a file changed since is what `sha256sum -c` must catch.
    let mut listed: BTreeMap<String, String> = match std::fs::read_to_string(out.join(SUMS)) {
        Ok(t) => parse(&t).collect(),
        Err(_) => BTreeMap::new(),
    };
    let mut known = BTreeMap::new();
    let mut parts = Vec::new();
    for e in std::fs::read_dir(out).map_err(|e| Error::io(out, "cannot list", e))? {
        let e = e.map_err(|e| Error::io(out, "cannot list", e))?;
        let mine = only.is_none_or(|p| p == e.path());
        if mine && e.file_name().to_string_lossy().starts_with(PART) {
            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
            known.extend(parse(&text));
            parts.push(e.path());
        }
    }
    for rel in files {
        let name = rel.display().to_string();
        if listed.contains_key(&name) {
            continue;
        }
        let h = match known.get(&name) {
            Some(h) => h.clone(),
            None => {
                crate::sink::wds::hash_file(&out.join(rel))
                    .map_err(|e| Error::io(out.join(rel), "cannot read", e))?
                    .0
            }
        };
        listed.insert(name, h);
    }
    let text: String = listed.iter().map(|(f, h)| format!("{h}  {f}\n")).collect();
    fsutil::write_atomic(&out.join(SUMS), text.as_bytes(), true)?;
    for p in parts {
        let _ = std::fs::remove_file(p);
    }
    Ok(())
}

/// Puts the shards `(file, sha256)` into `SHA256SUMS`, keeping its other lines (another prefix's).
pub fn merge_shards(out: &Path, shards: &[(String, String)]) -> Result<()> {
    let path = out.join(SUMS);
    let mut all: BTreeMap<String, String> = match std::fs::read_to_string(&path) {
        Ok(t) => parse(&t).collect(),
        Err(_) => BTreeMap::new(),
    };
    all.extend(shards.iter().map(|(f, h)| (f.clone(), h.clone())));
    let text: String = all.iter().map(|(f, h)| format!("{h}  {f}\n")).collect();
    fsutil::write_atomic(&path, text.as_bytes(), true)
}
