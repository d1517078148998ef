//! The one typed error of the library.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad content in an input file, with the 1-based line where known.
    #[error("{}{}: {msg}", path.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
    Input {
        path: PathBuf,
        line: Option<usize>,
        msg: String,
    },

    /// A flag or a combination of flags that cannot work.
    #[error("{flag}: {msg}")]
    Flag { flag: &'static str, msg: String },

    /// A file-system operation failed.
    #[error("{}: {what}: {source}", path.display())]
    Io {
        path: PathBuf,
        what: &'static str,
        source: std::io::Error,
    },

    /// PNG encoding failed.
    #[error("PNG encoding failed: {0}")]
    Png(String),

    /// Stopped on request ([`crate::interrupt`], Ctrl-C in Python).
    #[error("interrupted")]
    Interrupted,

    /// Anything else, with its context already in the message.
    #[error("{0}")]
    Other(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn input(path: impl Into<PathBuf>, line: Option<usize>, msg: impl Into<String>) -> Self {
        Error::Input {
            path: path.into(),
            line,
            msg: msg.into(),
        }
    }
    pub fn flag(flag: &'static str, msg: impl Into<String>) -> Self {
        Error::Flag {
            flag,
            msg: msg.into(),
        }
    }
    pub fn io(path: impl Into<PathBuf>, what: &'static str, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            what,
            source,
        }
    }
}
