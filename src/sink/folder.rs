//! The original layout: `{save_root}/{class}/{class}_{row:02}_count_{instance}_flip{t}.png`.

use crate::encode::Encoding;
use crate::error::{Error, Result};
use crate::fsutil;
use crate::pipeline::{Sink, Target};
use crate::plan::{Plan, Sample};
use crate::render::{DrawMode, ImageFormat, PngConfig};
use std::path::{Path, PathBuf};

pub fn image_path(root: &Path, plan: &Plan, s: Sample) -> PathBuf {
    let mut p = root.join(image_stem(plan, s)).into_os_string();
    p.push(".png");
    PathBuf::from(p)
}

/// A sample's file, relative to the root, without its extension.
pub fn image_stem(plan: &Plan, s: Sample) -> PathBuf {
    let name = &plan.classes[s.class as usize].name;
    PathBuf::from(name).join(format!(
        "{name}_{:02}_count_{}_flip{}",
        s.row, s.instance, s.flip
    ))
}

/// The record of a folder dataset, `{out}/fractaldb-folder.json`: the settings that determine the
/// images and what the dataset holds, so a resume or rerun with other settings is refused and
/// `finalize` can check completeness.
pub const RECORD: &str = "fractaldb-folder.json";

#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, PartialEq)]
pub struct Record {
    pub kind: String,
    pub config: serde_json::Value,
    pub classes: Vec<String>,
    /// The weight rows and flips drawn.
    pub rows: Vec<u32>,
    pub flips: Vec<u8>,
    pub instances: u32,
    /// PNG geometry every image must have (checked on resume and by finalize).
    pub width: u32,
    pub height: u32,
    pub gray: bool,
    /// Per class (as `classes`), the SHA-256 of its maps as the CSV the run read: what a later run
    /// needs to take a disjoint subset of classes into the same folder (absent in older records).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub class_sha256: Vec<String>,
}

impl Record {
    pub fn total(&self) -> u64 {
        self.classes.len() as u64
            * self.rows.len() as u64
            * self.instances as u64
            * self.flips.len() as u64
    }
}

pub fn read_record(out: &Path) -> Result<Option<Record>> {
    let path = out.join(RECORD);
    match std::fs::read_to_string(&path) {
        Ok(t) => serde_json::from_str(&t).map(Some).map_err(|e| {
            Error::input(
                &path,
                Some(e.line()),
                format!("not a fractaldb folder record: {e}"),
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(&path, "cannot read", e)),
    }
}

/// Refuses a folder dataset made with other settings (naming them); records ours when there is none.
/// Runs before anything else is written. Only the `writer` (rank 0) writes the record and clears a
/// killed run's temporary of it, so concurrent ranks never race on the file. A run with the same
/// settings and other classes (the originals' way of splitting a folder by hand: class subsets,
/// one after another or at once) adds its classes to the record and `classes.txt`, under the
/// folder's short lock (both are only ever written under it); a class already there with other
/// maps is refused. Returns the record's classes after it.
pub fn check_or_write_record(out: &Path, rec: &Record, writer: bool) -> Result<Vec<String>> {
    fsutil::create_dir(out)?;
    let _lock = short_lock(out);
    // `classes.txt` is written under the same lock as the record: a run that wrote it after the
    // lock (another class subset merging meanwhile) put its own classes over the merged list.
    if let Some(old) = read_record(out)? {
        if old.config == rec.config && old.classes == rec.classes {
            crate::sink::write_names(out, &old.classes, writer)?;
            return Ok(old.classes);
        }
        let merged = with_classes_of(&old, rec).map_err(|why| {
            Error::input(
                out.join(RECORD),
                None,
                format!(
                    "this folder dataset was made with other settings ({why}); nothing was written: \
                     use the same flags and classes (or classes not yet here), or another --out"
                ),
            )
        })?;
        if merged != old {
            write_record(out, &merged)?;
            let names: String = merged.classes.iter().map(|c| format!("{c}\n")).collect();
            fsutil::write_atomic(&out.join("classes.txt"), names.as_bytes(), true)?;
        } else {
            crate::sink::write_names(out, &merged.classes, writer)?;
        }
        return Ok(merged.classes);
    }
    if writer {
        write_record(out, rec)?;
    }
    crate::sink::write_names(out, &rec.classes, writer)?;
    Ok(rec.classes.clone())
}

fn write_record(out: &Path, rec: &Record) -> Result<()> {
    let mut text = serde_json::to_string_pretty(rec).map_err(|e| Error::Other(e.to_string()))?;
    text.push('\n');
    fsutil::remove_stale_tmp_of(out, |n| n == RECORD);
    fsutil::write_atomic(&out.join(RECORD), text.as_bytes(), true)
}

/// `old` with `new`'s classes added, when everything but the classes is the same and every class
/// in both has the same maps (by the SHA-256 of its CSV); else what differs.
fn with_classes_of(old: &Record, new: &Record) -> std::result::Result<Record, String> {
    let strip = |c: &serde_json::Value| {
        let mut c = c.clone();
        if let Some(m) = c.as_object_mut() {
            m.remove("classes");
            m.remove("classes_sha256");
        }
        c
    };
    let (a, b) = (strip(&old.config), strip(&new.config));
    if a != b {
        return Err(crate::sink::wds::config_difference(&a, &b));
    }
    let same_shape = (
        &old.rows,
        &old.flips,
        old.instances,
        old.width,
        old.height,
        old.gray,
    ) == (
        &new.rows,
        &new.flips,
        new.instances,
        new.width,
        new.height,
        new.gray,
    );
    if !same_shape || old.class_sha256.is_empty() || new.class_sha256.is_empty() {
        return Err("the classes".into());
    }
    let mut by_name: std::collections::BTreeMap<&String, &String> =
        old.classes.iter().zip(&old.class_sha256).collect();
    for (c, h) in new.classes.iter().zip(&new.class_sha256) {
        match by_name.get(c) {
            Some(had) if *had != h => return Err(format!("class {c} with other maps")),
            _ => {
                by_name.insert(c, h);
            }
        }
    }
    let mut merged = old.clone();
    merged.classes = by_name.keys().map(|c| c.to_string()).collect();
    merged.class_sha256 = by_name.values().map(|h| h.to_string()).collect();
    merged.config["classes"] = merged.classes.len().into();
    Ok(merged)
}

/// The settings record `path` of a folder dataset of another family (RCDB's `rcdb.json`,
/// MV-FractalDB's `mvfdb.json`): written by the `writer` rank when absent; when present it must equal
/// `rec`, else the run is refused, naming the settings that differ, before anything is written.
/// Runs started together (ranks, RCDB's `--thread_num` slices) may each write a folder's shared
/// files (its settings record, `classes.txt`): a short lock around reading and writing one (where
/// the filesystem has no flock, none). Held until the returned file is dropped.
pub fn short_lock(dir: &Path) -> Option<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(".fractaldb-record.lock"))
        .ok()
        .filter(|f| f.lock().is_ok())
}

