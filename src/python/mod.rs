//! The Python extension (`fractaldb._native`, built by maturin with the `pyo3` feature): a thin
//! layer over the same library as the command line. `cli` runs any command; `Dataset` draws single
//! samples of a render plan in memory, pixel-identical to the PNGs `render` writes.
//!
//! Long calls release the GIL and run on a worker thread while the calling thread checks Python's
//! signals every 50 ms: Ctrl-C sets [`crate::interrupt`], the work stops within about a second of
//! work (inside a unit too: between instances, inside a chaos game), and `KeyboardInterrupt` is
//! raised. A sample that needs a new cloud runs that way too.

mod engine;
mod units;

use crate::error::Error;
use crate::plan::Plan;
use crate::render::{self, RenderConfig};
use pyo3::exceptions::{PyIndexError, PyOSError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyByteArray;
use std::sync::{Arc, Mutex};

/// Our errors as Python exceptions: bad input (a file and line, a flag) is `ValueError`, a failed
/// file operation `OSError`, the rest `RuntimeError`; the message is the command line's.
fn to_py(e: Error) -> PyErr {
    match e {
        Error::Input { .. } | Error::Flag { .. } => PyValueError::new_err(e.to_string()),
        Error::Io { .. } => PyOSError::new_err(e.to_string()),
        _ => PyRuntimeError::new_err(e.to_string()),
    }
}

/// Runs `work` on a scoped thread with the GIL released, checking Python's signals meanwhile; a
/// signal's exception (KeyboardInterrupt) stops the work and is raised once it has stopped.
fn interruptible<T: Send>(
    py: Python<'_>,
    work: impl FnOnce() -> crate::Result<T> + Send,
) -> PyResult<T> {
    use crossbeam_channel::RecvTimeoutError;
    std::thread::scope(|s| {
        // The worker says when it is done, so the wait ends then, not at the next 50 ms tick (a
        // cloud of a few milliseconds used to cost 50).
        let (done, finished) = crossbeam_channel::bounded::<()>(1);
        let h = s.spawn(move || {
            let r = work();
            let _ = done.send(());
            r
        });
        let mut raised: Option<PyErr> = None;
        loop {
            let wait = py.detach(|| finished.recv_timeout(std::time::Duration::from_millis(50)));
            if !matches!(wait, Err(RecvTimeoutError::Timeout)) {
                break; // done, or the worker panicked (dropping its sender)
            }
            if raised.is_none()
                && let Err(e) = py.check_signals()
            {
                crate::interrupt(true);
                raised = Some(e);
            }
        }
        let r = h.join();
        crate::interrupt(false);
        if let Some(e) = raised {
            return Err(e);
        }
        match r {
            Ok(r) => r.map_err(to_py),
            Err(_) => Err(PyRuntimeError::new_err("fractaldb: internal error (panic)")),
        }
    })
}

/// The message of a command line `argv` that does not parse (a wrong flag, a bad value), for an
/// exception that carries it; `None` when it parses or asks for help or the version.
#[pyfunction]
fn usage_error(argv: Vec<String>) -> Option<String> {
    match crate::cli::Cli::try_parse_args(&argv) {
        Err(e) if e.exit_code() != 0 => Some(e.render().to_string().trim_end().to_string()),
        _ => None,
    }
}

/// Runs the command line with `argv` (`argv[0]` is the program name); returns the exit code. Help
/// and usage errors print as the binary prints them; other errors raise.
#[pyfunction]
fn cli(py: Python<'_>, argv: Vec<String>) -> PyResult<i32> {
    let parsed = match crate::cli::Cli::try_parse_args(&argv) {
        Ok(c) => c,
        Err(e) => {
            // As the binary: --help and --version print to stdout, and a failed write (`>
            // /dev/full`) is an error, never exit 0.
            let code = e.exit_code();
            let written = e.print().and_then(|()| {
                use std::io::Write;
                std::io::stdout().flush()
            });
            if let Err(w) = written {
                crate::say!("fractaldb: error: cannot write: {w}");
                return Ok(1);
            }
            return Ok(code);
        }
    };
    interruptible(py, move || crate::cli::run(parsed)).map(|()| 0)
}

/// The data address of `out` if it is a `numpy.ndarray` (exactly) that is writable, C-contiguous,
/// uint8 and of `shape`; `TypeError`/`ValueError` naming what is wrong otherwise.
fn array_address(out: &Bound<'_, PyAny>, shape: (usize, usize, usize)) -> PyResult<usize> {
    use pyo3::exceptions::PyTypeError;
    let py = out.py();
    let ndarray = py.import("numpy")?.getattr("ndarray")?;
    if !out.get_type().is(&ndarray) {
        return Err(PyTypeError::new_err(format!(
            "sample_into needs a numpy.ndarray, got {}",
            out.get_type().name()?
        )));
    }
    let ai = out.getattr("__array_interface__")?;
    let (address, readonly): (usize, bool) = ai.get_item("data")?.extract()?;
    let typestr: String = ai.get_item("typestr")?.extract()?;
    let dims: Vec<usize> = ai.get_item("shape")?.extract()?;
    let contiguous = ai.get_item("strides")?.is_none();
    let (h, w, c) = shape;
    if typestr != "|u1" || readonly || !contiguous || dims.iter().product::<usize>() != h * w * c {
        return Err(PyValueError::new_err(format!(
            "sample_into needs a writable C-contiguous uint8 array of {h}x{w}x{c} elements, got \
             {typestr} {dims:?}{}{}",
            if readonly { ", read-only" } else { "" },
            if contiguous { "" } else { ", not C-contiguous" }
        )));
    }
    if address == 0 && h * w * c > 0 {
        return Err(PyValueError::new_err("sample_into: the array has no data"));
    }
    Ok(address)
}

/// Fills `out`, a numpy array of `shape` checked by [`array_address`], through `fill`; the caller
/// holds the GIL from the call to its end.
fn write_array(
    out: &Bound<'_, PyAny>,
    shape: (usize, usize, usize),
    fill: impl FnOnce(&mut [u8]),
) -> PyResult<()> {
    let address = array_address(out, shape)?;
    let len = shape.0 * shape.1 * shape.2;
    // SAFETY: `array_address` checked that `out` is a `numpy.ndarray` (not a subclass, whose
    // `__array_interface__` could lie) whose own interface reports a writable, C-contiguous
    // buffer of exactly `len` bytes at `address`. `out` is borrowed for this call, so the array
    // and its buffer live; the GIL is held from that check to the end of the write (`fill` runs no
    // Python code), so no Python code can resize or free the buffer meanwhile; nothing in Rust
    // refers to it.
    let dst = unsafe { std::slice::from_raw_parts_mut(address as *mut u8, len) };
    fill(dst);
    Ok(())
}

/// A render plan drawn one sample at a time (`sample(i)`), in the plan's canonical order: class,
/// weight row, instance, flip (the `render` flags' selections applied).
#[pyclass(module = "fractaldb._native")]
struct Dataset {
    plan: Plan,
    cfg: RenderConfig,
    u: Vec<f64>,
    gray: bool,
    /// The last cloud and canvas drawn: consecutive samples of a cloud compute it once, and the
    /// flips of an instance draw its canvas once.
    cache: Mutex<Option<Last>>,
    /// Clouds held open (`open_cloud`) by cloud index, for samples drawn from many clouds in any
    /// order (the on-the-fly mixing of `fractaldb.torch`).
    open: Mutex<std::collections::HashMap<u64, Arc<Open>>>,
    /// Canvas buffers reused by samples of open clouds (a fresh one per sample costs page faults).
    canvases: Mutex<Vec<Vec<u8>>>,
    /// The engine asked for, and this process's GL engine once started.
    device: engine::Device,
    engine: engine::Slot,
}

/// FractalDB's plan, settings and chaos sequence, owned by the GL engine's thread.
struct OwnedFractal {
    plan: Plan,
    cfg: RenderConfig,
    u: Vec<f64>,
}

impl render::Stages for OwnedFractal {
    /// Only the GL engine opens it (`open_on`); the CPU engine draws in the dataset itself.
    fn backend(&self) -> &render::Backend {
        &render::CPU
    }
    fn open_on<'s>(
        &'s self,
        backend: &render::Backend,
        worker: usize,
        stats: &'s render::StageStats,
    ) -> crate::Result<Box<dyn render::Stage + 's>> {
        let ctx = render::StageContext {
            plan: &self.plan,
            cfg: &self.cfg,
            u: &self.u,
            quiet: true,
            stats,
        };
        backend.open(worker, ctx)
    }
}

