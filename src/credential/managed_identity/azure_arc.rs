//! Azure Arc-enabled servers: a challenge, then the request with the agent's key.
//!
//! 1. `GET $IDENTITY_ENDPOINT?api-version=2020-06-01&resource=…` with `Metadata: true`; the
//!    agent answers 401 with `WWW-Authenticate: Basic realm=<path of a key file>`.
//! 2. Only the file name of the realm is used, joined to the key directory (as MSAL does):
//!    nothing the realm names elsewhere is looked at. That file is checked before it is read:
//!    directly inside the key directory (symlinks resolved), named `*.key`, a regular file of
//!    at most 4096 bytes. Only a process allowed to read that root-owned directory can answer
//!    the challenge; the checks keep a fake agent from making the credential read and send any
//!    other file.
//! 3. The same `GET` with `Authorization: Basic <file contents>` returns the token.
//!
//! A user-assigned id is sent as `client_id`, `object_id` or `msi_res_id`, and the answer must
//! name the same identity: older agents ignore the parameter and return the system-assigned
//! identity's token, which must not pass for the one asked for.

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use http::{HeaderName, HeaderValue, Method, StatusCode};
use url::Url;

use super::request;
use super::response::{Echo, failure};
use super::{IDENTITY_ENDPOINT, IdParams, ManagedIdentitySource, NAME, UserAssignedId};
use crate::blocking_read::{OneRead, READ_TIMEOUT, ReadFailure};
use crate::error::{Cause, CredentialError, ProviderDetails};
use crate::regular_file::open_regular_file;
use crate::throttle::Throttle;
use crate::token::{AccessToken, Secret};
use crate::transport::{BeforeRetry, DEFAULT_TOTAL_TIMEOUT, HttpClient, HttpRequest};

const SOURCE: ManagedIdentitySource = ManagedIdentitySource::AzureArc;
const API_VERSION: &str = "2020-06-01";
/// User-assigned ids in the query (MSAL's `_adjust_param`).
const PARAMS: IdParams = IdParams {
    client_id: "client_id",
    object_id: "object_id",
    resource_id: "msi_res_id",
};
/// The agent's key files are short; anything larger is not one (azure-identity, MSAL).
const MAX_KEY_BYTES: u64 = 4096;
/// One acquisition's deadline: the challenge, the key read and the request with the key
/// together, as one request of the other sources (the transport's default total deadline).
/// Each request's own deadline alone would let one acquisition run 30 + 10 + 30 s.
const ACQUISITION_TIMEOUT: std::time::Duration = DEFAULT_TOTAL_TIMEOUT;
/// Who may read the agent's key files, for a refused read.
const KEY_ACCESS_ADVICE: &str = "only root and members of the himds group may read the Azure \
    Arc agent's key files on Linux, and only Administrators on Windows: run as root or as a \
    member of the himds group (Linux), or as an Administrator (Windows)";

/// The agent's key directory on this system, or why Arc is unsupported here.
pub(super) fn default_key_directory(
    get: &dyn Fn(&str) -> Option<String>,
) -> Result<PathBuf, String> {
    if cfg!(target_os = "linux") {
        Ok(PathBuf::from("/var/opt/azcmagent/tokens"))
    } else if cfg!(windows) {
        let data = get("ProgramData")
            .or_else(|| std::env::var("ProgramData").ok())
            .ok_or("ProgramData is not set, so the Azure Arc agent's key directory is unknown")?;
        Ok(Path::new(&data)
            .join("AzureConnectedMachineAgent")
            .join("Tokens"))
    } else {
        Err(
            "Azure Arc is supported on Linux and Windows only; elsewhere give the agent's key \
             directory with azure_arc_key_directory"
                .to_owned(),
        )
    }
}

/// Reads the key a realm names from the key directory: [`read_key`], or in tests a read that
/// does not return.
type KeyReader = Arc<dyn Fn(&Path, &str) -> Result<Secret, String> + Send + Sync>;

pub(super) struct AzureArc {
    pub(super) url: Url,
    pub(super) id: Option<UserAssignedId>,
    key_directory: PathBuf,
    http: HttpClient,
    read_key: KeyReader,
    /// Key reads, one at a time: each request reads the key file its own challenge named,
    /// after the read in flight returned, within [`READ_TIMEOUT`] of asking (a file of at
    /// most 4 KiB in a local directory is read at once). While a read that ran that long has
    /// not returned, none is started.
    reads: OneRead<Result<Secret, String>>,
}

