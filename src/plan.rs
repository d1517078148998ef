//! The plan: classes x weight rows x instances x flips, a seeded global order, and shards.

use crate::error::{Error, Result};
use crate::ifs::{self, Ifs, WeightRow};
use crate::rng::{class_key, hash32};
use std::path::{Path, PathBuf};

/// One class: its name (the CSV stem), where it came from, and its maps.
#[derive(Clone, Debug)]
pub struct Class {
    pub name: String,
    pub path: PathBuf,
    pub ifs: Ifs,
    /// The key of the counter-based mask generator.
    pub key: u32,
}

/// A class name becomes a directory and file names: refuse names that would escape the output or hide
/// (`.`, `..`, a leading dot), path separators, NUL, and names too long for a file name.
fn check_class_name(path: &Path, name: &str) -> Result<()> {
    let bad = if name.is_empty() || name.starts_with('.') {
        Some("starts with a dot (or is empty): it would name a hidden or parent directory")
    } else if name.contains(['/', '\\', '\0']) {
        Some("contains a path separator or NUL")
    } else if name.len() > 200 {
        Some("is longer than 200 bytes: the image file names would not fit in 255")
    } else {
        None
    };
    match bad {
        Some(why) => Err(Error::input(
            path,
            None,
            format!("class name {name:?} {why}; rename the file"),
        )),
        None => Ok(()),
    }
}

/// Lists the class CSVs of `load_root`, sorted by name: `*.csv` directly inside, and inside its
/// immediate sub-directories (the original's `csvK/` layout). Other names are skipped.
pub fn discover_classes(load_root: &Path) -> Result<Vec<(String, PathBuf)>> {
    let md = std::fs::metadata(load_root).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::input(
                load_root,
                None,
                "no such class directory: run `fractaldb search --categories N --out DIR` first and pass \
                 --load-root DIR/csv_rate0.2_categoryN, or point --load-root at a folder of class CSVs",
            )
        } else {
            Error::io(load_root, "cannot open class directory", e)
        }
    })?;
    if !md.is_dir() {
        return Err(Error::input(
            load_root,
            None,
            "not a directory: expected a directory of class CSVs",
        ));
    }
    let mut found: Vec<(String, PathBuf)> = Vec::new();
    let mut scan = |dir: &Path, recurse: bool| -> Result<Vec<PathBuf>> {
        let mut subdirs = Vec::new();
        let rd = std::fs::read_dir(dir).map_err(|e| Error::io(dir, "cannot list directory", e))?;
        for e in rd {
            let e = e.map_err(|e| Error::io(dir, "cannot list directory", e))?;
            let p = e.path();
            if p.is_dir() {
                if recurse {
                    subdirs.push(p);
                }
            } else if p.extension().is_some_and(|x| x == "csv") {
                let stem = p.file_stem().unwrap().to_string_lossy().into_owned();
                check_class_name(&p, &stem)?;
                // A FIFO or device would block or never end: class files must be regular files.
                let ft = e
                    .file_type()
                    .map_err(|err| Error::io(&p, "cannot inspect", err))?;
                let regular = ft.is_file()
                    || (ft.is_symlink() && std::fs::metadata(&p).is_ok_and(|m| m.is_file()));
                if !regular {
                    return Err(Error::input(
                        &p,
                        None,
                        "not a regular file (a FIFO, socket or device?): class CSVs must be regular files",
                    ));
                }
                found.push((stem, p));
            }
        }
        Ok(subdirs)
    };
    for sub in scan(load_root, true)? {
        scan(&sub, false)?;
    }
    found.sort();
    for w in found.windows(2) {
        if w[0].0 == w[1].0 {
            return Err(Error::input(
                &w[1].1,
                None,
                format!(
                    "class name {:?} also comes from {}: class names must be unique",
                    w[0].0,
                    w[0].1.display()
                ),
            ));
        }
    }
    if found.is_empty() {
        return Err(Error::input(
            load_root,
            None,
            "no classes found: expected *.csv files (or csvK/*.csv)",
        ));
    }
    Ok(found)
}