/// A gray patch canvas (every pixel 0 or 127) as one bit per pixel: an open cloud's kept canvas
/// in 16 KiB instead of 128 at 362x362 (512 open clouds: 8 MB instead of 64).
fn pack_gray(canvas: &[u8], bits: &mut Vec<u8>) {
    bits.extend(canvas.chunks(8).map(|c| {
        c.iter()
            .enumerate()
            .fold(0u8, |b, (j, &v)| b | (u8::from(v != 0) << j))
    }));
}

/// The 8 pixels of each packed byte.
const UNPACKED: [[u8; 8]; 256] = {
    let mut t = [[0u8; 8]; 256];
    let mut b = 0;
    while b < 256 {
        let mut j = 0;
        while j < 8 {
            if (b >> j) & 1 == 1 {
                t[b][j] = 127;
            }
            j += 1;
        }
        b += 1;
    }
    t
};

/// [`pack_gray`] undone: `n` pixels of 0 or 127.
fn unpack_gray(bits: &[u8], n: usize, canvas: &mut Vec<u8>) {
    canvas.reserve(bits.len() * 8);
    for &b in bits {
        canvas.extend_from_slice(&UNPACKED[b as usize]);
    }
    canvas.truncate(n);
}

/// (instance, epoch) of a canvas.
type CanvasKey = (u32, u64);

