//! Reading small files that a connection names (SSH keys, known_hosts): only regular files,
//! never more than a cap. A path could name `/dev/zero`, a FIFO or a huge log; reading such a
//! file without these checks blocks a session forever or exhausts the agent's memory.
//!
//! Errors say what the file is and why it was refused; they never quote its content.

use std::io::Read as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

/// Why a file was not read. The path is not part of the message (callers decide whether the
/// path may be shown: it can be a secret when a key's text was mistaken for a path).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FileError {
    #[error("it cannot be opened ({0})")]
    Open(String),
    #[error("it is not a regular file")]
    NotRegular,
    #[error("it is larger than {0} bytes")]
    TooLarge(u64),
    #[error("it cannot be read ({0})")]
    Read(String),
    #[error("it is not UTF-8 text")]
    NotText,
}

impl FileError {
    /// Whether the file does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, FileError::Open(reason) if reason == NOT_FOUND)
    }
}

const NOT_FOUND: &str = "no such file or directory";

/// Reads `path` as UTF-8 text if it is a regular file of at most `cap` bytes. The file is
/// opened non-blocking, so a FIFO or a device never blocks the caller, and its type is checked
/// on the opened descriptor, so a swap after a check cannot slip another file in.
pub fn read_capped_text(path: &Path, cap: u64) -> Result<String, FileError> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| {
            FileError::Open(if e.kind() == std::io::ErrorKind::NotFound {
                NOT_FOUND.to_owned()
            } else {
                e.kind().to_string()
            })
        })?;
    let meta = file
        .metadata()
        .map_err(|e| FileError::Read(e.kind().to_string()))?;
    if !meta.is_file() {
        return Err(FileError::NotRegular);
    }
    if meta.len() > cap {
        return Err(FileError::TooLarge(cap));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    file.take(cap.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| FileError::Read(e.kind().to_string()))?;
    if u64::try_from(bytes.len()).unwrap_or(u64::MAX) > cap {
        return Err(FileError::TooLarge(cap));
    }
    String::from_utf8(bytes).map_err(|_| FileError::NotText)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_small_regular_files_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let ok = dir.path().join("ok");
        std::fs::write(&ok, "hello").unwrap();
        assert_eq!(read_capped_text(&ok, 5).unwrap(), "hello");
        assert_eq!(read_capped_text(&ok, 4), Err(FileError::TooLarge(4)));
        assert_eq!(
            read_capped_text(Path::new("/dev/zero"), 1024),
            Err(FileError::NotRegular)
        );
        assert_eq!(
            read_capped_text(dir.path(), 1024),
            Err(FileError::NotRegular)
        );
        assert!(
            read_capped_text(&dir.path().join("missing"), 1)
                .unwrap_err()
                .is_not_found()
        );
        let fifo = dir.path().join("fifo");
        assert!(
            std::process::Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .unwrap()
                .success()
        );
        assert_eq!(read_capped_text(&fifo, 1024), Err(FileError::NotRegular));
    }
}
