//! WebDataset shards written directly: `{prefix}-{%06d}.tar`, each sample `KEY.cls`, `KEY.json`,
//! `KEY.png` (contiguous, sorted by extension), ustar headers, fixed mtime, mode 0444, uid/gid 0.
//!
//! A shard is written under a temporary name, fsynced, renamed, and only then recorded in this rank's
//! manifest part, so a crash never leaves a corrupt shard under a final name and `--resume` knows which
//! shards are complete.

use crate::error::{Error, Result};
use crate::fsutil;
use crate::pipeline::{Sink, Target};
use crate::plan::{Plan, Sample};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

pub const MTIME: u64 = 0;

pub fn shard_name(prefix: &str, shard: u64) -> String {
    format!("{prefix}-{shard:06}.tar")
}

/// Width of the zero-padded sample keys: at least 9 digits, more for datasets of 10^9+ samples.
pub fn key_width(total: u64) -> usize {
    total.saturating_sub(1).to_string().len().max(9)
}

/// One finished shard, as recorded in a manifest.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ShardEntry {
    pub shard: u64,
    pub url: String,
    pub nsamples: u64,
    pub filesize: u64,
    pub sha256: String,
}

/// A rank's manifest part (and, merged, the dataset manifest).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub kind: String,
    /// Everything that determines the shard bytes; a resume must match it exactly.
    pub config: serde_json::Value,
    pub total_samples: u64,
    pub samples_per_shard: u64,
    pub shard_count: u64,
    pub rank: u64,
    pub world_size: u64,
    pub shards: Vec<ShardEntry>,
}

pub fn part_path(out: &Path, prefix: &str, rank: u64, world: u64) -> PathBuf {
    out.join(format!(
        "{prefix}-manifest.part-{rank:05}-of-{world:05}.json"
    ))
}
pub fn manifest_path(out: &Path, prefix: &str) -> PathBuf {
    out.join(format!("{prefix}-manifest.json"))
}
pub fn wids_path(out: &Path, prefix: &str) -> PathBuf {
    out.join(format!("{prefix}-wids.json"))
}

pub fn write_json<T: Serialize>(path: &Path, v: &T) -> Result<()> {
    let mut text = serde_json::to_string_pretty(v).map_err(|e| Error::Other(e.to_string()))?;
    text.push('\n');
    fsutil::write_atomic(path, text.as_bytes(), true)
}

pub fn read_manifest(path: &Path) -> Result<Manifest> {
    let text =
        std::fs::read_to_string(path).map_err(|e| Error::io(path, "cannot read manifest", e))?;
    serde_json::from_str(&text).map_err(|e| {
        Error::input(
            path,
            Some(e.line()),
            format!("not a fractaldb manifest: {e}"),
        )
    })
}

/// sha256 (hex) and size of a file.
pub fn hash_file(path: &Path) -> std::io::Result<(String, u64)> {
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf)?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
    Ok((hex(&h.finalize()), n))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The wids index (`wids-shard-index-v1`) of a list of shards.
pub fn wids_index(name: &str, shards: &[ShardEntry]) -> serde_json::Value {
    serde_json::json!({
        "__kind__": "wids-shard-index-v1",
        "wids_version": 1,
        "name": name,
        "shardlist": shards.iter().map(|s| serde_json::json!({
            "url": s.url, "nsamples": s.nsamples, "filesize": s.filesize,
        })).collect::<Vec<_>>(),
    })
}

/// The `.json` member of a sample.
#[derive(Serialize)]
struct SampleMeta<'a> {
    class: &'a str,
    class_index: u32,
    weight_row: u32,
    instance: u32,
    flip: u8,
    draw_type: &'a str,
    seed: &'a str,
    sample: u64,
}

/// Writes tar members by hand (with the `tar` crate's headers) so the DALI index gets exact offsets.
struct ShardFile {
    tmp: PathBuf,
    out: HashingWriter<BufWriter<File>>,
    idx: String,
    samples: u64,
}

