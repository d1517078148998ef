//! `fractaldb info DIR` (what a dataset directory holds: family, settings, counts, classes, complete
//! or what is missing) and `fractaldb verify DIR` (every shard re-hashed against its manifest,
//! every image decoded, `SHA256SUMS` checked): for the shards and folders of every family. Both
//! only read.

use crate::encode::Encoding;
use crate::error::{Error, Result};
use crate::sink::{folder, wds};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

#[derive(clap::Args, Debug)]
pub struct InfoArgs {
    /// A dataset directory (the --out / --save_root of a run)
    pub dir: PathBuf,
    /// Print JSON (one object: the directory and its datasets)
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args, Debug)]
pub struct VerifyArgs {
    /// A dataset directory (the --out / --save_root of a run)
    pub dir: PathBuf,
    /// Threads (default: all cores)
    #[arg(long, short = 'j')]
    pub threads: Option<usize>,
}

/// A dataset found in a directory.
enum Found {
    /// Shards of a prefix (manifest parts or a finalized manifest).
    Shards(String),
    /// A FractalDB folder dataset (`fractaldb-folder.json`).
    Fractal(folder::Record),
    /// An RCDB or MV-FractalDB folder dataset (`rcdb.json`, `mvfdb.json`): its family and settings.
    Family(&'static str, Value),
}

/// The datasets in `dir`; an error naming the directory when there is none.
fn find(dir: &Path) -> Result<Vec<Found>> {
    let names: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, "cannot list", e))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    let mut prefixes: Vec<String> = names
        .iter()
        .filter_map(|n| {
            let p = n.split_once("-manifest.part-").map(|p| p.0);
            p.or_else(|| n.strip_suffix("-manifest.json"))
        })
        .map(String::from)
        .collect();
    prefixes.sort();
    prefixes.dedup();
    let mut found: Vec<Found> = prefixes.into_iter().map(Found::Shards).collect();
    if let Some(rec) = folder::read_record(dir)? {
        found.push(Found::Fractal(rec));
    }
    for family in ["rcdb", "mvfdb"] {
        let path = dir.join(format!("{family}.json"));
        if let Ok(text) = std::fs::read_to_string(&path) {
            let v = serde_json::from_str(&text)
                .map_err(|e| Error::input(&path, Some(e.line()), format!("not a record: {e}")))?;
            found.push(Found::Family(family, v));
        }
    }
    if found.is_empty() {
        return Err(Error::input(
            dir,
            None,
            "no fractaldb dataset here (no shard manifest, no folder record): give the --out or \
             --save_root of a run",
        ));
    }
    Ok(found)
}

/// The family of a shard manifest's settings (`rcdb-wds-v1` -> `rcdb`).
fn family_of(config: &Value) -> String {
    let tag = config["kind"].as_str().or(config["format"].as_str());
    tag.and_then(|t| t.split('-').next())
        .unwrap_or("fractaldb")
        .to_string()
}

/// A shard dataset's manifests: the finalized one if any, and the rank parts.
fn manifests(dir: &Path, prefix: &str) -> Result<(Option<wds::Manifest>, Vec<wds::Manifest>)> {
    let merged = wds::manifest_path(dir, prefix);
    let merged = merged
        .exists()
        .then(|| wds::read_manifest(&merged))
        .transpose()?;
    let parts = wds::list_parts(dir, prefix)?
        .iter()
        .map(|p| wds::read_manifest(p))
        .collect::<Result<Vec<_>>>()?;
    Ok((merged, parts))
}

/// Every shard a manifest records, once (the finalized manifest's, else the parts').
fn recorded(merged: &Option<wds::Manifest>, parts: &[wds::Manifest]) -> Vec<wds::ShardEntry> {
    let mut all: Vec<wds::ShardEntry> = match merged {
        Some(m) => m.shards.clone(),
        None => parts.iter().flat_map(|p| p.shards.clone()).collect(),
    };
    all.sort_by_key(|e| e.shard);
    all.dedup_by_key(|e| e.shard);
    all
}