/// An open cloud and its last canvas, by (instance, epoch): the flips of an instance, drawn one
/// after another from this cloud (`fractaldb.torch` keeps them together), raster it once.
struct Open {
    held: Held,
    last: Mutex<Option<(CanvasKey, Vec<u8>)>>,
}

/// An open cloud: what its samples need and no more. Patch draw types keep the cover (512 KiB at
/// 362x362; the points are dropped), point draw types the one canvas every instance shares, and a
/// cloud too large for a cover the cloud itself.
enum Held {
    Cover {
        cover: render::cpu::Cover,
        points: usize,
    },
    Canvas(Vec<u8>),
    Cloud {
        cloud: crate::ifs::Cloud,
        cover: render::cpu::Cover,
    },
}

/// The last cloud by (class, weight row), with the buffers that made it, and the last canvas by
/// (instance, epoch).
struct Last {
    cloud_key: (u32, u32),
    cloud: crate::ifs::Cloud,
    /// The cloud's patch cover, built with it (shared by its instances).
    cover: render::cpu::Cover,
    scratch: render::cpu::Scratch,
    canvas_key: Option<(u32, u64)>,
    canvas: Vec<u8>,
    /// The last sample's pixels (reused: a fresh 400 KB buffer per sample costs page faults).
    out: Vec<u8>,
    out_key: Option<(crate::plan::Sample, u64)>,
}