/// Reads every class CSV of `load_root`.
pub fn load_classes(load_root: &Path) -> Result<Vec<Class>> {
    discover_classes(load_root)?
        .into_iter()
        .map(|(name, path)| {
            let ifs = Ifs::read_csv(&path)?;
            Ok(Class {
                key: class_key(&name),
                name,
                path,
                ifs,
            })
        })
        .collect()
}

/// One image of the dataset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sample {
    pub class: u32,
    pub row: u32,
    pub instance: u32,
    pub flip: u8,
}

/// The dataset's shape; a sample's id is its index in class-major order over the selected weight
/// rows, instances and flips.
#[derive(Clone, Debug)]
pub struct Plan {
    pub classes: Vec<Class>,
    /// Every row of the weights file (a sample's `row` indexes this).
    pub weights: Vec<WeightRow>,
    /// Instances per (class, row): `--instance` for patch modes, 1 for point modes.
    pub instances: u32,
    /// The weight rows drawn (`--weight-rows`), ascending; all by default.
    pub rows: Vec<u32>,
    /// The flips written (`--flips`), ascending; all four by default.
    pub flips: Vec<u8>,
}

pub const FLIPS: u64 = 4;

impl Plan {
    pub fn new(classes: Vec<Class>, weights: &str, instances: u32) -> Result<Plan> {
        let rows = ifs::load_weights(weights)?;
        Ok(Plan::with_rows(classes, rows, instances))
    }

    /// Every weight row and flip of `weights`.
    pub fn with_rows(classes: Vec<Class>, weights: Vec<WeightRow>, instances: u32) -> Plan {
        Plan {
            classes,
            rows: (0..weights.len() as u32).collect(),
            weights,
            instances,
            flips: (0..FLIPS as u8).collect(),
        }
    }

    /// Images drawn from one cloud: instances x the selected flips.
    pub fn per_cloud(&self) -> u64 {
        self.instances as u64 * self.flips.len() as u64
    }

    pub fn total(&self) -> u64 {
        self.classes.len() as u64 * self.rows.len() as u64 * self.per_cloud()
    }

    pub fn sample(&self, id: u64) -> Sample {
        let nf = self.flips.len() as u64;
        let flip = self.flips[(id % nf) as usize];
        let rest = id / nf;
        let instance = (rest % self.instances as u64) as u32;
        let rest = rest / self.instances as u64;
        let nr = self.rows.len() as u64;
        let row = self.rows[(rest % nr) as usize];
        let class = (rest / nr) as u32;
        Sample {
            class,
            row,
            instance,
            flip,
        }
    }

    pub fn id(&self, s: Sample) -> u64 {
        let row = self.rows.iter().position(|&r| r == s.row).unwrap_or(0) as u64;
        let flip = self.flips.iter().position(|&f| f == s.flip).unwrap_or(0) as u64;
        ((s.class as u64 * self.rows.len() as u64 + row) * self.instances as u64
            + s.instance as u64)
            * self.flips.len() as u64
            + flip
    }
}

impl Plan {
    /// Applies `--weight-rows` and `--flips` selections (all rows and flips where `None`).
    pub fn select(&mut self, rows: Option<&str>, flips: Option<&str>) -> Result<()> {
        if let Some(sel) = rows {
            self.rows = parse_selection("--weight-rows", sel, self.weights.len() as u32)?;
        }
        if let Some(sel) = flips {
            self.flips = parse_selection("--flips", sel, FLIPS as u32)?
                .into_iter()
                .map(|f| f as u8)
                .collect();
        }
        Ok(())
    }
}