/// Up to 20 items and how many more.
fn some<T: serde::Serialize>(items: &[T]) -> Value {
    json!({"count": items.len(), "first": &items[..items.len().min(20)]})
}

fn shard_info(dir: &Path, prefix: &str) -> Result<Value> {
    let (merged, parts) = manifests(dir, prefix)?;
    let any = merged
        .as_ref()
        .or(parts.first())
        .expect("found by a manifest");
    let present: Vec<u64> = recorded(&merged, &parts)
        .iter()
        .filter(|e| std::fs::metadata(dir.join(&e.url)).is_ok_and(|m| m.len() == e.filesize))
        .map(|e| e.shard)
        .collect();
    let missing: Vec<String> = (0..any.shard_count)
        .filter(|s| present.binary_search(s).is_err())
        .map(|s| wds::shard_name(prefix, s))
        .collect();
    let mut worlds: Vec<u64> = parts.iter().map(|p| p.world_size).collect();
    worlds.dedup();
    let ranks: Vec<Value> = worlds
        .iter()
        .map(|&w| {
            let have: Vec<u64> = parts
                .iter()
                .filter(|p| p.world_size == w)
                .map(|p| p.rank)
                .collect();
            let lacking: Vec<u64> = (0..w).filter(|r| !have.contains(r)).collect();
            json!({"world_size": w, "parts": have, "no_part": lacking})
        })
        .collect();
    Ok(json!({
        "kind": "shards", "prefix": prefix, "family": family_of(&any.config),
        "settings": any.config, "classes": any.classes.len(), "class_names": some(&any.classes),
        "samples": any.total_samples, "shards": any.shard_count, "shards_present": present.len(),
        "missing_shards": some(&missing), "ranks": ranks,
        "finalized": merged.is_some(), "complete": missing.is_empty(),
    }))
}

/// The images a folder dataset promises (relative paths), when its record says them.
fn promised(dir: &Path, found: &Found) -> Result<Option<(Encoding, Vec<PathBuf>)>> {
    Ok(match found {
        Found::Fractal(rec) => {
            let (enc, _, paths) = folder::record_images(dir, rec)?;
            Some((enc, paths))
        }
        Found::Family("rcdb", v) => {
            let n = |k: &str| v[k].as_u64().unwrap_or(0) as u32;
            let (c, t) = (n("numof_classes"), n("numof_thread").max(1));
            let enc = Encoding::recorded(v).unwrap_or(Encoding::Png);
            let paths = (0..c / t * t)
                .flat_map(|class| (0..n("numof_instances")).map(move |i| (class, i)))
                .map(|(class, i)| {
                    crate::dataset::with_extension(crate::rcdb::run::image_stem(class, i), enc)
                })
                .collect();
            Some((enc, paths))
        }
        // MV-FractalDB's count follows from the model pass (which models are valid): not read here.
        _ => None,
    })
}

/// The image files under `dir`'s class folders (`images/` or `image/`: RCDB, MV-FractalDB).
fn files_under(dir: &Path, sub: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(classes) = std::fs::read_dir(dir.join(sub)) else {
        return out;
    };
    for c in classes.filter_map(|e| e.ok()) {
        if let Ok(files) = std::fs::read_dir(c.path()) {
            for f in files.filter_map(|e| e.ok()) {
                let name = f.file_name().to_string_lossy().into_owned();
                if name.ends_with(".png") || name.ends_with(".npy") {
                    out.push(Path::new(sub).join(c.file_name()).join(name));
                }
            }
        }
    }
    out.sort();
    out
}

