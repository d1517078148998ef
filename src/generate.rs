//! `render`: the whole job from class CSVs to folders or shards, for this rank's part of the plan.

use crate::cluster::Rank;
use crate::dataset::{self, Dataset, Env, FolderUnit, FolderWork, Run, ShardSettings, ShardWork};
use crate::error::{Error, Result};
use crate::pipeline::Summary;
use crate::plan::{self, Layout, Plan};
use crate::render::{FractalStages, ImageFormat, PngConfig, RenderConfig, Stages};
use crate::rng::NumpyRandom;
use crate::sink::Format;
use crate::sink::folder;
use crate::sink::wds::{FractalMeta, SampleMeta};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Clone, Debug)]
pub struct RenderOptions {
    pub load_root: PathBuf,
    /// A weights CSV path, or `builtin:S`.
    pub weights: String,
    pub cfg: RenderConfig,
    pub instances: u32,
    pub png: PngConfig,
    /// `--weight-rows` and `--flips` selections (all when `None`).
    pub weight_rows: Option<String>,
    pub flips: Option<String>,
    /// How the run goes (the order's seed is `job.shards.seed`).
    pub job: Run,
}

/// The shared chaos-game sequence: `np.random.seed(100); np.random.random(iterations)`.
pub fn chaos_sequence(iterations: usize) -> Vec<f64> {
    NumpyRandom::seed(100).random_vec(iterations)
}

/// The plan of a render (or a service): checked geometry, the classes, weights and selections.
pub fn load_plan(opts: &RenderOptions) -> Result<Plan> {
    opts.cfg.validate()?;
    if opts.instances == 0 {
        return Err(Error::flag("--instance", "must be at least 1"));
    }
    let classes = plan::load_classes(&opts.load_root)?;
    let mut plan = Plan::new(classes, &opts.weights, opts.cfg.instances(opts.instances))?;
    plan.select(opts.weight_rows.as_deref(), opts.flips.as_deref())?;
    Ok(plan)
}

/// FractalDB as a dataset: the plan (classes, weights, the rows and flips selected), geometry and
/// draw settings, PNG settings; the shared chaos-game sequence is computed once, here.
pub struct Fractal {
    pub plan: Plan,
    pub cfg: RenderConfig,
    pub png: PngConfig,
    /// The chaos-game sequence, made when the first stages are (after the memory check).
    u: std::sync::OnceLock<Vec<f64>>,
}

impl RenderOptions {
    /// What the bytes are ([`Fractal`]) and how this run goes ([`Run`]): every option goes to
    /// exactly one side (an exhaustive destructuring: a new option does not compile until placed).
    pub fn split(&self) -> Result<(Fractal, Run)> {
        let RenderOptions {
            load_root: _,
            weights: _,
            cfg,
            instances: _,
            png,
            weight_rows: _,
            flips: _,
            job,
        } = self;
        // load_root, weights, instances and the selections make the plan.
        let plan = load_plan(self)?;
        let ds = Fractal {
            u: std::sync::OnceLock::new(),
            plan,
            cfg: cfg.clone(),
            png: *png,
        };
        Ok((ds, job.clone()))
    }
}

pub fn run(opts: &RenderOptions) -> Result<Summary> {
    let (ds, job) = opts.split()?;
    dataset::run(&ds, &job)
}

/// The identity of the PNG encoder: the shard bytes depend on it.
pub use crate::render::ENCODER;

/// The version of FractalDB's bytes (its images; tar members with the order version). 1, and then
/// not recorded, so that the records of releases before it still resume; a rule that changes the
/// bytes bumps it, and from 2 on it is recorded (`tests/render.rs` pins a tiny dataset's digest
/// beside it).
pub const VERSION: u32 = 1;

