//! Where encoded images go: the original's folder layout, or WebDataset shards.

pub mod folder;
pub mod wds;

use std::str::FromStr;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Folder,
    Wds,
}

impl FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "folder" => Ok(Format::Folder),
            "wds" | "webdataset" => Ok(Format::Wds),
            _ => Err(format!("unknown format {s:?}: expected folder or wds")),
        }
    }
}