fn folder_info(dir: &Path, found: &Found) -> Result<Value> {
    let (family, settings, classes) = match found {
        Found::Fractal(rec) => ("fractaldb", rec.config.clone(), rec.classes.clone()),
        Found::Family(f, v) => {
            let names = std::fs::read_to_string(dir.join("classes.txt")).unwrap_or_default();
            (*f, v.clone(), names.lines().map(String::from).collect())
        }
        Found::Shards(_) => unreachable!(),
    };
    let mut v = json!({
        "kind": "folder", "family": family, "settings": settings,
        "classes": classes.len(), "class_names": some(&classes),
    });
    match promised(dir, found)? {
        Some((_, paths)) => {
            let missing: Vec<String> = paths
                .iter()
                .filter(|p| !dir.join(p).is_file())
                .map(|p| p.display().to_string())
                .collect();
            v["images"] = json!(paths.len());
            v["images_present"] = json!(paths.len() - missing.len());
            v["missing_images"] = some(&missing);
            v["complete"] = json!(missing.is_empty());
        }
        None => {
            v["images_present"] = json!(files_under(dir, "images").len());
            v["complete"] = Value::Null;
            v["note"] = json!(
                "the image count follows from the model pass: `mvfdb --resume` with the same flags completes it"
            );
        }
    }
    Ok(v)
}

/// What `dir` holds, as JSON.
pub fn info(dir: &Path) -> Result<Value> {
    let mut all = Vec::new();
    for f in find(dir)? {
        all.push(match &f {
            Found::Shards(prefix) => shard_info(dir, prefix)?,
            _ => folder_info(dir, &f)?,
        });
    }
    Ok(json!({"dir": dir, "datasets": all}))
}

/// One dataset of `info`, as text.
fn info_text(d: &Value) -> String {
    let mut t = format!(
        "{} {} ({})\n",
        d["family"].as_str().unwrap_or("?"),
        d["kind"].as_str().unwrap_or("?"),
        d["prefix"]
            .as_str()
            .map(|p| format!("prefix {p}"))
            .unwrap_or("folder layout".into())
    );
    let names = d["class_names"]["first"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let names: Vec<&str> = names.iter().filter_map(|n| n.as_str()).take(5).collect();
    t += &format!(
        "  classes    {} ({}{})\n",
        d["classes"],
        names.join(", "),
        if d["classes"].as_u64() > Some(5) {
            ", ..."
        } else {
            ""
        }
    );
    if d["kind"] == "shards" {
        t += &format!(
            "  samples    {}\n  shards     {} of {} present\n",
            d["samples"], d["shards_present"], d["shards"]
        );
        for r in d["ranks"].as_array().into_iter().flatten() {
            t += &format!(
                "  ranks      parts of ranks {} of world {}; no part yet: {}\n",
                r["parts"], r["world_size"], r["no_part"]
            );
        }
        t += &format!("  finalized  {}\n", d["finalized"]);
    } else {
        t += &format!(
            "  images     {} present{}\n",
            d["images_present"],
            d["images"]
                .as_u64()
                .map(|n| format!(" of {n}"))
                .unwrap_or_default()
        );
    }
    let missing = d["missing_shards"]
        .as_object()
        .or(d["missing_images"].as_object());
    t += &match (d["complete"].as_bool(), missing) {
        (Some(true), _) => "  complete   yes\n".to_string(),
        (Some(false), Some(m)) => format!(
            "  complete   no: {} missing, first {}\n",
            m["count"], m["first"]
        ),
        _ => format!(
            "  complete   unknown: {}\n",
            d["note"].as_str().unwrap_or("")
        ),
    };
    // Long lists (the weights) shortened: `--json` has them whole.
    let settings: Vec<String> = d["settings"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| match v.as_array() {
            Some(a) if a.len() > 4 => format!("{k}=[{} items]", a.len()),
            _ => format!("{k}={v}"),
        })
        .collect();
    t + &format!("  settings   {}\n", settings.join(" "))
}

pub fn run_info(a: &InfoArgs) -> Result<()> {
    let v = info(&a.dir)?;
    let text = if a.json {
        serde_json::to_string_pretty(&v).unwrap_or_default() + "\n"
    } else {
        let mut t = format!("{}\n", a.dir.display());
        for d in v["datasets"].as_array().into_iter().flatten() {
            t += &info_text(d);
        }
        t
    };
    crate::fsutil::write_stdout(&text)
}

/// Runs `check` over `items` on `threads` threads; the failures, in item order.
fn check_all<T: Sync>(
    items: &[T],
    threads: usize,
    check: impl Fn(&T) -> std::result::Result<(), String> + Sync,
) -> Vec<(usize, String)> {
    let next = AtomicUsize::new(0);
    let bad = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..threads.clamp(1, items.len().max(1)) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(item) = items.get(i) else {
                        return;
                    };
                    if crate::check_interrupt().is_err() {
                        return;
                    }
                    if let Err(why) = check(item) {
                        bad.lock().unwrap().push((i, why));
                    }
                }
            });
        }
    });
    let mut bad = bad.into_inner().unwrap();
    bad.sort();
    bad
}

