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

/// Whether a `redis` error proves the command did not run, so that sending
/// it again is safe even for a command that is not idempotent: the
/// connection was refused, or the server answered that it did not execute
/// it (`MOVED`, `ASK`, `TRYAGAIN`, `CLUSTERDOWN`, `MASTERDOWN`, `LOADING`).
/// A dropped connection or a timeout proves nothing: the command may have
/// run and only its reply been lost.
pub(crate) fn not_executed(e: &RedisError) -> bool {
    e.is_connection_refusal()
        || matches!(
            e.kind(),
            RK::Server(
                SK::Moved
                    | SK::Ask
                    | SK::TryAgain
                    | SK::ClusterDown
                    | SK::MasterDown
                    | SK::BusyLoading
            )
        )
}

/// Whether the server redirected the command (`MOVED`, `ASK`): it did not
/// run, and it belongs to another node.
pub(crate) fn is_redirect(e: &RedisError) -> bool {
    matches!(e.kind(), RK::Server(SK::Moved | SK::Ask))
}

/// Whether an error says the node is unhealthy (counts against its breaker).
/// A server's error reply (wrong type, script error) says the node is fine.
pub(crate) fn is_node_failure(e: &Error) -> bool {
    matches!(e.kind(), ErrorKind::Timeout | ErrorKind::Connection)
}
