//! A real Secret Service for the keyring tests: a private D-Bus session bus (`dbus-daemon`
//! with a configuration of its own, so nothing is activated behind our back) and, on it,
//! `gnome-keyring-daemon --foreground --unlock --components=secrets` with a known password on
//! stdin, its keyrings in a temporary directory. Each test gets its own: the address is handed
//! to the code under test explicitly, never through the process environment.
//!
//! Also the Python libsecret peer: `peer.py` run by `.venv-libsecret` (Debian's python3 with
//! PyGObject and `gi.repository.Secret`), under that bus and a temporary HOME.
//!
//! Missing programs fail the test with the command that installs them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use zbus::zvariant::OwnedObjectPath;

const SECRETS: &str = "org.freedesktop.secrets";
const INSTALL_HINT: &str = "install gnome-keyring and dbus (apt-get install -y gnome-keyring \
                            dbus-daemon); tests/run.sh does when run as root";

/// One item of the keyring, as the Secret Service reports it.
#[derive(Debug)]
pub struct Item {
    pub label: String,
    /// The `Type` property (libsecret sets it to the schema name).
    pub kind: String,
    pub attributes: HashMap<String, String>,
    /// The secret, as text.
    pub secret: String,
}

/// A session bus, with or without an unlocked gnome-keyring on it. Dropping it ends both.
pub struct SecretService {
    /// The bus address, for `TokenCachePersistenceOptions::secret_service_bus`.
    pub address: String,
    /// A temporary directory: HOME for the peers, the keyrings, the bus socket.
    pub dir: tempfile::TempDir,
    _bus: Child,
    keyring: Option<Child>,
}

/// Calls to the Secret Service, from [`SecretService::watch_calls`].
pub struct Calls {
    messages: zbus::MessageStream,
    member: &'static str,
}

impl Calls {
    /// Waits for the next call; fails the test if none comes within 10 s.
    pub async fn next(&mut self) {
        use futures_util::StreamExt;
        let call = async {
            while let Some(message) = self.messages.next().await {
                let message = message.unwrap();
                let header = message.header();
                // The monitor's own traffic (the reply to `BecomeMonitor`) comes here too.
                if header.message_type() == zbus::message::Type::MethodCall
                    && header.member().is_some_and(|m| m.as_str() == self.member)
                {
                    return;
                }
            }
            panic!("the bus closed the monitor's connection");
        };
        tokio::time::timeout(std::time::Duration::from_secs(10), call)
            .await
            .unwrap_or_else(|_| {
                panic!("no {} call to the Secret Service within 10 s", self.member)
            });
    }
}

/// gnome-keyring-daemon, stopped; continued when dropped, also when a test fails.
pub struct PausedKeyring(rustix::process::Pid);

impl Drop for PausedKeyring {
    fn drop(&mut self) {
        let _ = rustix::process::kill_process(self.0, rustix::process::Signal::CONT);
    }
}

impl SecretService {
    /// A bus with an unlocked gnome-keyring whose default collection is `login`.
    pub async fn start() -> Self {
        let mut service = Self::bus_only().await;
        service.keyring = Some(service.start_keyring().await);
        service
    }

