//! fractaldb: an exact, fast FractalDB generator.
//!
//! Data flows one way: [`plan`] -> cloud ([`ifs`], [`render::cpu`]) -> raster -> encode -> [`sink`],
//! driven by [`pipeline`] and [`generate`]; [`search`] finds the categories.

// Every `unsafe` block says why it is sound (the GL calls' contract is in `render::gl`).
#![warn(clippy::undocumented_unsafe_blocks)]

/// `eprintln!` that never fails: messages and progress go to stderr, and a full or closed stderr
/// (`2>/dev/full`, `2>&1 | head`) must not stop the work, so write errors are ignored.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        // Formatted first and written at once: processes sharing one log (the ranks under a
        // launcher) never interleave inside a line (stderr is unbuffered: `writeln!` would write
        // each formatted piece on its own).
        let mut line = format!($($arg)*);
        line.push('\n');
        let _ = std::io::stderr().write_all(line.as_bytes());
    }};
}

/// `eprint!` that never fails (see [`say!`]).
#[macro_export]
macro_rules! say_raw {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = std::io::stderr().write_all(format!($($arg)*).as_bytes());
    }};
}

/// The process-wide stop request: an `Arc` so that signal handlers ([`stop_on_signals`]) can set it.
static INTERRUPT: std::sync::LazyLock<std::sync::Arc<std::sync::atomic::AtomicBool>> =
    std::sync::LazyLock::new(Default::default);
/// The signal that set [`INTERRUPT`], if one did (0: none).
static SIGNAL: std::sync::LazyLock<std::sync::Arc<std::sync::atomic::AtomicUsize>> =
    std::sync::LazyLock::new(Default::default);

/// Asks every running search, model pass and pipeline of this process to stop (Ctrl-C in Python,
/// SIGINT/SIGTERM on the command line); they return [`Error::Interrupted`] within about a second
/// of work, also in the middle of a unit (its instance loop and chaos games look at it).
/// `false` clears it for the next call.
pub fn interrupt(on: bool) {
    INTERRUPT.store(on, std::sync::atomic::Ordering::SeqCst);
    if !on {
        SIGNAL.store(0, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Whether [`interrupt`] asked the work to stop.
pub fn interrupted() -> bool {
    INTERRUPT.load(std::sync::atomic::Ordering::Relaxed)
}

/// `Err(Interrupted)` once [`interrupt`] asked the work to stop.
pub fn check_interrupt() -> Result<()> {
    if interrupted() {
        Err(Error::Interrupted)
    } else {
        Ok(())
    }
}

/// Makes SIGINT and SIGTERM [`interrupt`] the work (the command line's runs, not the service's,
/// which drains its responses instead); a second one has the signal's default action, so a run
/// that does not stop can still be killed from the keyboard.
pub fn stop_on_signals() -> std::io::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    for sig in [SIGINT, SIGTERM] {
        // Registered first, so it sees the flag as the previous signal left it.
        signal_hook::flag::register_conditional_default(sig, INTERRUPT.clone())?;
        signal_hook::flag::register_usize(sig, SIGNAL.clone(), sig as usize)?;
        signal_hook::flag::register(sig, INTERRUPT.clone())?;
    }
    Ok(())
}

/// The signal that interrupted the work ([`stop_on_signals`]), if one did.
pub fn stop_signal() -> Option<i32> {
    match SIGNAL.load(std::sync::atomic::Ordering::SeqCst) {
        0 => None,
        s => Some(s as i32),
    }
}

pub mod bench;
pub mod cli;
pub mod cluster;
pub mod dataset;
pub mod encode;
pub mod error;
pub mod fsutil;
pub mod generate;
pub mod ifs;
pub mod inspect;
pub mod memory;
pub mod mvfdb;
pub mod pipeline;
pub mod plan;
pub mod preset;
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