/// Parses a selection such as `0`, `0-24`, `3-5,7` into sorted, distinct values below `n`.
pub fn parse_selection(flag: &'static str, text: &str, n: u32) -> Result<Vec<u32>> {
    let bad = |why: String| Error::flag(flag, format!("{text:?}: {why}"));
    let mut out = Vec::new();
    for part in text.split(',') {
        let part = part.trim();
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (a.trim(), b.trim()),
            None => (part, part),
        };
        let (a, b): (u32, u32) = match (a.parse(), b.parse()) {
            (Ok(a), Ok(b)) => (a, b),
            _ => return Err(bad(format!("{part:?} is not N or N-M"))),
        };
        if a > b {
            return Err(bad(format!("{part:?} is an empty range")));
        }
        if b >= n {
            return Err(bad(format!(
                "{b} is out of range: there are {n} (0 to {})",
                n - 1
            )));
        }
        out.extend(a..=b);
    }
    out.sort();
    out.dedup();
    if out.is_empty() {
        return Err(bad("selects nothing".into()));
    }
    Ok(out)
}

/// A seeded bijection of [0, n): a balanced Feistel network over the next even power of two,
/// cycle-walked into range. O(1) memory and random access, so every rank can compute any shard.
#[derive(Clone, Copy, Debug)]
pub struct Permutation {
    n: u64,
    half_bits: u32,
    keys: [u32; 6],
}

impl Permutation {
    pub fn new(n: u64, seed: u64) -> Self {
        let bits = 64 - n.saturating_sub(1).leading_zeros();
        let half_bits = bits.div_ceil(2).max(1);
        let mut k = hash32(seed as u32 ^ 0x243f_6a88) ^ hash32((seed >> 32) as u32 ^ 0x85a3_08d3);
        let keys = std::array::from_fn(|i| {
            k = hash32(k.wrapping_add(i as u32).wrapping_mul(0x9e37_79b9));
            k
        });
        Permutation { n, half_bits, keys }
    }

    fn round_trip(&self, v: u64) -> u64 {
        let mask = (1u64 << self.half_bits) - 1;
        let (mut l, mut r) = (v >> self.half_bits, v & mask);
        for &k in &self.keys {
            let f = hash32((r as u32) ^ k ^ ((r >> 32) as u32)) as u64 & mask;
            (l, r) = (r, l ^ f);
        }
        (l << self.half_bits) | r
    }

    /// The sample at position `i` of the order.
    pub fn apply(&self, i: u64) -> u64 {
        assert!(i < self.n);
        let mut v = self.round_trip(i);
        while v >= self.n {
            v = self.round_trip(v);
        }
        v
    }
}

/// The version of the sharded order below; recorded in every manifest, so a resume across orders is refused.
pub const ORDER_VERSION: &str = "fractaldb-order-v2";

/// Clouds per chunk of a shard's order (see [`Layout::place_cloud`]).
pub const CHUNK: u64 = 32;

/// One image of a cloud as the shard order places it: its sample, its global position, its shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placed {
    pub sample: Sample,
    pub pos: u64,
    pub shard: u64,
}

/// The sharded order (order v2): every point cloud's images land in one *block* of consecutive shards,
/// so a block's clouds are computed once, and a rank that owns a block owns all of its shards.
///
/// - The clouds (class x row) form a seeded sequence of `rows` rounds; round `r` holds every class once,
///   in a seeded order, each with a seeded row of its own, so a stretch of the sequence mixes classes.
/// - A block holds a contiguous stretch of that sequence: at least 3/5 of a round (or `per_shard`
///   clouds if fewer), i.e. `block_shards = ceil(clouds_per_block * images_per_cloud / per_shard)`
///   shards; the last block also takes the shards left over.
/// - Inside a block, image `k` of the block's `j`-th cloud is image `t = j * K + k` (its (instance, flip)
///   drawn by a seeded per-cloud permutation); it goes to the block's shard `t % b`.
///   So every cloud reaches every shard of its block; a shard lists the block's clouds in chunks of
///   [`CHUNK`] in the order they are computed, each chunk layer by layer (each cloud's first image,
///   then each one's second, ...): the writers wait for at most a chunk, never a window of shards.
///
/// Shards of a block differ in size by at most one image, and none holds more than `per_shard`.
#[derive(Clone, Debug)]
pub struct Layout {
    /// The weight rows and flips drawn (a cloud's row position maps to its weights-file row).
    pub row_ids: Vec<u32>,
    pub flip_ids: Vec<u8>,
    pub classes: u64,
    pub rows: u64,
    pub instances: u64,
    /// Images per cloud: instances x flips.
    pub per_cloud: u64,
    pub clouds: u64,
    pub total: u64,
    pub per_shard: u64,
    pub shards: u64,
    /// Shards per block (the last block may have fewer).
    pub block_shards: u64,
    pub seed: u64,
}

