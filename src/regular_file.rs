//! Opening the files the library reads (certificates, token files, key files, the token
//! cache) without hanging.

use std::fs::File;
use std::io;
use std::path::Path;

/// Opens `path` for reading if it is a regular file (after symlinks). Checked before opening,
/// because opening a FIFO for reading blocks until a writer comes, and a device may never end;
/// checked again on the open file, in case the path was replaced in between.
pub(crate) fn open_regular_file(path: &Path) -> io::Result<File> {
    let not_regular = || io::Error::new(io::ErrorKind::InvalidInput, NotRegular);
    if !std::fs::metadata(path)?.is_file() {
        return Err(not_regular());
    }
    let file = File::open(path)?;
    if !file.metadata()?.is_file() {
        return Err(not_regular());
    }
    Ok(file)
}

/// The error [`open_regular_file`] returns for a path that is not a regular file.
#[derive(Debug)]
pub(crate) struct NotRegular;

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
