//! The outbox: where bank payment files are "submitted".
//!
//! Submitting a file means placing it, complete, in the outbox directory
//! (which the operator's bank connectivity picks up). A file appears there
//! atomically or not at all: it is written under a hidden temporary name,
//! fsynced, renamed into place, and the directory is fsynced, so a crash
//! leaves either no file or the whole file, never a torn one. Readers of the
//! outbox must ignore names starting with `.`.
//!
//! Writing the same name twice is idempotent when the bytes are identical
//! (a rerun after a crash) and refused when they differ: an outbox file is
//! never overwritten with different content.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::failpoint;

/// What [`write_atomically`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum OutboxWrite {
    Written(PathBuf),
    /// The identical file was already there.
    AlreadyPresent(PathBuf),
}

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("outbox I/O on {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{0} already exists with different content; refusing to overwrite a submitted file")]
    Different(PathBuf),
    #[error("file name {0:?} must be 1..=128 characters of A-Z a-z 0-9 . _ - and not start with '.'")]
    BadName(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> OutboxError + '_ {
    move |source| OutboxError::Io { path: path.to_owned(), source }
}

pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Places `bytes` at `dir/name` atomically and durably.
pub fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> Result<OutboxWrite, OutboxError> {
    let name_ok = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if !name_ok {
        return Err(OutboxError::BadName(name.to_owned()));
    }
    fs::create_dir_all(dir).map_err(io(dir))?;
    let target = dir.join(name);
    match fs::read(&target) {
        Ok(existing) if existing == bytes => return Ok(OutboxWrite::AlreadyPresent(target)),
        Ok(_) => return Err(OutboxError::Different(target)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(OutboxError::Io { path: target, source: e }),
    }
    let temporary = dir.join(format!(".{name}.partial"));
    {
        let mut file =
            OpenOptions::new().write(true).create(true).truncate(true).open(&temporary).map_err(io(&temporary))?;
        let half = bytes.len() / 2;
        file.write_all(&bytes[..half]).map_err(io(&temporary))?;
        file.flush().map_err(io(&temporary))?;
        failpoint::hit("bank-mid-write");
        file.write_all(&bytes[half..]).map_err(io(&temporary))?;
        file.sync_all().map_err(io(&temporary))?;
    }
    fs::rename(&temporary, &target).map_err(io(&target))?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))?;
    Ok(OutboxWrite::Written(target))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_once_refuses_different_content() {
        let dir = tempfile::tempdir().unwrap();
        let first = write_atomically(dir.path(), "a.xml", b"hello").unwrap();
        assert!(matches!(first, OutboxWrite::Written(_)));
        assert!(matches!(write_atomically(dir.path(), "a.xml", b"hello").unwrap(), OutboxWrite::AlreadyPresent(_)));
        assert!(matches!(write_atomically(dir.path(), "a.xml", b"other"), Err(OutboxError::Different(_))));
        assert!(matches!(write_atomically(dir.path(), "../x", b"x"), Err(OutboxError::BadName(_))));
        assert!(matches!(write_atomically(dir.path(), ".hidden", b"x"), Err(OutboxError::BadName(_))));
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("a.xml")]);
    }
}