#[pymethods]
impl Dataset {
    /// `argv`: `render` flags as on the command line (`--load-root DIR --instance 10 ...`);
    /// `backend` "cpu", "gl" or "auto" (resolved in the process that draws), on the GPU of `gpu`
    /// (a CUDA ordinal; default `LOCAL_RANK`) or `egl_device`, its batches sized by `gl_memory` MiB.
    #[new]
    #[pyo3(signature = (argv, backend = "cpu", gpu = None, egl_device = None, gl_memory = None))]
    fn new(
        py: Python<'_>,
        argv: Vec<String>,
        backend: &str,
        gpu: Option<i64>,
        egl_device: Option<usize>,
        gl_memory: Option<u64>,
    ) -> PyResult<Self> {
        let device = engine::Device::new(backend, gpu, egl_device, gl_memory).map_err(to_py)?;
        let mut full = vec!["fractaldb".to_string(), "render".to_string()];
        full.extend(argv);
        let cli = crate::cli::Cli::try_parse_args(&full)
            .map_err(|e| PyValueError::new_err(e.to_string()))?;
        let crate::cli::Command::Render(args) = cli.cmd else {
            unreachable!("parsed as render")
        };
        let opts = args.to_options().map_err(to_py)?;
        let plan = interruptible(py, || crate::generate::load_plan(&opts))?;
        Ok(Dataset {
            u: crate::generate::chaos_sequence(opts.cfg.iterations),
            gray: opts.png.gray,
            cfg: opts.cfg,
            plan,
            cache: Mutex::new(None),
            open: Mutex::default(),
            canvases: Mutex::default(),
            device,
            engine: engine::Slot::default(),
        })
    }