struct HashingWriter<W: Write> {
    inner: W,
    hash: Sha256,
    len: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(b)?;
        self.hash.update(&b[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl ShardFile {
    fn member(&mut self, name: &str, data: &[u8]) -> std::io::Result<(u64, u64)> {
        let mut h = tar::Header::new_ustar();
        h.set_path(name)?;
        h.set_size(data.len() as u64);
        h.set_mode(0o444);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(MTIME);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        self.out.write_all(h.as_bytes())?;
        let offset = self.out.len;
        self.out.write_all(data)?;
        let pad = (512 - data.len() % 512) % 512;
        self.out.write_all(&[0u8; 512][..pad])?;
        Ok((offset, data.len() as u64))
    }
}

struct ShardBuf {
    end: u64,
    next: u64,
    pending: BTreeMap<u64, (Sample, Vec<u8>)>,
    file: Option<ShardFile>,
}

/// Settings of the WebDataset sink.
#[derive(Clone, Debug)]
pub struct WdsOptions {
    pub out: PathBuf,
    pub prefix: String,
    pub dali_index: bool,
    pub writers: usize,
}

pub struct WdsSink<'a> {
    pub opts: WdsOptions,
    plan: &'a Plan,
    key_width: usize,
    draw_type: String,
    seed: String,
    states: Vec<Mutex<HashMap<u64, ShardBuf>>>,
    manifest: Mutex<Manifest>,
    part: PathBuf,
}

impl<'a> WdsSink<'a> {
    pub fn new(
        opts: WdsOptions,
        plan: &'a Plan,
        manifest: Manifest,
        draw_type: &str,
        seed: &str,
    ) -> Result<Self> {
        let part = part_path(&opts.out, &opts.prefix, manifest.rank, manifest.world_size);
        let total = manifest.total_samples;
        Ok(WdsSink {
            states: (0..opts.writers.max(1))
                .map(|_| Mutex::new(HashMap::new()))
                .collect(),
            opts,
            plan,

            key_width: key_width(total),
            draw_type: draw_type.to_string(),
            seed: seed.to_string(),
            manifest: Mutex::new(manifest),
            part,
        })
    }

    /// Registers a shard to be written: positions `range`.
    pub fn expect_shard(&self, shard: u64, range: std::ops::Range<u64>) {
        let w = (shard % self.states.len() as u64) as usize;
        self.states[w].lock().unwrap().insert(
            shard,
            ShardBuf {
                end: range.end,
                next: range.start,
                pending: BTreeMap::new(),
                file: None,
            },
        );
    }

    pub fn manifest(&self) -> Manifest {
        self.manifest.lock().unwrap().clone()
    }

    fn write_sample(&self, f: &mut ShardFile, pos: u64, s: Sample, png: &[u8]) -> Result<()> {
        let key = format!("{pos:0w$}", w = self.key_width);
        let meta = SampleMeta {
            class: &self.plan.classes[s.class as usize].name,
            class_index: s.class,
            weight_row: s.row,
            instance: s.instance,
            flip: s.flip,
            draw_type: &self.draw_type,
            seed: &self.seed,
            sample: self.plan.id(s),
        };
        let json = serde_json::to_vec(&meta).map_err(|e| Error::Other(e.to_string()))?;
        let cls = s.class.to_string();
        let tmp = f.tmp.clone();
        let io = |e| Error::io(&tmp, "cannot write shard", e);
        let mut line = String::new();
        for (ext, data) in [("cls", cls.as_bytes()), ("json", &json[..]), ("png", png)] {
            let name = format!("{key}.{ext}");
            let (off, size) = f.member(&name, data).map_err(io)?;
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(&format!("{ext} {off} {size} {name}"));
        }
        f.idx.push_str(&line);
        f.idx.push('\n');
        f.samples += 1;
        Ok(())
    }

    fn open(&self, shard: u64) -> Result<ShardFile> {
        let path = self.opts.out.join(shard_name(&self.opts.prefix, shard));
        let tmp = fsutil::tmp_path(&path);
        let file = File::create(&tmp).map_err(|e| Error::io(&tmp, "cannot create shard", e))?;
        Ok(ShardFile {
            tmp,
            out: HashingWriter {
                inner: BufWriter::with_capacity(1 << 20, file),
                hash: Sha256::new(),
                len: 0,
            },
            idx: String::new(),
            samples: 0,
        })
    }

    /// Completes a shard; on failure its temporary file is removed.
    fn finish(&self, shard: u64, f: ShardFile) -> Result<()> {
        let tmp = f.tmp.clone();
        let r = self.finish_inner(shard, f);
        if r.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        r
    }

    fn finish_inner(&self, shard: u64, mut f: ShardFile) -> Result<()> {
        let name = shard_name(&self.opts.prefix, shard);
        let path = self.opts.out.join(&name);
        let tmp = f.tmp.clone();
        let io = |e| Error::io(&tmp, "cannot write shard", e);
        f.out.write_all(&[0u8; 1024]).map_err(io)?;
        f.out.flush().map_err(io)?;
        let HashingWriter { inner, hash, len } = f.out;
        let file = inner
            .into_inner()
            .map_err(|e| Error::io(&f.tmp, "cannot write shard", e.into_error()))?;
        file.sync_all()
            .map_err(|e| Error::io(&f.tmp, "cannot sync shard", e))?;
        drop(file);
        if self.opts.dali_index {
            let idx = format!("v1.2 {}\n{}", f.samples, f.idx);
            let idx_path = self
                .opts
                .out
                .join(format!("{}.idx", name.trim_end_matches(".tar")));
            fsutil::write_atomic(&idx_path, idx.as_bytes(), true)?;
        }
        std::fs::rename(&f.tmp, &path)
            .map_err(|e| Error::io(&path, "cannot rename shard into place", e))?;
        let entry = ShardEntry {
            shard,
            url: name,
            nsamples: f.samples,
            filesize: len,
            sha256: hex(&hash.finalize()),
        };
        let mut m = self.manifest.lock().unwrap();
        m.shards.retain(|e| e.shard != shard);
        m.shards.push(entry);
        m.shards.sort_by_key(|e| e.shard);
        write_json(&self.part, &*m)
    }
}

impl Sink for WdsSink<'_> {
    fn writers(&self) -> usize {
        self.states.len()
    }
    fn route(&self, t: &Target) -> usize {
        (t.shard % self.states.len() as u64) as usize
    }
    fn accept(&self, writer: usize, t: Target, png: Vec<u8>) -> Result<()> {
        let mut states = self.states[writer].lock().unwrap();
        let buf = states
            .get_mut(&t.shard)
            .ok_or_else(|| Error::Other(format!("internal: shard {} was not expected", t.shard)))?;
        buf.pending.insert(t.pos, (t.sample, png));
        while let Some((s, png)) = buf.pending.remove(&buf.next) {
            if buf.file.is_none() {
                buf.file = Some(self.open(t.shard)?);
            }
            self.write_sample(buf.file.as_mut().unwrap(), buf.next, s, &png)?;
            buf.next += 1;
        }
        if buf.next == buf.end {
            let f = buf.file.take().expect("a complete shard has a file");
            states.remove(&t.shard);
            drop(states);
            self.finish(t.shard, f)?;
        }
        Ok(())
    }
}

impl Drop for WdsSink<'_> {
    fn drop(&mut self) {
        // Unfinished shards (after an error): remove their temporary files.
        for st in &self.states {
            for (_, b) in st.lock().unwrap().drain() {
                if let Some(f) = b.file {
                    let tmp = f.tmp.clone();
                    drop(f);
                    let _ = std::fs::remove_file(tmp);
                }
            }
        }
    }
}

