//! `Units`: RCDB and MV-FractalDB (any dataset of the one folder driver) drawn one sample at a time,
//! pixel-identical to the PNGs its command writes. Sample `i` is the folder's image `i` in the
//! order the folder driver renders them (unit by unit: an RCDB stream stretch, an MV-FractalDB
//! model's views); a sample renders its whole unit once (kept for the unit's next samples)
//! through the same render stages and pipeline as the command, encoded as `.npy` instead of PNG.

use super::{interruptible, to_py};
use crate::dataset::{Dataset, FolderWork};
use crate::encode::Encoding;
use crate::error::Error;
use crate::pipeline::{self, Job, Jobs, Sink, Target};
use crate::render::Stages;
use pyo3::exceptions::PyIndexError;
use pyo3::prelude::*;
use pyo3::types::PyByteArray;
use std::sync::Mutex;

/// A family's dataset and its folder work, prepared once (MV-FractalDB's search and models, RCDB's
/// class starts). Both are leaked on purpose: the folder work borrows the dataset for as long as
/// the Python object lives, and a dataset object is made once per process and worker.
#[pyclass(module = "fractaldb._native")]
pub struct Units {
    ds: &'static (dyn Dataset + Send),
    work: &'static (dyn FolderWork + 'static),
    stages: Box<dyn Stages + Send + 'static>,
    /// First sample of each unit; one more entry: the total.
    starts: Vec<u64>,
    /// The last unit rendered: its index and its images (raw pixels, row-major RGB).
    last: Mutex<Option<(u64, Vec<Vec<u8>>)>>,
}

/// The one job of one unit, then nothing.
struct One(Mutex<Option<Job>>);

impl Jobs for One {
    fn claim(&self, _max: usize) -> Option<Vec<(u64, Job)>> {
        self.0.lock().unwrap().take().map(|j| vec![(0, j)])
    }
}

/// The `.npy` bytes of each image, by its position in the unit.
struct Collect(Mutex<Vec<Option<Vec<u8>>>>);

impl Sink for Collect {
    fn writers(&self) -> usize {
        1
    }
    fn route(&self, _t: &Target) -> usize {
        0
    }
    fn accept(&self, _writer: usize, t: Target, bytes: Vec<u8>) -> crate::Result<()> {
        self.0.lock().unwrap()[t.pos as usize] = Some(bytes);
        Ok(())
    }
}

/// The array data of a version 1-3 `.npy` file (its header says the shape; the caller knows it).
fn npy_data(bytes: &[u8]) -> crate::Result<&[u8]> {
    let bad = || Error::Other("internal: a malformed .npy image".into());
    let (len, at) = match bytes.get(6) {
        Some(1) => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        Some(2 | 3) => (
            u32::from_le_bytes(bytes.get(8..12).ok_or_else(bad)?.try_into().unwrap()) as usize,
            12,
        ),
        _ => return Err(bad()),
    };
    bytes.get(at + len..).ok_or_else(bad)
}

impl Units {
    /// The family's dataset from its command's flags (`argv[1]` is `rcdb` or `mvfdb`).
    fn prepare(argv: Vec<String>) -> crate::Result<(Box<dyn Dataset + Send>, crate::dataset::Run)> {
        use clap::Parser;
        let cli = crate::cli::Cli::try_parse_from(&argv)
            .map_err(|e| Error::Other(e.render().to_string().trim_end().to_string()))?;
        match cli.cmd {
            crate::cli::Command::Rcdb(a) => {
                let (ds, job) = a.to_options()?.split()?;
                Ok((Box::new(ds), job))
            }
            crate::cli::Command::Mvfdb(a) => match a.to_options()?.split()? {
                Some((ds, job)) => Ok((Box::new(ds), job)),
                None => Err(Error::flag("--views", "the dataset has views: at least 1")),
            },
            _ => Err(Error::Other("internal: Units is for rcdb and mvfdb".into())),
        }
    }

