//! The errors of training, tokenizing and sampling, by kind. Every message says where (a
//! file, a flag, a step) and, where it helps, what to do.

use muse_runtime::device::DeviceError;
use muse_runtime::interp::RunError;
use muse_runtime::train::TrainError;
use std::path::{Path, PathBuf};

/// What went wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or folder could not be read, written or created.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
    /// A file is not in the form muse expects (JSON muse wrote, a tokenizer, an image).
    #[error("{}: {why}", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// A run directory cannot be used as asked: not a run, no checkpoint yet, a damaged
    /// checkpoint, another run in the way.
    #[error("{0}")]
    RunDir(String),
    /// A `.muse` file does not compile (the rendered diagnostics), or lacks what an
    /// objective needs.
    #[error("{0}")]
    Model(String),
    /// Settings that do not fit each other or the files given; the message says what to change.
    #[error("{0}")]
    Usage(String),
    /// The data set cannot give what training asks of it.
    #[error("{0}")]
    Data(String),
    /// The loss or the gradients stopped being finite.
    #[error("{0}")]
    NonFinite(String),
    /// A program could not run on the tensors given.
    #[error(transparent)]
    Run(#[from] RunError),
    /// The device is missing or its code did not compile.
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// A trainer could not be built.
    #[error(transparent)]
    Train(#[from] TrainError),
}

/// A result of training, tokenizing or sampling.
pub type Result<T> = std::result::Result<T, Error>;

/// The node called `name` among a model's inputs or outputs, or `missing` when it has none.
pub(crate) fn named(
    list: &[(String, muse_compiler::ir::NodeIndex)],
    name: &str,
    missing: Error,
) -> Result<muse_compiler::ir::NodeIndex> {
    list.iter().find(|(n, _)| n == name).map(|x| x.1).ok_or(missing)
}

impl Error {
    /// An I/O error on `path`, for `map_err`.
    pub fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
        move |source| Error::Io { path: path.to_path_buf(), source }
    }
    /// A file at `path` that is not in the expected form, for `map_err`.
    pub fn format<E: std::fmt::Display>(path: &Path) -> impl FnOnce(E) -> Error + '_ {
        move |e| Error::Format { path: path.to_path_buf(), why: e.to_string() }
    }
}

/// The message, for callers that print errors as text (the command line).
impl From<Error> for String {
    fn from(e: Error) -> String {
        e.to_string()
    }
}