    /// The engine this process draws on: "cpu" or "gl" (`auto` is decided here, on first use).
    #[getter]
    fn backend(&self) -> PyResult<&'static str> {
        Ok(if self.gl()?.is_some() { "gl" } else { "cpu" })
    }

    /// Samples `ids` of epoch `epoch` written into `out`, a `numpy.ndarray` of `len(ids)` x `shape`
    /// (or x 1 channel for a gray draw type; a batch tensor's array, checked as `_sample_into`
    /// checks it, before the draw); returns their labels. On the GL engine the whole batch is one
    /// request (its clouds computed and drawn together).
    #[pyo3(signature = (ids, out, epoch = 0))]
    fn _batch_into(
        &self,
        py: Python<'_>,
        ids: Vec<u64>,
        out: &Bound<'_, PyAny>,
        epoch: u64,
    ) -> PyResult<Vec<u32>> {
        engine::Ticket::out_shape(out, ids.len(), self.shape(), !self.cfg.mode.is_color())?;
        self._batch_submit(py, ids, epoch)?.write_into(py, out)
    }

    /// Samples `ids` of epoch `epoch` handed to the engine at once: a ticket whose `write_into(out)`
    /// waits for them (on the CPU engine they are drawn here).
    #[pyo3(signature = (ids, epoch = 0))]
    fn _batch_submit(&self, py: Python<'_>, ids: Vec<u64>, epoch: u64) -> PyResult<engine::Ticket> {
        let samples = ids
            .iter()
            .map(|&i| self.sample_of(i))
            .collect::<PyResult<Vec<_>>>()?;
        self.check_epoch(epoch)?;
        let (pending, place) = match self.gl()? {
            Some(e) => self.submit(&e, &samples, epoch)?,
            None => {
                let mut canvases = Vec::with_capacity(ids.len());
                for &i in &ids {
                    canvases.push(vec![self.cpu_canvas(py, i, epoch)?]);
                }
                let place = samples.iter().enumerate().map(|(j, s)| (j, 0, s.flip));
                (engine::Pending::ready(canvases), place.collect())
            }
        };
        let drawn = engine::Drawn::Canvases {
            pending,
            place,
            palette: Box::new(render::palette(self.cfg.mode)),
        };
        let labels = samples.iter().map(|s| s.class).collect();
        let gray = !self.cfg.mode.is_color();
        Ok(engine::Ticket::new(drawn, labels, self.shape(), gray))
    }

    fn __len__(&self) -> usize {
        self.plan.total() as usize
    }

    /// Class names by label.
    #[getter]
    fn class_names(&self) -> Vec<String> {
        self.plan.classes.iter().map(|c| c.name.clone()).collect()
    }

    /// (height, width, channels) of every sample.
    #[getter]
    fn shape(&self) -> (usize, usize, usize) {
        (
            self.cfg.height as usize,
            self.cfg.width as usize,
            if self.gray { 1 } else { 3 },
        )
    }

    /// Sample `i` of epoch `epoch` written into `out`, a `numpy.ndarray` (exactly that type) that
    /// is writable, C-contiguous, uint8 and of `shape` (a row of a batch tensor: no intermediate
    /// copy); returns its label. Anything else raises `TypeError`/`ValueError`: the array is checked
    /// here, next to the write, not trusted from the caller.
    #[pyo3(signature = (i, out, epoch = 0))]
    fn _sample_into(
        &self,
        py: Python<'_>,
        i: u64,
        out: &Bound<'_, PyAny>,
        epoch: u64,
    ) -> PyResult<u32> {
        let s = self.sample_of(i)?;
        self.check_epoch(epoch)?;
        let (h, w, c) = self.shape();
        // Checked once before the draw (a clear error without the work) and read again after it,
        // with the GIL held from there to the write: no Python code runs in between.
        array_address(out, (h, w, c))?;
        if let Some(engine) = self.gl()? {
            let (pending, _) = self.submit(&engine, &[s], epoch)?;
            let canvases = interruptible(py, move || pending.wait())?;
            self.write_into_array(out, &canvases[0][0], s)?;
            return Ok(s.class);
        }
        if let Some(held) = self.held_of(i) {
            let canvas = py.detach(|| self.draw_held(&held, s, epoch));
            self.write_into_array(out, &canvas, s)?;
            self.canvases.lock().unwrap().push(canvas);
            return Ok(s.class);
        }
        self.run_draw(py, s, || self.draw_canvas(s, epoch))?;
        // Another thread may have drawn in between: the canvas is made sure of (a no-op when it is
        // still this sample's) under the same lock as the read.
        let mut guard = self.cache.lock().unwrap();
        self.draw_canvas_in(&mut guard, s, epoch).map_err(to_py)?;
        let last = guard.as_ref().expect("drawn");
        self.write_into_array(out, &last.canvas, s)?;
        Ok(s.class)
    }

    /// Computes cloud `k` (samples `k * per_cloud ..`) and holds it open: its samples are then
    /// drawn from it in any order, interleaved with other open clouds' (no-op when open).
    fn open_cloud(&self, py: Python<'_>, k: u64) -> PyResult<()> {
        let n = self.plan.total() / self.plan.per_cloud().max(1);
        if k >= n {
            return Err(PyIndexError::new_err(format!(
                "cloud {k} of a dataset of {n}"
            )));
        }
        if self.open.lock().unwrap().contains_key(&k) {
            return Ok(());
        }
        let held = interruptible(py, || self.hold(k))?;
        let open = Open {
            held,
            last: Mutex::new(None),
        };
        self.open.lock().unwrap().insert(k, Arc::new(open));
        Ok(())
    }

    /// Lets cloud `k` go (its samples are drawn the ordinary way again).
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

    /// Samples per cloud (class x weight row): consecutive ids share a cloud.
    #[getter]
    fn per_cloud(&self) -> u64 {
        self.plan.per_cloud()
    }

    /// (class, weight row, instance, flip) of sample `i`.
    fn key(&self, i: u64) -> PyResult<(u32, u32, u32, u8)> {
        let s = self.sample_of(i)?;
        Ok((s.class, s.row, s.instance, s.flip))
    }

    /// The path `render --format folder` writes sample `i` to, relative to its `--out`.
    fn file_name(&self, i: u64) -> PyResult<String> {
        let s = self.sample_of(i)?;
        let p = crate::sink::folder::image_path(std::path::Path::new(""), &self.plan, s);
        Ok(p.to_string_lossy().into_owned())
    }

    /// Sample `i` of epoch `epoch`: (the pixels, row-major, `shape` bytes; its label).
    #[pyo3(signature = (i, epoch = 0))]
    fn sample<'py>(
        &self,
        py: Python<'py>,
        i: u64,
        epoch: u64,
    ) -> PyResult<(Bound<'py, PyByteArray>, u32)> {
        let s = self.sample_of(i)?;
        self.check_epoch(epoch)?;
        // The GL engine's canvas, or one from the sample's open cloud (its buffer pooled).
        let (canvas, pooled) = match self.gl()? {
            Some(engine) => {
                let (pending, _) = self.submit(&engine, &[s], epoch)?;
                let mut got = interruptible(py, move || pending.wait())?;
                (Some(got.remove(0).remove(0)), false)
            }
            None => {
                let held = self.held_of(i);
                (
                    held.map(|h| py.detach(|| self.draw_held(&h, s, epoch))),
                    true,
                )
            }
        };
        if let Some(canvas) = canvas {
            let (h, w, c) = self.shape();
            let pal = render::palette(self.cfg.mode);
            let out = PyByteArray::new_with(py, h * w * c, |buf| {
                render::write_flip_into(&canvas, w, h, s.flip, &pal, c, buf);
                Ok(())
            })?;
            if pooled {
                self.canvases.lock().unwrap().push(canvas);
            }
            return Ok((out, s.class));
        }
        self.run_draw(py, s, || self.draw(s, epoch))?;
        // Another thread may have drawn in between: the sample is drawn again, under the same
        // lock as the read, if the cache moved on.
        let mut guard = self.cache.lock().unwrap();
        if guard.as_ref().and_then(|l| l.out_key) != Some((s, epoch)) {
            self.draw_in(&mut guard, s, epoch).map_err(to_py)?;
        }
        Ok((PyByteArray::new(py, &guard.as_ref().unwrap().out), s.class))
    }
}

