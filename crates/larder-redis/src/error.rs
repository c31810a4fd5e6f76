//! How Redis client errors become Larder errors.

use larder_core::{Error, ErrorKind};
use redis::{ErrorKind as RK, RedisError, ServerErrorKind as SK};

/// Maps a `redis` error to the Larder error kind a caller acts on.
pub(crate) fn from_redis(e: RedisError, what: &'static str) -> Error {
    let kind = if e.is_timeout() {
        ErrorKind::Timeout
    } else if e.is_connection_refusal() || e.is_connection_dropped() || e.is_io_error() {
        ErrorKind::Connection
    } else if e
        .code()
        .is_some_and(|c| matches!(c, "NOAUTH" | "WRONGPASS" | "NOPERM"))
    {
        ErrorKind::Auth
    } else {
        match e.kind() {
            RK::AuthenticationFailed | RK::Server(SK::NoPerm) => ErrorKind::Auth,
            RK::InvalidClientConfig => ErrorKind::InvalidConfig,
            RK::Server(SK::ClusterDown | SK::MasterDown | SK::TryAgain | SK::BusyLoading)
            | RK::ClusterConnectionNotFound
            | RK::Io => ErrorKind::Connection,
            RK::Server(_) | RK::Extension | RK::Parse | RK::UnexpectedReturnType => {
                ErrorKind::Backend
            }
            _ => ErrorKind::Backend,
        }
    };
    Error::with_source(kind, what, e)
}

/// Whether an error says the node is unhealthy (counts against its breaker).
/// A server's error reply (wrong type, script error) says the node is fine.
pub(crate) fn is_node_failure(e: &Error) -> bool {
    matches!(e.kind(), ErrorKind::Timeout | ErrorKind::Connection)
}
