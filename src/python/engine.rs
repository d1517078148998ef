//! The GL engine of one process: a family's render stage kept open on a thread of its own for as long
//! as a dataset lives, fed whole batches. Its EGL context is made on the first batch in the process
//! that draws (a forked DataLoader worker makes its own; the parent's thread is not in the child, and
//! what the child inherited of it is left alone), so a context is never shared across a fork. Each
//! batch is one request: its units (a cloud with the instances the batch wants, an RCDB stream
//! stretch, MV-FractalDB models) go to the stage as the pipeline's units go, and the canvases come
//! back by unit and slot; the stage keeps its device batches, shaders and buffers between requests.

use crate::cli::BackendArg;
use crate::error::{Error, Result};
use crate::render::gl::{GlOptions, egl};
use crate::render::{Backend, Canvas, Feed, StageStats, Stages, Unit};
use crossbeam_channel::{Receiver, Sender};
use pyo3::prelude::*;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

/// A request's canvases: by unit, by slot (the unit's `instances`).
pub type Canvases = Vec<Vec<Vec<u8>>>;

/// Each sample's canvas in a request: (unit, slot, flip).
pub type Place = Vec<(usize, usize, u8)>;

/// Which engine a Python dataset draws on, resolved in the process that draws.
#[derive(Clone, Copy, Debug)]
pub struct Device {
    pub want: BackendArg,
    /// CUDA ordinal (default: `LOCAL_RANK`, as the commands choose it) or EGL device index.
    pub gpu: Option<i64>,
    pub egl_device: Option<usize>,
    /// `--gl-memory`: what one context may size its batches by.
    pub memory_mib: Option<u64>,
    /// `auto` takes the GL engine on a hardware device (false: MV-FractalDB, whose views follow the
    /// driver's point rule, measured equal to the goldens on llvmpipe only).
    pub auto_gl: bool,
}

impl Device {
    pub fn new(
        backend: &str,
        gpu: Option<i64>,
        egl_device: Option<usize>,
        memory_mib: Option<u64>,
    ) -> Result<Self> {
        let want = match backend {
            "cpu" => BackendArg::Cpu,
            "gl" => BackendArg::Gl,
            "auto" => BackendArg::Auto,
            _ => {
                return Err(Error::flag(
                    "backend",
                    format!("{backend:?}: expected \"cpu\", \"gl\" or \"auto\""),
                ));
            }
        };
        if memory_mib.is_some_and(|m| m < 64) {
            return Err(Error::flag("gl_memory", "at least 64 (MiB)"));
        }
        Ok(Device {
            want,
            gpu,
            egl_device,
            memory_mib,
            auto_gl: true,
        })
    }

    /// The GL device of this process, or `None` for the CPU engine. `auto` probes the devices (a
    /// context opened and closed), so it is asked in the process that draws, never before a fork.
    fn gl(&self) -> Result<Option<egl::Choice>> {
        let rank = crate::cluster::from_env(None, None).unwrap_or_default();
        let choice = crate::cli::gl_choice(self.gpu, self.egl_device, &rank);
        Ok(match self.want {
            BackendArg::Cpu => None,
            BackendArg::Gl => {
                egl::load()?;
                Some(choice)
            }
            BackendArg::Auto => (self.auto_gl && egl::hardware_usable(&[choice])).then_some(choice),
        })
    }
}

/// A dataset's engine slot: resolved and started once per process, on first use.
#[derive(Default)]
pub struct Slot(Mutex<Option<(u32, Option<Engine>)>>);

impl Slot {
    /// This process's engine (`None`: the CPU engine draws), started with `stages` on first use.
    pub fn get<S: Stages + Send + 'static>(
        &self,
        device: &Device,
        stages: impl FnOnce() -> S,
    ) -> Result<Option<Engine>> {
        let mut slot = self.0.lock().unwrap();
        let pid = std::process::id();
        if let Some((p, e)) = slot.as_ref()
            && *p == pid
        {
            return Ok(e.clone());
        }
        // A forked child's copy of the parent's engine: its thread is not here, and its channel
        // may have been mid-operation at the fork. Left as it is, never used or dropped.
        if let Some(old) = slot.take() {
            std::mem::forget(old);
        }
        let engine = match device.gl()? {
            None => None,
            Some(choice) => {
                let gl = GlOptions {
                    memory_mib: device.memory_mib,
                    ..GlOptions::default()
                };
                Some(Engine::start(stages(), Backend::Gl(vec![choice], gl)))
            }
        };
        *slot = Some((pid, engine.clone()));
        Ok(engine)
    }
}