impl Dataset {
    /// This process's GL engine, or `None` when it draws on the CPU.
    fn gl(&self) -> PyResult<Option<engine::Engine>> {
        self.engine
            .get(&self.device, || OwnedFractal {
                plan: self.plan.clone(),
                cfg: self.cfg.clone(),
                u: self.u.clone(),
            })
            .map_err(to_py)
    }

    /// `samples` (of epoch `epoch`) submitted to the GL engine as one request: a unit per cloud
    /// with its wanted instances; with each sample's (unit, slot, flip) in it.
    fn submit(
        &self,
        engine: &engine::Engine,
        samples: &[crate::plan::Sample],
        epoch: u64,
    ) -> PyResult<(engine::Pending, engine::Place)> {
        let mut batch = engine::Batch::new(epoch);
        for s in samples {
            let key = (u64::from(s.class) << 32) | u64::from(s.row);
            batch.add(key, s.class, s.row, s.instance, s.flip);
        }
        let pending = engine.submit(batch.units).map_err(to_py)?;
        Ok((pending, batch.place))
    }

    /// The canvas of sample `i` of epoch `epoch` on the CPU engine (from its open cloud, or the
    /// cache of the last cloud).
    fn cpu_canvas(&self, py: Python<'_>, i: u64, epoch: u64) -> PyResult<Vec<u8>> {
        let s = self.sample_of(i)?;
        if let Some(held) = self.held_of(i) {
            return Ok(py.detach(|| self.draw_held(&held, s, epoch)));
        }
        self.run_draw(py, s, || self.draw_canvas(s, epoch))?;
        let mut guard = self.cache.lock().unwrap();
        self.draw_canvas_in(&mut guard, s, epoch).map_err(to_py)?;
        Ok(guard.as_ref().expect("drawn").canvas.clone())
    }

    /// Writes sample `s`'s image from its `canvas` into the numpy array `out` (checked here, with
    /// the GIL held by the caller from the check to the end of the write).
    fn write_into_array(
        &self,
        out: &Bound<'_, PyAny>,
        canvas: &[u8],
        s: crate::plan::Sample,
    ) -> PyResult<()> {
        let (h, w, c) = self.shape();
        let pal = render::palette(self.cfg.mode);
        write_array(out, (h, w, c), |dst| {
            render::write_flip_into(canvas, w, h, s.flip, &pal, c, dst)
        })
    }

    /// The open cloud of sample `i`, if its cloud is open.
    fn held_of(&self, i: u64) -> Option<Arc<Open>> {
        let k = i / self.plan.per_cloud().max(1);
        self.open.lock().unwrap().get(&k).cloned()
    }

