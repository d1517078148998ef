//! WebDataset shards written directly: `{prefix}-{%06d}.tar`, each sample `KEY.cls`, `KEY.json`,
//! `KEY.png` (contiguous, sorted by extension), ustar headers, fixed mtime, mode 0444, uid/gid 0.
//!
//! A shard is written under a temporary name, fsynced, renamed, and only then recorded in this rank's
//! manifest part, so a crash never leaves a corrupt shard under a final name and `--resume` knows which
//! shards are complete.

use crate::error::{Error, Result};
use crate::fsutil;
use crate::pipeline::{IndexedJobs, Job, Sink, Target};
use crate::plan::{Layout, Sample};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

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
    /// Label index -> class name (as in `classes.txt`).
    #[serde(default)]
    pub classes: Vec<String>,
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

/// Lower-case hex of bytes (digests in manifests, records and fingerprints).
pub(crate) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// One shard of a wids index: its URL, samples, and size when it is known (a service lists
/// shards before they are made).
#[derive(Serialize)]
pub struct WidsShard {
    pub url: String,
    pub nsamples: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filesize: Option<u64>,
}

/// The wids index (`wids-shard-index-v1`) of a list of shards: the finalized manifest's and the
/// service's.
pub fn wids_index(name: &str, shards: impl IntoIterator<Item = WidsShard>) -> serde_json::Value {
    serde_json::json!({
        "__kind__": "wids-shard-index-v1",
        "wids_version": 1,
        "name": name,
        "shardlist": shards.into_iter().collect::<Vec<_>>(),
    })
}

/// The `.json` member a dataset family writes for each sample, beside `.cls` and `.png`.
pub trait SampleMeta: Send + Sync {
    /// The metadata of sample `s` of class `class` (its name), `id` its index in the family's
    /// canonical order.
    fn json(&self, class: &str, s: Sample, id: u64) -> serde_json::Result<Vec<u8>>;
    /// The label (`.cls`, and the class name passed to `json`) of a layout sample: its class,
    /// unless the family's layout "classes" are finer units (MV-FractalDB: one per model).
    fn label(&self, s: Sample) -> u32 {
        s.class
    }
}

/// FractalDB's `.json`: class, weight row, instance, flip, draw type and mask generator.
pub struct FractalMeta {
    pub draw_type: String,
    /// The mask generator, as the samples' `seed` field shows it.
    pub masks: String,
}

impl SampleMeta for FractalMeta {
    fn json(&self, class: &str, s: Sample, id: u64) -> serde_json::Result<Vec<u8>> {
        #[derive(Serialize)]
        struct Meta<'a> {
            class: &'a str,
            class_index: u32,
            weight_row: u32,
            instance: u32,
            flip: u8,
            draw_type: &'a str,
            seed: &'a str,
            sample: u64,
        }
        serde_json::to_vec(&Meta {
            class,
            class_index: s.class,
            weight_row: s.row,
            instance: s.instance,
            flip: s.flip,
            draw_type: &self.draw_type,
            seed: &self.masks,
            sample: id,
        })
    }
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

/// What a shard holds per sample: `KEY.cls` (the label index), `KEY.json` (the family's
/// [`SampleMeta`]) and `KEY.png`, written through a [`ShardWriter`] to any writer.
pub struct SampleInfo<'a> {
    /// Class names, by label index.
    pub classes: &'a [String],
    pub layout: &'a Layout,
    pub key_width: usize,
    pub meta: &'a dyn SampleMeta,
    pub encoding: crate::encode::Encoding,
}

impl SampleInfo<'_> {
    pub fn write<W: Write>(
        &self,
        w: &mut ShardWriter<W>,
        pos: u64,
        s: Sample,
        png: &[u8],
    ) -> std::io::Result<()> {
        let key = format!("{pos:0w$}", w = self.key_width);
        let label = self.meta.label(s);
        let json = self
            .meta
            .json(&self.classes[label as usize], s, self.layout.id(s))
            .map_err(std::io::Error::other)?;
        let cls = label.to_string();
        w.write_sample(
            &key,
            &[
                ("cls", cls.as_bytes()),
                ("json", &json[..]),
                (self.encoding.extension(), png),
            ],
        )
    }
}

