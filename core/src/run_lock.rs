//! A lock on the data directory that says a pipeline runs from it.
//!
//! `flowpulse run` holds it shared for as long as the pipeline runs, so
//! instances sharing a directory run side by side; `flowpulse state reset`
//! takes it exclusively, so it refuses while any of them runs (the running
//! pipeline would write its state straight back) and a pipeline starting
//! meanwhile waits until the reset is done. The kernel drops the lock when
//! the process ends, however it ends.

use std::fs::{File, TryLockError};
use std::path::{Path, PathBuf};

/// The lock file, in the data directory.
const FILE: &str = ".running.lock";

/// Why the lock could not be had.
#[derive(Debug, thiserror::Error)]
pub enum RunLockError {
    /// A pipeline runs from this directory.
    #[error("a pipeline is running from {0} (on this machine): stop it first")]
    Running(PathBuf),
    /// The directory or its lock file cannot be used.
    #[error("cannot lock {path}: {source}")]
    Io {
        /// The lock file.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
}

/// A held lock; dropping it releases it.
#[derive(Debug)]
pub struct RunLock {
    _file: File,
}

fn open(data_dir: &Path) -> Result<(File, PathBuf), RunLockError> {
    let path = data_dir.join(FILE);
    let io = |source| RunLockError::Io {
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(data_dir).map_err(io)?;
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io)?;
    Ok((file, path))
}

/// Holds the lock shared while a pipeline runs from `data_dir` (created if
/// missing); waits while a reset holds it.
pub fn running(data_dir: &Path) -> Result<RunLock, RunLockError> {
    let (file, path) = open(data_dir)?;
    file.lock_shared()
        .map_err(|source| RunLockError::Io { path, source })?;
    Ok(RunLock { _file: file })
}

/// Holds the lock alone, for changing what pipelines running from
/// `data_dir` use; [`RunLockError::Running`] while one runs.
pub fn exclusive(data_dir: &Path) -> Result<RunLock, RunLockError> {
    let (file, path) = open(data_dir)?;
    match file.try_lock() {
        Ok(()) => Ok(RunLock { _file: file }),
        Err(TryLockError::WouldBlock) => Err(RunLockError::Running(data_dir.to_path_buf())),
        Err(TryLockError::Error(source)) => Err(RunLockError::Io { path, source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_share_the_lock_and_a_reset_is_refused_until_all_have_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let first = running(&data).unwrap();
        let second = running(&data).unwrap();
        assert!(matches!(exclusive(&data), Err(RunLockError::Running(_))));
        drop(first);
        assert!(matches!(exclusive(&data), Err(RunLockError::Running(_))));
        drop(second);
        let reset = exclusive(&data).unwrap();
        drop(reset);
        assert!(running(&data).is_ok());
    }
}