    /// The cloud of sample `s` into `cloud`: `Err(Interrupted)` when Ctrl-C stopped it (the cloud
    /// is then incomplete), an error naming the class file and row when it is degenerate.
    fn compute_cloud(
        &self,
        s: crate::plan::Sample,
        scratch: &mut render::cpu::Scratch,
        cloud: &mut crate::ifs::Cloud,
    ) -> crate::Result<()> {
        let class = &self.plan.classes[s.class as usize];
        let weights = &self.plan.weights[s.row as usize];
        let made =
            render::cpu::compute_cloud(&class.ifs, weights, &self.u, &self.cfg, scratch, cloud);
        crate::check_interrupt()?;
        made.map_err(|why| render::cpu::degenerate_error(&class.path, s.row as usize, why))
    }

    /// Cloud `k` computed and reduced to what its samples need ([`Held`]).
    fn hold(&self, k: u64) -> crate::Result<Held> {
        let s = self.plan.sample(k * self.plan.per_cloud());
        let class = &self.plan.classes[s.class as usize];
        let mut cloud = crate::ifs::Cloud::default();
        self.compute_cloud(s, &mut render::cpu::Scratch::default(), &mut cloud)?;
        let mut cover = render::cpu::Cover::default();
        cover.build(&cloud, &self.cfg);
        Ok(if cover.draws(&self.cfg) {
            let points = cloud.xs.len();
            Held::Cover { cover, points }
        } else if !self.cfg.mode.is_patch() {
            // Point draw types have no per-instance randomness: one canvas serves every instance.
            let mut canvas = Vec::new();
            render::cpu::raster_points(&cloud, &self.cfg, class.key, s.row, 0, &mut canvas);
            Held::Canvas(canvas)
        } else {
            Held::Cloud { cloud, cover }
        })
    }

    /// The canvas of sample `s` of epoch `epoch` from its open cloud, in a reused buffer (give it
    /// back to `canvases`).
    fn draw_held(&self, open: &Open, s: crate::plan::Sample, epoch: u64) -> Vec<u8> {
        let mut canvas = self.canvases.lock().unwrap().pop().unwrap_or_default();
        let mut last = open.last.lock().unwrap();
        let key = (s.instance, epoch);
        let gray = !self.cfg.mode.is_color();
        if let Some((k, c)) = last.as_ref()
            && *k == key
        {
            canvas.clear();
            if gray {
                unpack_gray(c, (self.cfg.width * self.cfg.height) as usize, &mut canvas);
            } else {
                canvas.extend_from_slice(c);
            }
            return canvas;
        }
        let class_key = self.plan.classes[s.class as usize].key;
        let cfg = RenderConfig {
            masks: self.cfg.masks.for_epoch(epoch),
            ..self.cfg.clone()
        };
        match &open.held {
            Held::Canvas(c) => {
                canvas.clear();
                canvas.extend_from_slice(c);
                return canvas; // one canvas for every instance: nothing to keep
            }
            Held::Cover { cover, points } => {
                let at = (class_key, s.row, s.instance);
                render::cpu::raster_cover(cover, *points, &cfg, at, &mut canvas);
            }
            Held::Cloud { cloud, cover } => {
                render::cpu::raster(
                    cloud,
                    cover,
                    &cfg,
                    class_key,
                    s.row,
                    s.instance,
                    &mut canvas,
                );
            }
        }
        let mut keep = last.take().map(|(_, c)| c).unwrap_or_default();
        keep.clear();
        if gray {
            pack_gray(&canvas, &mut keep);
        } else {
            keep.extend_from_slice(&canvas);
        }
        *last = Some((key, keep));
        canvas
    }

    /// Runs a draw of sample `s` with the GIL released. One that computes a new cloud (the long
    /// part, as long as `--iteration` makes it) runs where Ctrl-C can stop it in the middle
    /// ([`interruptible`]); one from the cached cloud is a single raster and runs here.
    fn run_draw(
        &self,
        py: Python<'_>,
        s: crate::plan::Sample,
        draw: impl FnOnce() -> crate::Result<()> + Send,
    ) -> PyResult<()> {
        let cached = self
            .cache
            .lock()
            .unwrap()
            .as_ref()
            .is_some_and(|c| c.cloud_key == (s.class, s.row));
        if cached {
            py.detach(draw).map_err(to_py)
        } else {
            interruptible(py, draw)
        }
    }