/// What a finished shard was: its size, hash, sample count and DALI index text.
#[derive(Clone, Debug)]
pub struct ShardInfo {
    pub samples: u64,
    pub bytes: u64,
    pub sha256: String,
    /// `wds2idx` format: `v1.2 N` then one line per sample.
    pub dali_index: String,
}

/// Writes one shard's bytes to any writer: ustar members with fixed metadata, samples in the order
/// given, the two zero blocks at the end. The bytes do not depend on where they go (a file, a socket).
pub struct ShardWriter<W: Write> {
    out: HashingWriter<W>,
    idx: String,
    samples: u64,
}

impl<W: Write> ShardWriter<W> {
    pub fn new(w: W) -> Self {
        ShardWriter {
            out: HashingWriter {
                inner: w,
                hash: Sha256::new(),
                len: 0,
            },
            idx: String::new(),
            samples: 0,
        }
    }

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

    /// One sample: `KEY.EXT` members, contiguous, in the order given (WebDataset groups by key).
    pub fn write_sample(&mut self, key: &str, members: &[(&str, &[u8])]) -> std::io::Result<()> {
        let mut line = String::new();
        for (ext, data) in members {
            let name = format!("{key}.{ext}");
            let (off, size) = self.member(&name, data)?;
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(&format!("{ext} {off} {size} {name}"));
        }
        self.idx.push_str(&line);
        self.idx.push('\n');
        self.samples += 1;
        Ok(())
    }

    /// Ends the archive and returns the writer (flushed) with what was written.
    pub fn finish(mut self) -> std::io::Result<(W, ShardInfo)> {
        self.out.write_all(&[0u8; 1024])?;
        self.out.flush()?;
        let HashingWriter { inner, hash, len } = self.out;
        Ok((
            inner,
            ShardInfo {
                samples: self.samples,
                bytes: len,
                sha256: hex(&hash.finalize()),
                dali_index: format!("v1.2 {}\n{}", self.samples, self.idx),
            },
        ))
    }
}

/// `--prefix` as a file-name part: 1 to 200 bytes (final and temporary names stay under 255), no
/// `/`, `.` or NUL.
pub fn check_prefix(prefix: &str) -> Result<()> {
    if prefix.is_empty() || prefix.contains(['/', '.', '\0']) || prefix.len() > 200 {
        return Err(Error::flag(
            "--prefix",
            "must be 1 to 200 bytes, without '/', '.' or NUL (file names and their temporary \
             names must stay under 255 bytes)",
        ));
    }
    Ok(())
}

/// A shard's samples put back in order: images arrive in any order (several render threads), and
/// [`pop`](Self::pop) hands out the next one once its turn has come.
pub struct InOrderShard<T> {
    end: u64,
    next: u64,
    pending: BTreeMap<u64, T>,
}

impl<T> InOrderShard<T> {
    pub fn new(positions: std::ops::Range<u64>) -> Self {
        InOrderShard {
            end: positions.end,
            next: positions.start,
            pending: BTreeMap::new(),
        }
    }
    /// Queues sample `pos` of shard `shard`; an internal error if it is not one still expected.
    pub fn push(&mut self, shard: u64, pos: u64, item: T) -> Result<()> {
        if pos < self.next || pos >= self.end {
            return Err(Error::Other(format!(
                "internal: sample {pos} is not expected in shard {shard}"
            )));
        }
        self.pending.insert(pos, item);
        Ok(())
    }
    /// The next sample in order, if it has arrived: (position, item).
    pub fn pop(&mut self) -> Option<(u64, T)> {
        let item = self.pending.remove(&self.next)?;
        self.next += 1;
        Some((self.next - 1, item))
    }
    pub fn complete(&self) -> bool {
        self.next == self.end
    }
}