/// A PNG decoded whole by the `png` crate, chunk CRCs and the zlib checksum included.
fn decodes(path: &Path) -> std::result::Result<(), String> {
    let f = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut dec = png::Decoder::new(std::io::BufReader::new(f));
    dec.ignore_checksums(false);
    let mut r = dec.read_info().map_err(|e| e.to_string())?;
    let mut buf = vec![0; r.output_buffer_size().ok_or("image too large")?];
    r.next_frame(&mut buf).map_err(|e| e.to_string())?;
    r.finish().map_err(|e| e.to_string())
}

/// The sha256 and size of a file, or why not.
fn hashed(path: &Path) -> std::result::Result<(String, u64), String> {
    wds::hash_file(path).map_err(|e| e.to_string())
}

/// `verify`'s problems with one dataset of `dir`, as lines.
fn verify_one(dir: &Path, f: &Found, threads: usize) -> Result<(usize, Vec<String>)> {
    if let Found::Shards(prefix) = f {
        let (merged, parts) = manifests(dir, prefix)?;
        let count = merged
            .as_ref()
            .or(parts.first())
            .map_or(0, |m| m.shard_count);
        let entries = recorded(&merged, &parts);
        let bad = check_all(&entries, threads, |e| match hashed(&dir.join(&e.url)) {
            Ok((h, n)) if h == e.sha256 && n == e.filesize => Ok(()),
            Ok(_) => Err(format!("{}: other bytes than its manifest records", e.url)),
            Err(why) => Err(format!("{}: {why}", e.url)),
        });
        let mut lines: Vec<String> = bad.into_iter().map(|b| b.1).collect();
        // `entries` is sorted by shard: a binary search, not a scan per shard.
        let have: Vec<u64> = entries.iter().map(|e| e.shard).collect();
        for s in (0..count).filter(|s| have.binary_search(s).is_err()) {
            lines.push(format!(
                "{}: not made yet (no manifest records it)",
                wds::shard_name(prefix, s)
            ));
        }
        return Ok((count as usize, lines));
    }
    let (paths, enc) = match promised(dir, f)? {
        Some((enc, paths)) => (paths, enc),
        None => (files_under(dir, "images"), Encoding::Png),
    };
    let bad = check_all(&paths, threads, |rel| {
        let p = dir.join(rel);
        let r = match enc {
            Encoding::Png => decodes(&p),
            Encoding::Npy => std::fs::metadata(&p).map(|_| ()).map_err(|e| e.to_string()),
        };
        r.map_err(|why| format!("{}: {why}", rel.display()))
    });
    Ok((paths.len(), bad.into_iter().map(|b| b.1).collect()))
}

/// Checks `SHA256SUMS` in `dir` when there is one, as `sha256sum -c` would.
fn verify_sums(dir: &Path, threads: usize) -> Result<Option<(usize, Vec<String>)>> {
    let path = dir.join("SHA256SUMS");
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(None);
    };
    let mut lines = Vec::new();
    for (n, l) in text.lines().enumerate() {
        let (h, name) = l.split_once("  ").ok_or_else(|| {
            Error::input(
                &path,
                Some(n + 1),
                "not a sha256sum line (HASH, two spaces, FILE)",
            )
        })?;
        lines.push((h.to_string(), name.to_string()));
    }
    let bad = check_all(&lines, threads, |(h, name)| match hashed(&dir.join(name)) {
        Ok((got, _)) if &got == h => Ok(()),
        Ok(_) => Err(format!("{name}: its SHA-256 differs from SHA256SUMS")),
        Err(why) => Err(format!("{name}: {why}")),
    });
    Ok(Some((lines.len(), bad.into_iter().map(|b| b.1).collect())))
}

