use std::fmt;

/// Why a ring could not be built or changed.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RingError {
    /// No node was given.
    NoNodes,
    /// A node name was empty.
    EmptyName,
    /// A node was given weight 0 (name attached).
    ZeroWeight(String),
    /// Two nodes had the same name.
    DuplicateNode(String),
    /// A node name or index that is not in the ring.
    UnknownNode(String),
    /// More nodes than a `u32` can index.
    TooManyNodes,
    /// A parameter was out of range (what and why attached).
    InvalidArgument(&'static str),
}

impl fmt::Display for RingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RingError::NoNodes => f.write_str("a ring needs at least one node"),
            RingError::EmptyName => f.write_str("a node name is empty"),
            RingError::ZeroWeight(n) => write!(f, "node {n:?} has weight 0"),
            RingError::DuplicateNode(n) => write!(f, "node {n:?} is listed twice"),
            RingError::UnknownNode(n) => write!(f, "no node {n:?} in the ring"),
            RingError::TooManyNodes => f.write_str("too many nodes"),
            RingError::InvalidArgument(what) => write!(f, "invalid argument: {what}"),
        }
    }
}

impl std::error::Error for RingError {}