fn mix(seed: u64, what: u32, v: u64) -> u64 {
    let a = hash32((seed as u32) ^ hash32(what.wrapping_mul(0x9e37_79b9) ^ (v as u32)));
    let b = hash32(((seed >> 32) as u32) ^ hash32((v >> 32) as u32 ^ a));
    (a as u64) << 32 | b as u64
}

impl Layout {
    pub fn new(plan: &Plan, per_shard: u64, seed: u64) -> Layout {
        Layout::with_shape(
            plan.classes.len() as u64,
            plan.rows.clone(),
            plan.instances,
            plan.flips.clone(),
            per_shard,
            seed,
        )
    }

    /// The layout of any family whose images are (class, row, instance, flip): `rows` are the row
    /// ids drawn (FractalDB: weight rows; RCDB: groups of instances), each (class, row) one unit of
    /// render work with `instances x flips` images.
    pub fn with_shape(
        classes: u64,
        row_ids: Vec<u32>,
        instances: u32,
        flip_ids: Vec<u8>,
        per_shard: u64,
        seed: u64,
    ) -> Layout {
        let rows = row_ids.len() as u64;
        let instances = instances as u64;
        let per_cloud = instances * flip_ids.len() as u64;
        let clouds = classes * rows;
        let total = clouds * per_cloud;
        let per_shard = per_shard.max(1);
        // At least 3/5 of a round per block: a block that straddles two rounds still holds at least
        // half of its clouds' classes once, i.e. 30% of all classes.
        let target = (3 * classes).div_ceil(5).min(per_shard).max(1);
        let block_shards = (target * per_cloud).div_ceil(per_shard).max(1);
        let mut l = Layout {
            row_ids,
            flip_ids,
            classes,
            rows,
            instances,
            per_cloud,
            clouds,
            total,
            per_shard,
            shards: total.div_ceil(per_shard).max(1),
            block_shards,
            seed,
        };
        // The clouds split evenly over the shards may leave a shard one cloud's share over the limit.
        while (0..l.blocks()).any(|g| l.largest_shard(g) > per_shard) {
            l.shards += 1;
        }
        l
    }

    /// A sample's id: its index in class-major order over the rows, instances and flips drawn (the
    /// same as [`Plan::id`] for a plan's layout).
    pub fn id(&self, s: Sample) -> u64 {
        let row = self.row_ids.iter().position(|&r| r == s.row).unwrap_or(0) as u64;
        let flip = self.flip_ids.iter().position(|&f| f == s.flip).unwrap_or(0) as u64;
        ((s.class as u64 * self.rows + row) * self.instances + s.instance as u64)
            * self.flip_ids.len() as u64
            + flip
    }

    /// Blocks of `block_shards` shards each; the last one takes the shards left over as well, so no
    /// block is smaller (a small block would hold fewer classes).
    pub fn blocks(&self) -> u64 {
        (self.shards / self.block_shards).max(1)
    }

    /// Clouds of the sequence before shard boundary `s`.
    fn cloud_bound(&self, s: u64) -> u64 {
        (self.clouds as u128 * s as u128 / self.shards as u128) as u64
    }

    pub fn block_of(&self, shard: u64) -> u64 {
        (shard / self.block_shards).min(self.blocks() - 1)
    }

    pub fn block_shard_range(&self, g: u64) -> std::ops::Range<u64> {
        let end = if g + 1 == self.blocks() {
            self.shards
        } else {
            ((g + 1) * self.block_shards).min(self.shards)
        };
        g * self.block_shards..end
    }

