//! The GL engine of one process: a family's render stage kept resident ([`crate::render::resident`])
//! for as long as a dataset lives, fed whole batches. Its EGL context is made on the first batch in
//! the process that draws (a forked DataLoader worker makes its own; the parent's thread is not in
//! the child, and what the child inherited of it is left alone), so a context is never shared across
//! a fork. Each batch is one request: its units (a cloud with the instances the batch wants, an RCDB
//! stream stretch, MV-FractalDB models) go to the stage as the pipeline's units go, and the canvases
//! come back by unit and slot ([`Ticket`]).

use crate::cli::BackendArg;
use crate::error::{Error, Result};
use crate::render::gl::{GlOptions, egl};
pub use crate::render::resident::{Batch, Engine, Pending, Place};
use crate::render::{Backend, Stages};
use pyo3::prelude::*;
use std::sync::Mutex;

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
        if matches!(self.want, BackendArg::Cpu) {
            return Ok(None);
        }
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
        // Anything but an array fails the check below with the type it is.
        let size = out.getattr("size").and_then(|v| v.extract::<usize>()).ok();
        let c = if gray && size == Some(n * h * w) {
            1
        } else {
            c
        };
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