impl Fractal {
    /// Everything that determines the shard bytes (`shards`: the order's seed and the prefix), or a
    /// folder dataset's images: every field of the dataset, the classes and weights by content.
    fn fingerprint(&self, shards: Option<&ShardSettings>) -> serde_json::Value {
        let Fractal {
            plan,
            cfg,
            png,
            u: _,
        } = self;
        let RenderConfig {
            width,
            height,
            pad_x,
            pad_y,
            iterations,
            mode,
            masks,
        } = cfg;
        let PngConfig { level, gray } = png;
        let mut h = Sha256::new();
        for c in &plan.classes {
            h.update(c.name.as_bytes());
            h.update([0]);
            h.update(c.ifs.to_csv().as_bytes());
        }
        let classes = crate::sink::wds::hex(&h.finalize());
        let mut v = serde_json::json!({
            "format": "fractaldb-folder-v1",
            "encoder": ENCODER,
            "classes": plan.classes.len(),
            "classes_sha256": classes,
            "weights": plan.weights.iter().map(|r| r.to_vec()).collect::<Vec<_>>(),
            "width": width, "height": height,
            "pad_x": pad_x, "pad_y": pad_y,
            "iterations": iterations,
            "draw_type": mode.name(),
            "masks": masks.to_string(),
            "instances": plan.instances,
            "png_level": level, "png_gray": gray,
        });
        let m = v.as_object_mut().unwrap();
        #[allow(clippy::absurd_extreme_comparisons)]
        if VERSION > 1 {
            m.insert("version".into(), VERSION.into());
        }
        // Selections only when not the default, so default runs keep their fingerprint.
        if plan.rows.len() != plan.weights.len() {
            m.insert("weight_rows".into(), serde_json::json!(plan.rows));
        }
        if plan.flips.len() as u64 != plan::FLIPS {
            m.insert("flips".into(), serde_json::json!(plan.flips));
        }
        if let Some(sh) = shards {
            // Folder images do not depend on the shard order, the seed's order part or the prefix.
            let ShardSettings {
                per_shard: _,
                seed,
                prefix,
                dali_index: _,
            } = sh;
            m.insert("format".into(), "fractaldb-wds-v1".into());
            m.insert("order".into(), plan::ORDER_VERSION.into());
            m.insert("seed".into(), (*seed).into());
            m.insert("prefix".into(), prefix.clone().into());
        }
        v
    }

    fn stages(&self, env: &Env) -> FractalStages<'_> {
        FractalStages {
            backend: env.backend.clone(),
            quiet: env.quiet,
            plan: &self.plan,
            cfg: &self.cfg,
            u: self.u.get_or_init(|| chaos_sequence(self.cfg.iterations)),
        }
    }
}

impl Dataset for Fractal {
    fn kind(&self) -> &'static str {
        "fractaldb"
    }
    fn title(&self) -> &'static str {
        "FractalDB"
    }
    fn class_names(&self) -> Vec<String> {
        self.plan.classes.iter().map(|c| c.name.clone()).collect()
    }
    fn image(&self) -> ImageFormat {
        ImageFormat {
            width: self.cfg.width,
            height: self.cfg.height,
            palette: crate::render::palette(self.cfg.mode),
        }
    }
    fn png(&self) -> PngConfig {
        self.png
    }
    /// The chaos game's points and clouds per render thread dominate (see `memory`).
    fn memory(&self, format: Format) -> (crate::memory::Estimate, &'static str) {
        let cfg = &self.cfg;
        let shape = crate::memory::RenderShape {
            iterations: cfg.iterations as u64,
            width: cfg.width as u64,
            height: cfg.height as u64,
            channels: self.png.channels() as u64,
            png_level: self.png.level,
            images_per_cloud: self.plan.per_cloud(),
            python_masks: matches!(cfg.masks, crate::render::MaskRng::Python { .. }),
            shards: format == Format::Wds,
        };
        let flags = "--iteration/--image-size-x/--image-size-y/--instance";
        (crate::memory::render_estimate(shape), flags)
    }
    fn folder_fingerprint(&self) -> serde_json::Value {
        self.fingerprint(None)
    }
    fn shard_fingerprint(&self, sh: &ShardSettings) -> serde_json::Value {
        self.fingerprint(Some(sh))
    }
    /// FractalDB's record (`fractaldb-folder.json`) also lists what the folder holds, for
    /// `finalize`; the class list (`classes.txt`) goes beside it.
    fn check_folder_record(
        &self,
        out: &Path,
        config: &serde_json::Value,
        writer: bool,
    ) -> Result<()> {
        let plan = &self.plan;
        let record = folder::Record {
            kind: "fractaldb-folder-v1".into(),
            config: config.clone(),
            classes: self.class_names(),
            rows: plan.rows.clone(),
            flips: plan.flips.clone(),
            instances: plan.instances,
            width: self.cfg.width,
            height: self.cfg.height,
            gray: self.png.gray,
            class_sha256: plan
                .classes
                .iter()
                .map(|c| crate::sink::wds::hex(&Sha256::digest(c.ifs.to_csv().as_bytes())))
                .collect(),
        };
        folder::check_or_write_record(out, &record, writer).map(|_| ())
    }
    /// Runs of other class subsets may write into one folder at once (the originals' way of
    /// splitting a dataset by hand): each class set is a slice of its own.
    fn slice(&self) -> String {
        let mut h = Sha256::new();
        for c in &self.plan.classes {
            h.update(c.name.as_bytes());
            h.update([0]);
        }
        format!("classes-{}-", &crate::sink::wds::hex(&h.finalize())[..12])
    }
    fn epoch_refusal(&self, epoch: u64) -> Option<String> {
        let cfg = &self.cfg;
        if epoch == 0 {
            None
        } else if cfg.masks.for_epoch(epoch) == cfg.masks {
            Some(
                "epochs > 0 need counter masks and a patch draw type: --mask-rng python:S and \
                 point draw types have no per-instance randomness"
                    .into(),
            )
        } else if !cfg.mode.is_patch() {
            Some(format!(
                "draw type {} has no per-instance randomness: no epochs",
                cfg.mode
            ))
        } else {
            None
        }
    }
    fn folder<'a>(&'a self, rank: &Rank, env: &Env) -> Result<Box<dyn FolderWork + 'a>> {
        let classes = (0..self.plan.classes.len() as u32)
            .filter(|c| *c as u64 % rank.world.max(1) == rank.rank)
            .collect();
        Ok(Box::new(FractalFolder {
            ds: self,
            classes,
            env: env.clone(),
        }))
    }
    fn shards<'a>(&'a self, sh: &ShardSettings, env: &Env) -> Result<Box<dyn ShardWork + 'a>> {
        Ok(Box::new(FractalShards {
            ds: self,
            layout: Layout::new(&self.plan, sh.per_shard, sh.seed),
            env: env.clone(),
        }))
    }
}