    /// Positions in the cloud sequence of block `g`'s clouds.
    pub fn block_clouds(&self, g: u64) -> std::ops::Range<u64> {
        let r = self.block_shard_range(g);
        self.cloud_bound(r.start)..self.cloud_bound(r.end)
    }

    fn largest_shard(&self, g: u64) -> u64 {
        let (c, r) = (self.block_clouds(g), self.block_shard_range(g));
        ((c.end - c.start) * self.per_cloud).div_ceil(r.end - r.start)
    }

    /// Images of the block's shards before its `j`-th: the t < n with t % b < j.
    fn before_in_block(n: u64, b: u64, j: u64) -> u64 {
        n / b * j + (n % b).min(j)
    }

    /// The positions of shard `s` in the global order.
    pub fn shard_range(&self, s: u64) -> std::ops::Range<u64> {
        let g = self.block_of(s);
        let (c, r) = (self.block_clouds(g), self.block_shard_range(g));
        let n = (c.end - c.start) * self.per_cloud;
        let b = r.end - r.start;
        let j = s - r.start;
        let base = c.start * self.per_cloud;
        base + Self::before_in_block(n, b, j)..base + Self::before_in_block(n, b, j + 1)
    }

    /// (class, weights-file row) of the `q`-th cloud of the sequence.
    pub fn cloud(&self, q: u64) -> (u32, u32) {
        let (round, p) = (q / self.classes, q % self.classes);
        let class = Permutation::new(self.classes, mix(self.seed, 1, round)).apply(p);
        let row = Permutation::new(self.rows, mix(self.seed, 2, class)).apply(round);
        (class as u32, self.row_ids[row as usize])
    }

    /// Every image of the `q`-th cloud: where it goes, in the cloud's image order.
    ///
    /// Inside a shard, the clouds of the block come in chunks of [`CHUNK`] clouds; a chunk lists each
    /// cloud's first image in this shard (cloud order), then each cloud's second one, and so on, so
    /// neighbouring samples come from different clouds while a writer waits for at most a chunk.
    pub fn place_cloud(&self, q: u64) -> Vec<Placed> {
        let g = self.block_of(self.shard_of_cloud(q));
        let (c, r) = (self.block_clouds(g), self.block_shard_range(g));
        let k_all = self.per_cloud;
        let n = (c.end - c.start) * k_all;
        let b = r.end - r.start;
        let base = c.start * k_all;
        let (class, row) = self.cloud(q);
        let perm = Permutation::new(k_all, mix(self.seed, 3, q));
        let j = q - c.start;
        let (c0, c1) = (
            j / CHUNK * CHUNK,
            (j / CHUNK * CHUNK + CHUNK).min(c.end - c.start),
        );
        // t in [0, e) with t % b == sl.
        let count = |e: u64, sl: u64| if e > sl { (e - sl - 1) / b + 1 } else { 0 };
        // Images of cloud jj in the block's shard sl.
        let of = |jj: u64, sl: u64| count((jj + 1) * k_all, sl) - count(jj * k_all, sl);
        (0..k_all)
            .map(|k| {
                let t = j * k_all + k;
                let v = perm.apply(k);
                let sl = t % b;
                let layer = count(t, sl) - count(j * k_all, sl);
                let before_chunk = count(c0 * k_all, sl);
                let in_chunk: u64 = (c0..c1)
                    .map(|jj| of(jj, sl).min(layer) + u64::from(jj < j && of(jj, sl) > layer))
                    .sum();
                let nf = self.flip_ids.len() as u64;
                Placed {
                    sample: Sample {
                        class,
                        row,
                        instance: (v / nf) as u32,
                        flip: self.flip_ids[(v % nf) as usize],
                    },
                    pos: base + Self::before_in_block(n, b, sl) + before_chunk + in_chunk,
                    shard: r.start + sl,
                }
            })
            .collect()
    }

