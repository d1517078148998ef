//! `fractaldb bench`: images/s per stage (placeholder filled in below).
use crate::error::Result;

#[derive(clap::Args, Debug)]
pub struct BenchArgs {}

pub fn run(_a: &BenchArgs) -> Result<()> {
    Ok(())
}