    fn check_epoch(&self, epoch: u64) -> PyResult<()> {
        if epoch > 0
            && (!self.cfg.mode.is_patch() || self.cfg.masks.for_epoch(epoch) == self.cfg.masks)
        {
            return Err(PyValueError::new_err(format!(
                "epoch {epoch}: draw type {} with masks {} has no per-instance randomness, so every epoch is the same",
                self.cfg.mode, self.cfg.masks
            )));
        }
        Ok(())
    }

    fn sample_of(&self, i: u64) -> PyResult<crate::plan::Sample> {
        if i >= self.plan.total() {
            return Err(PyIndexError::new_err(format!(
                "sample {i} of a dataset of {}",
                self.plan.total()
            )));
        }
        Ok(self.plan.sample(i))
    }

    /// Draws sample `s` of epoch `epoch` into the cache's `out`.
    fn draw(&self, s: crate::plan::Sample, epoch: u64) -> crate::Result<()> {
        self.draw_in(&mut self.cache.lock().unwrap(), s, epoch)
    }

    /// [`draw`](Self::draw) with the cache's lock held by the caller.
    fn draw_in(
        &self,
        guard: &mut Option<Last>,
        s: crate::plan::Sample,
        epoch: u64,
    ) -> crate::Result<()> {
        self.draw_canvas_in(guard, s, epoch)?;
        let last = guard.as_mut().expect("drawn");
        render::write_flip(
            &last.canvas,
            self.cfg.width as usize,
            self.cfg.height as usize,
            s.flip,
            &render::palette(self.cfg.mode),
            if self.gray { 1 } else { 3 },
            &mut last.out,
        );
        last.out_key = Some((s, epoch));
        Ok(())
    }

    /// Makes the cache hold the canvas of sample `s` of epoch `epoch` (its cloud computed once).
    fn draw_canvas(&self, s: crate::plan::Sample, epoch: u64) -> crate::Result<()> {
        self.draw_canvas_in(&mut self.cache.lock().unwrap(), s, epoch)
    }

    /// [`draw_canvas`](Self::draw_canvas) with the cache's lock held by the caller, so that what it
    /// leaves is read under the same lock.
    fn draw_canvas_in(
        &self,
        guard: &mut Option<Last>,
        s: crate::plan::Sample,
        epoch: u64,
    ) -> crate::Result<()> {
        let class = &self.plan.classes[s.class as usize];
        if guard
            .as_ref()
            .is_none_or(|c| c.cloud_key != (s.class, s.row))
        {
            let (scratch, cover) = guard
                .take()
                .map(|o| (o.scratch, o.cover))
                .unwrap_or_default();
            let mut last = Last {
                cloud_key: (s.class, s.row),
                cloud: crate::ifs::Cloud::default(),
                cover,
                scratch,
                canvas_key: None,
                canvas: Vec::new(),
                out: Vec::new(),
                out_key: None,
            };
            // Interrupted, the cloud is incomplete: it is not kept (the buffers are dropped too).
            self.compute_cloud(s, &mut last.scratch, &mut last.cloud)?;
            last.cover.build(&last.cloud, &self.cfg);
            *guard = Some(last);
        }
        let last = guard.as_mut().unwrap();
        if last.canvas_key != Some((s.instance, epoch)) {
            let cfg = RenderConfig {
                masks: self.cfg.masks.for_epoch(epoch),
                ..self.cfg.clone()
            };
            render::cpu::raster(
                &last.cloud,
                &last.cover,
                &cfg,
                class.key,
                s.row,
                s.instance,
                &mut last.canvas,
            );
            last.canvas_key = Some((s.instance, epoch));
        }
        Ok(())
    }
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_function(wrap_pyfunction!(cli, m)?)?;
    m.add_function(wrap_pyfunction!(usage_error, m)?)?;
    m.add_class::<Dataset>()?;
    m.add_class::<units::Units>()?;
    m.add_class::<engine::Ticket>()?;
    Ok(())
}
