use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// Environment variable naming the `redis-server` binary to use.
pub const REDIS_SERVER_ENV: &str = "LARDER_REDIS_SERVER";

/// How long a server may take to answer its first PING.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How many ports to try when one turns out to be taken.
const PORT_ATTEMPTS: usize = 8;
/// How many log lines an error carries.
const LOG_TAIL_LINES: usize = 40;

/// Finds `redis-server`: `$LARDER_REDIS_SERVER`, then `PATH`, then the usual
/// install locations.
pub fn find_redis_server() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(REDIS_SERVER_ENV) {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(Error::new(format!(
                "{REDIS_SERVER_ENV}={} is not a file",
                p.display()
            )))
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/bin", "/usr/local/bin", "/usr/sbin"].map(PathBuf::from))
        .map(|dir| dir.join("redis-server"))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            Error::new(
                "redis-server not found on PATH: `cargo xtask test` installs it \
                 (or run `apt-get install redis-server`, `brew install redis`, \
                 or set LARDER_REDIS_SERVER)",
            )
        })
}

/// A port that is free now on 127.0.0.1 and whose cluster bus port
/// (`port + 10000`) is free too.
fn free_port() -> Result<u16> {
    for _ in 0..64 {
        let listener = TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))?;
        let port = listener.local_addr()?.port();
        if port > 55_000 {
            continue;
        }
        if TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port + 10_000)).is_ok() {
            return Ok(port);
        }
    }
    Err(Error::new("no free loopback port pair found"))
}

/// A certificate, its key and the CA that signed it (PEM files).
#[derive(Debug, Clone)]
pub(crate) struct TlsFiles {
    pub(crate) cert: PathBuf,
    pub(crate) key: PathBuf,
    pub(crate) ca: PathBuf,
}

/// An ACL user to create at start-up.
#[derive(Debug, Clone)]
struct AclUser {
    name: String,
    password: String,
    rules: String,
}

/// Settings of a server to start. Made by [`RedisServer::builder`].
#[must_use]
#[derive(Debug, Clone, Default)]
pub struct ServerBuilder {
    requirepass: Option<String>,
    users: Vec<AclUser>,
    cluster: bool,
    tls: bool,
    tls_beside: Option<TlsFiles>,
    args: Vec<String>,
    env: Vec<(String, String)>,
    first_port: Option<u16>,
}

impl ServerBuilder {
    /// Sets the default user's password (`requirepass`).
    pub fn requirepass(mut self, password: &str) -> Self {
        self.requirepass = Some(password.to_owned());
        self
    }

    /// Adds an ACL user with full access (`on >password ~* &* +@all`).
    pub fn acl_user(self, name: &str, password: &str) -> Self {
        self.acl_user_with_rules(name, password, "~* &* +@all")
    }

    /// Adds an ACL user with the given rules (for example `~cache:* +get +set`).
    pub fn acl_user_with_rules(mut self, name: &str, password: &str, rules: &str) -> Self {
        self.users.push(AclUser {
            name: name.to_owned(),
            password: password.to_owned(),
            rules: rules.to_owned(),
        });
        self
    }

    /// Starts the server in cluster mode (used by [`crate::RedisCluster`]).
    pub fn cluster_enabled(mut self) -> Self {
        self.cluster = true;
        self
    }

    /// Serves TLS only (`rediss://`), with a certificate for 127.0.0.1 and
    /// `localhost` signed by a fresh test CA ([`RedisServer::ca_pem`]).
    /// Clients are not asked for certificates.
    pub fn tls(mut self) -> Self {
        self.tls = true;
        self
    }

    /// Serves TLS on a second port beside the plain one, with these files,
    /// and runs the cluster bus over TLS (`tls-cluster yes`): for a
    /// [`crate::RedisCluster::start_tls`], whose nodes share one CA.
    pub(crate) fn tls_beside_plain(mut self, files: TlsFiles) -> Self {
        self.tls_beside = Some(files);
        self
    }

