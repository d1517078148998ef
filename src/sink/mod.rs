//! Where encoded images go: the original's folder layout, or WebDataset shards.

pub mod folder;
pub mod readers;
pub mod sums;
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

/// The label list next to a dataset: `{out}/classes.txt`, label index -> class name, one a line in
/// label order (the `.cls` of a shard sample and the class folders use these labels and names).
/// An existing list with other classes is refused: the directory holds another dataset. Only a
/// `writer` (rank 0) writes it; where several writers may run at once (RCDB's slices started
/// together are each a rank 0) the caller holds the folder's short lock ([`folder::short_lock`]).
pub fn write_names(out: &std::path::Path, names: &[String], writer: bool) -> crate::Result<()> {
    let path = out.join("classes.txt");
    let mut text = String::new();
    for c in names {
        text.push_str(c);
        text.push('\n');
    }
    match std::fs::read_to_string(&path) {
        Ok(old) if old == text => Ok(()),
        Ok(_) => Err(crate::Error::input(
            &path,
            None,
            "lists other classes than this run's: the directory holds another dataset; use another --out",
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if !writer {
                return Ok(());
            }
            crate::fsutil::remove_stale_tmp_of(out, |n| n == "classes.txt");
            crate::fsutil::write_atomic(&path, text.as_bytes(), true)
        }
        Err(e) => Err(crate::Error::io(&path, "cannot read", e)),
    }
}