/// A shard being written: its temporary file, and the images that arrived before their turn.
struct ShardBuf {
    order: InOrderShard<(Sample, Vec<u8>)>,
    file: Option<(PathBuf, ShardWriter<BufWriter<File>>)>,
}

/// Settings of the WebDataset sink.
#[derive(Clone)]
pub struct WdsOptions {
    pub out: PathBuf,
    pub prefix: String,
    pub dali_index: bool,
    pub writers: usize,
    pub resume: bool,
    /// The family's per-sample metadata.
    pub meta: Arc<dyn SampleMeta>,
    /// The images' encoding (its extension names their members).
    pub encoding: crate::encode::Encoding,
}

/// The shard files of one rank: images arrive in any order, each shard is written in its order
/// (the layout makes that the order clouds are rendered in, so little waits in memory).
pub struct WdsSink<'a> {
    pub opts: WdsOptions,
    classes: Vec<String>,
    layout: &'a Layout,
    key_width: usize,
    states: Vec<Mutex<HashMap<u64, ShardBuf>>>,
    manifest: Mutex<Manifest>,
    part: PathBuf,
    /// Shards finished by this run (for the progress display).
    pub written: Arc<AtomicU64>,
    _lock: fsutil::OutputLock,
}

/// What is left to do for this rank after a resume.
pub struct Todo {
    /// Blocks with at least one shard to write, in order.
    pub blocks: Vec<u64>,
    /// Shards to write (all of this rank's not yet verified).
    pub shards: std::collections::HashSet<u64>,
    /// Images of verified shards, kept from before.
    pub kept: u64,
}