    /// Adds raw `redis-server` arguments (for example `["--maxmemory", "1mb"]`).
    pub fn arg(mut self, arg: &str) -> Self {
        self.args.push(arg.to_owned());
        self
    }

    /// Sets an environment variable of the server process (only the child's
    /// environment; this process's is untouched).
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Runs the server under `locale` (`LC_ALL`), for example
    /// `en_US.UTF-8`. Redis sets `LC_COLLATE` from the environment, and Lua
    /// string comparison (`<`, `>=`) then follows that locale's collation,
    /// not byte order. Check [`locale_available`] first: glibc silently
    /// falls back to `C` for a locale that is not installed.
    pub fn locale(self, locale: &str) -> Self {
        self.env("LC_ALL", locale)
    }

    /// The port to try first, instead of a free one drawn at random; if it
    /// is taken, start-up draws free ones as usual. For tests of the
    /// testkit's own collision handling.
    pub fn first_port(mut self, port: u16) -> Self {
        self.first_port = Some(port);
        self
    }

    /// Starts the server on a free loopback port and waits until it answers.
    pub fn start(self) -> Result<RedisServer> {
        let port = match self.first_port {
            Some(p) => p,
            None => free_port()?,
        };
        let tls_port = match self.tls_beside {
            Some(_) => Some(free_port()?),
            None => None,
        };
        let mut server = RedisServer {
            binary: find_redis_server()?,
            dir: tempfile::Builder::new().prefix("larder-redis-").tempdir()?,
            port,
            tls_port,
            settings: self,
            child: None,
        };
        let mut attempt = 1;
        loop {
            match server.spawn() {
                Ok(()) => return Ok(server),
                // Another process took the port between our probe and the bind.
                Err(e)
                    if attempt < PORT_ATTEMPTS
                        && e.log()
                            .is_some_and(|l| l.contains("Address already in use")) =>
                {
                    attempt += 1;
                    server.port = free_port()?;
                    let _ = std::fs::remove_file(server.log_path());
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// A real `redis-server` process on a loopback port, with its own temporary
/// directory, no persistence (`--save "" --appendonly no`), killed by pid
/// when dropped. When dropped during a panic it prints the tail of its log,
/// so a failing test shows what the server said.
#[derive(Debug)]
pub struct RedisServer {
    binary: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    /// The TLS port of a [`ServerBuilder::tls_beside_plain`] server.
    tls_port: Option<u16>,
    settings: ServerBuilder,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a standalone server with default settings.
    pub fn start() -> Result<RedisServer> {
        Self::builder().start()
    }

    /// Settings for a server to start.
    pub fn builder() -> ServerBuilder {
        ServerBuilder::default()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    fn spawn(&mut self) -> Result<()> {
        let mut cmd = Command::new(&self.binary);
        if self.settings.tls {
            let (cert, key, ca) = self.write_certificates()?;
            cmd.args(["--port", "0", "--tls-port"])
                .arg(self.port.to_string())
                .arg("--tls-cert-file")
                .arg(cert)
                .arg("--tls-key-file")
                .arg(key)
                .arg("--tls-ca-cert-file")
                .arg(ca)
                .args(["--tls-auth-clients", "no"]);
        } else {
            cmd.arg("--port").arg(self.port.to_string());
        }
        if let (Some(files), Some(tls_port)) = (&self.settings.tls_beside, self.tls_port) {
            cmd.arg("--tls-port")
                .arg(tls_port.to_string())
                .arg("--tls-cert-file")
                .arg(&files.cert)
                .arg("--tls-key-file")
                .arg(&files.key)
                .arg("--tls-ca-cert-file")
                .arg(&files.ca)
                .args(["--tls-auth-clients", "no", "--tls-cluster", "yes"]);
        }
        cmd.args(["--bind", "127.0.0.1", "--daemonize", "no"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(self.log_path())
            .args(["--enable-debug-command", "local"]);
        if let Some(pw) = &self.settings.requirepass {
            cmd.args(["--requirepass", pw]);
        }
        for u in &self.settings.users {
            // One argv word per ACL token: redis-server rejects a quoted rule list.
            cmd.args(["--user", &u.name, "on", &format!(">{}", u.password)])
                .args(u.rules.split_whitespace());
        }
        if self.settings.cluster {
            cmd.args([
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "5000",
                // Live masters keep serving their slots while another is down,
                // as a cache cluster should be configured.
                "--cluster-require-full-coverage",
                "no",
            ]);
        }
        cmd.args(&self.settings.args);
        for (k, v) in &self.settings.env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let ready_before = self.ready_lines();
        let child = cmd
            .spawn()
            .map_err(|e| Error::new(format!("could not run {}: {e}", self.binary.display())))?;
        self.child = Some(child);
        self.wait_ready(ready_before)
    }

    /// How many times this server's own log says it is ready. A port that
    /// answers is not enough: between `free_port` and the bind, a server of
    /// another test may take the port, and then it is that one answering
    /// while ours fails to bind (and the other's test later kills it).
    fn ready_lines(&self) -> usize {
        std::fs::read_to_string(self.log_path())
            .map_or(0, |l| l.matches("Ready to accept connections").count())
    }

    /// Waits until this process (its log says so) serves the port.
    #[allow(clippy::disallowed_methods)] // a deadline for an external process, not cache time
    fn wait_ready(&mut self, ready_before: usize) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                self.child = None;
                return Err(Error::with_log(
                    format!(
                        "redis-server on port {} exited at start-up ({status})",
                        self.port
                    ),
                    self.log_tail(),
                ));
            }
            let ready = self.ready_lines() > ready_before
                && if self.settings.tls {
                    // A TLS port that accepts means the server finished starting.
                    TcpStream::connect_timeout(&self.addr(), Duration::from_millis(200)).is_ok()
                } else {
                    ping(self.addr()).is_ok()
                };
            if ready {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.stop_process();
                return Err(Error::with_log(
                    format!(
                        "redis-server on port {} did not answer within {START_TIMEOUT:?}",
                        self.port
                    ),
                    self.log_tail(),
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The port the cluster bus port is derived from (+10000): the TLS port
    /// when the bus runs over TLS.
    pub(crate) fn bus_base_port(&self) -> u16 {
        self.tls_port.unwrap_or(self.port)
    }

    /// `127.0.0.1:port`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, self.port))
    }

    /// `redis://127.0.0.1:port/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// `rediss://127.0.0.1:port/` (for a [`ServerBuilder::tls`] server, or
    /// the TLS port of a node of [`crate::RedisCluster::start_tls`]).
    pub fn tls_url(&self) -> String {
        format!("rediss://127.0.0.1:{}/", self.tls_port.unwrap_or(self.port))
    }

    /// The PEM of the test CA that signed a TLS server's certificate.
    pub fn ca_pem(&self) -> Option<Vec<u8>> {
        match &self.settings.tls_beside {
            Some(files) => std::fs::read(&files.ca).ok(),
            None => std::fs::read(self.dir.path().join("ca.pem")).ok(),
        }
    }

    /// Writes (once) a CA and a server certificate signed by it; their paths.
    fn write_certificates(&self) -> Result<(PathBuf, PathBuf, PathBuf)> {
        write_certificates(self.dir.path())
    }
    /// `redis://user:password@127.0.0.1:port/`.
    pub fn url_with_auth(&self, user: &str, password: &str) -> String {
        format!("redis://{user}:{password}@127.0.0.1:{}/", self.port)
    }

    /// A `redis` client for this server (no credentials).
    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).expect("a valid loopback URL")
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process is alive (paused counts as alive).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// The server's temporary directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The whole logfile.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
    }

    fn signal(&self, sig: libc::c_int) -> Result<()> {
        let pid = self
            .pid()
            .ok_or_else(|| Error::new("the server is not running"))?;
        let pid = libc::pid_t::try_from(pid).map_err(|_| Error::new("pid out of range"))?;
        // SAFETY: kill(2) with a pid we spawned and still own (not yet reaped).
        if unsafe { libc::kill(pid, sig) } == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error().into())
        }
    }

    /// Freezes the process (SIGSTOP): connections stay open, nothing answers.
    pub fn pause(&self) -> Result<()> {
        self.signal(libc::SIGSTOP)
    }

    /// Thaws a paused process (SIGCONT).
    pub fn resume(&self) -> Result<()> {
        self.signal(libc::SIGCONT)
    }

    fn stop_process(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the process (SIGKILL) and reaps it. Its data is gone (no persistence).
    pub fn kill(&mut self) {
        self.stop_process();
    }

    /// Starts the process again on the same port with the same settings and
    /// directory (a cluster node keeps its `nodes.conf`, so it rejoins).
    pub fn restart(&mut self) -> Result<()> {
        self.stop_process();
        self.spawn()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            #[allow(clippy::print_stderr)] // the harness's failure report
            {
                eprintln!(
                    "--- redis-server on port {} (log tail) ---\n{}",
                    self.port,
                    self.log_tail()
                );
            }
        }
        self.stop_process();
    }
}

/// Sends `PING` over a raw connection; any reply but `-LOADING` means the
/// server is serving (an auth error still proves it is up).
fn ping(addr: SocketAddr) -> std::io::Result<()> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(200))?;
    s.set_read_timeout(Some(Duration::from_millis(500)))?;
    s.write_all(b"*1\r\n$4\r\nPING\r\n")?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line)?;
    if line.is_empty() || line.starts_with("-LOADING") {
        Err(std::io::Error::other(format!("not ready: {line:?}")))
    } else {
        Ok(())
    }
}

/// Writes (once) into `dir` a CA and a certificate for 127.0.0.1 and
/// `localhost` signed by it; their paths (certificate, key, CA).
pub(crate) fn write_certificates(dir: &Path) -> Result<(PathBuf, PathBuf, PathBuf)> {
    let (cert, key, ca) = (
        dir.join("server.pem"),
        dir.join("server.key"),
        dir.join("ca.pem"),
    );
    if cert.exists() {
        return Ok((cert, key, ca));
    }
    let tls_err = |e: rcgen::Error| Error::new(format!("could not make a test certificate: {e}"));
    let ca_key = rcgen::KeyPair::generate().map_err(tls_err)?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(tls_err)?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "larder-testkit CA");
    let ca_cert = ca_params.self_signed(&ca_key).map_err(tls_err)?;
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let server_key = rcgen::KeyPair::generate().map_err(tls_err)?;
    let server_params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .map_err(tls_err)?;
    let server_cert = server_params
        .signed_by(&server_key, &issuer)
        .map_err(tls_err)?;
    std::fs::write(&ca, ca_cert.pem())?;
    std::fs::write(&cert, server_cert.pem())?;
    std::fs::write(&key, server_key.serialize_pem())?;
    Ok((cert, key, ca))
}

/// Whether `locale` (for example `en_US.UTF-8`) is installed, by `locale -a`.
/// Names are compared as glibc does: case and the dash of the codeset
/// ignored (`en_US.UTF-8` = `en_US.utf8`). False when `locale` cannot run.
pub fn locale_available(locale: &str) -> bool {
    fn norm(name: &str) -> String {
        let (lang, codeset) = name.split_once('.').unwrap_or((name, ""));
        let codeset: String = codeset
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .map(|c| c.to_ascii_lowercase())
            .collect();
        format!("{lang}.{codeset}")
    }
    let want = norm(locale);
    Command::new("locale")
        .arg("-a")
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .is_some_and(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| norm(l.trim()) == want)
        })
}

/// Starts `n` independent standalone servers (for Redlock and sharding).
pub fn start_masters(n: usize) -> Result<Vec<RedisServer>> {
    (0..n).map(|_| RedisServer::start()).collect()
}

#[cfg(test)]
mod tests {
    use super::locale_available;

    #[test]
    fn locale_names_are_compared_as_glibc_does() {
        assert!(locale_available("C"), "`locale -a` always lists C");
        assert!(!locale_available("xx_XX.UTF-8"));
    }
}
