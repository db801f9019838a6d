//! Building credentials that talk to the loopback authority, and capturing traces.

use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tower::ServiceExt;
use tower_identity::{BoxCredential, ClientSecretCredential, HttpClient, RetryOptions};

use super::authority::Authority;

pub const TENANT: &str = "contoso";
pub const CLIENT_ID: &str = "11111111-2222-3333-4444-555555555555";
/// Recognisable, so tests can assert it never appears in output.
pub const CLIENT_SECRET: &str = "loopback-client-secret-Zq9";
pub const SCOPE: &str = "https://resource.test/.default";

/// An HTTP client trusting the test CA. No timeout and no total deadline: under tokio's
/// paused clock, any armed timer makes the clock jump while the runtime waits on socket I/O,
/// so tests that want either set it explicitly.
pub fn http(authority: &Authority) -> HttpClient {
    http_builder(authority)
        .build()
        .expect("test CA PEM is valid")
}

pub fn http_builder(authority: &Authority) -> tower_identity::HttpClientBuilder {
    HttpClient::builder()
        .add_root_certificates_pem(authority.ca_pem())
        .timeout(None)
        .retry(RetryOptions::default().total_timeout(None))
}

pub fn client_secret(authority: &Authority) -> ClientSecretCredential {
    client_secret_with(authority, http(authority))
}

/// The credential with a count of the calls made to it (by a bearer layer, say).
pub fn counted(credential: ClientSecretCredential) -> (BoxCredential, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let service = tower::service_fn(move |request| {
        counter.fetch_add(1, Ordering::SeqCst);
        credential.clone().oneshot(request)
    });
    (BoxCredential::named("Counted", service), calls)
}

pub fn client_secret_with(authority: &Authority, http: HttpClient) -> ClientSecretCredential {
    ClientSecretCredential::builder(TENANT, CLIENT_ID, CLIENT_SECRET)
        .authority_host(authority.url())
        .http_client(http)
        .build()
        .expect("valid settings")
}

/// Everything `tracing` emitted, at every level and from every crate, on this thread while
/// the guard lives. Current-thread runtimes run their spawned tasks on the test's thread, so
/// this covers the whole test.
///
/// One global subscriber writes into the capturing thread's buffer: per-thread scoped
/// subscribers miss events when parallel tests race on tracing's per-callsite interest cache.
#[derive(Clone, Default)]
pub struct Logs(Arc<Mutex<Vec<u8>>>);

thread_local! {
    static CAPTURE: std::cell::RefCell<Option<Logs>> = const { std::cell::RefCell::new(None) };
}

pub struct CaptureGuard(());

impl Drop for CaptureGuard {
    fn drop(&mut self) {
        CAPTURE.with(|c| c.borrow_mut().take());
    }
}

/// The writer of the global subscriber: the current thread's capture, if any.
struct ThreadWriter;

impl Write for ThreadWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        CAPTURE.with(|c| {
            if let Some(logs) = &*c.borrow() {
                logs.0.lock().unwrap().extend_from_slice(buf);
            }
        });
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    pub fn capture() -> (Logs, CaptureGuard) {
        static INSTALL: std::sync::Once = std::sync::Once::new();
        INSTALL.call_once(|| {
            let subscriber = tracing_subscriber::fmt()
                .with_max_level(tracing::Level::TRACE)
                .with_ansi(false)
                .with_writer(|| ThreadWriter)
                .finish();
            tracing::subscriber::set_global_default(subscriber)
                .expect("no other global subscriber");
        });
        let logs = Logs::default();
        CAPTURE.with(|c| *c.borrow_mut() = Some(logs.clone()));
        (logs, CaptureGuard(()))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// Seconds as a `Duration`.
pub fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}
