//! `Units`: RCDB and MV-FractalDB (any dataset of the one folder driver) drawn one sample at a time,
//! pixel-identical to the PNGs its command writes. Sample `i` is the folder's image `i` in the
//! order the folder driver renders them (unit by unit: an RCDB stream stretch, an MV-FractalDB
//! model's views); a sample renders its whole unit once (kept for the unit's next samples)
//! through the same render stages and pipeline as the command, encoded as `.npy` instead of PNG.

use super::engine::{Batch, Drawn, Ticket, copy_channels};
use super::{interruptible, to_py};
use crate::dataset::{Dataset, FolderWork};
use crate::encode::Encoding;
use crate::error::Error;
use crate::pipeline::{self, Job, Jobs, Sink, Target};
use crate::render::{Cursor, Stages};
use pyo3::exceptions::{PyIndexError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyByteArray;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// A family's dataset and its folder work, prepared once (MV-FractalDB's search and models, RCDB's
/// class starts). Both are leaked on purpose: the folder work borrows the dataset for as long as
/// the Python object lives, and a dataset object is made once per process and worker.
#[pyclass(module = "fractaldb._native")]
pub struct Units {
    ds: &'static (dyn Dataset + Send),
    work: &'static (dyn FolderWork + 'static),
    stages: &'static (dyn Stages + Send + 'static),
    /// First sample of each unit; one more entry: the total.
    starts: Vec<u64>,
    /// Samples per cloud: ids `k * per_cloud ..` lie in one unit (see [`Units::per_cloud`]).
    per_cloud: u64,
    /// The last unit rendered: its index and its images (raw pixels, row-major RGB).
    last: Mutex<Option<(u64, Vec<Vec<u8>>)>>,
    /// Open clouds, each a cursor over its samples.
    open: Mutex<HashMap<u64, Arc<Mutex<Open>>>>,
    /// Made from another process's preparation.
    reused: bool,
    /// The engine asked for, and this process's GL engine once started.
    device: super::engine::Device,
    engine: super::engine::Slot,
}

/// An open cloud: its samples' canvases drawn one at a time, in id order.
struct Open {
    cursor: Box<dyn Cursor + Send>,
    /// The cursor's first sample, the one it draws next, and the cloud's end.
    from: u64,
    next: u64,
    end: u64,
    flip: u8,
    canvas: Vec<u8>,
}

/// The most samples a cloud holds (RCDB: a stretch of a class's stream; MV-FractalDB: whole models).
/// Smaller clouds mix batches better (RCDB-1k, 1 rank x 8 workers: 178 distinct classes per batch of
/// 256 at 100, 182 at 50) and cost more replay per sample when opened (RCDB: ~5 us an instance skipped).
const CLOUD_MAX: u64 = 50;