impl<'a> WdsSink<'a> {
    /// Prepares this rank's part of a sharded run in `opts.out`, under `lock` (this rank's and
    /// prefix's, taken by the caller before anything was read): checks the prefix and the directory,
    /// removes this rank's crash leftovers, reads the manifest part on `--resume` (refusing other
    /// settings) or refuses to overwrite, and records the part before the first shard.
    pub fn open(
        opts: WdsOptions,
        classes: Vec<String>,
        layout: &'a Layout,
        config: serde_json::Value,
        (rank, world): (u64, u64),
        lock: fsutil::OutputLock,
    ) -> Result<(Self, Todo)> {
        check_prefix(&opts.prefix)?;
        fsutil::check_writable(&opts.out)?;
        let part = part_path(&opts.out, &opts.prefix, rank, world);
        let mut manifest = Manifest {
            kind: "fractaldb-manifest-part-v1".into(),
            config,
            total_samples: layout.total,
            samples_per_shard: layout.per_shard,
            shard_count: layout.shards,
            rank,
            world_size: world,
            shards: vec![],
            classes: classes.clone(),
        };
        let my_blocks: Vec<u64> = (0..layout.blocks()).filter(|g| g % world == rank).collect();
        let mine: Vec<u64> = my_blocks
            .iter()
            .flat_map(|&g| layout.block_shard_range(g))
            .collect();
        // Every check before the first byte is written or removed: the manifest parts of any world
        // size must have been made with these settings (their shards would be overwritten otherwise).
        let parts = list_parts(&opts.out, &opts.prefix)?;
        let mut others: Vec<Manifest> = Vec::new();
        for p in &parts {
            let old = read_manifest(p)?;
            if old.config != manifest.config
                || old.total_samples != layout.total
                || old.samples_per_shard != layout.per_shard
            {
                return Err(other_settings(p, &old.config, &manifest.config));
            }
            others.push(old);
        }
        if !opts.resume {
            // The other ranks of this world may be writing beside us; anything else is old output.
            let existing = part.exists()
                || others.iter().any(|m| m.world_size != world)
                || mine
                    .iter()
                    .any(|&s| opts.out.join(shard_name(&opts.prefix, s)).exists());
            if existing {
                return Err(Error::input(
                    &opts.out,
                    None,
                    "already holds shards of this prefix: pass --resume to complete them, or choose another --out/--prefix",
                ));
            }
        }
        {
            // Only this rank's leftovers: other ranks may be writing into the same directory right now.
            let names: std::collections::HashSet<String> = mine
                .iter()
                .flat_map(|&s| {
                    let tar = shard_name(&opts.prefix, s);
                    let idx = tar.replace(".tar", ".idx");
                    [tar, idx]
                })
                .chain([part.file_name().unwrap().to_string_lossy().into_owned()])
                .collect();
            fsutil::remove_stale_tmp_of(&opts.out, |n| names.contains(n));
        }
        if opts.resume {
            // Shards verified by any part (another world size writes the same bytes), kept if mine.
            let mine_set: std::collections::HashSet<u64> = mine.iter().copied().collect();
            let mut kept: Vec<ShardEntry> = others
                .iter()
                .flat_map(|m| verified_shards(&opts.out, m))
                .filter(|e| mine_set.contains(&e.shard))
                .collect();
            kept.sort_by_key(|e| e.shard);
            kept.dedup_by_key(|e| e.shard);
            if opts.dali_index {
                // --dali-index added on resume: the kept shards get their index too.
                for e in &kept {
                    let idx = opts
                        .out
                        .join(format!("{}.idx", e.url.trim_end_matches(".tar")));
                    if !idx.exists() {
                        let text = dali_index_of(&opts.out.join(&e.url))?;
                        fsutil::write_atomic(&idx, text.as_bytes(), true)?;
                    }
                }
            }
            manifest.shards = kept;
        }
        let done: std::collections::HashSet<u64> =
            manifest.shards.iter().map(|e| e.shard).collect();
        let shards: std::collections::HashSet<u64> =
            mine.iter().copied().filter(|s| !done.contains(s)).collect();
        let blocks = my_blocks
            .into_iter()
            .filter(|&g| layout.block_shard_range(g).any(|s| shards.contains(&s)))
            .collect();
        let kept = mine
            .iter()
            .filter(|s| done.contains(s))
            .map(|&s| layout.shard_range(s).count() as u64)
            .sum();
        let sink = WdsSink {
            states: (0..opts.writers.max(1))
                .map(|_| Mutex::new(HashMap::new()))
                .collect(),
            key_width: key_width(layout.total),
            opts,
            classes,
            layout,
            manifest: Mutex::new(manifest),
            part,
            written: Arc::default(),
            _lock: lock,
        };
        // Record the part even before the first shard, so `finalize` can see this rank started.
        write_json(&sink.part, &sink.manifest())?;
        Ok((
            sink,
            Todo {
                blocks,
                shards,
                kept,
            },
        ))
    }

    pub fn manifest(&self) -> Manifest {
        self.manifest.lock().unwrap().clone()
    }

    fn write_sample(
        &self,
        w: &mut ShardWriter<BufWriter<File>>,
        pos: u64,
        s: Sample,
        png: &[u8],
    ) -> std::io::Result<()> {
        let info = SampleInfo {
            classes: &self.classes,
            layout: self.layout,
            key_width: self.key_width,
            meta: &*self.opts.meta,
            encoding: self.opts.encoding,
        };
        info.write(w, pos, s, png)
    }

    fn create(&self, shard: u64) -> Result<(PathBuf, ShardWriter<BufWriter<File>>)> {
        let path = self.opts.out.join(shard_name(&self.opts.prefix, shard));
        let tmp = fsutil::tmp_path(&path);
        let file = File::create(&tmp).map_err(|e| Error::io(&tmp, "cannot create shard", e))?;
        Ok((
            tmp,
            ShardWriter::new(BufWriter::with_capacity(256 << 10, file)),
        ))
    }