/// This rank's classes (class c goes to rank c mod world), one unit per (class, row).
struct FractalFolder<'a> {
    ds: &'a Fractal,
    classes: Vec<u32>,
    env: Env,
}

impl FolderWork for FractalFolder<'_> {
    fn dirs(&self) -> Vec<PathBuf> {
        let plan = &self.ds.plan;
        let name = |c: &u32| PathBuf::from(&plan.classes[*c as usize].name);
        self.classes.iter().map(name).collect()
    }
    fn units(&self) -> u64 {
        self.classes.len() as u64 * self.ds.plan.rows.len() as u64
    }
    fn unit(&self, i: u64) -> FolderUnit {
        let plan = &self.ds.plan;
        let rows = plan.rows.len() as u64;
        let class = self.classes[(i / rows) as usize];
        let row = plan.rows[(i % rows) as usize];
        let first = plan.id(plan::Sample {
            class,
            row,
            instance: 0,
            flip: plan.flips[0],
        });
        let images = (first..first + plan.per_cloud())
            .map(|id| {
                let s = plan.sample(id);
                (s.instance, s.flip, s, id)
            })
            .collect();
        FolderUnit { class, row, images }
    }
    fn path(&self, s: plan::Sample) -> PathBuf {
        folder::image_stem(&self.ds.plan, s)
    }
    fn images(&self) -> u64 {
        let plan = &self.ds.plan;
        self.classes.len() as u64 * plan.rows.len() as u64 * plan.per_cloud()
    }
    fn stages(&self) -> Result<Box<dyn Stages + Send + '_>> {
        Ok(Box::new(self.ds.stages(&self.env)))
    }
}

/// The shards: order v2 over the plan's clouds.
struct FractalShards<'a> {
    ds: &'a Fractal,
    layout: Layout,
    env: Env,
}

impl ShardWork for FractalShards<'_> {
    fn layout(&self) -> &Layout {
        &self.layout
    }
    fn meta(&self, epoch: u64) -> Arc<dyn SampleMeta> {
        let cfg = &self.ds.cfg;
        Arc::new(FractalMeta {
            draw_type: cfg.mode.name().to_string(),
            masks: cfg.masks.for_epoch(epoch).to_string(),
        })
    }
    fn stages(&self, _clouds: Option<&[u64]>) -> Result<Box<dyn Stages + Send + '_>> {
        Ok(Box::new(self.ds.stages(&self.env)))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn encoder_identity_names_the_deflate_crate_in_cargo_lock() {
        let lock = include_str!("../Cargo.lock");
        let key = "name = \"zlib-rs\"\nversion = \"";
        let i = lock.find(key).expect("zlib-rs in Cargo.lock");
        let v = &lock[i + key.len()..];
        let v = &v[..v.find('"').unwrap()];
        let minor: String = v.split('.').take(2).collect::<Vec<_>>().join(".");
        assert!(
            super::ENCODER.starts_with(&format!("zlib-rs-{minor} ")),
            "ENCODER {} but Cargo.lock has zlib-rs {v}: update ENCODER (shard bytes may change)",
            super::ENCODER
        );
    }
}