/// Checks the shards a manifest part records: those whose size and sha256 still match are complete.
pub fn verified_shards(out: &Path, m: &Manifest) -> Vec<ShardEntry> {
    m.shards
        .iter()
        .filter(|e| {
            matches!(hash_file(&out.join(&e.url)), Ok((h, n)) if h == e.sha256 && n == e.filesize)
        })
        .cloned()
        .collect()
}

/// Merges all manifest parts of `out` into `{prefix}-manifest.json` and `{prefix}-wids.json`.
/// Returns the missing shard indices (then nothing is written).
pub fn finalize(out: &Path, prefix: &str) -> Result<std::result::Result<Manifest, Vec<u64>>> {
    // A finalize that was killed while writing leaves its temporary files: remove them first.
    let (mpath, wpath) = (manifest_path(out, prefix), wids_path(out, prefix));
    let finals: Vec<String> = [&mpath, &wpath]
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    fsutil::remove_stale_tmp_of(out, |n| finals.iter().any(|f| f == n));
    let start = format!("{prefix}-manifest.part-");
    let mut parts = Vec::new();
    let rd =
        std::fs::read_dir(out).map_err(|e| Error::io(out, "cannot list output directory", e))?;
    for e in rd.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.starts_with(&start) && n.ends_with(".json") {
            parts.push(e.path());
        }
    }
    parts.sort();
    if parts.is_empty() {
        return Err(Error::input(
            out,
            None,
            format!("no manifest parts ({start}*.json): nothing to finalize"),
        ));
    }
    let mut merged: Option<Manifest> = None;
    for p in &parts {
        let m = read_manifest(p)?;
        match &mut merged {
            None => merged = Some(m),
            Some(acc) => {
                if acc.config != m.config
                    || acc.total_samples != m.total_samples
                    || acc.samples_per_shard != m.samples_per_shard
                {
                    return Err(Error::input(
                        p,
                        None,
                        "this part was made with other settings than the others",
                    ));
                }
                acc.shards.extend(m.shards);
            }
        }
    }
    let mut m = merged.unwrap();
    m.shards.sort_by_key(|e| e.shard);
    m.shards.dedup_by_key(|e| e.shard);
    let have: std::collections::HashSet<u64> = m.shards.iter().map(|e| e.shard).collect();
    let mut missing: Vec<u64> = (0..m.shard_count).filter(|s| !have.contains(s)).collect();
    for e in &m.shards {
        match hash_file(&out.join(&e.url)) {
            Ok((h, n)) if h == e.sha256 && n == e.filesize => {}
            _ => missing.push(e.shard),
        }
    }
    if !missing.is_empty() {
        missing.sort();
        missing.dedup();
        return Ok(Err(missing));
    }
    m.rank = 0;
    m.world_size = 1;
    m.kind = "fractaldb-manifest-v1".into();
    write_json(&mpath, &m)?;
    write_json(&wpath, &wids_index(prefix, &m.shards))?;
    Ok(Ok(m))
}