/// Verifies every dataset of `dir`; an error listing the problems when there are any.
pub fn run_verify(a: &VerifyArgs) -> Result<()> {
    let threads = a
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let mut problems = Vec::new();
    let mut checked = 0;
    for f in find(&a.dir)? {
        let (n, bad) = verify_one(&a.dir, &f, threads)?;
        checked += n;
        problems.extend(bad);
    }
    if let Some((n, bad)) = verify_sums(&a.dir, threads)? {
        crate::say!("SHA256SUMS: {n} files checked");
        problems.extend(bad);
    }
    crate::check_interrupt()?;
    if problems.is_empty() {
        crate::say!(
            "verified: {checked} files in {}, all whole",
            a.dir.display()
        );
        return Ok(());
    }
    let shown: Vec<&str> = problems.iter().take(20).map(|s| s.as_str()).collect();
    Err(Error::Other(format!(
        "{}: {} problem(s) in {checked} files:\n  {}{}",
        a.dir.display(),
        problems.len(),
        shown.join("\n  "),
        if problems.len() > 20 { "\n  ..." } else { "" }
    )))
}

/// `finalize` of the folder datasets in `dir`: every promised image present and whole (a
/// structural check; `verify` decodes), then `SHA256SUMS` merged from the runs' parts.
pub fn finalize_folders(dir: &Path) -> Result<()> {
    let _lock = folder::short_lock(dir);
    for f in find(dir)? {
        let (family, classes) = match &f {
            Found::Shards(_) => continue,
            Found::Fractal(rec) => ("FractalDB", rec.classes.len()),
            Found::Family(name, _) => (*name, 0),
        };
        let Some((enc, paths)) = promised(dir, &f)? else {
            let files = files_under(dir, "images");
            crate::sink::sums::merge_folder(dir, &files, None)?;
            crate::say!(
                "{family}: SHA256SUMS of the {} images present (their count follows from the model \
                 pass: completeness is not checked here; `mvfdb --resume` completes a run)",
                files.len()
            );
            continue;
        };
        let missing = match &f {
            Found::Fractal(rec) => folder::missing_images(dir, rec)?,
            _ => paths
                .iter()
                .filter(|p| !whole_rcdb(dir, p, enc, &f))
                .cloned()
                .collect(),
        };
        if !missing.is_empty() {
            let shown: Vec<String> = missing
                .iter()
                .take(20)
                .map(|p| p.display().to_string())
                .collect();
            return Err(Error::Other(format!(
                "{}: {} of {} images missing or broken (rerun with --resume on every rank): {}{}",
                dir.display(),
                missing.len(),
                paths.len(),
                shown.join(" "),
                if missing.len() > 20 { " ..." } else { "" }
            )));
        }
        crate::sink::sums::merge_folder(dir, &paths, None)?;
        crate::say!(
            "complete: {} images{} in {} ({family}; SHA256SUMS written)",
            paths.len(),
            if classes > 0 {
                format!(" of {classes} classes")
            } else {
                String::new()
            },
            dir.display()
        );
    }
    Ok(())
}

/// An RCDB image present and structurally whole (RGB PNGs of the recorded size).
fn whole_rcdb(dir: &Path, rel: &Path, enc: Encoding, f: &Found) -> bool {
    let Found::Family(_, v) = f else {
        return false;
    };
    let size = v["image_size"].as_u64().unwrap_or(0) as u32;
    let image = crate::render::ImageFormat::gray(size, size);
    let png = crate::render::PngConfig {
        level: 0,
        gray: false,
    };
    enc.is_whole(&dir.join(rel), &image, png)
}