    /// Unit `k` rendered: its images' pixels, in unit order.
    fn render(&self, k: u64) -> crate::Result<Vec<Vec<u8>>> {
        let u = self.work.unit(k);
        let n = u.images.len();
        let images = u
            .images
            .iter()
            .enumerate()
            .map(|(j, &(slot, flip, sample, _))| {
                let t = Target {
                    sample,
                    pos: j as u64,
                    shard: 0,
                    epoch: 0,
                };
                (slot, flip, t)
            });
        let jobs = One(Mutex::new(Some(pipeline::job_of(u.class, u.row, images))));
        let sink = Collect(Mutex::new(vec![None; n]));
        let ctx = pipeline::Context {
            stages: &*self.stages,
            image: self.ds.image(),
            png: self.ds.png(),
            encoding: Encoding::Npy,
        };
        let threads = pipeline::Threads {
            render: 1,
            encode: 1,
            queue: 2,
        };
        let stats = pipeline::Stats::default();
        pipeline::run(&ctx, &jobs, &sink, threads, &stats, &Default::default())?;
        let got = sink.0.into_inner().unwrap();
        let f = self.ds.image();
        let pixels = (f.width * f.height) as usize;
        got.into_iter()
            .map(|b| {
                let b = b.ok_or_else(|| Error::Other("internal: an image was not drawn".into()))?;
                let data = npy_data(&b)?;
                // A gray palette's .npy has one channel; the PNG (and the sample) is RGB.
                Ok(if data.len() == pixels {
                    data.iter().flat_map(|&v| [v, v, v]).collect()
                } else {
                    data.to_vec()
                })
            })
            .collect()
    }

    /// (unit, position in it) of sample `i`.
    fn locate(&self, i: u64) -> PyResult<(u64, usize)> {
        let total = *self.starts.last().unwrap();
        if i >= total {
            return Err(PyIndexError::new_err(format!(
                "sample {i} of a dataset of {total}"
            )));
        }
        let k = self.starts.partition_point(|&s| s <= i) - 1;
        Ok((k as u64, (i - self.starts[k]) as usize))
    }
}

#[pymethods]
impl Units {
    /// `argv`: the command line (`fractaldb rcdb|mvfdb` and its flags).
    #[new]
    fn new(py: Python<'_>, argv: Vec<String>) -> PyResult<Self> {
        // The Python side passes --backend cpu, -j 1 and -q; env(false) writes nothing. The whole
        // dataset, never a launcher's rank of it (RANK in the environment): the torch side splits.
        let (ds, job) = interruptible(py, || Self::prepare(argv))?;
        let ds: &'static (dyn Dataset + Send) = Box::leak(ds);
        let rank = crate::cluster::Rank::default();
        let work = ds.folder(&rank, &job.env(false)).map_err(to_py)?;
        let work: &'static (dyn FolderWork + 'static) = Box::leak(work);
        let stages = work.stages().map_err(to_py)?;
        let mut starts = Vec::with_capacity(work.units() as usize + 1);
        let mut at = 0u64;
        for k in 0..work.units() {
            starts.push(at);
            at += work.unit(k).images.len() as u64;
        }
        starts.push(at);
        Ok(Units {
            ds,
            work,
            stages,
            starts,
            last: Mutex::new(None),
        })
    }

    fn __len__(&self) -> usize {
        *self.starts.last().unwrap() as usize
    }

    /// Class names by label index.
    #[getter]
    fn class_names(&self) -> Vec<String> {
        self.ds.class_names()
    }

    /// (height, width, channels) of every sample.
    #[getter]
    fn shape(&self) -> (usize, usize, usize) {
        let f = self.ds.image();
        (f.height as usize, f.width as usize, 3)
    }

    /// Units (RCDB stream stretches, MV-FractalDB models): samples `unit_start(k)..unit_start(k+1)`.
    #[getter]
    fn units(&self) -> u64 {
        self.starts.len() as u64 - 1
    }

    fn unit_start(&self, k: u64) -> PyResult<u64> {
        self.starts
            .get(k as usize)
            .copied()
            .ok_or_else(|| PyIndexError::new_err(format!("unit {k} of {}", self.units())))
    }

    /// The path the command's folder output writes sample `i` to, relative to its `--save_root`.
    fn file_name(&self, i: u64) -> PyResult<String> {
        let (k, j) = self.locate(i)?;
        let s = self.work.unit(k).images[j].2;
        let path = crate::dataset::with_extension(self.work.path(s), Encoding::Png);
        Ok(path.to_string_lossy().into_owned())
    }

    /// Sample `i`: (its pixels, row-major RGB; its label).
    fn sample<'py>(&self, py: Python<'py>, i: u64) -> PyResult<(Bound<'py, PyByteArray>, u32)> {
        let (k, j) = self.locate(i)?;
        let label = self.work.unit(k).class;
        let cached = self
            .last
            .lock()
            .unwrap()
            .as_ref()
            .is_some_and(|(u, _)| *u == k);
        if !cached {
            let images = interruptible(py, || self.render(k))?;
            *self.last.lock().unwrap() = Some((k, images));
        }
        let last = self.last.lock().unwrap();
        match last.as_ref() {
            Some((u, images)) if *u == k => Ok((PyByteArray::new(py, &images[j]), label)),
            // Another thread rendered another unit in between: this one again.
            _ => {
                drop(last);
                let images = interruptible(py, || self.render(k))?;
                Ok((PyByteArray::new(py, &images[j]), label))
            }
        }
    }
}
