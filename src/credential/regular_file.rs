//! Opening the files credentials read (certificates, token files, key files) without hanging.

use std::fs::File;
use std::io;
use std::path::Path;

/// Opens `path` for reading if it is a regular file (after symlinks). Checked before opening,
/// because opening a FIFO for reading blocks until a writer comes, and a device may never end;
/// checked again on the open file, in case the path was replaced in between.
pub(crate) fn open_regular_file(path: &Path) -> io::Result<File> {
    let not_regular = || {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file (a directory, FIFO or device)",
        )
    };
    if !std::fs::metadata(path)?.is_file() {
        return Err(not_regular());
    }
    let file = File::open(path)?;
    if !file.metadata()?.is_file() {
        return Err(not_regular());
    }
    Ok(file)
}