    /// A session bus on which nothing provides the Secret Service.
    pub async fn bus_only() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("bus");
        let config = dir.path().join("bus.conf");
        std::fs::write(
            &config,
            format!(
                r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"#,
                socket.display()
            ),
        )
        .unwrap();
        let mut bus = Command::new("dbus-daemon")
            .arg(format!("--config-file={}", config.display()))
            .args(["--nofork", "--print-address"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run dbus-daemon ({e}): {INSTALL_HINT}"));
        // The address is printed once the bus listens.
        let mut line = String::new();
        BufReader::new(bus.stdout.take().unwrap())
            .read_line(&mut line)
            .await
            .unwrap();
        let address = line.trim().to_owned();
        assert!(address.starts_with("unix:"), "dbus-daemon printed {line:?}");
        Self {
            address,
            dir,
            _bus: bus,
            keyring: None,
        }
    }

    /// Starts gnome-keyring-daemon on the bus (its login keyring created and unlocked with a
    /// known password) and waits until it owns `org.freedesktop.secrets`.
    async fn start_keyring(&self) -> Child {
        let connection = self.connect().await;
        let dbus = zbus::fdo::DBusProxy::new(&connection).await.unwrap();
        let mut owners = dbus
            .receive_name_owner_changed_with_args(&[(0, SECRETS)])
            .await
            .unwrap();
        let home = self.dir.path();
        let mut keyring = Command::new("gnome-keyring-daemon")
            .args(["--foreground", "--unlock", "--components=secrets"])
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", home)
            .env("XDG_RUNTIME_DIR", home)
            .env("XDG_DATA_HOME", home.join("data"))
            .env("XDG_CONFIG_HOME", home.join("config"))
            .env("DBUS_SESSION_BUS_ADDRESS", &self.address)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run gnome-keyring-daemon ({e}): {INSTALL_HINT}"));
        let mut stdin = keyring.stdin.take().unwrap();
        stdin.write_all(b"test-keyring-password").await.unwrap();
        drop(stdin);
        let name = zbus::names::BusName::try_from(SECRETS).unwrap();
        if !dbus.name_has_owner(name).await.unwrap() {
            use futures_util::StreamExt;
            owners
                .next()
                .await
                .expect("gnome-keyring-daemon took the name");
        }
        keyring
    }

    /// Stops gnome-keyring-daemon (`SIGSTOP`) until the returned guard is dropped (`SIGCONT`):
    /// meanwhile the bus queues every call to the Secret Service and nothing answers.
    pub fn pause_keyring(&self) -> PausedKeyring {
        let keyring = self.keyring.as_ref().expect("gnome-keyring-daemon runs");
        let pid = keyring
            .id()
            .and_then(|id| rustix::process::Pid::from_raw(i32::try_from(id).ok()?))
            .expect("gnome-keyring-daemon has not exited");
        rustix::process::kill_process(pid, rustix::process::Signal::STOP).unwrap();
        PausedKeyring(pid)
    }

    /// From now on, the calls of `member` (`SearchItems`, `CreateItem`…) to the Secret
    /// Service, seen as the bus routes them, as `dbus-monitor` sees them: whether the service
    /// answers, or runs at all, does not matter.
    pub async fn watch_calls(&self, member: &'static str) -> Calls {
        self.watch_calls_on("org.freedesktop.Secret.Service", member)
            .await
    }

    /// As [`watch_calls`](Self::watch_calls), for the calls of `member` of `interface`
    /// (`org.freedesktop.Secret.Collection`'s `CreateItem`, `org.freedesktop.DBus.Properties`'
    /// `Set`…).
    pub async fn watch_calls_on(&self, interface: &'static str, member: &'static str) -> Calls {
        let connection = self.connect().await;
        // Made before the connection turns monitor, so that no message is missed.
        let messages = zbus::MessageStream::from(&connection);
        let rule = zbus::MatchRule::builder()
            .msg_type(zbus::message::Type::MethodCall)
            .interface(interface)
            .unwrap()
            .member(member)
            .unwrap()
            .build();
        zbus::fdo::MonitoringProxy::new(&connection)
            .await
            .unwrap()
            .become_monitor(&[rule], 0)
            .await
            .unwrap();
        Calls { messages, member }
    }

    /// A connection to the bus, for inspecting the keyring.
    pub async fn connect(&self) -> zbus::Connection {
        zbus::connection::Builder::address(self.address.as_str())
            .unwrap()
            .build()
            .await
            .unwrap()
    }

    /// The Secret Service's main object, and the connection it lives on.
    async fn service(&self) -> (zbus::Connection, zbus::Proxy<'static>) {
        let connection = self.connect().await;
        let service = zbus::Proxy::new(
            &connection,
            SECRETS,
            "/org/freedesktop/secrets",
            "org.freedesktop.Secret.Service",
        )
        .await
        .unwrap();
        (connection, service)
    }

    /// `~/.IdentityService` of the temporary HOME.
    pub fn identity_service_dir(&self) -> PathBuf {
        self.dir.path().join(".IdentityService")
    }

    /// Every item of the keyring. Secrets are read in a plain session (the bus is private to
    /// the test).
    pub async fn items(&self) -> Vec<Item> {
        let (connection, service) = self.service().await;
        let (_, session): (zbus::zvariant::OwnedValue, OwnedObjectPath) = service
            .call("OpenSession", &("plain", zbus::zvariant::Value::from("")))
            .await
            .unwrap();
        let (unlocked, locked): (Vec<OwnedObjectPath>, Vec<OwnedObjectPath>) = service
            .call("SearchItems", &(HashMap::<String, String>::new(),))
            .await
            .unwrap();
        assert!(locked.is_empty(), "locked items: {locked:?}");
        let mut items = Vec::new();
        for path in unlocked {
            let item = zbus::Proxy::new(&connection, SECRETS, path, "org.freedesktop.Secret.Item")
                .await
                .unwrap();
            let label: String = item.get_property("Label").await.unwrap();
            let kind: String = item.get_property("Type").await.unwrap();
            let attributes: HashMap<String, String> =
                item.get_property("Attributes").await.unwrap();
            let (_, _, value, _): (OwnedObjectPath, Vec<u8>, Vec<u8>, String) =
                item.call("GetSecret", &(&session,)).await.unwrap();
            items.push(Item {
                label,
                kind,
                attributes,
                secret: String::from_utf8(value).unwrap(),
            });
        }
        items
    }

    /// Locks the default collection, as a screen lock or `secret-tool lock` would.
    pub async fn lock(&self) {
        let (_connection, service) = self.service().await;
        let (default,): (OwnedObjectPath,) =
            service.call("ReadAlias", &("default",)).await.unwrap();
        let (locked, _prompt): (Vec<OwnedObjectPath>, OwnedObjectPath) =
            service.call("Lock", &(vec![default],)).await.unwrap();
        assert_eq!(
            locked.len(),
            1,
            "gnome-keyring locked the collection without a prompt"
        );
    }

    /// Runs a `peer.py` subcommand with the libsecret peer (`.venv-libsecret`), HOME set to
    /// [`dir`](Self::dir) and this bus as the session bus; returns its JSON answer.
    pub async fn python(&self, args: &[&str]) -> serde_json::Value {
        let peers = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/python");
        let python = peers.join(".venv-libsecret/bin/python");
        assert!(
            python.exists(),
            "the Python libsecret peer is not installed: run tests/peers/python/install.sh --libsecret \
             (tests/run.sh does; it needs the Debian packages python3-gi gir1.2-secret-1 python3-venv)"
        );
        let output = Command::new(python)
            .arg(peers.join("peer.py"))
            .args(args)
            .env("HOME", self.dir.path())
            .env("DBUS_SESSION_BUS_ADDRESS", &self.address)
            .env("NO_PROXY", "*")
            .output()
            .await
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
            panic!(
                "peer.py {args:?} did not print JSON ({e}):\nstdout: {stdout}\nstderr: {}",
                String::from_utf8_lossy(&output.stderr)
            )
        })
    }
}
