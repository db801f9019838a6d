//! Opening the files the library reads (certificates, token files, key files, the token
//! cache) without blocking on what is not a regular file (a FIFO, a device). A file system
//! that does not answer still blocks the `stat` and the open: callers that must stay bounded
//! run them on a thread of their own ([`crate::blocking_read`]).

use std::fs::File;
use std::io;
use std::path::Path;

/// Opens `path` for reading if it is a regular file (after symlinks). Checked before opening,
/// because opening a FIFO for reading blocks until a writer comes, and a device may never end;
/// checked again on the open file, in case the path was replaced in between. On unix the file
/// is opened with `O_NONBLOCK`, so that such a replacement cannot block the open either; the
/// flag is cleared once the open file is known to be regular, as a FUSE file system (sshfs,
/// gcsfuse) passes it on to its daemon, whose reads may then fail with `EAGAIN`.
pub(crate) fn open_regular_file(path: &Path) -> io::Result<File> {
    if !std::fs::metadata(path)?.is_file() {
        return Err(NotRegular::error());
    }
    open_checked(path)
}

/// Opens `path` without blocking, then refuses it unless it is a regular file.
fn open_checked(path: &Path) -> io::Result<File> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        let nonblock = rustix::fs::OFlags::NONBLOCK.bits();
        options.custom_flags(i32::try_from(nonblock).unwrap_or(0));
    }
    let file = options.open(path)?;
    if !file.metadata()?.is_file() {
        return Err(NotRegular::error());
    }
    #[cfg(unix)]
    {
        use rustix::fs::{OFlags, fcntl_getfl, fcntl_setfl};
        let flags = fcntl_getfl(&file)?;
        fcntl_setfl(&file, flags.difference(OFlags::NONBLOCK))?;
    }
    Ok(file)
}

/// The error [`open_regular_file`] returns for a path that is not a regular file.
#[derive(Debug)]
pub(crate) struct NotRegular;

impl NotRegular {
    fn error() -> io::Error {
        io::Error::new(io::ErrorKind::InvalidInput, Self)
    }
}

impl std::fmt::Display for NotRegular {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("not a regular file (a directory, FIFO or device)")
    }
}

impl std::error::Error for NotRegular {}

/// Whether `error` is [`open_regular_file`]'s refusal of what is not a regular file.
pub(crate) fn is_not_regular(error: &io::Error) -> bool {
    error
        .get_ref()
        .is_some_and(|inner| inner.is::<NotRegular>())
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    /// A FIFO put in place after the check (no writer ever comes) does not block the open
    /// itself: it is refused as not a regular file.
    #[test]
    fn a_fifo_swapped_in_after_the_check_is_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        rustix::fs::mkfifoat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::Mode::RUSR | rustix::fs::Mode::WUSR,
        )
        .unwrap();
        let (done, opened) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = done.send(open_checked(&fifo).map(drop));
        });
        let error = opened
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("the open blocked")
            .unwrap_err();
        assert!(is_not_regular(&error), "{error}");
    }

    /// The regular file returned reads blocking: `O_NONBLOCK` is not left set, for a FUSE
    /// daemon to answer a read with `EAGAIN`.
    #[test]
    fn the_file_returned_is_not_left_non_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "x").unwrap();
        let file = open_regular_file(&path).unwrap();
        let flags = rustix::fs::fcntl_getfl(&file).unwrap();
        assert!(!flags.contains(rustix::fs::OFlags::NONBLOCK), "{flags:?}");
    }
}
