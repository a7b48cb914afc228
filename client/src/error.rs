//! What can go wrong: the client's error and result types.

/// What can go wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server answered with an error (its status, and the API's error code and message).
    #[error("{status} {code}: {message}")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    /// The request did not get through, or its answer was cut short.
    #[error("{0}")]
    Transport(String),
    /// A bad argument or setting, caught before anything was sent.
    #[error("{0}")]
    Invalid(String),
    /// The server's answer was not what the API promises.
    #[error("unexpected answer: {0}")]
    Protocol(String),
}

impl Error {
    /// The HTTP status, for an error the server answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The API's error code (`NoSuchKey`, `BadDigest`, ...), for an error the server answered.
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    pub(crate) fn transport(e: impl std::fmt::Display) -> Self {
        Error::Transport(e.to_string())
    }
}

pub type Result<T> = std::result::Result<T, Error>;
