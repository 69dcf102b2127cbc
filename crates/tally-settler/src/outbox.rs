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
//!
//! The bank uploader may take files out of the outbox, so "is it still
//! there?" cannot tell a rerun whether a file was already submitted. Every
//! file is therefore also hard-linked into `.sent/` (ignored by readers, like
//! every dot-name) before it is renamed into place: a name found in `.sent/`
//! was published, whatever has happened to the outbox copy since. The one
//! exception is a crash between the link and the rename: then the complete
//! hidden temporary file is still there, and the rerun finishes the rename.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
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

/// Where published files are recorded (hard links), inside the outbox.
pub const SENT_DIR: &str = ".sent";

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> OutboxError + '_ {
    move |source| OutboxError::Io { path: path.to_owned(), source }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Existing {
    Missing,
    Same,
    Different,
}

/// Compares the file at `path` with `bytes`, reading it only when the sizes
/// match (so a stray huge file is never read into memory).
fn compare(path: &Path, bytes: &[u8]) -> Result<Existing, OutboxError> {
    match fs::metadata(path) {
        Ok(meta) if meta.len() != bytes.len() as u64 => Ok(Existing::Different),
        Ok(_) => {
            let existing = fs::read(path).map_err(io(path))?;
            Ok(if existing == bytes { Existing::Same } else { Existing::Different })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Existing::Missing),
        Err(e) => Err(OutboxError::Io { path: path.to_owned(), source: e }),
    }
}

pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Runs an outbox failpoint (see [`crate::failpoint`]); an injected error is
/// the I/O error a failing disk would give.
fn fail_at(name: &'static str, path: &Path) -> Result<(), OutboxError> {
    failpoint::hit(name).map_err(|e| OutboxError::Io { path: path.to_owned(), source: std::io::Error::other(e) })
}

/// Payment files: `rw-------` (they carry account numbers).
pub const PAYMENT_FILE_MODE: u32 = 0o600;
/// The outbox and its `.sent/` directory, when Tally creates them: `rwx------`.
pub const OUTBOX_DIR_MODE: u32 = 0o700;

