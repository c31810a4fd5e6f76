use std::fmt;

/// Why the harness could not do what it was asked. Its `Display` includes
/// the tail of the server's logfile when there is one, so a failing test
/// shows what Redis said.
#[derive(Debug)]
pub struct Error {
    message: String,
    log: Option<String>,
}

/// The harness's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Error {
            message: message.into(),
            log: None,
        }
    }

    pub(crate) fn with_log(message: impl Into<String>, log: String) -> Self {
        Error {
            message: message.into(),
            log: Some(log),
        }
    }

    /// The server log attached to this error, if any.
    pub fn log(&self) -> Option<&str> {
        self.log.as_deref()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(log) = &self.log {
            write!(f, "\n--- redis-server log (tail) ---\n{log}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::new(format!("I/O error: {e}"))
    }
}

impl From<redis::RedisError> for Error {
    fn from(e: redis::RedisError) -> Self {
        Error::new(format!("Redis error: {e}"))
    }
}