/// A handle on the engine's thread (clones share it; the thread ends when the last is dropped).
#[derive(Clone)]
pub struct Engine {
    tx: Sender<Request>,
}

struct Request {
    units: Vec<Unit>,
    reply: Sender<Result<Canvases>>,
}

impl Engine {
    /// Starts the thread; its stage (the context) is opened on the first request.
    pub fn start<S: Stages + Send + 'static>(stages: S, backend: Backend) -> Engine {
        let (tx, rx) = crossbeam_channel::unbounded();
        std::thread::Builder::new()
            .name("fractaldb-gl".into())
            .spawn(move || serve(&stages, &backend, rx))
            .expect("cannot start the GL engine's thread");
        Engine { tx }
    }

    /// `units` handed to the engine; their canvases come with [`Pending::wait`]. Requests queue in
    /// order, so a caller that submits the next batch before waiting for this one keeps the device
    /// busy (the FractalDB stage runs the next batch's chaos games between this one's rasters).
    pub fn submit(&self, units: Vec<Unit>) -> Result<Pending> {
        let (reply, got) = crossbeam_channel::bounded(1);
        if units.iter().all(|u| u.instances.is_empty()) {
            let _ = reply.send(Ok(units.iter().map(|_| Vec::new()).collect()));
            return Ok(Pending(got));
        }
        self.tx
            .send(Request { units, reply })
            .map_err(|_| ended())?;
        Ok(Pending(got))
    }
}

fn ended() -> Error {
    Error::Other("internal: the GL engine's thread has ended".into())
}

/// A submitted request's canvases, when they come.
pub struct Pending(Receiver<Result<Canvases>>);

impl Pending {
    /// Canvases drawn already (the CPU engine).
    pub fn ready(canvases: Canvases) -> Self {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let _ = tx.send(Ok(canvases));
        Pending(rx)
    }

    pub fn wait(self) -> Result<Canvases> {
        self.0.recv().map_err(|_| ended())?
    }
}

/// A batch of samples as one request: a unit per cloud (or stream stretch, or model) with the
/// instances the batch wants of it, each once; and where each sample's canvas is.
pub struct Batch {
    epoch: u64,
    pub units: Vec<Unit>,
    unit_of: HashMap<u64, usize>,
    slot_of: HashMap<(usize, u32), usize>,
    pub place: Place,
}

impl Batch {
    pub fn new(epoch: u64) -> Self {
        Batch {
            epoch,
            units: Vec::new(),
            unit_of: HashMap::new(),
            slot_of: HashMap::new(),
            place: Vec::new(),
        }
    }

    /// The next sample: instance `instance` (flipped `flip`) of the unit `key` names, which is
    /// (`class`, `row`).
    pub fn add(&mut self, key: u64, class: u32, row: u32, instance: u32, flip: u8) {
        let epoch = self.epoch;
        let units = &mut self.units;
        let u = *self.unit_of.entry(key).or_insert_with(|| {
            units.push(Unit {
                class,
                row,
                epoch,
                instances: Vec::new(),
            });
            units.len() - 1
        });
        let k = *self.slot_of.entry((u, instance)).or_insert_with(|| {
            units[u].instances.push(instance);
            units[u].instances.len() - 1
        });
        self.place.push((u, k, flip));
    }
}

