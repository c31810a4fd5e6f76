//! The dependency invariants of `docs/ARCHITECTURE.md`, checked with
//! `cargo tree`: a crate that must not depend on Redis or an async runtime
//! does not, through any path of normal dependencies.

use crate::util;

/// (crate, forbidden dependency)
pub(crate) const FORBIDDEN: &[(&str, &str)] = &[
    ("larder-core", "redis"),
    ("larder-core", "tokio"),
    ("larder-ring", "redis"),
    ("larder-ring", "tokio"),
    ("larder-memory", "redis"),
    ("larder-memory", "tokio"),
];

/// Checks one pair; `Err` names the path that breaks it.
pub(crate) fn check(krate: &str, forbidden: &str) -> Result<(), String> {
    let mut cmd = util::cargo();
    cmd.args([
        "tree",
        "--offline",
        "--all-features",
        "-e",
        "normal",
        "-p",
        krate,
        "-i",
        forbidden,
    ]);
    let out = cmd
        .output()
        .map_err(|e| format!("could not run cargo tree: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.success() && stdout.trim().is_empty() {
        return Ok(()); // no path: cargo prints nothing (and a warning)
    }
    if !out.status.success() && stderr.contains("did not match any packages") {
        return Ok(()); // not in the lock file at all
    }
    if out.status.success() {
        Err(format!("{krate} depends on {forbidden}:\n{stdout}"))
    } else {
        Err(format!(
            "cargo tree failed for {krate} -i {forbidden}:\n{stderr}"
        ))
    }
}

/// Checks every pair; the number checked.
pub(crate) fn check_all() -> Result<usize, String> {
    let failures: Vec<String> = FORBIDDEN
        .iter()
        .filter_map(|(k, f)| check(k, f).err())
        .collect();
    if failures.is_empty() {
        Ok(FORBIDDEN.len())
    } else {
        Err(failures.join("\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_ring_and_memory_have_no_redis_and_no_runtime() {
        check_all().unwrap();
    }

    /// Negative control: the checker does see a dependency that exists.
    #[test]
    fn the_checker_sees_a_real_dependency() {
        let err = check("larder-redis", "redis").unwrap_err();
        assert!(err.contains("larder-redis depends on redis"), "{err}");
    }
}
