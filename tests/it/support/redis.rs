//! A real `redis-server` per test, on a free loopback port, with no persistence and a
//! temporary directory of its own; killed when dropped.
//!
//! Faults are real ones: [`RedisServer::pause`] stops the process (`SIGSTOP`: connections stay
//! open, nothing answers), [`RedisServer::kill`] ends it (connections reset, connects refused),
//! [`RedisServer::restart`] brings up an empty server on the same port.
//!
//! A missing `redis-server` fails the test with the command that installs it.

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const INSTALL_HINT: &str =
    "install Debian's redis-server: apt-get install redis-server (tests/run.sh does this)";
/// redis-server starts in milliseconds; this only bounds a broken start.
const START_DEADLINE: Duration = Duration::from_secs(20);
/// Attempts at a free port (another process may take the one we picked before redis binds it).
const PORT_ATTEMPTS: usize = 5;

/// A running redis-server.
pub struct RedisServer {
    port: u16,
    args: Vec<String>,
    password: Option<String>,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

/// How a start ended.
enum Started {
    Ready,
    /// The server exited; its output.
    Exited(String),
}

impl RedisServer {
    /// A server with the defaults (no password, no memory limit).
    pub fn start() -> RedisServer {
        Self::start_with(&[])
    }

    /// A server with extra `redis-server` arguments, e.g. `["--requirepass", "pw"]` (then
    /// [`url`](Self::url) and [`admin`](Self::admin) use the password) or
    /// `["--maxmemory", "2mb", "--maxmemory-policy", "allkeys-lru"]`.
    pub fn start_with(args: &[&str]) -> RedisServer {
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        let password = args
            .iter()
            .position(|a| a == "--requirepass")
            .and_then(|at| args.get(at + 1).cloned());
        let dir = tempfile::tempdir().unwrap();
        let mut last = String::new();
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port();
            match spawn(port, &args, &dir) {
                (child, Started::Ready) => {
                    return RedisServer {
                        port,
                        args,
                        password,
                        dir,
                        child: Some(child),
                    };
                }
                (_, Started::Exited(output)) => last = output,
            }
        }
        panic!("redis-server did not start in {PORT_ATTEMPTS} attempts; last output:\n{last}");
    }

    /// `redis://[:password@]127.0.0.1:port/0`.
    pub fn url(&self) -> String {
        match &self.password {
            Some(password) => format!("redis://:{password}@127.0.0.1:{}/0", self.port),
            None => format!("redis://127.0.0.1:{}/0", self.port),
        }
    }

    /// The server's URL with another password (to test a wrong one).
    pub fn url_with_password(&self, password: &str) -> String {
        format!("redis://:{password}@127.0.0.1:{}/0", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// A blocking connection for the test's own commands (CONFIG SET, FLUSHALL, SCAN, GET,
    /// planting garbage). Blocking on purpose: the test's runtime (and a paused clock) does not
    /// move while it runs. Never use it while the server is paused.
    pub fn admin(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .unwrap()
            .get_connection()
            .unwrap()
    }

    /// `CONFIG SET name value` (e.g. `maxmemory`, `maxmemory-policy`).
    pub fn config_set(&self, name: &str, value: &str) {
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg(name)
            .arg(value)
            .query(&mut self.admin())
            .unwrap();
    }

    /// Every key and its value (SCAN + GET; non-string keys are skipped).
    pub fn dump(&self) -> Vec<(String, Vec<u8>)> {
        use redis::Commands;
        let mut admin = self.admin();
        let keys: Vec<String> = admin
            .scan::<String>()
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let mut all = Vec::new();
        for key in keys {
            let kind: String = redis::cmd("TYPE").arg(&key).query(&mut admin).unwrap();
            if kind == "string" {
                let value: Option<Vec<u8>> = redis::cmd("GET").arg(&key).query(&mut admin).unwrap();
                if let Some(value) = value {
                    all.push((key, value));
                }
            }
        }
        all
    }

    /// Stops the process (`SIGSTOP`): connections stay open and nothing answers.
    pub fn pause(&self) {
        self.signal(rustix::process::Signal::STOP);
    }

    /// Continues a paused process (`SIGCONT`).
    pub fn resume(&self) {
        self.signal(rustix::process::Signal::CONT);
    }

    /// Ends the process (`SIGKILL`) and reaps it: connections reset, new ones are refused.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the server (if it runs) and starts an empty one on the same port, with the same
    /// arguments.
    pub fn restart(&mut self) {
        self.kill();
        match spawn(self.port, &self.args, &self.dir) {
            (child, Started::Ready) => self.child = Some(child),
            (_, Started::Exited(output)) => {
                panic!(
                    "redis-server did not restart on port {}:\n{output}",
                    self.port
                )
            }
        }
    }

    fn signal(&self, signal: rustix::process::Signal) {
        let child = self.child.as_ref().expect("redis-server runs");
        let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
        rustix::process::kill_process(pid, signal).unwrap();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A port nothing listens on right now (the kernel's pick for port 0).
fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn program() -> PathBuf {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join("redis-server"))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| panic!("redis-server is not installed: {INSTALL_HINT}"))
}

/// Starts redis-server on `port` and waits until it logs that it accepts connections, or exits
/// (a port taken meanwhile). Its output keeps being drained so that it never blocks on it.
fn spawn(port: u16, args: &[String], dir: &tempfile::TempDir) -> (Child, Started) {
    let mut child = Command::new(program())
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
        .arg("--dir")
        .arg(dir.path())
        .args(["--logfile", "", "--daemonize", "no"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run redis-server ({e}): {INSTALL_HINT}"));
    let (ready, started) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        let mut output = String::new();
        let mut told = false;
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if !told && line.contains("Ready to accept connections") {
                told = ready.send(Started::Ready).is_ok();
            }
            output.push_str(&line);
            output.push('\n');
        }
        if !told {
            let _ = ready.send(Started::Exited(output));
        }
    });
    let started = started.recv_timeout(START_DEADLINE).unwrap_or_else(|_| {
        let _ = child.kill();
        panic!("redis-server on port {port} neither became ready nor exited in {START_DEADLINE:?}")
    });
    if let Started::Exited(_) = started {
        let _ = child.wait();
    } else {
        // The log line comes before the first accept; PING proves it answers.
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap();
        let mut connection = client.get_connection().unwrap();
        let answer = redis::cmd("PING").query::<String>(&mut connection);
        // With --requirepass a PING before AUTH is refused: that too is an answer.
        assert!(
            answer.as_deref() == Ok("PONG") || answer.is_err_and(|e| e.code() == Some("NOAUTH")),
            "redis-server on port {port} does not answer PING"
        );
    }
    (child, started)
}
