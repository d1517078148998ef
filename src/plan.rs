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

/// Lists the class CSVs of `load_root`, sorted by name: `*.csv` directly inside, and inside its
/// immediate sub-directories (the original's `csvK/` layout). Other names are skipped.
pub fn discover_classes(load_root: &Path) -> Result<Vec<(String, PathBuf)>> {
    let md = std::fs::metadata(load_root)
        .map_err(|e| Error::io(load_root, "cannot open class directory", e))?;
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

/// The dataset's shape; a sample's id is its index in class-major order.
#[derive(Clone, Debug)]
pub struct Plan {
    pub classes: Vec<Class>,
    pub weights: Vec<WeightRow>,
    /// Instances per (class, row): `--instance` for patch modes, 1 for point modes.
    pub instances: u32,
}

pub const FLIPS: u64 = 4;

impl Plan {
    pub fn new(classes: Vec<Class>, weights: &str, instances: u32) -> Result<Plan> {
        let rows = ifs::load_weights(weights)?;
        Ok(Plan {
            classes,
            weights: rows,

            instances,
        })
    }

    pub fn total(&self) -> u64 {
        self.classes.len() as u64 * self.weights.len() as u64 * self.instances as u64 * FLIPS
    }

    pub fn sample(&self, id: u64) -> Sample {
        let flip = (id % FLIPS) as u8;
        let rest = id / FLIPS;
        let instance = (rest % self.instances as u64) as u32;
        let rest = rest / self.instances as u64;
        let row = (rest % self.weights.len() as u64) as u32;
        let class = (rest / self.weights.len() as u64) as u32;
        Sample {
            class,
            row,
            instance,
            flip,
        }
    }

    pub fn id(&self, s: Sample) -> u64 {
        ((s.class as u64 * self.weights.len() as u64 + s.row as u64) * self.instances as u64
            + s.instance as u64)
            * FLIPS
            + s.flip as u64
    }
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

/// Shard `s` holds positions `[s*per, min((s+1)*per, total))`.
pub fn shard_count(total: u64, per_shard: u64) -> u64 {
    total.div_ceil(per_shard)
}

pub fn shard_range(s: u64, total: u64, per_shard: u64) -> std::ops::Range<u64> {
    s * per_shard..((s + 1) * per_shard).min(total)
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

    #[test]
    fn sample_ids_round_trip() {
        let plan = Plan {
            classes: vec![],
            weights: vec![[1.0; 6]; 25],

            instances: 10,
        };
        for id in [0u64, 1, 3, 4, 39, 40, 999, 1000, 123_456] {
            assert_eq!(plan.id(plan.sample(id)), id);
        }
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