    /// Completes a shard; on failure its temporary file is removed.
    fn finish(&self, shard: u64, tmp: PathBuf, w: ShardWriter<BufWriter<File>>) -> Result<()> {
        let r = self.finish_inner(shard, &tmp, w);
        if r.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        r
    }

    fn finish_inner(&self, shard: u64, tmp: &Path, w: ShardWriter<BufWriter<File>>) -> Result<()> {
        let name = shard_name(&self.opts.prefix, shard);
        let path = self.opts.out.join(&name);
        let io = |e| Error::io(tmp, "cannot write shard", e);
        let (buf, info) = w.finish().map_err(io)?;
        let file = buf
            .into_inner()
            .map_err(|e| Error::io(tmp, "cannot write shard", e.into_error()))?;
        file.sync_all()
            .map_err(|e| Error::io(tmp, "cannot sync shard", e))?;
        drop(file);
        if self.opts.dali_index {
            let idx_path = self
                .opts
                .out
                .join(format!("{}.idx", name.trim_end_matches(".tar")));
            fsutil::write_atomic(&idx_path, info.dali_index.as_bytes(), true)?;
        }
        std::fs::rename(tmp, &path)
            .map_err(|e| Error::io(&path, "cannot rename shard into place", e))?;
        let entry = ShardEntry {
            shard,
            url: name,
            nsamples: info.samples,
            filesize: info.bytes,
            sha256: info.sha256,
        };
        let mut m = self.manifest.lock().unwrap();
        m.shards.retain(|e| e.shard != shard);
        m.shards.push(entry);
        m.shards.sort_by_key(|e| e.shard);
        write_json(&self.part, &*m)?;
        self.written.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Ends this rank's part of a run: the shards no image reached are written, and a single-rank
    /// run is finalized (manifest, wids index), every shard checked. Returns this part's manifest.
    pub fn complete(&self, todo: &Todo, world: u64) -> Result<Manifest> {
        self.finish_empty(todo)?;
        if world == 1
            && let Err(missing) = finalize(&self.opts.out, &self.opts.prefix)?
        {
            return Err(Error::Other(format!(
                "internal: shards missing after a complete run: {missing:?}"
            )));
        }
        Ok(self.manifest())
    }

    /// Writes the shards of `todo` that no image reaches (a layout can leave a shard empty).
    pub fn finish_empty(&self, todo: &Todo) -> Result<()> {
        let mut empty: Vec<u64> = todo
            .shards
            .iter()
            .copied()
            .filter(|&s| self.layout.shard_range(s).is_empty())
            .collect();
        empty.sort();
        for s in empty {
            let (tmp, w) = self.create(s)?;
            self.finish(s, tmp, w)?;
        }
        Ok(())
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
        let buf = states.entry(t.shard).or_insert_with(|| ShardBuf {
            order: InOrderShard::new(self.layout.shard_range(t.shard)),
            file: None,
        });
        buf.order.push(t.shard, t.pos, (t.sample, png))?;
        while let Some((pos, (s, png))) = buf.order.pop() {
            if buf.file.is_none() {
                buf.file = Some(self.create(t.shard)?);
            }
            let (tmp, w) = buf.file.as_mut().unwrap();
            self.write_sample(w, pos, s, &png)
                .map_err(|e| Error::io(&*tmp, "cannot write shard", e))?;
        }
        if buf.order.complete() {
            let (tmp, w) = buf.file.take().expect("a complete shard has a file");
            states.remove(&t.shard);
            drop(states);
            self.finish(t.shard, tmp, w)?;
        }
        Ok(())
    }
}

impl Drop for WdsSink<'_> {
    fn drop(&mut self) {
        // Unfinished shards (after an error): remove their temporary files.
        for st in &self.states {
            for (_, b) in st.lock().unwrap().drain() {
                if let Some((tmp, w)) = b.file {
                    drop(w);
                    let _ = std::fs::remove_file(tmp);
                }
            }
        }
    }
}