/// The engine's thread: waits for a request, opens the stage (a failed open fails that request; the
/// next one tries again) and runs it until the handles are gone. A stage that stops (an error, an
/// interrupt) fails what it was drawing and is opened again for the next request.
fn serve(stages: &dyn Stages, backend: &Backend, rx: Receiver<Request>) {
    let stats = StageStats::default();
    let mut feed = Queue {
        rx,
        closed: false,
        waiting: VecDeque::new(),
        owner: HashMap::new(),
        requests: HashMap::new(),
        next_unit: 0,
        next_request: 0,
    };
    while feed.wait() {
        let ran = stages
            .open_on(backend, 0, &stats)
            .and_then(|mut stage| stage.run(&mut feed));
        match ran {
            Ok(()) if feed.closed => return,
            Ok(()) => feed.fail_all(Error::Interrupted),
            Err(e) => feed.fail_all(e),
        }
    }
}

/// A request being drawn: its canvases so far, how many are missing, where they go.
struct Drawing {
    canvases: Canvases,
    missing: usize,
    units: Vec<u64>,
    reply: Sender<Result<Canvases>>,
}

/// The stage's feed: units of the requests in arrival order, canvases back to their request.
struct Queue {
    rx: Receiver<Request>,
    closed: bool,
    waiting: VecDeque<(u64, Unit)>,
    /// Unit id -> (request, unit index in it).
    owner: HashMap<u64, (u64, usize)>,
    requests: HashMap<u64, Drawing>,
    next_unit: u64,
    next_request: u64,
}

impl Queue {
    fn take(&mut self, r: Request) {
        let id = self.next_request;
        self.next_request += 1;
        let mut d = Drawing {
            canvases: r
                .units
                .iter()
                .map(|u| vec![Vec::new(); u.instances.len()])
                .collect(),
            missing: r.units.iter().map(|u| u.instances.len()).sum(),
            units: Vec::new(),
            reply: r.reply,
        };
        if d.missing == 0 {
            let _ = d.reply.send(Ok(d.canvases));
            return;
        }
        for (k, unit) in r.units.into_iter().enumerate() {
            if unit.instances.is_empty() {
                continue;
            }
            let u = self.next_unit;
            self.next_unit += 1;
            self.owner.insert(u, (id, k));
            d.units.push(u);
            self.waiting.push_back((u, unit));
        }
        self.requests.insert(id, d);
    }

    /// Blocks until a unit waits; false when every handle is gone.
    fn wait(&mut self) -> bool {
        while self.waiting.is_empty() {
            match self.rx.recv() {
                Ok(r) => self.take(r),
                Err(_) => {
                    self.closed = true;
                    return false;
                }
            }
        }
        true
    }

    fn pop(&mut self, max: usize) -> Option<Vec<(u64, Unit)>> {
        let n = max.max(1).min(self.waiting.len());
        (n > 0).then(|| self.waiting.drain(..n).collect())
    }

    /// Every request in hand fails with `why`.
    fn fail_all(&mut self, why: Error) {
        self.waiting.clear();
        self.owner.clear();
        for (_, d) in self.requests.drain() {
            let _ = d.reply.send(Err(copy_of(&why)));
        }
    }
}

/// A copy of `e` for another request: the same kind (a bad input stays a `ValueError` in Python).
fn copy_of(e: &Error) -> Error {
    match e {
        Error::Input { path, line, msg } => Error::input(path.clone(), *line, msg.clone()),
        Error::Flag { flag, msg } => Error::flag(flag, msg.clone()),
        Error::Interrupted => Error::Interrupted,
        other => Error::Other(other.to_string()),
    }
}

impl Feed for Queue {
    fn claim(&mut self, max: usize) -> Option<Vec<(u64, Unit)>> {
        if !self.wait() {
            return None;
        }
        self.pop(max)
    }

    fn try_claim(&mut self, max: usize) -> Option<Vec<(u64, Unit)>> {
        while self.waiting.is_empty() {
            match self.rx.try_recv() {
                Ok(r) => self.take(r),
                Err(_) => return None,
            }
        }
        self.pop(max)
    }

    fn emit(&mut self, canvas: Canvas) -> bool {
        let Some(&(id, k)) = self.owner.get(&canvas.unit) else {
            return true; // a failed request's late canvas
        };
        let d = self
            .requests
            .get_mut(&id)
            .expect("a request of a known unit");
        let slot = &mut d.canvases[k][canvas.slot];
        if slot.is_empty() {
            d.missing -= 1;
        }
        *slot = canvas.pixels;
        if d.missing == 0 {
            let d = self.requests.remove(&id).unwrap();
            for u in &d.units {
                self.owner.remove(u);
            }
            let _ = d.reply.send(Ok(d.canvases));
        }
        true
    }
}

