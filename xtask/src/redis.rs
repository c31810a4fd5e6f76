//! Finding, and if need be installing, `redis-server`.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The locale larder-redis's tests start a server under, to check that its
/// Lua scripts compare versions as numbers, not by the locale's collation.
pub(crate) const TEST_LOCALE: &str = "en_US.UTF-8";

/// The `redis-server` to test with: `$LARDER_REDIS_SERVER`, else `PATH`.
/// When it is missing and this process is root on a system with `apt-get`,
/// installs Debian's `redis-server` and says so; otherwise fails with the
/// command to run. Then makes sure [`TEST_LOCALE`] exists (see
/// [`ensure_locale`]).
pub(crate) fn ensure_redis_server() -> Result<PathBuf, String> {
    let bin = find_or_install_redis_server()?;
    ensure_locale(TEST_LOCALE);
    Ok(bin)
}

/// Makes sure `locale` is generated. When it is missing and this process is
/// root on a system with `apt-get`, installs `locales`, enables the locale
/// in `/etc/locale.gen` and runs `locale-gen`, saying so. Otherwise (or if
/// that fails) it says what to run: the tests that need the locale then
/// print a NOTE and check only the `C` locale, so this is not an error.
pub(crate) fn ensure_locale(locale: &str) {
    if locale_installed(locale) {
        return;
    }
    if is_root() && find_on_path("apt-get").is_some() {
        println!(
            "xtask: locale {locale} is not generated; installing `locales` and running locale-gen (running as root)"
        );
        match generate_locale(locale) {
            Ok(()) if locale_installed(locale) => return,
            Ok(()) => println!("xtask: locale-gen ran but {locale} is still missing"),
            Err(e) => println!("xtask: could not generate {locale}: {e}"),
        }
    }
    println!(
        "xtask: NOTE: locale {locale} is not available, so the locale-dependent tests check only the C locale. \
         Debian/Ubuntu: sudo apt-get install locales && sudo sed -i 's/^# *{locale}/{locale}/' /etc/locale.gen && sudo locale-gen"
    );
}

fn generate_locale(locale: &str) -> Result<(), String> {
    let mut update = Command::new("apt-get");
    update.args(["update", "-qq"]);
    crate::util::run(update)?;
    let mut install = Command::new("apt-get");
    install
        .args(["install", "-y", "-qq", "--no-install-recommends", "locales"])
        .env("DEBIAN_FRONTEND", "noninteractive");
    crate::util::run(install)?;
    let path = Path::new("/etc/locale.gen");
    let config = std::fs::read_to_string(path).unwrap_or_default();
    let charset = locale.split_once('.').map_or("UTF-8", |(_, c)| c);
    let wanted = format!("{locale} {charset}");
    let mut found = false;
    let mut lines: Vec<String> = config
        .lines()
        .map(|l| {
            let bare = l.trim_start_matches('#').trim();
            if bare == wanted {
                found = true;
                wanted.clone()
            } else {
                l.to_owned()
            }
        })
        .collect();
    if !found {
        lines.push(wanted);
    }
    std::fs::write(path, lines.join("\n") + "\n")
        .map_err(|e| format!("could not write {}: {e}", path.display()))?;
    crate::util::run(Command::new("locale-gen"))
}

/// Whether `locale -a` lists `locale` (`en_US.UTF-8` = `en_US.utf8`).
fn locale_installed(locale: &str) -> bool {
    fn norm(name: &str) -> String {
        let (lang, codeset) = name.split_once('.').unwrap_or((name, ""));
        let codeset: String = codeset
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .map(|c| c.to_ascii_lowercase())
            .collect();
        format!("{lang}.{codeset}")
    }
    let mut cmd = Command::new("locale");
    cmd.arg("-a");
    crate::util::output(cmd).is_some_and(|out| out.lines().any(|l| norm(l.trim()) == norm(locale)))
}

pub(crate) fn find_or_install_redis_server() -> Result<PathBuf, String> {
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
