//! fractaldb: an exact, fast FractalDB generator.
//!
//! Data flows one way: [`plan`] -> cloud ([`ifs`], [`render::cpu`]) -> raster -> encode -> [`sink`],
//! driven by [`pipeline`] and [`generate`]; [`search`] finds the categories.

/// `eprintln!` that never fails: messages and progress go to stderr, and a full or closed stderr
/// (`2>/dev/full`, `2>&1 | head`) must not stop the work, so write errors are ignored.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// `eprint!` that never fails (see [`say!`]).
#[macro_export]
macro_rules! say_raw {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stderr(), $($arg)*);
    }};
}

static INTERRUPT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Asks every running search and pipeline of this process to stop (the Python package sets it on
/// Ctrl-C); they return [`Error::Interrupted`]. `false` clears it for the next call.
pub fn interrupt(on: bool) {
    INTERRUPT.store(on, std::sync::atomic::Ordering::SeqCst);
}

/// Whether [`interrupt`] asked the work to stop.
pub fn interrupted() -> bool {
    INTERRUPT.load(std::sync::atomic::Ordering::Relaxed)
}

pub mod bench;
pub mod cli;
pub mod cluster;
pub mod error;
pub mod fsutil;
pub mod generate;
pub mod ifs;
pub mod memory;
pub mod mvfdb;
pub mod pipeline;
pub mod plan;
pub mod progress;
#[cfg(feature = "pyo3")]
pub mod python;
pub mod rcdb;
pub mod render;
pub mod rng;
pub mod search;
pub mod serve;
pub mod sink;

pub use error::{Error, Result};
