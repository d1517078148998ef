//! fractaldb: an exact, fast FractalDB generator.
//!
//! Data flows one way: [`plan`] -> cloud ([`ifs`], [`render::cpu`]) -> raster -> encode -> [`sink`],
//! driven by [`pipeline`] and [`generate`]; [`search`] finds the categories.

pub mod bench;
pub mod cli;
pub mod cluster;
pub mod error;
pub mod fsutil;
pub mod generate;
pub mod ifs;
pub mod pipeline;
pub mod plan;
pub mod progress;
pub mod render;
pub mod rng;
pub mod search;
pub mod sink;

pub use error::{Error, Result};
