//! OS errors with their context, kept whole from the drive (or the peer that reported one) to
//! the API, where the error number decides the status.

use std::io;

/// An OS error with its context (the operation and the file, or the peer that reported it).
/// `io::Error::new(kind, message)` would keep only the kind, and whether a drive is full (507) or
/// failed (500) is decided on the error number.
#[derive(Debug)]
pub struct OsError {
    pub code: i32,
    pub message: String,
}

impl std::fmt::Display for OsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for OsError {}

impl OsError {
    pub fn into_io(code: i32, message: String) -> io::Error {
        io::Error::new(
            io::Error::from_raw_os_error(code).kind(),
            OsError { code, message },
        )
    }
}

/// The OS error number behind `e`, if there is one (also through [`OsError`]).
pub fn os_code(e: &io::Error) -> Option<i32> {
    e.raw_os_error().or_else(|| {
        e.get_ref()
            .and_then(|i| i.downcast_ref::<OsError>())
            .map(|o| o.code)
    })
}