/// What a [`Ticket`] writes: canvases coming from the GL engine (by unit and slot, each sample's
/// place in them, flipped and coloured by the palette), or RGB images drawn already (the CPU engine).
pub enum Drawn {
    Canvases {
        pending: Pending,
        place: Place,
        palette: Box<[[u8; 3]; 256]>,
    },
    Rgb(Vec<Vec<u8>>),
}

/// A batch submitted (`_batch_submit`): `write_into(out)` waits for its samples and writes them
/// into `out`, a `numpy.ndarray` of `size` x H x W x C, once. Submitting the next batch before
/// writing this one keeps the GL engine busy meanwhile.
#[pyclass(module = "fractaldb._native")]
pub struct Ticket {
    drawn: Mutex<Option<Drawn>>,
    labels: Vec<u32>,
    height: usize,
    width: usize,
    /// The samples' channels; 1 is taken too when `gray` (every palette entry gray).
    channels: usize,
    gray: bool,
}

impl Ticket {
    pub fn new(drawn: Drawn, labels: Vec<u32>, shape: (usize, usize, usize), gray: bool) -> Self {
        Ticket {
            drawn: Mutex::new(Some(drawn)),
            labels,
            height: shape.0,
            width: shape.1,
            channels: shape.2,
            gray,
        }
    }

    /// The (rows, width, channels) `out` must have for this batch, checked (the channels from its
    /// size: 1 for a gray batch's one channel).
    pub fn out_shape(
        out: &Bound<'_, PyAny>,
        n: usize,
        shape: (usize, usize, usize),
        gray: bool,
    ) -> PyResult<(usize, usize, usize)> {
        let (h, w, c) = shape;
        let size = out.getattr("size")?.extract::<usize>()?;
        let c = if gray && size == n * h * w { 1 } else { c };
        let batch = (n * h, w, c);
        super::array_address(out, batch)?;
        Ok(batch)
    }
}

#[pymethods]
impl Ticket {
    /// Samples in the batch.
    #[getter]
    fn size(&self) -> usize {
        self.labels.len()
    }

    /// Waits for the batch, writes it into `out` (checked first, and again with the GIL held from
    /// there to the end of the write) and returns its labels.
    pub fn write_into(&self, py: Python<'_>, out: &Bound<'_, PyAny>) -> PyResult<Vec<u32>> {
        let n = self.labels.len();
        let shape = (self.height, self.width, self.channels);
        let batch = Self::out_shape(out, n, shape, self.gray)?;
        let drawn = self.drawn.lock().unwrap().take().ok_or_else(|| {
            pyo3::exceptions::PyValueError::new_err("this batch was written already")
        })?;
        let (h, w, c) = (self.height, self.width, batch.2);
        match drawn {
            Drawn::Canvases {
                pending,
                place,
                palette,
            } => {
                let canvases = super::interruptible(py, move || pending.wait())?;
                super::write_array(out, batch, |dst| {
                    for (&(u, k, flip), row) in place.iter().zip(dst.chunks_exact_mut(h * w * c)) {
                        crate::render::write_flip_into(
                            &canvases[u][k],
                            w,
                            h,
                            flip,
                            &palette,
                            c,
                            row,
                        );
                    }
                })?;
            }
            Drawn::Rgb(images) => {
                super::write_array(out, batch, |dst| {
                    for (p, row) in images.iter().zip(dst.chunks_exact_mut(h * w * c)) {
                        copy_channels(p, c, row);
                    }
                })?;
            }
        }
        Ok(self.labels.clone())
    }
}

/// RGB pixels into `row` as `c` channels (1: the first of each pixel).
pub fn copy_channels(rgb: &[u8], c: usize, row: &mut [u8]) {
    if c == 3 {
        row.copy_from_slice(rgb);
    } else {
        row.iter_mut()
            .zip(rgb.chunks_exact(3))
            .for_each(|(b, p)| *b = p[0]);
    }
}