/// Whether a file of this name was ever published (it is in the outbox, or
/// its record is in `.sent/`): then its bytes must never change.
pub fn was_published(dir: &Path, name: &str) -> Result<bool, OutboxError> {
    for path in [dir.join(name), dir.join(SENT_DIR).join(name)] {
        match fs::symlink_metadata(&path) {
            Ok(_) => return Ok(true),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(io(&path)(error)),
        }
    }
    Ok(false)
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
    fail_at("outbox-write", dir)?;
    let sent_dir = dir.join(SENT_DIR);
    fs::DirBuilder::new().recursive(true).mode(OUTBOX_DIR_MODE).create(&sent_dir).map_err(io(&sent_dir))?;
    let target = dir.join(name);
    let sent = sent_dir.join(name);
    let temporary = dir.join(format!(".{name}.partial"));
    match (compare(&sent, bytes)?, compare(&target, bytes)?) {
        (_, Existing::Different) => return Err(OutboxError::Different(target)),
        (Existing::Different, _) => return Err(OutboxError::Different(sent)),
        (sent_state, Existing::Same) => {
            // Renamed into place before a crash that preceded the record.
            if sent_state == Existing::Missing {
                fs::hard_link(&target, &sent).map_err(io(&sent))?;
                File::open(&sent_dir).and_then(|d| d.sync_all()).map_err(io(&sent_dir))?;
            }
            return Ok(OutboxWrite::AlreadyPresent(target));
        }
        (Existing::Same, Existing::Missing) => {
            // Linked into .sent/ but never renamed into place (a crash
            // between the two): the complete temporary file is still there,
            // so the bank has not seen it yet. Finish the rename; treating
            // it as "picked up" would lose the file and its payouts.
            if compare(&temporary, bytes)? == Existing::Same {
                // Written by an older Tally, it may be world-readable.
                fs::set_permissions(&temporary, fs::Permissions::from_mode(PAYMENT_FILE_MODE))
                    .map_err(io(&temporary))?;
                fs::rename(&temporary, &target).map_err(io(&target))?;
                File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))?;
                return Ok(OutboxWrite::Written(target));
            }
            // Published before, and since picked up by the uploader.
            return Ok(OutboxWrite::AlreadyPresent(sent));
        }
        (Existing::Missing, Existing::Missing) => {}
    }
    {
        // Bank files carry account numbers: readable and writable by their owner only.
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(PAYMENT_FILE_MODE)
            .open(&temporary)
            .map_err(io(&temporary))?;
        // `mode` applies only when the file is created: a temporary file left
        // by an earlier crash keeps its mode unless it is set again.
        file.set_permissions(fs::Permissions::from_mode(PAYMENT_FILE_MODE)).map_err(io(&temporary))?;
        let half = bytes.len() / 2;
        file.write_all(&bytes[..half]).map_err(io(&temporary))?;
        file.flush().map_err(io(&temporary))?;
        fail_at("bank-mid-write", &temporary)?;
        file.write_all(&bytes[half..]).map_err(io(&temporary))?;
        file.sync_all().map_err(io(&temporary))?;
    }
    // The record first, then the visible file; both directories fsynced.
    fs::hard_link(&temporary, &sent).map_err(io(&sent))?;
    File::open(&sent_dir).and_then(|d| d.sync_all()).map_err(io(&sent_dir))?;
    fail_at("bank-after-sent-link", &target)?;
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
        let mut names: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        names.sort();
        assert_eq!(names, vec![std::ffi::OsString::from(".sent"), std::ffi::OsString::from("a.xml")]);
    }

    #[test]
    fn a_file_picked_up_by_the_uploader_is_not_written_again() {
        let dir = tempfile::tempdir().unwrap();
        write_atomically(dir.path(), "b.ach", b"payments").unwrap();
        // The bank uploader takes the file away.
        fs::remove_file(dir.path().join("b.ach")).unwrap();
        assert!(matches!(write_atomically(dir.path(), "b.ach", b"payments").unwrap(), OutboxWrite::AlreadyPresent(_)));
        assert!(!dir.path().join("b.ach").exists(), "not published a second time");
        assert!(matches!(write_atomically(dir.path(), "b.ach", b"other"), Err(OutboxError::Different(_))));
    }

    /// Regression: a crash after the `.sent/` link and before the rename
    /// left the file only in `.sent/`; the rerun took it for a file the
    /// uploader had picked up and never published it (a missed payout).
    #[test]
    fn a_file_linked_but_not_renamed_is_published_on_rerun() {
        let dir = tempfile::tempdir().unwrap();
        // The state such a crash leaves: the complete temporary file, and
        // its hard link in .sent/, nothing visible in the outbox.
        let sent_dir = dir.path().join(SENT_DIR);
        fs::create_dir_all(&sent_dir).unwrap();
        let temporary = dir.path().join(".d.xml.partial");
        fs::write(&temporary, b"payments").unwrap();
        fs::set_permissions(&temporary, fs::Permissions::from_mode(0o644)).unwrap();
        fs::hard_link(&temporary, sent_dir.join("d.xml")).unwrap();
        assert!(matches!(write_atomically(dir.path(), "d.xml", b"payments").unwrap(), OutboxWrite::Written(_)));
        assert_eq!(fs::read(dir.path().join("d.xml")).unwrap(), b"payments");
        let mode = fs::metadata(dir.path().join("d.xml")).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, PAYMENT_FILE_MODE);
        assert!(!temporary.exists());
        // Once published, a rerun after the uploader took it writes nothing.
        fs::remove_file(dir.path().join("d.xml")).unwrap();
        assert!(matches!(write_atomically(dir.path(), "d.xml", b"payments").unwrap(), OutboxWrite::AlreadyPresent(_)));
        assert!(!dir.path().join("d.xml").exists());
    }

    #[test]
    fn a_torn_temporary_file_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let torn = dir.path().join(".c.xml.partial");
        fs::write(&torn, b"half").unwrap();
        fs::set_permissions(&torn, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(write_atomically(dir.path(), "c.xml", b"whole").unwrap(), OutboxWrite::Written(_)));
        assert_eq!(fs::read(dir.path().join("c.xml")).unwrap(), b"whole");
        let mode = fs::metadata(dir.path().join("c.xml")).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, PAYMENT_FILE_MODE, "a leftover world-readable temporary file is not published as it was");
        assert!(!dir.path().join(".c.xml.partial").exists());
    }
}