impl AzureArc {
    pub(super) fn new(
        url: Url,
        key_directory: PathBuf,
        id: Option<UserAssignedId>,
        custom: Option<HttpClient>,
    ) -> Result<Self, String> {
        check_loopback(&url)?;
        Ok(Self {
            url,
            id,
            key_directory,
            http: custom.map_or_else(request::default_http, Ok)?,
            read_key: Arc::new(read_key),
            reads: OneRead::new(),
        })
    }

    /// The failure of every request while a key read that overran has not returned, the
    /// request whose read overran included. Not transient: the read may never return, and
    /// retrying cannot help until the file system answers (a retry would only be refused).
    fn stuck(&self) -> CredentialError {
        CredentialError::authentication_failed(
            NAME,
            format!(
                "a read of the Azure Arc agent's key file in {} (azure_arc_key_directory) has \
                 run more than {READ_TIMEOUT:?} and has not returned: the key directory's file \
                 system does not answer; fix the mount of the key directory; the read is \
                 retried once it returns",
                self.key_directory.display()
            ),
        )
    }

    /// The failure of a request whose key was not read within [`READ_TIMEOUT`] of asking:
    /// the reads ahead of it and its own took that long, though none has run it (a slow file
    /// system). A timeout, and transient, unlike [`stuck`](Self::stuck): no read had overrun
    /// when it gave up, so another attempt gets a challenge and a read of its own. That read
    /// may still meet the slow file system: if it overruns, the retry fails as
    /// [`stuck`](Self::stuck).
    fn late(&self) -> CredentialError {
        CredentialError::authentication_failed(
            NAME,
            format!(
                "the Azure Arc agent's key file in {} (azure_arc_key_directory) was not read \
                 within {READ_TIMEOUT:?} of the agent's challenge: the key reads ahead of it and \
                 its own took longer, so the key directory's file system is slow; fix the mount \
                 of the key directory",
                self.key_directory.display()
            ),
        )
        .with_cause(Cause {
            timeout: true,
            transient: true,
            ..Cause::default()
        })
    }

    /// Refuses at once while an earlier key read that overran has not returned: checked
    /// before the challenge, so that a stuck file system costs no round trip to the agent
    /// (which writes a fresh key file for each challenge).
    fn refuse_while_stuck(&self) -> Result<(), CredentialError> {
        if self.reads.overran() {
            return Err(self.stuck());
        }
        Ok(())
    }

    /// The key `realm` names, read on a thread of its own once the read in flight returned,
    /// within [`READ_TIMEOUT`] of asking, the wait for that read included; refused at once
    /// while a read that ran that long has not returned.
    async fn key(&self, realm: String) -> Result<Secret, CredentialError> {
        let directory = self.key_directory.clone();
        let reader = Arc::clone(&self.read_key);
        match self.reads.own(move || reader(&directory, &realm)).await {
            Ok(Ok(key)) => Ok(key),
            Ok(Err(reason)) => Err(CredentialError::authentication_failed(
                NAME,
                format!("the Azure Arc agent's key file was refused: {reason}"),
            )),
            Err(ReadFailure::Overran) => Err(self.stuck()),
            Err(ReadFailure::Late) => Err(self.late()),
            // A panic's payload is the reading code's text, which may quote the file.
            Err(ReadFailure::Panicked) => Err(CredentialError::authentication_failed(
                NAME,
                format!(
                    "reading the Azure Arc agent's key file in {} (azure_arc_key_directory) \
                     failed: the read panicked",
                    self.key_directory.display()
                ),
            )),
            Err(ReadFailure::NoThread(e)) => Err(CredentialError::authentication_failed(
                NAME,
                format!(
                    "the Azure Arc agent's key file in {} (azure_arc_key_directory) could not \
                     be read: no thread could be started: {e}",
                    self.key_directory.display()
                ),
            )
            .with_cause(Cause {
                transient: true,
                ..Cause::default()
            })),
        }
    }

    fn request(
        &self,
        resource: &str,
        key: Option<&Secret>,
    ) -> Result<HttpRequest, CredentialError> {
        let mut pairs = vec![("api-version", API_VERSION), ("resource", resource)];
        if let Some(id) = &self.id {
            pairs.push(PARAMS.pair(id));
        }
        let url = request::with_query(&self.url, &pairs);
        let mut headers = vec![(
            HeaderName::from_static("metadata"),
            HeaderValue::from_static("true"),
        )];
        if let Some(key) = key {
            // Sized once, so that no copy of the key is left in a freed allocation.
            let key = key.expose_secret();
            let mut text = zeroize::Zeroizing::new(String::with_capacity(
                "Basic ".len().saturating_add(key.len()),
            ));
            text.push_str("Basic ");
            text.push_str(key);
            let mut value = HeaderValue::from_str(&text).map_err(|_| {
                CredentialError::authentication_failed(
                    NAME,
                    "the Azure Arc agent's key file holds characters an HTTP header cannot \
                         carry",
                )
            })?;
            value.set_sensitive(true);
            headers.push((AUTHORIZATION, value));
        }
        request::build(Method::GET, &url, &headers, Bytes::new())
    }

