//! What the readers users load shards with look for beside them, written when a shard dataset is
//! finalized: timm's `_info.json` (its WebDataset reader wants the split's shards and counts) and a
//! Hugging Face dataset card, `README.md`, whose `dataset_info` makes `cls` a `ClassLabel` with the
//! class names (`datasets.load_dataset(DIR)`). Both are side files: resume, `finalize` and
//! `verify` never read them. A `README.md` or `_info.json` that fractaldb did not write is left
//! alone (nothing a user made is replaced).

use super::wds::Manifest;
use crate::error::Result;
use crate::fsutil;
use std::fmt::Write as _;
use std::path::Path;

/// The first line of the cards fractaldb writes (how it knows a `README.md` is its own).
const CARD_MARK: &str = "<!-- written by fractaldb; rewritten when the dataset is finalized -->";

/// Writes `_info.json` and `README.md` for the finalized shards of `m` in `out`.
pub fn write(out: &Path, prefix: &str, m: &Manifest) -> Result<()> {
    let info = out.join("_info.json");
    if ours(&info, |t| t.contains("\"fractaldb\"")) {
        let shards: Vec<(String, u64)> = m
            .shards
            .iter()
            .map(|s| (s.url.clone(), s.nsamples))
            .collect();
        super::wds::write_json(&info, &timm_info(prefix, m.classes.len(), &shards))?;
    }
    let card = out.join("README.md");
    if ours(&card, |t| t.contains(CARD_MARK)) {
        let json = first_json(&out.join(&m.shards[0].url)).ok().flatten();
        fsutil::write_atomic(&card, hf_card(prefix, m, json.as_ref()).as_bytes(), true)?;
    }
    Ok(())
}

/// Whether `path` is absent or a file fractaldb wrote (`mine` of its text).
fn ours(path: &Path, mine: impl Fn(&str) -> bool) -> bool {
    match std::fs::read_to_string(path) {
        Ok(t) => mine(&t),
        Err(e) => e.kind() == std::io::ErrorKind::NotFound,
    }
}

/// timm's `_info.json`: one split, `train`, with every shard (its file name relative to the root)
/// and its sample count.
pub fn timm_info(prefix: &str, classes: usize, shards: &[(String, u64)]) -> serde_json::Value {
    serde_json::json!({
        "name": prefix,
        "fractaldb": {"manifest": format!("{prefix}-manifest.json")},
        "num_classes": classes,
        "splits": {
            "train": {
                "name": "train",
                "num_samples": shards.iter().map(|s| s.1).sum::<u64>(),
                "filenames": shards.iter().map(|s| s.0.clone()).collect::<Vec<_>>(),
                "shard_lengths": shards.iter().map(|s| s.1).collect::<Vec<_>>(),
            }
        }
    })
}

/// The first `.json` member of a shard, parsed.
fn first_json(shard: &Path) -> std::io::Result<Option<serde_json::Value>> {
    let mut ar = tar::Archive::new(std::io::BufReader::new(std::fs::File::open(shard)?));
    for entry in ar.entries()? {
        let mut entry = entry?;
        if entry.path()?.extension().is_some_and(|e| e == "json") {
            return Ok(serde_json::from_reader(&mut entry).ok());
        }
    }
    Ok(None)
}

/// The Hugging Face `datasets` type of a JSON value of a sample's `.json`.
fn hf_dtype(v: &serde_json::Value) -> Option<&'static str> {
    Some(match v {
        serde_json::Value::String(_) => "string",
        serde_json::Value::Bool(_) => "bool",
        serde_json::Value::Number(n) if n.is_i64() || n.is_u64() => "int64",
        serde_json::Value::Number(_) => "float64",
        _ => return None,
    })
}

/// A YAML double-quoted scalar (a JSON string is one).
fn quoted(s: &str) -> String {
    serde_json::to_string(s).expect("a string serialises")
}

/// The dataset card: YAML front matter with the features (`cls` a `ClassLabel` of the class names;
/// the image; the `.json` fields with their types, from the first sample) and the split's files.
pub fn hf_card(prefix: &str, m: &Manifest, json: Option<&serde_json::Value>) -> String {
    let image = match crate::encode::Encoding::recorded(&m.config) {
        Some(crate::encode::Encoding::Npy) => None,
        _ => Some("png"),
    };
    let mut y = String::from("---\ndataset_info:\n  features:\n");
    if let Some(ext) = image {
        let _ = write!(y, "  - name: {ext}\n    dtype: image\n");
    }
    y.push_str("  - name: cls\n    dtype:\n      class_label:\n        names:\n");
    for (i, c) in m.classes.iter().enumerate() {
        let _ = writeln!(y, "          '{i}': {}", quoted(c));
    }
    if let Some(obj) = json.and_then(|j| j.as_object()) {
        y.push_str("  - name: json\n    struct:\n");
        for (k, v) in obj {
            if let Some(t) = hf_dtype(v) {
                let _ = write!(y, "    - name: {}\n      dtype: {t}\n", quoted(k));
            }
        }
    }
    let _ = write!(
        y,
        "  splits:\n  - name: train\n    num_examples: {}\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n    path: {}\n---\n",
        m.total_samples,
        quoted(&format!("{prefix}-*.tar"))
    );
    let _ = write!(
        y,
        "{CARD_MARK}\n# {prefix}\n\n{} samples of {} classes in {} WebDataset shards, made by fractaldb {} \
         (settings: `{prefix}-manifest.json`; labels: `classes.txt`).\n\n```python\n\
         import datasets\nds = datasets.load_dataset(\"path/to/this/folder\", split=\"train\")  # cls: ClassLabel\n\n\
         import timm\nds = timm.data.create_dataset(\"wds/{prefix}\", root=\"path/to/this/folder\", split=\"train\")\n```\n",
        m.total_samples,
        m.classes.len(),
        m.shard_count,
        env!("CARGO_PKG_VERSION"),
    );
    y
}