/// A part made with other settings: the refusal, naming the settings that differ.
fn other_settings(part: &Path, old: &serde_json::Value, new: &serde_json::Value) -> Error {
    Error::input(
        part,
        None,
        format!(
            "this dataset was started with other settings ({}); nothing was written: use the same \
             flags and fractaldb version, or another --out/--prefix",
            config_difference(old, new)
        ),
    )
}

/// Refuses a run whose settings differ from those of a manifest part already in `out` (any rank,
/// any world size), before anything is written (a family's side files included).
pub fn check_parts_config(out: &Path, prefix: &str, config: &serde_json::Value) -> Result<()> {
    for p in list_parts(out, prefix)? {
        let old = read_manifest(&p)?;
        if &old.config != config {
            return Err(other_settings(&p, &old.config, config));
        }
    }
    Ok(())
}

/// The manifest parts of `prefix` in `out` (any rank, any world size), sorted.
pub fn list_parts(out: &Path, prefix: &str) -> Result<Vec<PathBuf>> {
    let start = format!("{prefix}-manifest.part-");
    let mut parts = Vec::new();
    let rd = match std::fs::read_dir(out) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(parts),
        Err(e) => return Err(Error::io(out, "cannot list output directory", e)),
    };
    for e in rd.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.starts_with(&start) && n.ends_with(".json") {
            parts.push(e.path());
        }
    }
    parts.sort();
    Ok(parts)
}

/// Which settings differ between two fingerprints, for the refusal message.
pub fn config_difference(old: &serde_json::Value, new: &serde_json::Value) -> String {
    let (Some(a), Some(b)) = (old.as_object(), new.as_object()) else {
        return "unreadable settings".into();
    };
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    let diff: Vec<String> = keys
        .into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| {
            let show = |v: Option<&serde_json::Value>| {
                let t = v.map_or("(none)".to_string(), |v| v.to_string());
                if t.len() > 40 {
                    format!("{}...", &t[..37])
                } else {
                    t
                }
            };
            format!("{k}: {} then, {} now", show(a.get(k)), show(b.get(k)))
        })
        .collect();
    if diff.is_empty() {
        "the sample count or shard size".into()
    } else if a.get("version").is_none() && b.get("version").is_some() {
        // Records of releases before the family's version key: the bytes may differ in ways no
        // recorded setting shows.
        format!(
            "made by an older fractaldb, before this dataset's bytes had a version; {}",
            diff.join("; ")
        )
    } else {
        diff.join("; ")
    }
}