/// Samples per cloud: the most, up to [`CLOUD_MAX`], that every unit is a whole number of, in
/// multiples of `atom` (an MV-FractalDB model's views) where it can.
fn per_cloud(starts: &[u64], atom: u64) -> u64 {
    fn gcd(a: u64, b: u64) -> u64 {
        if b == 0 { a } else { gcd(b, a % b) }
    }
    let g = starts.windows(2).fold(0, |g, w| gcd(g, w[1] - w[0])).max(1);
    let atom = if g.is_multiple_of(atom) { atom } else { 1 };
    (1..=(g / atom))
        .rev()
        .map(|m| m * atom)
        .find(|&d| g.is_multiple_of(d) && d <= CLOUD_MAX.max(atom))
        .unwrap_or(1)
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
    fn prepare(
        argv: Vec<String>,
        prepared: Option<String>,
    ) -> crate::Result<(Box<dyn Dataset + Send>, crate::dataset::Run)> {
        let cli = crate::cli::Cli::try_parse_args(&argv)
            .map_err(|e| Error::Other(e.render().to_string().trim_end().to_string()))?;
        match cli.cmd {
            crate::cli::Command::Rcdb(a) => {
                let (mut ds, job) = a.to_options()?.split()?;
                if let Some(p) = prepared {
                    let v = serde_json::from_str(&p).map_err(|e| {
                        Error::Other(format!("internal: a malformed preparation: {e}"))
                    })?;
                    ds = ds.with_prepared(&v)?;
                }
                Ok((Box::new(ds), job))
            }
            crate::cli::Command::Mvfdb(a) => match {
                let mut o = a.to_options()?;
                if let Some(p) = prepared {
                    let p = serde_json::from_str(&p).map_err(|e| {
                        Error::Other(format!("internal: a malformed preparation: {e}"))
                    })?;
                    o.prepared = Some(std::sync::Arc::new(p));
                }
                o
            }
            .split()?
            {
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
            stages: self.stages,
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

    /// A cursor over samples `from..end` of one unit (`end` at most the unit's end).
    fn cursor(&self, from: u64, end: u64) -> PyResult<Open> {
        let (k, j) = self.locate(from)?;
        let u = self.work.unit(k);
        let images = &u.images[j..j + (end - from) as usize];
        let unit = crate::render::Unit {
            class: u.class,
            row: u.row,
            epoch: 0,
            instances: images.iter().map(|im| im.0).collect(),
        };
        let cursor = self
            .stages
            .cursor(unit)
            .ok_or_else(|| to_py(Error::Other("internal: this family has no cursor".into())))?
            .map_err(to_py)?;
        Ok(Open {
            cursor,
            from,
            next: from,
            end,
            flip: images[0].1,
            canvas: Vec::new(),
        })
    }

    /// Sample `i` drawn from its open cloud into `out` (`channels` per pixel, from the palette),
    /// or `None` when its cloud is not open. A sample out of the cloud's order starts its cursor
    /// again from there.
    fn draw_open(
        &self,
        py: Python<'_>,
        i: u64,
        channels: usize,
        out: impl FnOnce(&dyn Fn(&mut [u8])) -> PyResult<()>,
    ) -> PyResult<Option<()>> {
        let open = self
            .open
            .lock()
            .unwrap()
            .get(&(i / self.per_cloud))
            .cloned();
        let Some(open) = open else {
            return Ok(None);
        };
        let mut o = open.lock().unwrap();
        if o.next != i {
            *o = self.cursor(i, o.end)?;
        }
        let o = &mut *o;
        let slot = py
            .detach(|| o.cursor.next(&mut o.canvas))
            .map_err(to_py)?
            .ok_or_else(|| to_py(Error::Other("internal: a cloud ended early".into())))?;
        if o.from + slot as u64 != i {
            return Err(to_py(Error::Other(format!(
                "internal: a cursor drew sample {} for {i}",
                o.from + slot as u64
            ))));
        }
        o.next = i + 1;
        let f = self.ds.image();
        let (w, h) = (f.width as usize, f.height as usize);
        let (canvas, flip) = (&o.canvas, o.flip);
        out(&|buf: &mut [u8]| {
            crate::render::write_flip_into(canvas, w, h, flip, &f.palette, channels, buf)
        })?;
        Ok(Some(()))
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
    /// `argv`: the command line (`fractaldb rcdb|mvfdb` and its flags); `prepared`: what
    /// `prepared()` of a dataset with the same command line returned (another process's), so
    /// MV-FractalDB's search and model pass are not run again.
    /// `backend`, `gpu`, `egl_device`, `gl_memory`: as `Dataset`'s (MV-FractalDB's `auto` is the
    /// CPU engine: its GL views follow the driver's point rule).
    #[new]
    #[pyo3(signature = (argv, prepared = None, backend = "cpu", gpu = None, egl_device = None, gl_memory = None))]
    fn new(
        py: Python<'_>,
        argv: Vec<String>,
        prepared: Option<String>,
        backend: &str,
        gpu: Option<i64>,
        egl_device: Option<usize>,
        gl_memory: Option<u64>,
    ) -> PyResult<Self> {
        let mut device =
            super::engine::Device::new(backend, gpu, egl_device, gl_memory).map_err(to_py)?;
        let reused = prepared.is_some();
        // The Python side passes -j 1, -q and --backend (cpu unless asked); env(false) writes nothing. The whole
        // dataset, never a launcher's rank of it (RANK in the environment): the torch side splits.
        let (ds, job) = interruptible(py, || Self::prepare(argv, prepared))?;
        let ds: &'static (dyn Dataset + Send) = Box::leak(ds);
        let rank = crate::cluster::Rank::default();
        let work = ds.folder(&rank, &job.env(false)).map_err(to_py)?;
        let work: &'static (dyn FolderWork + 'static) = Box::leak(work);
        let stages: &'static (dyn Stages + Send) = Box::leak(work.stages().map_err(to_py)?);
        let mut starts = Vec::with_capacity(work.units() as usize + 1);
        let mut at = 0u64;
        for k in 0..work.units() {
            starts.push(at);
            at += work.unit(k).images.len() as u64;
        }
        starts.push(at);
        // An MV-FractalDB model's views (one sample row), kept together in a cloud.
        let atom = match work.units() {
            0 => 1,
            _ => {
                let first = work.unit(0);
                let row = first.images.first().map(|im| im.2.row);
                let n = first
                    .images
                    .iter()
                    .take_while(|im| Some(im.2.row) == row)
                    .count();
                if n == first.images.len() { 1 } else { n as u64 }
            }
        };
        device.auto_gl = ds.kind() != "mvfdb";
        Ok(Units {
            device,
            engine: super::engine::Slot::default(),
            ds,
            work,
            stages,
            per_cloud: per_cloud(&starts, atom.max(1)),
            starts,
            last: Mutex::new(None),
            open: Mutex::default(),
            reused,
        })
    }

    /// What the preparation found, for another process (`Units(argv, prepared)`): JSON (RCDB's
    /// class starts; MV-FractalDB's search and model pass), or `None`.
    fn prepared(&self) -> Option<String> {
        self.ds.prepared().map(|v| v.to_string())
    }

    /// The engine this process draws on: "cpu" or "gl" (`auto` is decided here, on first use).
    #[getter]
    fn backend(&self) -> PyResult<&'static str> {
        Ok(if self.gl()?.is_some() { "gl" } else { "cpu" })
    }

    /// Samples `ids` written into `out`, a `numpy.ndarray` of `len(ids)` x H x W x 3 (or x 1 for
    /// the gray value alone; checked before the draw); returns their labels. On the GL engine the
    /// whole batch is one request (its units' wanted instances drawn together); on the CPU from
    /// open clouds where open.
    #[pyo3(signature = (ids, out, epoch = 0))]
    fn _batch_into(
        &self,
        py: Python<'_>,
        ids: Vec<u64>,
        out: &Bound<'_, PyAny>,
        epoch: u64,
    ) -> PyResult<Vec<u32>> {
        Ticket::out_shape(out, ids.len(), self.shape(), true)?;
        self._batch_submit(py, ids, epoch)?.write_into(py, out)
    }

    /// Samples `ids` handed to the engine at once: a ticket whose `write_into(out)` waits for them
    /// (on the CPU engine they are drawn here).
    #[pyo3(signature = (ids, epoch = 0))]
    fn _batch_submit(&self, py: Python<'_>, ids: Vec<u64>, epoch: u64) -> PyResult<Ticket> {
        no_epochs(epoch)?;
        let at = ids
            .iter()
            .map(|&i| self.locate(i))
            .collect::<PyResult<Vec<_>>>()?;
        let labels = at.iter().map(|&(k, _)| self.work.unit(k).class).collect();
        let (h, w, c) = self.shape();
        let drawn = match self.gl()? {
            Some(engine) => {
                let mut batch = Batch::new(0);
                for &(k, j) in &at {
                    let u = self.work.unit(k);
                    let (instance, flip, ..) = u.images[j];
                    batch.add(k, u.class, u.row, instance, flip);
                }
                Drawn::Canvases {
                    pending: engine.submit(batch.units).map_err(to_py)?,
                    place: batch.place,
                    palette: Box::new(self.ds.image().palette),
                }
            }
            None => {
                // The CPU engine: each sample's RGB pixels, from its open cloud or its unit.
                let mut rgb = Vec::with_capacity(ids.len());
                for (&i, &(k, j)) in ids.iter().zip(&at) {
                    let mut got = None;
                    self.draw_open(py, i, c, |fill| {
                        let mut v = vec![0; h * w * c];
                        fill(&mut v);
                        got = Some(v);
                        Ok(())
                    })?;
                    rgb.push(match got {
                        Some(v) => v,
                        None => self.unit_image(py, k, j)?,
                    });
                }
                Drawn::Rgb(rgb)
            }
        };
        Ok(Ticket::new(drawn, labels, (h, w, c), true))
    }

    /// Whether this dataset was made from another process's preparation.
    #[getter]
    fn reused_preparation(&self) -> bool {
        self.reused
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

    /// (class, row, instance, flip) of sample `i`: RCDB's (class, group of instances, instance, 1),
    /// MV-FractalDB's (class, model, view, 1).
    fn key(&self, i: u64) -> PyResult<(u32, u32, u32, u8)> {
        let (k, j) = self.locate(i)?;
        let s = self.work.unit(k).images[j].2;
        Ok((s.class, s.row, s.instance, s.flip))
    }

    /// The path the command's folder output writes sample `i` to, relative to its `--save_root`.
    fn file_name(&self, i: u64) -> PyResult<String> {
        let (k, j) = self.locate(i)?;
        let s = self.work.unit(k).images[j].2;
        let path = crate::dataset::with_extension(self.work.path(s), Encoding::Png);
        Ok(path.to_string_lossy().into_owned())
    }

    /// Samples per cloud: ids `k * per_cloud .. (k + 1) * per_cloud` lie in one unit, drawn in
    /// order from an open cloud (an RCDB stretch of one class's stream; whole MV-FractalDB models).
    #[getter]
    fn per_cloud(&self) -> u64 {
        self.per_cloud
    }

    /// Opens cloud `k`: its samples are then drawn one at a time, in id order, from its stream
    /// (no-op when open).
    fn open_cloud(&self, k: u64) -> PyResult<()> {
        let n = self.__len__() as u64 / self.per_cloud;
        if k >= n {
            return Err(PyIndexError::new_err(format!(
                "cloud {k} of a dataset of {n}"
            )));
        }
        if self.open.lock().unwrap().contains_key(&k) {
            return Ok(());
        }
        let o = self.cursor(k * self.per_cloud, (k + 1) * self.per_cloud)?;
        self.open.lock().unwrap().insert(k, Arc::new(Mutex::new(o)));
        Ok(())
    }

    /// Lets cloud `k` go.
    fn close_cloud(&self, k: u64) {
        self.open.lock().unwrap().remove(&k);
    }

    /// Lets every open cloud go.
    fn close_clouds(&self) {
        self.open.lock().unwrap().clear();
    }

    /// How many clouds are open.
    #[getter]
    fn open_clouds(&self) -> usize {
        self.open.lock().unwrap().len()
    }

    /// Writes sample `i` into `out` (a writable C-contiguous uint8 numpy array of H x W x 3, or
    /// H x W x 1 for the gray value alone); returns its label. `epoch` must be 0 (these families
    /// have one set of images).
    #[pyo3(signature = (i, out, epoch = 0))]
    fn _sample_into(
        &self,
        py: Python<'_>,
        i: u64,
        out: &Bound<'_, PyAny>,
        epoch: u64,
    ) -> PyResult<u32> {
        no_epochs(epoch)?;
        let (k, j) = self.locate(i)?;
        let label = self.work.unit(k).class;
        let (h, w, c) = Ticket::out_shape(out, 1, self.shape(), true)?;
        // Read again with the GIL held from there to the write: no Python code runs between.
        let write = |fill: &dyn Fn(&mut [u8])| super::write_array(out, (h, w, c), fill);
        if self.draw_open(py, i, c, write)?.is_some() {
            return Ok(label);
        }
        let rgb = self.unit_image(py, k, j)?;
        write(&|buf: &mut [u8]| copy_channels(&rgb, c, buf))?;
        Ok(label)
    }

    /// Sample `i`: (its pixels, row-major RGB; its label).
    #[pyo3(signature = (i, epoch = 0))]
    fn sample<'py>(
        &self,
        py: Python<'py>,
        i: u64,
        epoch: u64,
    ) -> PyResult<(Bound<'py, PyByteArray>, u32)> {
        no_epochs(epoch)?;
        let (k, j) = self.locate(i)?;
        let label = self.work.unit(k).class;
        let (h, w, c) = self.shape();
        let mut got = None;
        self.draw_open(py, i, c, |fill| {
            got = Some(PyByteArray::new_with(py, h * w * c, |buf| {
                fill(buf);
                Ok(())
            })?);
            Ok(())
        })?;
        if let Some(b) = got {
            return Ok((b, label));
        }
        Ok((PyByteArray::new(py, &self.unit_image(py, k, j)?), label))
    }
}

fn no_epochs(epoch: u64) -> PyResult<()> {
    if epoch != 0 {
        return Err(PyValueError::new_err(format!(
            "epoch {epoch}: RCDB and MV-FractalDB have one set of images (epoch 0); an epoch only \
             reorders them in fractaldb.torch"
        )));
    }
    Ok(())
}

impl Units {
    /// This process's GL engine, or `None` when it draws on the CPU.
    fn gl(&self) -> PyResult<Option<super::engine::Engine>> {
        self.engine.get(&self.device, || self.stages).map_err(to_py)
    }

    /// Unit `k` rendered on the GL engine: its images' RGB pixels, in unit order.
    fn render_gl(&self, engine: &super::engine::Engine, k: u64) -> crate::Result<Vec<Vec<u8>>> {
        let u = self.work.unit(k);
        let unit = crate::render::Unit {
            class: u.class,
            row: u.row,
            epoch: 0,
            instances: u.images.iter().map(|im| im.0).collect(),
        };
        let canvases = engine.submit(vec![unit])?.wait()?;
        let f = self.ds.image();
        let (w, h) = (f.width as usize, f.height as usize);
        Ok(u.images
            .iter()
            .zip(&canvases[0])
            .map(|(im, canvas)| {
                let mut rgb = Vec::new();
                crate::render::write_flip(canvas, w, h, im.1, &f.palette, 3, &mut rgb);
                rgb
            })
            .collect())
    }

    /// Image `j` of unit `k` (RGB), through the last-unit cache.
    fn unit_image(&self, py: Python<'_>, k: u64, j: usize) -> PyResult<Vec<u8>> {
        let cached = self
            .last
            .lock()
            .unwrap()
            .as_ref()
            .is_some_and(|(u, _)| *u == k);
        let engine = self.gl()?;
        let render = |k| match &engine {
            Some(e) => self.render_gl(e, k),
            None => self.render(k),
        };
        if !cached {
            let images = interruptible(py, || render(k))?;
            *self.last.lock().unwrap() = Some((k, images));
        }
        let last = self.last.lock().unwrap();
        match last.as_ref() {
            Some((u, images)) if *u == k => Ok(images[j].clone()),
            // Another thread rendered another unit in between: this one again.
            _ => {
                drop(last);
                let mut images = interruptible(py, || render(k))?;
                Ok(std::mem::take(&mut images[j]))
            }
        }
    }
}
