use crate::error::RingError;

/// A node as given to a ring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NodeSpec {
    pub(crate) name: String,
    pub(crate) weight: u32,
}

/// Checks and collects `(name, weight)` pairs: at least one node, names
/// non-empty and unique, weights at least 1.
pub(crate) fn check_nodes<I, S>(nodes: I) -> Result<Vec<NodeSpec>, RingError>
where
    I: IntoIterator<Item = (S, u32)>,
    S: Into<String>,
{
    let mut out: Vec<NodeSpec> = Vec::new();
    for (name, weight) in nodes {
        let name = name.into();
        if name.is_empty() {
            return Err(RingError::EmptyName);
        }
        if weight == 0 {
            return Err(RingError::ZeroWeight(name));
        }
        if out.iter().any(|n| n.name == name) {
            return Err(RingError::DuplicateNode(name));
        }
        out.push(NodeSpec { name, weight });
    }
    if out.is_empty() {
        return Err(RingError::NoNodes);
    }
    if out.len() > u32::MAX as usize {
        return Err(RingError::TooManyNodes);
    }
    Ok(out)
}