    /// The failure of an acquisition not done by its deadline ([`ACQUISITION_TIMEOUT`]), which
    /// ran out `during` one of its steps. Transient: the agent or the file system was slow.
    fn overdue(during: &str) -> CredentialError {
        CredentialError::authentication_failed(
            NAME,
            format!(
                "the Azure Arc agent gave no token within {ACQUISITION_TIMEOUT:?} (its \
                 challenge, the read of its key file and the request with the key together): \
                 the time ran out {during}"
            ),
        )
        .with_cause(Cause {
            timeout: true,
            transient: true,
            ..Cause::default()
        })
    }

    pub(super) async fn acquire(
        &self,
        resource: &str,
        before_retry: &BeforeRetry,
    ) -> Result<AccessToken, CredentialError> {
        self.refuse_while_stuck()?;
        // A deadline too far to represent is none (not reached on any real clock).
        let deadline = tokio::time::Instant::now().checked_add(ACQUISITION_TIMEOUT);
        let request = request::reporting(self.request(resource, None)?, before_retry);
        let challenge = within(
            deadline,
            "waiting for the agent's challenge",
            request::send(&self.http, SOURCE, request, &[]),
        )
        .await?;
        if challenge.status != StatusCode::UNAUTHORIZED {
            let error = failure(SOURCE, challenge.status, &challenge.body, &[]);
            // A wait it asks for is marked, as `Answer::parse` marks the token answer's, so the
            // credential remembers it (see `Configured::acquire`).
            let error = match Throttle::of(challenge.status, &challenge.headers) {
                Some(throttle) => throttle.mark(error),
                None => error,
            };
            return Err(error.with_message_prefix(
                "expected a 401 challenge naming the agent's key file, but ",
            ));
        }
        let realm = challenge
            .headers
            .get_all(WWW_AUTHENTICATE)
            .iter()
            .find_map(|v| v.to_str().ok().and_then(basic_realm))
            .ok_or_else(|| {
                CredentialError::authentication_failed(
                    NAME,
                    "the Azure Arc agent answered 401 without a \"WWW-Authenticate: Basic \
                     realm=<key file>\" header",
                )
                .with_provider(ProviderDetails {
                    status: Some(challenge.status),
                    ..ProviderDetails::default()
                })
            })?;
        let key = within(deadline, "reading the agent's key file", self.key(realm)).await?;
        let secrets = [key.expose_secret()];
        let answer = within(
            deadline,
            "waiting for the answer to the request with the key",
            request::send(
                &self.http,
                SOURCE,
                request::reporting(self.request(resource, Some(&key))?, before_retry),
                &secrets,
            ),
        )
        .await?;
        let token = answer.parse(SOURCE, &secrets)?;
        if let Some(id) = &self.id {
            confirm_identity(id, &token.echo)?;
        }
        Ok(token.token)
    }
}

/// `step` of an acquisition, given up at its `deadline` as [`AzureArc::overdue`] `during` it.
async fn within<T>(
    deadline: Option<tokio::time::Instant>,
    during: &str,
    step: impl Future<Output = Result<T, CredentialError>>,
) -> Result<T, CredentialError> {
    match deadline {
        Some(at) => tokio::time::timeout_at(at, step)
            .await
            .unwrap_or_else(|_| Err(AzureArc::overdue(during))),
        None => step.await,
    }
}