pub fn check_or_write_settings(
    path: &Path,
    what: &str,
    out_flag: &str,
    rec: &serde_json::Value,
    writer: bool,
) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let _record_lock = short_lock(dir);
    match std::fs::read_to_string(path) {
        Ok(t) => {
            let old: serde_json::Value = serde_json::from_str(&t).map_err(|e| {
                Error::input(path, Some(e.line()), format!("not a {what} record: {e}"))
            })?;
            if &old != rec {
                return Err(Error::input(
                    path,
                    None,
                    format!(
                        "this {what} was made with other settings ({}); nothing was written: use the \
                         same flags, or another {out_flag}",
                        crate::sink::wds::config_difference(&old, rec)
                    ),
                ));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if writer {
                let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
                fsutil::remove_stale_tmp_of(dir, |n| n == name);
                let text = serde_json::to_string_pretty(rec).unwrap() + "\n";
                fsutil::write_atomic(path, text.as_bytes(), true)?;
            }
            Ok(())
        }
        Err(e) => Err(Error::io(path, "cannot read", e)),
    }
}

/// Every image a FractalDB folder record promises (relative paths, in order), with its encoding
/// and the format an image must have.
pub fn record_images(out: &Path, rec: &Record) -> Result<(Encoding, ImageFormat, Vec<PathBuf>)> {
    let encoding = Encoding::recorded(&rec.config).ok_or_else(|| {
        Error::input(
            out.join(RECORD),
            None,
            "records an encoding this fractaldb does not know",
        )
    })?;
    let mode = rec.config["draw_type"]
        .as_str()
        .and_then(|m| m.parse().ok());
    let image = ImageFormat {
        width: rec.width,
        height: rec.height,
        palette: crate::render::palette(mode.unwrap_or(DrawMode::PatchGray)),
    };
    let mut paths = Vec::with_capacity(rec.total() as usize);
    for name in &rec.classes {
        for &row in &rec.rows {
            for instance in 0..rec.instances {
                for &flip in &rec.flips {
                    let mut rel = PathBuf::from(name)
                        .join(format!("{name}_{row:02}_count_{instance}_flip{flip}"))
                        .into_os_string();
                    rel.push(".");
                    rel.push(encoding.extension());
                    paths.push(PathBuf::from(rel));
                }
            }
        }
    }
    Ok((encoding, image, paths))
}

/// `finalize` for a folder dataset: every image of the record present and whole. Returns the
/// missing or broken ones (relative paths), in order.
pub fn missing_images(out: &Path, rec: &Record) -> Result<Vec<PathBuf>> {
    let (encoding, image, paths) = record_images(out, rec)?;
    let png = PngConfig {
        level: 0,
        gray: rec.gray,
    };
    Ok(paths
        .into_iter()
        .filter(|rel| !encoding.is_whole(&out.join(rel), &image, png))
        .collect())
}

/// A family's image files: each image written whole (atomically) where `path` puts its sample.
/// A family's image files: each image written whole (atomically) where `rel` puts its sample
/// under `out`, and its hash added to this run's `SHA256SUMS` part once it is there.
pub struct FileSink<'a, F: Fn(Sample) -> PathBuf + Sync> {
    pub writers: usize,
    pub out: &'a Path,
    pub rel: F,
    pub sums: &'a super::sums::SumsPart,
}

impl<F: Fn(Sample) -> PathBuf + Sync> Sink for FileSink<'_, F> {
    fn writers(&self) -> usize {
        self.writers.max(1)
    }
    fn route(&self, t: &Target) -> usize {
        (t.pos % self.writers.max(1) as u64) as usize
    }
    fn accept(&self, _writer: usize, t: Target, png: Vec<u8>) -> Result<()> {
        let rel = (self.rel)(t.sample);
        fsutil::write_atomic(&self.out.join(&rel), &png, false)?;
        self.sums.add(&rel, &png)
    }
}