/// The DALI `wds2idx` v1.2 index of an existing shard, read from its tar headers (the same text
/// [`ShardWriter`] writes).
pub fn dali_index_of(path: &Path) -> Result<String> {
    let f = File::open(path).map_err(|e| Error::io(path, "cannot read shard", e))?;
    let mut ar = tar::Archive::new(std::io::BufReader::new(f));
    let mut lines: Vec<(String, String)> = Vec::new();
    let bad = |e: std::io::Error| Error::io(path, "cannot read shard", e);
    for entry in ar.entries().map_err(bad)? {
        let entry = entry.map_err(bad)?;
        let name = entry.path().map_err(bad)?.to_string_lossy().into_owned();
        let (key, ext) = name.split_once('.').unwrap_or((&name, ""));
        let field = format!(
            "{ext} {} {} {name}",
            entry.raw_file_position(),
            entry.size()
        );
        match lines.last_mut() {
            Some((k, line)) if k == key => {
                line.push(' ');
                line.push_str(&field);
            }
            _ => lines.push((key.to_string(), field)),
        }
    }
    let mut text = format!("v1.2 {}\n", lines.len());
    for (_, l) in lines {
        text.push_str(&l);
        text.push('\n');
    }
    Ok(text)
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

/// Merges all manifest parts of `out` into `{prefix}-manifest.json` and `{prefix}-wids.json`, and
/// writes what timm and Hugging Face `datasets` look for ([`super::readers`]).
/// Returns the missing shard indices (then nothing is written).
pub fn finalize(out: &Path, prefix: &str) -> Result<std::result::Result<Manifest, Vec<u64>>> {
    // A finalize that was killed while writing leaves its temporary files: remove them first.
    let (mpath, wpath) = (manifest_path(out, prefix), wids_path(out, prefix));
    let mut finals: Vec<String> = [&mpath, &wpath]
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    // The side files finalize writes too (readers', checksums).
    finals.extend(["_info.json", "README.md", super::sums::SUMS].map(String::from));
    fsutil::remove_stale_tmp_of(out, |n| finals.iter().any(|f| f == n));
    let start = format!("{prefix}-manifest.part-");
    std::fs::read_dir(out).map_err(|e| Error::io(out, "cannot list output directory", e))?;
    let parts = list_parts(out, prefix)?;
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
        // Only this dataset's own shard names: a part must not point the index at other files.
        for e in &m.shards {
            if e.url != shard_name(prefix, e.shard) || e.shard >= m.shard_count {
                return Err(Error::input(
                    p,
                    None,
                    format!(
                        "shard {} is recorded as {:?}, expected {:?}: the manifest part was altered",
                        e.shard,
                        e.url,
                        shard_name(prefix, e.shard)
                    ),
                ));
            }
        }
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
    let list = m.shards.iter().map(|s| WidsShard {
        url: s.url.clone(),
        nsamples: s.nsamples,
        filesize: Some(s.filesize),
    });
    write_json(&wpath, &wids_index(prefix, list))?;
    super::readers::write(out, prefix, &m)?;
    let sums: Vec<(String, String)> = m
        .shards
        .iter()
        .map(|e| (e.url.clone(), e.sha256.clone()))
        .collect();
    super::sums::merge_shards(out, &sums)?;
    Ok(Ok(m))
}

/// The job of cloud `q` of the shard order in epoch `epoch`: its images in shards `keep` accepts.
pub(crate) fn cloud_job(layout: &Layout, q: u64, keep: impl Fn(u64) -> bool, epoch: u64) -> Job {
    let (class, row) = layout.cloud(q);
    let mut job = crate::pipeline::job_of(
        class,
        row,
        layout
            .place_cloud(q)
            .into_iter()
            .filter(|p| keep(p.shard))
            .map(|p| {
                (
                    p.sample.instance,
                    p.sample.flip,
                    Target {
                        sample: p.sample,
                        pos: p.pos,
                        shard: p.shard,
                        epoch,
                    },
                )
            }),
    );
    job.unit.epoch = epoch;
    job
}

/// Shard output: this rank's blocks, one job per cloud of each block, in the layout's cloud order
/// (the order each shard lists its samples in), images only for shards still to write. Any family
/// whose units are the layout's clouds uses it (RCDB: a cloud is a group of a class's instances).
pub(crate) struct WdsJobs<'a> {
    layout: &'a Layout,
    todo: &'a Todo,
    /// Jobs before each block of `todo.blocks`, and the total after the last.
    starts: Vec<u64>,
}

impl<'a> WdsJobs<'a> {
    pub(crate) fn new(layout: &'a Layout, todo: &'a Todo) -> Self {
        let mut starts = vec![0u64];
        for &g in &todo.blocks {
            let c = layout.block_clouds(g);
            starts.push(starts.last().unwrap() + (c.end - c.start));
        }
        WdsJobs {
            layout,
            todo,
            starts,
        }
    }
}

impl IndexedJobs for WdsJobs<'_> {
    fn count(&self) -> u64 {
        *self.starts.last().unwrap()
    }
    fn job(&self, i: u64) -> Job {
        let b = self.starts.partition_point(|&s| s <= i) - 1;
        let g = self.todo.blocks[b];
        let q = self.layout.block_clouds(g).start + (i - self.starts[b]);
        cloud_job(self.layout, q, |s| self.todo.shards.contains(&s), 0)
    }
}