/// Refuses an endpoint off this host: the Azure Connected Machine agent serves on loopback
/// (`http://localhost:40342`), and the key it names is sent, in plain `http`, to whatever
/// `IDENTITY_ENDPOINT` says. A deliberate difference from MSAL and azure-identity, which send
/// it anywhere: a variable pointing elsewhere (a mistake, or planted) must not carry the
/// agent's key off the machine.
fn check_loopback(url: &Url) -> Result<(), String> {
    let loopback = match url.host() {
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    if loopback {
        return Ok(());
    }
    let mut shown = url.clone();
    shown.set_query(None);
    Err(format!(
        "{IDENTITY_ENDPOINT} {shown} is not on this host, where the Azure Arc agent serves \
         (localhost, 127.0.0.0/8 or ::1; by default http://localhost:40342): the agent's key \
         would be sent there in plain http; set it to the agent's local endpoint, or unset \
         {IDENTITY_ENDPOINT} to use another source"
    ))
}

/// The realm of a `Basic realm=<path>` challenge (quoted or not).
fn basic_realm(header: &str) -> Option<String> {
    let (scheme, rest) = header.trim().split_once(char::is_whitespace)?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let (name, value) = rest.trim().split_once('=')?;
    if !name.trim().eq_ignore_ascii_case("realm") {
        return None;
    }
    let value = value.trim();
    let value = value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(value);
    (!value.is_empty()).then(|| value.to_owned())
}

/// The key the challenge's `realm` names: the file of that name in `directory`, if it is a
/// `*.key` regular file of at most [`MAX_KEY_BYTES`] directly inside it (both with symlinks
/// resolved). Checked before a byte is read.
pub(super) fn read_key(directory: &Path, realm: &str) -> Result<Secret, String> {
    // Only the file name (as MSAL does): the agent's answer chooses among the key files, never
    // where to look, so a path elsewhere is not even resolved.
    let name = Path::new(realm)
        .file_name()
        .ok_or_else(|| format!("the realm \"{realm}\" names no file"))?;
    let path = directory.join(name);
    let is_key = |p: &Path| p.extension().is_some_and(|e| e == "key");
    if !is_key(&path) {
        return Err(format!("{} does not end in .key", path.display()));
    }
    let directory = directory.canonicalize().map_err(|e| {
        format!(
            "the key directory {} cannot be resolved: {}",
            directory.display(),
            io_reason(&e)
        )
    })?;
    let resolved = path.canonicalize().map_err(|e| {
        // Say what the agent asked for and where it was looked for: a realm naming a file
        // that is not in the directory (an agent keeping its keys elsewhere) is told apart
        // from a missing key at once.
        format!(
            "the agent's realm \"{}\" names {}, looked for in the key directory {} \
             (azure_arc_key_directory), but {} cannot be resolved: {}",
            crate::redact::excerpt(realm.as_bytes(), &[], 200),
            Path::new(name).display(),
            directory.display(),
            path.display(),
            io_reason(&e)
        )
    })?;
    if resolved.parent() != Some(directory.as_path()) || !is_key(&resolved) {
        return Err(format!(
            "{} is not a .key file directly inside the agent's key directory {}",
            path.display(),
            directory.display()
        ));
    }
    let file = open_regular_file(&resolved)
        .map_err(|e| format!("{} cannot be opened: {}", resolved.display(), io_reason(&e)))?;
    let metadata = file
        .metadata()
        .map_err(|e| format!("{} cannot be examined: {e}", resolved.display()))?;
    if metadata.len() > MAX_KEY_BYTES {
        return Err(format!(
            "{} has {} bytes, more than a key file's {MAX_KEY_BYTES}",
            resolved.display(),
            metadata.len()
        ));
    }
    // The file may grow after the check: read no more than the limit allows.
    let limit = usize::try_from(MAX_KEY_BYTES).unwrap_or(usize::MAX);
    let contents = read_capped(file, limit)
        .map_err(|e| format!("{} cannot be read: {}", resolved.display(), io_reason(&e)))?;
    if contents.len() > limit {
        return Err(format!(
            "{} grew beyond {MAX_KEY_BYTES} bytes while being read",
            resolved.display()
        ));
    }
    // Borrowed, not converted: the bytes stay in the buffer that is zeroed on every path.
    let key = std::str::from_utf8(&contents)
        .map_err(|_| format!("{} is not text", resolved.display()))?
        .trim();
    if key.is_empty() {
        return Err(format!("{} is empty", resolved.display()));
    }
    Ok(Secret::new(key))
}

/// An I/O error for a message; a refused read says who may read key files.
fn io_reason(error: &io::Error) -> String {
    if error.kind() == io::ErrorKind::PermissionDenied {
        format!("{error}; {KEY_ACCESS_ADVICE}")
    } else {
        error.to_string()
    }
}

/// Up to `limit + 1` bytes of `reader` (one more than allowed shows the file grew), in a
/// buffer allocated once at that size and zeroed when dropped: it never grows, so no copy of
/// the key is left in a freed allocation.
fn read_capped(mut reader: impl Read, limit: usize) -> io::Result<zeroize::Zeroizing<Vec<u8>>> {
    let mut buffer = zeroize::Zeroizing::new(vec![0u8; limit.saturating_add(1)]);
    let mut filled = 0usize;
    while let Some(rest) = buffer.get_mut(filled..).filter(|rest| !rest.is_empty()) {
        match reader.read(rest) {
            Ok(0) => break,
            Ok(n) => filled = filled.saturating_add(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buffer.truncate(filled);
    Ok(buffer)
}

/// The answer must name the user-assigned identity that was asked for.
fn confirm_identity(id: &UserAssignedId, echo: &Echo) -> Result<(), CredentialError> {
    let named = match id {
        UserAssignedId::ClientId(_) => &echo.client_id,
        UserAssignedId::ObjectId(_) => &echo.object_id,
        UserAssignedId::ResourceId(_) => &echo.resource_id,
    };
    // Azure compares these ids case-insensitively (GUIDs, resource ids).
    if named
        .as_deref()
        .is_some_and(|n| n.trim().eq_ignore_ascii_case(id.value().trim()))
    {
        return Ok(());
    }
    let said = match named {
        Some(other) => format!("names {} {other}", id.kind()),
        None => format!("names no {}", id.kind()),
    };
    Err(CredentialError::authentication_failed(
        NAME,
        format!(
            "the Azure Arc agent's token answer {said}, not the user-assigned {id} asked for: \
             agents that do not support user-assigned identities return the system-assigned \
             identity's token instead. Update the Azure Connected Machine agent, or use the \
             system-assigned identity"
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blocking_read::tests::{paused_runtime, within_a_minute};
    use std::sync::{Mutex, PoisonError};
    use std::time::Duration;

    fn arc(id: Option<UserAssignedId>) -> AzureArc {
        AzureArc::new(
            Url::parse("http://localhost:40342/metadata/identity/oauth2/token").unwrap(),
            PathBuf::from("/nonexistent"),
            id,
            None,
        )
        .unwrap()
    }

    /// A key reader that counts its reads in `started` and returns only once the sender of
    /// `gate` is dropped (or sends): a read that hangs until the test lets it go.
    fn held_reader(
        started: &Arc<std::sync::atomic::AtomicUsize>,
        gate: Mutex<std::sync::mpsc::Receiver<()>>,
    ) -> KeyReader {
        let started = Arc::clone(started);
        Arc::new(move |_: &Path, _: &str| {
            started.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let _ = gate.lock().unwrap_or_else(PoisonError::into_inner).recv();
            Ok(Secret::new("the-key"))
        })
    }

    /// A key read that never returns (a hung mount) holds its thread after the request gave
    /// up on it; later requests are refused at once instead of each starting one more thread,
    /// until it returns.
    #[test]
    fn a_key_read_that_does_not_return_holds_one_thread_at_most() {
        within_a_minute(|| {
            paused_runtime().block_on(async {
                use futures_util::FutureExt;
                use std::sync::atomic::{AtomicUsize, Ordering};

                let started = Arc::new(AtomicUsize::new(0));
                // Each read waits here until `release` is dropped.
                let (release, gate) = std::sync::mpsc::channel::<()>();
                let gate = Mutex::new(gate);
                let mut arc = arc(None);
                arc.read_key = held_reader(&started, gate);
                let arc = Arc::new(arc);

                let first = tokio::spawn({
                    let arc = Arc::clone(&arc);
                    async move { arc.key("a.key".into()).await }
                });
                while started.load(Ordering::SeqCst) == 0 {
                    tokio::task::yield_now().await;
                }
                // A running read keeps the paused clock from advancing by itself.
                tokio::time::advance(READ_TIMEOUT + Duration::from_secs(1)).await;
                let first = first.await.unwrap().unwrap_err();
                assert!(first.message().contains("has not returned"), "{first}");

                for _ in 0..5 {
                    let err = arc
                        .key("a.key".into())
                        .now_or_never()
                        .expect("refused at once")
                        .unwrap_err();
                    assert_eq!(err.message(), first.message());
                    assert!(err.message().contains("/nonexistent"), "{err}");
                }
                assert_eq!(started.load(Ordering::SeqCst), 1, "one read outstanding");

                // Once it returns, the next request reads again.
                drop(release);
                while arc.reads.overran() {
                    tokio::task::yield_now().await;
                }
                let key = arc.key("a.key".into()).await.unwrap();
                assert_eq!(key.expose_secret(), "the-key");
                assert_eq!(started.load(Ordering::SeqCst), 2);
                assert!(!arc.reads.overran());
            });
        });
    }

    /// While a key read that overran has not returned, later acquisitions are refused before
    /// the challenge (no request to the agent, which writes a fresh key file for each), say
    /// what to do, and are not transient (a retry policy would only spin on them); the
    /// acquisition whose read overran fails the same way, not as a transient timeout that a
    /// retry policy would retry only to be refused.
    #[test]
    fn a_stuck_key_read_refuses_before_the_challenge() {
        within_a_minute(|| {
            paused_runtime().block_on(async {
                use futures_util::FutureExt;
                use std::sync::atomic::{AtomicUsize, Ordering};
                use tokio::io::{AsyncReadExt, AsyncWriteExt};

                // The agent: a 401 challenge naming a key file, per connection; counts the
                // requests.
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                let url = format!(
                    "http://{}/metadata/identity/oauth2/token",
                    listener.local_addr().unwrap()
                );
                let requests = Arc::new(AtomicUsize::new(0));
                let server = tokio::spawn({
                    let requests = Arc::clone(&requests);
                    async move {
                        loop {
                            let (mut socket, _) = listener.accept().await.unwrap();
                            let mut request = Vec::new();
                            let mut buffer = [0u8; 1024];
                            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                                match socket.read(&mut buffer).await {
                                    Ok(0) | Err(_) => break,
                                    Ok(n) => request.extend_from_slice(buffer.get(..n).unwrap()),
                                }
                            }
                            requests.fetch_add(1, Ordering::SeqCst);
                            let answer = "HTTP/1.1 401 Unauthorized\r\nwww-authenticate: Basic \
                                          realm=/var/opt/azcmagent/tokens/a.key\r\ncontent-length: \
                                          0\r\nconnection: close\r\n\r\n";
                            let _ = socket.write_all(answer.as_bytes()).await;
                        }
                    }
                });

                let (release, gate) = std::sync::mpsc::channel::<()>();
                let gate = Mutex::new(gate);
                let mut arc = AzureArc::new(
                    Url::parse(&url).unwrap(),
                    PathBuf::from("/nonexistent"),
                    None,
                    None,
                )
                .unwrap();
                let started = Arc::new(AtomicUsize::new(0));
                arc.read_key = held_reader(&started, gate);
                let arc = Arc::new(arc);
                let first = tokio::spawn({
                    let arc = Arc::clone(&arc);
                    async move { arc.acquire("r", &BeforeRetry::new(|_| None)).await }
                });
                while started.load(Ordering::SeqCst) == 0 {
                    tokio::task::yield_now().await;
                }
                tokio::time::advance(READ_TIMEOUT + Duration::from_secs(1)).await;
                let first = first.await.unwrap().unwrap_err();
                assert_eq!(requests.load(Ordering::SeqCst), 1);
                let later: Vec<CredentialError> = (0..5)
                    .map(|_| {
                        arc.acquire("r", &BeforeRetry::new(|_| None))
                            .now_or_never()
                            .expect("refused at once")
                            .unwrap_err()
                    })
                    .collect();
                for err in std::iter::once(&first).chain(&later) {
                    assert!(
                        err.message().contains("does not answer")
                            && err
                                .message()
                                .contains("/nonexistent (azure_arc_key_directory)")
                            && err.message().contains("fix the mount")
                            && err.message().contains("retried once it returns")
                            && !err.message().contains("restart"),
                        "{err}"
                    );
                    assert!(err.is_authentication_failed(), "{err}");
                    assert!(!err.is_transient() && !err.is_timeout(), "{err}");
                    assert_eq!(err.message(), first.message());
                }
                assert_eq!(requests.load(Ordering::SeqCst), 1, "no more challenges");
                assert_eq!(started.load(Ordering::SeqCst), 1);
                drop(release);
                server.abort();
            });
        });
    }

    /// A request that waits for another's key read and then runs its own on a slow file
    /// system (6 s a read) fails 10 s after it asked, saying so and naming the key directory,
    /// rather than 16 s later; its read is left to return.
    #[test]
    fn a_key_is_read_within_the_timeout_of_asking_the_wait_included() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        within_a_minute(|| {
            paused_runtime().block_on(async {
                let started = Arc::new(AtomicUsize::new(0));
                // Each send lets one read return.
                let (release, gate) = std::sync::mpsc::channel::<()>();
                let mut arc = arc(None);
                arc.read_key = held_reader(&started, Mutex::new(gate));
                let arc = Arc::new(arc);
                let [first, second] = ["a.key", "b.key"].map(|realm| {
                    let arc = Arc::clone(&arc);
                    tokio::spawn(async move { arc.key(realm.into()).await })
                });
                while started.load(Ordering::SeqCst) == 0 {
                    tokio::task::yield_now().await;
                }
                // The second has come, holding its reader, and waits for the first's read.
                while Arc::strong_count(&arc.read_key) < 3 {
                    tokio::task::yield_now().await;
                }
                tokio::time::advance(Duration::from_secs(6)).await;
                release.send(()).unwrap();
                assert_eq!(first.await.unwrap().unwrap().expose_secret(), "the-key");
                while started.load(Ordering::SeqCst) == 1 {
                    tokio::task::yield_now().await;
                }
                tokio::time::advance(Duration::from_secs(4)).await;
                for _ in 0..1000 {
                    if second.is_finished() {
                        break;
                    }
                    tokio::task::yield_now().await;
                }
                assert!(second.is_finished(), "not answered 10 s after asking");
                let err = second.await.unwrap().unwrap_err();
                assert!(
                    err.message()
                        .contains("/nonexistent (azure_arc_key_directory) was not read within 10s")
                        && err.message().contains("fix the mount"),
                    "{err}"
                );
                assert!(err.is_transient() && err.is_timeout(), "{err}");
                assert!(!arc.reads.overran());
                drop(release);
            });
        });
    }

    /// A key read that panics fails its request naming the key directory, without the
    /// panic's text (the reading code's, which may quote the file).
    #[tokio::test]
    async fn a_panicking_key_read_names_the_key_directory() {
        let mut arc = arc(None);
        arc.read_key = Arc::new(|_: &Path, _: &str| panic!("secret-xyz"));
        let err = arc.key("a.key".into()).await.unwrap_err();
        assert!(!format!("{err} {err:?}").contains("secret-xyz"), "{err:?}");
        assert!(
            err.message()
                .contains("/nonexistent (azure_arc_key_directory) failed: the read panicked"),
            "{err}"
        );
    }

    #[test]
    fn requests_before_and_after_the_challenge() {
        let first = arc(None).request("https://vault.azure.net", None).unwrap();
        assert_eq!(
            first.uri().to_string(),
            "http://localhost:40342/metadata/identity/oauth2/token?api-version=2020-06-01&resource=https%3A%2F%2Fvault.azure.net"
        );
        assert_eq!(first.headers()["metadata"], "true");
        assert!(first.headers().get(AUTHORIZATION).is_none());
        let key = Secret::new("arc-key-contents");
        let second = arc(Some(UserAssignedId::ResourceId("/r".into())))
            .request("r", Some(&key))
            .unwrap();
        assert!(second.uri().to_string().ends_with("&msi_res_id=%2Fr"));
        assert_eq!(second.headers()[AUTHORIZATION], "Basic arc-key-contents");
        assert!(second.headers()[AUTHORIZATION].is_sensitive());
        assert!(!format!("{second:?}").contains("arc-key-contents"));
    }

    #[test]
    fn realms() {
        for (header, want) in [
            (
                "Basic realm=/var/opt/azcmagent/tokens/a.key",
                Some("/var/opt/azcmagent/tokens/a.key"),
            ),
            (
                "basic  realm=\"C:\\ProgramData\\x\\Tokens\\b.key\"",
                Some("C:\\ProgramData\\x\\Tokens\\b.key"),
            ),
            ("Bearer realm=/a.key", None),
            ("Basic realm=", None),
            ("Basic", None),
            ("Basic charset=x", None),
        ] {
            assert_eq!(basic_realm(header).as_deref(), want, "{header}");
        }
    }

    #[test]
    fn key_files_are_checked_before_reading() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("tokens");
        std::fs::create_dir(&dir).unwrap();
        let good = dir.join("good.key");
        std::fs::write(&good, "the-key\n").unwrap();
        assert_eq!(
            read_key(&dir, good.to_str().unwrap())
                .unwrap()
                .expose_secret(),
            "the-key"
        );
        let outside = tmp.path().join("outside.key");
        std::fs::write(&outside, "secret elsewhere").unwrap();
        let wrong_ext = dir.join("key.txt");
        std::fs::write(&wrong_ext, "x").unwrap();
        let big = dir.join("big.key");
        std::fs::write(&big, vec![b'a'; 4097]).unwrap();
        let exactly = dir.join("max.key");
        std::fs::write(&exactly, vec![b'a'; 4096]).unwrap();
        assert!(read_key(&dir, exactly.to_str().unwrap()).is_ok());
        let sub = dir.join("sub");
        std::fs::create_dir(&sub).unwrap();
        let nested = sub.join("n.key");
        std::fs::write(&nested, "x").unwrap();
        let dir_named_key = dir.join("d.key");
        std::fs::create_dir(&dir_named_key).unwrap();
        let dotdot = format!("{}/../outside.key", dir.display());
        // Only the file name counts: `outside.key` and `n.key` are looked for in the directory.
        let mut cases = vec![
            (outside.display().to_string(), "cannot be resolved"),
            (dotdot, "cannot be resolved"),
            (wrong_ext.display().to_string(), "does not end in .key"),
            (big.display().to_string(), "more than a key file's 4096"),
            (nested.display().to_string(), "cannot be resolved"),
            (
                dir.join("missing.key").display().to_string(),
                "cannot be resolved",
            ),
            (format!("{}/..", dir.display()), "names no file"),
        ];
        #[cfg(unix)]
        {
            let escape = dir.join("escape.key");
            std::os::unix::fs::symlink(&outside, &escape).unwrap();
            cases.push((
                escape.display().to_string(),
                "not a .key file directly inside",
            ));
            let to_txt = dir.join("to-txt.key");
            std::os::unix::fs::symlink(&wrong_ext, &to_txt).unwrap();
            cases.push((
                to_txt.display().to_string(),
                "not a .key file directly inside",
            ));
            // A directory cannot be opened as a file on every system; on Linux it opens.
            cases.push((dir_named_key.display().to_string(), "not a regular file"));
        }
        for (realm, want) in cases {
            let err = read_key(&dir, &realm).unwrap_err();
            assert!(err.contains(want), "{realm}: {err}");
            assert!(!err.contains("secret elsewhere"), "{err}");
        }
        let err = read_key(&tmp.path().join("nope"), good.to_str().unwrap()).unwrap_err();
        assert!(err.contains("key directory"), "{err}");
    }

    /// The agent's realm chooses a key file by name, never where to look: a path elsewhere
    /// is neither read nor resolved (its existence makes no difference), and a path elsewhere
    /// whose file name is a key in the directory reads that key.
    #[test]
    fn only_the_realms_file_name_is_used() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("tokens");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("agent.key"), "the-key").unwrap();
        let elsewhere = tmp.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        std::fs::write(elsewhere.join("agent.key"), "secret elsewhere").unwrap();
        std::fs::write(elsewhere.join("other.key"), "secret elsewhere").unwrap();

        for realm in [
            elsewhere.join("agent.key").display().to_string(),
            "/var/opt/azcmagent/tokens/agent.key".to_owned(),
            "agent.key".to_owned(),
        ] {
            let key = read_key(&dir, &realm).unwrap();
            assert_eq!(key.expose_secret(), "the-key", "{realm}");
        }

        // other.key exists elsewhere, not in the directory: the same refusal as for a path
        // that exists nowhere but for the realm quoted, naming the directory's path and the
        // setting that chooses it.
        let there = elsewhere.join("other.key").display().to_string();
        let nowhere = tmp.path().join("nowhere/other.key").display().to_string();
        let a = read_key(&dir, &there).unwrap_err();
        let b = read_key(&dir, &nowhere).unwrap_err();
        assert_eq!(a.replace(&there, "REALM"), b.replace(&nowhere, "REALM"));
        for (err, realm) in [(&a, &there), (&b, &nowhere)] {
            assert!(err.contains(&format!("realm \"{realm}\"")), "{err}");
            assert!(
                err.contains(&format!("key directory {}", dir.display()))
                    && err.contains("azure_arc_key_directory")
                    && err.contains(&dir.join("other.key").display().to_string()),
                "{err}"
            );
            assert!(!err.contains("secret"), "{err}");
        }
    }

    #[test]
    fn the_key_is_read_into_one_buffer_that_never_grows() {
        for len in [0usize, 10, 4096, 4097, 10_000] {
            let source = vec![b'k'; len];
            let read = read_capped(source.as_slice(), 4096).unwrap();
            assert_eq!(read.len(), len.min(4097), "{len}");
            assert_eq!(read.capacity(), 4097, "{len}: reallocated");
        }
        // A reader that hands out a few bytes at a time fills the same buffer.
        struct Trickle(usize);
        impl Read for Trickle {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                let n = buf.len().min(self.0).min(3);
                buf.iter_mut().take(n).for_each(|b| *b = b'k');
                self.0 -= n;
                Ok(n)
            }
        }
        let read = read_capped(Trickle(5000), 4096).unwrap();
        assert_eq!((read.len(), read.capacity()), (4097, 4097));
    }

    #[test]
    fn a_refused_read_says_who_may_read_key_files() {
        let denied = io::Error::from(io::ErrorKind::PermissionDenied);
        let reason = io_reason(&denied);
        assert!(
            reason.contains("run as root or as a member of the himds group (Linux)")
                && reason.contains("as an Administrator (Windows)"),
            "{reason}"
        );
        let missing = io_reason(&io::Error::from(io::ErrorKind::NotFound));
        assert!(!missing.contains("himds"), "{missing}");
    }

    #[test]
    fn user_assigned_answers_must_name_the_identity() {
        let echo = Echo {
            client_id: Some("ABC".into()),
            object_id: None,
            resource_id: Some("/subs/x".into()),
        };
        assert!(confirm_identity(&UserAssignedId::ClientId("abc".into()), &echo).is_ok());
        assert!(confirm_identity(&UserAssignedId::ResourceId("/SUBS/X".into()), &echo).is_ok());
        let err = confirm_identity(&UserAssignedId::ClientId("other".into()), &echo).unwrap_err();
        assert!(err.message().contains("names client id ABC"), "{err}");
        let err = confirm_identity(&UserAssignedId::ObjectId("o".into()), &echo).unwrap_err();
        assert!(err.message().contains("names no object id"), "{err}");
        assert!(err.is_authentication_failed());
    }
}