    /// A shard of the block that holds cloud `q` (its first one).
    fn shard_of_cloud(&self, q: u64) -> u64 {
        // The first shard boundary past q, minus one: cloud_bound is monotone, so search it.
        let (mut lo, mut hi) = (0u64, self.shards);
        while lo + 1 < hi {
            let mid = (lo + hi) / 2;
            if self.cloud_bound(mid) <= q {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        lo
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutation_is_a_bijection() {
        for n in [1u64, 2, 3, 7, 100, 1000, 4096, 5000] {
            let p = Permutation::new(n, 42);
            let mut seen = vec![false; n as usize];
            for i in 0..n {
                let v = p.apply(i);
                assert!(!seen[v as usize]);
                seen[v as usize] = true;
            }
        }
        let a: Vec<u64> = (0..100)
            .map(|i| Permutation::new(100, 1).apply(i))
            .collect();
        let b: Vec<u64> = (0..100)
            .map(|i| Permutation::new(100, 2).apply(i))
            .collect();
        assert_ne!(a, b);
        assert_ne!(a, (0..100).collect::<Vec<_>>());
    }

    fn plan_of(classes: usize, rows: usize, instances: u32) -> Plan {
        let ifs = crate::ifs::Ifs { maps: vec![] };
        Plan::with_rows(
            (0..classes)
                .map(|i| Class {
                    name: format!("{i:05}"),
                    path: PathBuf::new(),
                    ifs: ifs.clone(),
                    key: 0,
                })
                .collect(),
            vec![[1.0; 6]; rows],
            instances,
        )
    }

    /// Every sample is placed once, inside its shard's range, each shard's positions are all used,
    /// and no shard holds more than `per_shard`.
    fn check_layout(plan: &Plan, per_shard: u64, seed: u64) -> Layout {
        let l = Layout::new(plan, per_shard, seed);
        let mut seen = vec![false; l.total as usize];
        let mut ids = std::collections::HashSet::new();
        let mut clouds = std::collections::HashSet::new();
        for q in 0..l.clouds {
            assert!(clouds.insert(l.cloud(q)), "cloud {q} repeats");
            for p in l.place_cloud(q) {
                assert!(l.shard_range(p.shard).contains(&p.pos), "{p:?}");
                assert!(!seen[p.pos as usize], "position {} twice", p.pos);
                seen[p.pos as usize] = true;
                assert!(ids.insert(plan.id(p.sample)));
                assert_eq!((p.sample.class, p.sample.row), l.cloud(q));
            }
        }
        assert!(seen.iter().all(|&b| b));
        let mut next = 0;
        for s in 0..l.shards {
            let r = l.shard_range(s);
            assert_eq!(r.start, next);
            assert!(r.end - r.start <= per_shard);
            next = r.end;
        }
        assert_eq!(next, l.total);
        l
    }

    #[test]
    fn layout_places_every_sample_once() {
        for (c, r, i, per) in [
            (3, 25, 2, 64),
            (3, 25, 2, 1),
            (3, 25, 2, 7),
            (3, 25, 4, 50),
            (10, 25, 10, 100),
            (7, 3, 1, 10_000),
            (100, 25, 10, 1000),
            (1, 1, 1, 1),
        ] {
            let l = check_layout(&plan_of(c, r, i), per, 5);
            assert!(l.shards >= l.total.div_ceil(per));
        }
    }

    #[test]
    fn layout_mixes_classes_in_every_shard() {
        // FractalDB-1k's ratio (1,000 classes, 10,000 per shard) at 1/10: every shard holds at least
        // 30% of the classes and no class more than 10x its fair share.
        let plan = plan_of(100, 25, 10);
        let l = Layout::new(&plan, 1000, 0);
        assert_eq!(l.shards, 100);
        let mut per = vec![vec![0u64; 100]; l.shards as usize];
        for q in 0..l.clouds {
            for p in l.place_cloud(q) {
                per[p.shard as usize][p.sample.class as usize] += 1;
            }
        }
        for counts in &per {
            let n: u64 = counts.iter().sum();
            let present = counts.iter().filter(|&&c| c > 0).count();
            assert!(present >= 30, "{present} classes");
            assert!(*counts.iter().max().unwrap() * 100 <= 10 * n);
        }
    }

    #[test]
    fn layout_guarantees_the_class_mix_wherever_a_shard_can_hold_it() {
        // Wherever a shard has room for 30% of the classes: every shard holds at least 30% of them
        // and no class more than 10x its fair share (blocks straddling rounds included).
        for (c, i, per) in [
            (5, 10, 20),
            (7, 3, 50),
            (10, 10, 100),
            (33, 10, 700),
            (100, 10, 1000),
            (101, 4, 333),
            (333, 10, 10_000),
            (333, 10, 2_500),
            (1000, 10, 10_000),
            (64, 2, 77),
        ] {
            let plan = plan_of(c, 25, i);
            let l = Layout::new(&plan, per, 9);
            let mut per_shard = vec![vec![0u64; c]; l.shards as usize];
            for q in 0..l.clouds {
                for p in l.place_cloud(q) {
                    per_shard[p.shard as usize][p.sample.class as usize] += 1;
                }
            }
            for (s, counts) in per_shard.iter().enumerate() {
                let n: u64 = counts.iter().sum();
                let present = counts.iter().filter(|&&k| k > 0).count();
                assert!(
                    present * 10 >= 3 * c,
                    "{c} classes, {per}/shard: shard {s} holds {present} classes"
                );
                let max = *counts.iter().max().unwrap();
                assert!(
                    max * c as u64 <= 10 * n,
                    "{c} classes, {per}/shard: shard {s}: {max} of {n} from one class"
                );
            }
        }
    }

    #[test]
    fn neighbouring_samples_of_a_shard_come_from_different_clouds() {
        let plan = plan_of(100, 25, 10);
        let l = Layout::new(&plan, 1000, 4);
        let mut by_pos = vec![(0u32, 0u32); l.total as usize];
        for q in 0..l.clouds {
            for p in l.place_cloud(q) {
                by_pos[p.pos as usize] = (p.sample.class, p.sample.row);
            }
        }
        let mut same = 0;
        for s in 0..l.shards {
            let r = l.shard_range(s);
            same += (r.start + 1..r.end)
                .filter(|&p| by_pos[p as usize] == by_pos[p as usize - 1])
                .count();
        }
        assert!(
            same * 100 < l.total as usize,
            "{same} neighbours from one cloud"
        );
    }

    #[test]
    fn selections_parse_and_refuse_what_is_out_of_range() {
        assert_eq!(parse_selection("--flips", "0", 4).unwrap(), [0]);
        assert_eq!(parse_selection("--flips", "3,1,1", 4).unwrap(), [1, 3]);
        assert_eq!(
            parse_selection("--weight-rows", "3-5, 0", 25).unwrap(),
            [0, 3, 4, 5]
        );
        for bad in ["4", "2-1", "x", "", "1-"] {
            assert!(parse_selection("--flips", bad, 4).is_err(), "{bad}");
        }
    }

    #[test]
    fn sample_ids_round_trip() {
        let mut plan = Plan::with_rows(vec![], vec![[1.0; 6]; 25], 10);
        for id in [0u64, 1, 3, 4, 39, 40, 999, 1000, 123_456] {
            assert_eq!(plan.id(plan.sample(id)), id);
        }
        // A selection of rows and flips: ids stay dense, samples carry the file's row numbers.
        plan.rows = vec![3, 4, 5];
        plan.flips = vec![1, 3];
        for id in 0..3 * 10 * 2 * 2 {
            let s = plan.sample(id);
            assert!(plan.rows.contains(&s.row) && plan.flips.contains(&s.flip));
            assert_eq!(plan.id(s), id);
        }
        plan.rows = (0..25).collect();
        plan.flips = (0..4).collect();
        assert_eq!(
            plan.sample(1000),
            Sample {
                class: 1,
                row: 0,
                instance: 0,
                flip: 0
            }
        );
    }
}
