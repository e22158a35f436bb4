//! Real distributed peers started by the scale-out tests: PostgreSQL (as a user the test
//! creates, since it refuses to run as root) and nats-server with JetStream, each in a
//! temp directory on a free loopback port.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;

/// The operating-system user PostgreSQL runs as when the tests run as root.
const PG_OS_USER: &str = "tapio-pg";
/// The database role and its password (host connections need it: scram-sha-256).
pub const PG_ROLE: &str = "tapio";
/// See [`PG_ROLE`].
pub const PG_PASSWORD: &str = "tapio-test-secret";

/// A real PostgreSQL server.
pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

impl Postgres {
    /// initdb and start a fresh cluster; panics with what to install when it is missing.
    pub fn start() -> Self {
        let bin = pg_bin();
        let dir = tempfile::tempdir().expect("temp dir");
        if is_root() {
            ensure_os_user();
            let uid = os_user_id();
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(uid)).expect("chown");
        }
        let pwfile = dir.path().join("password");
        std::fs::write(&pwfile, PG_PASSWORD).expect("password file");
        if is_root() {
            let uid = os_user_id();
            std::os::unix::fs::chown(&pwfile, Some(uid), Some(uid)).expect("chown");
        }
        let out = as_owner(&bin.join("initdb"))
            .arg("-D")
            .arg(dir.path().join("data"))
            .args([
                "-U",
                PG_ROLE,
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
            ])
            .arg(format!("--pwfile={}", pwfile.display()))
            .args(["-E", "UTF8", "--no-sync"])
            .output()
            .expect("initdb runs");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let pg = Self {
            dir,
            bin,
            port: free_port(),
        };
        pg.up();
        pg
    }

    fn up(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=200",
            self.port,
            self.dir.path().display()
        );
        let out = as_owner(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .arg("-l")
            .arg(self.dir.path().join("log"))
            .args(["-w", "-t", "60", "-o", &options, "start"])
            .stdout(Stdio::null())
            .output()
            .expect("pg_ctl runs");
        assert!(
            out.status.success(),
            "PostgreSQL did not start: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
    }

    /// Stops it the way a crash does (`-m immediate`: no checkpoint, recovery from the WAL
    /// at the next start).
    pub fn crash(&self) {
        let _ = as_owner(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    /// Starts it again on the same port, with the same data.
    pub fn restart(&self) {
        self.up();
    }

    /// `postgres://` URL of its `postgres` database with the right password.
    pub fn url(&self) -> String {
        self.url_with(PG_PASSWORD)
    }

    /// The same URL with another password.
    pub fn url_with(&self, password: &str) -> String {
        format!(
            "postgres://{PG_ROLE}:{password}@127.0.0.1:{}/postgres",
            self.port
        )
    }

    /// Its server log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.crash();
    }
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Debian installs PostgreSQL's programs under /usr/lib/postgresql/VERSION/bin, off PATH.
fn pg_bin() -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|e| e.path().join("bin"))
        .filter(|bin| bin.join("initdb").is_file())
        .collect();
    found.sort();
    found
        .pop()
        .expect("PostgreSQL is not installed (/usr/lib/postgresql/*/bin/initdb): run scripts/setup")
}

fn as_owner(program: &Path) -> Command {
    if is_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", PG_OS_USER, "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

fn os_user_id() -> u32 {
    let out = Command::new("id")
        .args(["-u", PG_OS_USER])
        .output()
        .expect("id runs");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("the user exists")
}

/// Creates the system user PostgreSQL runs as; tests racing to do so all end with it.
fn ensure_os_user() {
    for _ in 0..20 {
        let exists = Command::new("id")
            .args(["-u", PG_OS_USER])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if exists {
            return;
        }
        let _ = Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                PG_OS_USER,
            ])
            .stderr(Stdio::null())
            .status();
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("cannot create the user {PG_OS_USER} PostgreSQL runs as");
}

/// The stream cap tests and benches ask for: NATS reserves a stream's `max_bytes` against
/// 75% of its free disk, so the 10 GiB default would make them depend on the disk.
pub const STREAM_MAX_BYTES: &str = "1GiB";

/// A real nats-server with JetStream and a file store.
pub struct Nats {
    dir: tempfile::TempDir,
    child: Option<Child>,
    extra: Vec<String>,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

impl Nats {
    /// Starts one; `extra` are more flags (`--user`, `--pass`, ...).
    pub fn start(extra: &[&str]) -> Self {
        let mut nats = Self {
            dir: tempfile::tempdir().expect("temp dir"),
            child: None,
            extra: extra.iter().map(|&s| s.to_owned()).collect(),
            port: free_port(),
        };
        nats.up();
        nats
    }

    fn up(&mut self) {
        let child = Command::new("nats-server")
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(self.dir.path().join("jetstream"))
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server is not installed: run scripts/setup");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A clean stop (SIGTERM: the file store is flushed), down until [`Nats::resume`].
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = rustix::process::kill_process(
                rustix::process::Pid::from_child(&child),
                rustix::process::Signal::TERM,
            );
            let _ = child.wait();
        }
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again after [`Nats::stop`], on the same port with the same file store.
    pub fn resume(&mut self) {
        self.up();
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.kill();
    }
}
