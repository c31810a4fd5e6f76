//! Finding, and if need be installing, `redis-server`.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The `redis-server` to test with: `$LARDER_REDIS_SERVER`, else `PATH`.
/// When it is missing and this process is root on a system with `apt-get`,
/// installs Debian's `redis-server` and says so; otherwise fails with the
/// command to run.
pub(crate) fn ensure_redis_server() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("LARDER_REDIS_SERVER") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!("LARDER_REDIS_SERVER={} is not a file", p.display()))
        };
    }
    if let Some(p) = find_on_path("redis-server") {
        return Ok(p);
    }
    if is_root() && find_on_path("apt-get").is_some() {
        println!(
            "xtask: redis-server is not installed; installing Debian's redis-server with apt-get (running as root)"
        );
        let mut update = Command::new("apt-get");
        update.args(["update", "-qq"]);
        crate::util::run(update)?;
        let mut install = Command::new("apt-get");
        install
            .args([
                "install",
                "-y",
                "-qq",
                "--no-install-recommends",
                "redis-server",
            ])
            .env("DEBIAN_FRONTEND", "noninteractive");
        crate::util::run(install)?;
        return find_on_path("redis-server")
            .ok_or_else(|| "apt-get finished but redis-server is still not on PATH".to_owned());
    }
    Err(
        "redis-server is not installed. Install it, then run this again:\n  \
         Debian/Ubuntu: sudo apt-get install redis-server\n  \
         Fedora:        sudo dnf install redis\n  \
         macOS:         brew install redis\n\
         or point LARDER_REDIS_SERVER at a redis-server binary."
            .to_owned(),
    )
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/bin", "/usr/sbin", "/usr/local/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Whether the effective user is root, from `/proc/self/status` (Linux).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|rest| rest.split_whitespace().nth(1).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}
