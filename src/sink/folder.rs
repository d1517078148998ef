//! The original layout: `{save_root}/{class}/{class}_{row:02}_count_{instance}_flip{t}.png`.

use crate::error::Result;
use crate::fsutil;
use crate::pipeline::{Sink, Target};
use crate::plan::{Plan, Sample};
use std::path::{Path, PathBuf};

pub fn image_path(root: &Path, plan: &Plan, s: Sample) -> PathBuf {
    let name = &plan.classes[s.class as usize].name;
    root.join(name).join(format!(
        "{name}_{:02}_count_{}_flip{}.png",
        s.row, s.instance, s.flip
    ))
}

pub struct FolderSink<'a> {
    pub root: PathBuf,
    pub plan: &'a Plan,
    pub writers: usize,
}

impl<'a> FolderSink<'a> {
    /// Creates the class directories of `classes` and removes temporary files a killed run left.
    pub fn new(root: &Path, plan: &'a Plan, classes: &[u32], writers: usize) -> Result<Self> {
        fsutil::create_dir(root)?;
        fsutil::remove_stale_tmp_of(root, |_| false); // a killed run's writability probe
        fsutil::check_writable(root)?;
        for &c in classes {
            let dir = root.join(&plan.classes[c as usize].name);
            fsutil::create_dir(&dir)?;
            fsutil::remove_stale_tmp(&dir);
        }
        Ok(FolderSink {
            root: root.to_path_buf(),
            plan,
            writers: writers.max(1),
        })
    }
}

impl Sink for FolderSink<'_> {
    fn writers(&self) -> usize {
        self.writers
    }
    fn route(&self, t: &Target) -> usize {
        (t.pos % self.writers as u64) as usize
    }
    fn accept(&self, _writer: usize, t: Target, png: Vec<u8>) -> Result<()> {
        fsutil::write_atomic(&image_path(&self.root, self.plan, t.sample), &png, false)
    }
}
